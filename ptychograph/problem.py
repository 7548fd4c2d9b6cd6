"""What a run solves: the scan without its frames, the view layout and the starting state.

:func:`layout` is the one place where positions become view origins and an object size;
:func:`prepare` adds the initial estimates (docs/design.md, "Initial estimates").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ptychograph.backend import complex_dtype
from ptychograph.config import Config, DataConfig, ReconstructionConfig
from ptychograph.errors import InputError
from ptychograph.geometry import object_shape, view_origins
from ptychograph.initial import (
    add_modes,
    flat_object,
    load_previous,
    load_probe_file,
    probe_from_mean,
    random_object,
    scale_power,
)
from ptychograph.noise import photon_unit
from ptychograph.scan import Geometry, Scan
from ptychograph.state import History, State


@dataclass(frozen=True)
class ScanSummary:
    """What preparing a run needs to know about a scan, without its frames.

    positions : (N, 2) (y, x) metres. mask : (H, W) bool (True = bad) or None. illumination :
    (M, H, W) or None. mean_frame : (H, W) float64, the mean diffraction pattern.
    photon_unit : one photon in the frames' units (:func:`ptychograph.noise.photon_unit`; 1 for
    counts, 0 when unknown).
    """

    positions: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None
    illumination: np.ndarray | None
    mean_frame: np.ndarray
    photon_unit: float = 1.0

    @classmethod
    def of(cls, scan: Scan) -> ScanSummary:
        mean = scan.frames.mean(axis=0, dtype=np.float64)
        unit = photon_unit(scan.frames)
        return cls(scan.positions, scan.geometry, scan.mask, scan.illumination, mean, unit)

    @property
    def good(self) -> np.ndarray | None:
        """(H, W) bool, False at bad detector pixels, or None."""
        return None if self.mask is None else ~self.mask


@dataclass(frozen=True)
class Layout:
    """origins : (N, 2) float64 view corners in object pixels; obj_shape : (Y, X)."""

    origins: np.ndarray
    obj_shape: tuple[int, int]


def layout(
    positions: np.ndarray,
    geometry: Geometry,
    rec: ReconstructionConfig,
    data: DataConfig | None = None,
) -> Layout:
    """View origins (rounded for ``subpixel: off``) and the object size covering them, per the
    data orientation options and ``rec.object_margin``."""
    flips: dict[str, bool] = {}
    if data is not None:
        flips = {"swap_xy": data.swap_xy, "flip_x": data.flip_x, "flip_y": data.flip_y}
    origins = view_origins(positions, geometry.object_pixel, rec.object_margin, **flips)
    if rec.subpixel == "off":
        origins = np.round(origins)
    return Layout(origins, object_shape(origins, geometry.frame_shape, rec.object_margin))


@dataclass(frozen=True)
class Problem:
    """The geometry and starting point of a run: the scan's summary and the initial state
    (probe (M_P, H, W), object (M_O, Y, X) of the working precision, view origins)."""

    summary: ScanSummary
    state: State

    @property
    def origins(self) -> np.ndarray:
        """(N, 2) initial view origins in object pixels."""
        assert self.state.origins is not None
        return self.state.origins


@dataclass(frozen=True)
class Result:
    """A finished reconstruction: final state, history and the problem it solved.

    chosen : which candidate ``state`` is ("average" of the last iterates or "last" iterate);
    model_error : the model error R of each candidate compared (empty when there was one).
    """

    state: State
    history: History
    problem: Problem
    config: Config
    chosen: str = "last"
    model_error: dict[str, float] = field(default_factory=dict)


def prepare(summary: ScanSummary | Scan, config: Config) -> Problem:
    """Origins and initial estimates for a validated scan."""
    if isinstance(summary, Scan):
        summary = ScanSummary.of(summary)
    rec = config.reconstruction
    cdtype = complex_dtype(rec.precision)
    lay = layout(summary.positions, summary.geometry, rec, config.data)
    rng = np.random.default_rng(rec.seed)
    probe = initial_probe(summary, config, rng)
    obj = initial_object(lay.obj_shape, config, rng)
    return Problem(summary, State(probe.astype(cdtype), obj.astype(cdtype), 0, lay.origins))


def initial_probe(
    summary: ScanSummary | Scan, config: Config, rng: np.random.Generator
) -> np.ndarray:
    """(M_P, H, W) complex128 initial probe per ``config.initial``."""
    if isinstance(summary, Scan):
        summary = ScanSummary.of(summary)
    init = config.initial
    frame_shape = summary.geometry.frame_shape
    choice: str = init.probe
    if choice == "auto":
        choice = "illumination" if summary.illumination is not None else "data"
    if choice == "illumination":
        assert summary.illumination is not None
        probe = summary.illumination.astype(np.complex128)
    elif choice == "data":
        probe = probe_from_mean(summary.mean_frame, summary.mask)[None]
    elif choice == "file":
        assert init.probe_path is not None
        probe = load_probe_file(init.probe_path, frame_shape)
    else:
        assert init.previous is not None
        probe = load_previous(init.previous, "probe", "initial.previous")
    if probe.shape[1:] != frame_shape:
        raise InputError("initial.probe", f"probe {probe.shape[1:]} != frames {frame_shape}")
    if choice != "previous":
        probe = scale_power(probe, float(summary.mean_frame.sum()))
    return add_modes(probe, config.reconstruction.start_probe_modes, init.extra_mode_power, rng)


def initial_object(shape: tuple[int, int], config: Config, rng: np.random.Generator) -> np.ndarray:
    """(M_O, Y, X) complex128 initial object per ``config.initial``."""
    n_modes = config.reconstruction.object_modes
    if config.initial.object == "flat":
        return flat_object(shape, n_modes, rng)
    if config.initial.object == "random":
        return random_object(shape, n_modes, rng)
    obj = previous_object(config, shape)
    if obj.shape[0] < n_modes:
        extra = flat_object(shape, n_modes, rng)[obj.shape[0] :]
        obj = np.concatenate([obj, extra])
    return obj[:n_modes]


def previous_object(config: Config, shape: tuple[int, int]) -> np.ndarray:
    """The object of ``initial.previous``, refused when it does not fit ``shape`` (Y, X)."""
    assert config.initial.previous is not None
    obj = load_previous(config.initial.previous, "object", "initial.previous")
    if obj.shape[1:] != shape:
        raise InputError(
            "initial.previous", f"object {obj.shape[1:]} does not fit this scan's {shape}"
        )
    return obj

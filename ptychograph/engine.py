"""A reconstruction from a validated config: load, prepare, iterate, write.

This is the in-process path. :func:`prepare` turns a :class:`~ptychograph.scan.Scan` and the
config into the problem (amplitudes, view origins, initial estimates); :func:`reconstruct`
runs :func:`~ptychograph.solver.run_dm` and writes the result store and figure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ptychograph.backend import complex_dtype, real_dtype
from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.geometry import object_shape, view_origins
from ptychograph.initial import (
    add_modes,
    flat_object,
    load_previous,
    load_probe_file,
    probe_from_data,
    random_object,
    scale_power,
)
from ptychograph.scan import Scan
from ptychograph.solver import Callback, LocalExecutor, Settings, run_dm
from ptychograph.state import History, State
from ptychograph.views import make_chunk

log = logging.getLogger("ptychograph")


@dataclass(frozen=True)
class Problem:
    """Everything the iteration needs, on the host.

    amplitudes : (N, H, W) real sqrt(I). good : (H, W) bool or None. origins : (N, 2) float
    view corners in object pixels. state : initial probe (M_P, H, W) and object (M_O, Y, X).
    """

    scan: Scan
    amplitudes: np.ndarray
    good: np.ndarray | None
    origins: np.ndarray
    state: State


@dataclass(frozen=True)
class Result:
    """A finished reconstruction: final state, history and the problem it solved."""

    state: State
    history: History
    problem: Problem
    config: Config


def settings_from(config: Config) -> Settings:
    """Loop settings from the reconstruction section."""
    rec = config.reconstruction
    return Settings(
        iterations=rec.iterations,
        beta=rec.beta,
        overlap_passes=rec.overlap_passes,
        probe_update_start=rec.probe_update_start,
        regularisation=rec.regularisation,
        orthogonalise_probe=rec.orthogonalise_probe,
        noise_bound=rec.noise_bound,
        average_last=rec.average_last,
    )


def prepare(scan: Scan, config: Config) -> Problem:
    """Amplitudes, origins and initial estimates for a validated scan."""
    rec = config.reconstruction
    cdtype = complex_dtype(rec.precision)
    frame_shape = scan.geometry.frame_shape
    origins = view_origins(
        scan.positions,
        scan.geometry.object_pixel,
        rec.object_margin,
        config.data.swap_xy,
        config.data.flip_x,
        config.data.flip_y,
    )
    if not rec.subpixel:
        origins = np.round(origins)
    shape = object_shape(origins, frame_shape, rec.object_margin)
    rng = np.random.default_rng(rec.seed)
    probe = initial_probe(scan, config, rng)
    obj = initial_object(shape, config, rng)
    amplitudes = np.sqrt(scan.frames).astype(real_dtype(cdtype))
    good = None if scan.mask is None else ~scan.mask
    state = State(probe.astype(cdtype), obj.astype(cdtype), 0)
    return Problem(scan, amplitudes, good, origins, state)


def initial_probe(scan: Scan, config: Config, rng: np.random.Generator) -> np.ndarray:
    """(M_P, H, W) complex128 initial probe per ``config.initial`` (DESIGN.md step 7)."""
    init = config.initial
    frame_shape = scan.geometry.frame_shape
    choice: str = init.probe
    if choice == "auto":
        choice = "file_illumination" if scan.illumination is not None else "data"
    if choice == "file_illumination":
        assert scan.illumination is not None
        probe = scan.illumination.astype(np.complex128)
    elif choice == "data":
        probe = probe_from_data(scan.frames, scan.mask)[None]
    elif choice == "file":
        assert init.probe_path is not None
        probe = load_probe_file(init.probe_path, frame_shape)
    else:
        assert init.previous is not None
        probe = load_previous(init.previous, "probe", "initial.previous")
    if probe.shape[1:] != frame_shape:
        raise InputError("initial.probe", f"probe {probe.shape[1:]} != frames {frame_shape}")
    if choice != "previous":
        mean_counts = float(scan.frames.sum(axis=(1, 2), dtype=np.float64).mean())
        probe = scale_power(probe, mean_counts)
    return add_modes(probe, config.reconstruction.probe_modes, init.extra_mode_power, rng)


def initial_object(shape: tuple[int, int], config: Config, rng: np.random.Generator) -> np.ndarray:
    """(M_O, Y, X) complex128 initial object per ``config.initial``."""
    n_modes = config.reconstruction.object_modes
    if config.initial.object == "flat":
        return flat_object(shape, n_modes, rng)
    if config.initial.object == "random":
        return random_object(shape, n_modes, rng)
    assert config.initial.previous is not None
    obj = load_previous(config.initial.previous, "object", "initial.previous")
    if obj.shape[1:] != shape:
        raise InputError(
            "initial.previous", f"object {obj.shape[1:]} does not fit this scan's {shape}"
        )
    if obj.shape[0] < n_modes:
        extra = flat_object(shape, n_modes, rng)[obj.shape[0] :]
        obj = np.concatenate([obj, extra])
    return obj[:n_modes]


def run_local(
    problem: Problem, config: Config, callback: Callback | None = None, n_chunks: int = 1
) -> tuple[State, History]:
    """Run DM in this process with the views split into ``n_chunks`` chunks."""
    rec = config.reconstruction
    bounds = np.linspace(0, problem.amplitudes.shape[0], n_chunks + 1).astype(int)
    chunks = [
        make_chunk(
            problem.amplitudes[a:b],
            problem.good,
            problem.origins[a:b],
            problem.state.probe,
            problem.state.obj,
            rec.batch_size,
        )
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]
    executor = LocalExecutor(chunks, rec.batch_size)
    return run_dm(executor, problem.state, settings_from(config), callback=callback)


def load_problem(config: Config) -> tuple[Problem, list[str]]:
    """Read, validate and prepare the scan named in the config; notes say what was fixed."""
    from ptychograph.io import load_scan
    from ptychograph.io.validate import validate_frames

    scan = load_scan(config.data.path)
    scan, notes = validate_frames(scan, config.data.nonfinite, config.data.negative)
    return prepare(scan, config), notes


def reconstruct(
    config: Config,
    client: object | None = None,
    progress: Callable[[State, History], None] | None = None,
    write: bool = True,
    overwrite: bool = False,
) -> Result:
    """Reconstruct the scan of ``config``; write the result store (and figure) if ``write``.

    ``client`` is reserved for a ``distributed.Client``; the in-process path ignores it.
    """
    from ptychograph.results import check_output_free, write_result

    if write:
        check_output_free(config.output.path, overwrite, config.output.figure)
    problem, notes = load_problem(config)
    for note in notes:
        log.warning("%s", note)
    state, history = run_local(problem, config, progress)
    result = Result(state, history, problem, config)
    if write:
        write_result(result, config.output.path, overwrite=overwrite)
    return result

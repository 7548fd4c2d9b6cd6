"""Result stores: an xarray Dataset written atomically to Zarr, plus a PNG summary.

Layout (dimension names as in every docstring of the package):

* ``object`` (obj_mode, y, x) complex, ``probe`` (probe_mode, py, px) complex;
* ``view_origin`` (frame, axis) float - (row, column) in object pixels of each view's top-left
  corner as used (fractional part = sub-pixel shift); ``position`` (frame, axis) metres, and
  with position correction the refined ``position`` and the measured ``position_initial``;
* ``fourier_error``, ``probe_change``, ``object_change``, ``iteration_seconds`` (iteration),
  each with its ``definition`` in its attrs;
* ``probe_mode_power`` (probe_mode), shares of orthogonalised modes summing to 1;
* coordinates ``y``, ``x`` in metres in the frame of ``position`` (:class:`ObjectFrame`),
  ``py``, ``px`` in metres from the probe centre. Every variable carries CF ``units`` and
  ``long_name``.

Attrs: ``config`` (the resolved config, absolute paths), ``input_path``,
``input_fingerprint``, ``geometry``, ``ptychograph_version``, ``versions`` (libraries),
``backend``, ``workers``, ``wall_seconds`` (when the run said how it ran), ``iterations``,
``final_estimate`` ("average" of the last iterates or the "last" iterate, whichever model
fits the data better) and ``model_error_average`` / ``model_error_last`` (R = sum (sqrt I -
|F P O|)^2 / sum I) when both were compared.

A store is written to a hidden folder beside the target and renamed into place only when
complete, so a failed run never leaves a partial store nor touches an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ptychograph.backend import to_host
from ptychograph.config import Config, resolve_paths
from ptychograph.io.zarr_store import chunk_codecs
from ptychograph.modes import orthogonalise, power_shares
from ptychograph.paths import check_folder, check_replaceable
from ptychograph.problem import Result
from ptychograph.provenance import (
    FINGERPRINT_DEFINITION,
    RunInfo,
    fingerprint,
    library_versions,
)
from ptychograph.scan import Geometry
from ptychograph.version import __version__


def check_output_free(path: Path, overwrite: bool, figure: bool = True) -> None:
    """Refuse early when ``path`` (or its figure) exists and ``overwrite`` is not set, when
    what exists there is not a result (figure) ptychograph wrote, or when its folder cannot
    take it (:mod:`ptychograph.paths`)."""
    check_folder(path, "output.path")
    check_replaceable(path, "result", overwrite, "output.path")
    if figure:
        check_replaceable(figure_path(path), "figure", overwrite, "output.path")


#: CF ``units`` and ``long_name`` of every variable and coordinate of a result store.
VARIABLES: dict[str, tuple[str, str]] = {
    "object": ("1", "object transmission (complex; |O| amplitude, angle(O) phase in rad)"),
    "probe": ("1", "probe modes, orthogonal (complex; |P|^2 in photons per pixel)"),
    "view_origin": ("1", "top-left corner of each view in object pixels (row, column)"),
    "position": ("m", "sample position of each view: the probe centre (y, x)"),
    "position_initial": ("m", "sample position of each view as measured (y, x)"),
    "fourier_error": ("1", "Fourier error of the model before each iteration's update"),
    "probe_change": ("1", "relative probe change in one iteration"),
    "object_change": ("1", "relative object change in one iteration"),
    "iteration_seconds": ("s", "wall time of each iteration"),
    "probe_mode_power": ("1", "share of the total probe power in each orthogonal mode"),
    "y": ("m", "object row coordinate, in the frame of position"),
    "x": ("m", "object column coordinate, in the frame of position"),
    "py": ("m", "probe row coordinate from the probe centre"),
    "px": ("m", "probe column coordinate from the probe centre"),
    "obj_mode": ("1", "object mode index"),
    "probe_mode": ("1", "probe mode index, by decreasing power"),
    "iteration": ("1", "iteration number (1 = first)"),
}
#: How each per-iteration metric is computed (docs/design.md, "Errors and changes").
DEFINITIONS = {
    "fourier_error": "sum_j sum_q (sqrt(I_j) - |F phi_j|)^2 / sum_j sum_q I_j over good "
    "detector pixels q of every view j, phi the model exit waves P O before the update, "
    "|F phi_j|^2 summed over the probe and object modes",
    "probe_change": "||P_new - P_old|| / ||P_new|| over one iteration (Frobenius norm)",
    "object_change": "||O_new - O_old|| / ||O_new|| over one iteration (Frobenius norm)",
}


@dataclass(frozen=True)
class ObjectFrame:
    """The affine map from object pixels to the frame of ``position``: along object axis
    a (0 = rows, 1 = columns), pixel index i has coordinate ``offset[a] + step[a] * i``,
    which is component ``position_axis[a]`` of a position. A view whose top-left corner is at
    pixel o has its probe centre (pixel o + H // 2) at its position exactly (before any
    rounding of ``subpixel: off``); ``step`` is negative along a flipped axis."""

    offset: tuple[float, float]
    step: tuple[float, float]
    position_axis: tuple[int, int]

    def coordinate(self, axis: int, size: int) -> np.ndarray:
        return self.offset[axis] + self.step[axis] * np.arange(size)

    def positions(self, origins: np.ndarray, frame_shape: tuple[int, ...]) -> np.ndarray:
        """(N, 2) positions (metres, (y, x) as stored) of views with corners ``origins``."""
        out = np.empty((origins.shape[0], 2))
        for axis in (0, 1):
            centre = origins[:, axis] + frame_shape[axis] // 2
            out[:, self.position_axis[axis]] = self.offset[axis] + self.step[axis] * centre
        return out


def object_frame(positions: np.ndarray, geometry: Geometry, config: Config) -> ObjectFrame:
    """The :class:`ObjectFrame` of a run, the inverse of :func:`ptychograph.geometry.view_origins`
    with the run's pixel size, margin and ``data`` orientation options."""
    data, margin = config.data, config.reconstruction.object_margin
    axes = (1, 0) if data.swap_xy else (0, 1)
    signs = (-1.0 if data.flip_y else 1.0, -1.0 if data.flip_x else 1.0)
    offset, step = [], []
    for axis in (0, 1):
        pixel = geometry.object_pixel[axis]
        scaled = signs[axis] * np.asarray(positions, dtype=np.float64)[:, axes[axis]] / pixel
        low = float(scaled.min()) if scaled.size else 0.0
        half = geometry.frame_shape[axis] // 2
        step.append(signs[axis] * pixel)
        offset.append(signs[axis] * (low - half - margin) * pixel)
    return ObjectFrame((offset[0], offset[1]), (step[0], step[1]), axes)


def describe_variables(ds: xr.Dataset, frame: ObjectFrame) -> None:
    """CF ``units``/``long_name`` on every variable, definitions on the metrics, the frame."""
    for name in list(ds.variables):
        units, long_name = VARIABLES[str(name)]
        ds[name].attrs.update(units=units, long_name=long_name)
    for name, definition in DEFINITIONS.items():
        ds[name].attrs["definition"] = definition
    for name in ("view_origin", "position", "position_initial"):
        if name in ds:
            ds[name].attrs["axis"] = "axis 0 = row (y), axis 1 = column (x)"
    for axis, name in enumerate(("y", "x")):
        ds[name].attrs["position_axis"] = frame.position_axis[axis]
        ds[name].attrs["frame"] = (
            f"same frame as position[:, {frame.position_axis[axis]}]: the view with corner "
            f"view_origin has its probe centre (pixel view_origin + frame size // 2) at its "
            "position"
        )


def result_dataset(result: Result, run: RunInfo | None = None) -> xr.Dataset:
    """The result as an xarray Dataset (see module docstring); ``run`` adds how it ran."""
    state, history, problem, config = result.state, result.history, result.problem, result.config
    geometry = problem.summary.geometry
    dy, dx = geometry.object_pixel
    probe = to_host(state.probe)
    probe, _ = orthogonalise(probe)
    obj = to_host(state.obj)
    origins = problem.origins if state.origins is None else state.origins
    frame = object_frame(problem.summary.positions, geometry, config)
    data = {
        "object": (("obj_mode", "y", "x"), obj),
        "probe": (("probe_mode", "py", "px"), probe),
        "view_origin": (("frame", "axis"), origins),
        "position": (("frame", "axis"), problem.summary.positions),
        "fourier_error": (("iteration",), np.asarray(history.fourier_error)),
        "probe_change": (("iteration",), np.asarray(history.probe_change)),
        "object_change": (("iteration",), np.asarray(history.object_change)),
        "iteration_seconds": (("iteration",), np.asarray(history.seconds)),
        "probe_mode_power": (("probe_mode",), power_shares(probe)),
    }
    if config.reconstruction.position_correction:
        data["position_initial"] = data["position"]
        data["position"] = (("frame", "axis"), frame.positions(origins, probe.shape[1:]))
    coords = {
        "y": frame.coordinate(0, obj.shape[1]),
        "x": frame.coordinate(1, obj.shape[2]),
        "py": (np.arange(probe.shape[1]) - probe.shape[1] // 2) * dy,
        "px": (np.arange(probe.shape[2]) - probe.shape[2] // 2) * dx,
        "obj_mode": np.arange(obj.shape[0]),
        "probe_mode": np.arange(probe.shape[0]),
        "iteration": np.arange(1, len(history) + 1),
    }
    ds = xr.Dataset(data, coords=coords)
    describe_variables(ds, frame)
    ds.attrs.update(_provenance(result, run))
    return ds


def _provenance(result: Result, run: RunInfo | None) -> dict[str, Any]:
    """The attrs saying what made the store: config, geometry, versions, input, run."""
    config = resolve_paths(result.config, Path.cwd())
    attrs: dict[str, Any] = {
        "config": json.loads(config.model_dump_json()),
        "geometry": result.problem.summary.geometry.as_dict(),
        "ptychograph_version": __version__,
        "versions": library_versions(run.backend if run is not None else "numpy"),
        "iterations": int(result.state.iteration),
        "final_estimate": result.chosen,
        "input_path": str(config.data.path),
        "input_fingerprint_definition": FINGERPRINT_DEFINITION,
    }
    try:
        attrs["input_fingerprint"] = fingerprint(config.data.path)
    except OSError as err:
        attrs["input_fingerprint"] = f"unavailable ({err.strerror or err})"
    if run is not None:
        attrs.update(run.as_attrs())
    for name, value in result.model_error.items():
        attrs[f"model_error_{name}"] = value
    return attrs


def write_result(
    result: Result, path: Path, overwrite: bool = False, run: RunInfo | None = None
) -> None:
    """Write the Dataset to ``path`` (Zarr) and, if configured, ``path`` with .png, atomically.

    run : how the run ran (backend, workers, wall time), recorded in the attrs when given."""
    check_output_free(path, overwrite, result.config.output.figure)
    ds = result_dataset(result, run)
    if not result.config.output.figure:
        write_dataset_atomic(ds, path)
        return
    from ptychograph.plotting import summary_figure

    # the figure is drawn first, so a failure (disk full) leaves neither store nor figure
    figure = figure_path(path)
    draft = path.parent / f".{figure.name}.{uuid.uuid4().hex}.tmp"
    try:
        summary_figure(ds, draft)
        write_dataset_atomic(ds, path)
        os.replace(draft, figure)
    finally:
        draft.unlink(missing_ok=True)


def figure_path(store: Path) -> Path:
    """The PNG summary beside a store: result.zarr -> result.png."""
    return store.with_suffix(".png")


def write_dataset_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write to a hidden temporary store beside ``path``, then swap it into place. Every
    array's chunks carry a CRC-32C (:func:`~ptychograph.io.zarr_store.chunk_codecs`), so a
    damaged result or checkpoint fails to read instead of returning wrong values."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    encoding = {name: {"compressors": chunk_codecs()} for name in ds.variables}
    try:
        ds.to_zarr(tmp, mode="w", consolidated=False, encoding=encoding)
        if path.exists():
            old = path.parent / f".{path.name}.{uuid.uuid4().hex}.old"
            os.replace(path, old)
            os.replace(tmp, path)
            _remove(old)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def open_result(path: Path | str) -> xr.Dataset:
    """Open a result store with xarray (lazily)."""
    return xr.open_zarr(path, consolidated=False)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)

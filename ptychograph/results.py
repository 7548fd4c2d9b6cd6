"""Result stores: an xarray Dataset written atomically to Zarr, plus a PNG summary.

Layout (dimension names as in every docstring of the package):

* ``object`` (obj_mode, y, x) complex, ``probe`` (probe_mode, py, px) complex;
* ``view_origin`` (frame, axis) float - (row, column) in object pixels of each view's top-left
  corner as used (fractional part = sub-pixel shift); ``position`` (frame, axis) metres;
* ``fourier_error``, ``probe_change``, ``object_change``, ``iteration_seconds`` (iteration);
* ``probe_mode_power`` (probe_mode), shares of orthogonalised modes summing to 1;
* coordinates ``y``, ``x``, ``py``, ``px`` in metres; attrs ``config`` (the resolved config),
  ``geometry``, ``ptychograph_version``, ``final_estimate`` ("average" of the last iterates or
  the "last" iterate, whichever model fits the data better) and ``model_error_average`` /
  ``model_error_last`` (R = sum (sqrt I - |F P O|)^2 / sum I) when both were compared.

A store is written to a hidden folder beside the target and renamed into place only when
complete, so a failed run never leaves a partial store nor touches an existing one.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import xarray as xr

from ptychograph.backend import to_host
from ptychograph.errors import InputError
from ptychograph.modes import orthogonalise, power_shares
from ptychograph.problem import Result
from ptychograph.version import __version__


def check_output_free(path: Path, overwrite: bool, figure: bool = True) -> None:
    """Refuse early when ``path`` (or its figure) exists and ``overwrite`` is not set."""
    targets = [path, figure_path(path)] if figure else [path]
    for target in targets:
        if target.exists() and not overwrite:
            raise InputError("output.path", f"{target} exists; pass --overwrite to replace it")
    if not path.parent.exists():
        raise InputError("output.path", f"folder {path.parent} does not exist")


def result_dataset(result: Result) -> xr.Dataset:
    """The result as an xarray Dataset (see module docstring)."""
    state, history, problem = result.state, result.history, result.problem
    geometry = problem.summary.geometry
    dy, dx = geometry.object_pixel
    probe = to_host(state.probe)
    probe, _ = orthogonalise(probe)
    obj = to_host(state.obj)
    iterations = np.arange(1, len(history) + 1)
    origins = problem.origins if state.origins is None else state.origins
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
    coords = {
        "y": np.arange(obj.shape[1]) * dy,
        "x": np.arange(obj.shape[2]) * dx,
        "py": (np.arange(probe.shape[1]) - probe.shape[1] // 2) * dy,
        "px": (np.arange(probe.shape[2]) - probe.shape[2] // 2) * dx,
        "obj_mode": np.arange(obj.shape[0]),
        "probe_mode": np.arange(probe.shape[0]),
        "iteration": iterations,
    }
    ds = xr.Dataset(data, coords=coords)
    for name in ("y", "x", "py", "px"):
        ds[name].attrs["units"] = "m"
    ds["position"].attrs["units"] = "m"
    ds["view_origin"].attrs["units"] = "object pixels"
    for name in ("view_origin", "position"):
        ds[name].attrs["axis"] = "axis 0 = row (y), axis 1 = column (x)"
    ds.attrs["config"] = json.loads(result.config.model_dump_json())
    ds.attrs["geometry"] = geometry.as_dict()
    ds.attrs["ptychograph_version"] = __version__
    ds.attrs["iterations"] = int(state.iteration)
    ds.attrs["final_estimate"] = result.chosen
    for name, value in result.model_error.items():
        ds.attrs[f"model_error_{name}"] = value
    return ds


def write_result(result: Result, path: Path, overwrite: bool = False) -> None:
    """Write the Dataset to ``path`` (Zarr) and, if configured, ``path`` with .png, atomically."""
    check_output_free(path, overwrite, result.config.output.figure)
    ds = result_dataset(result)
    write_dataset_atomic(ds, path)
    if result.config.output.figure:
        from ptychograph.plotting import summary_figure

        summary_figure(ds, figure_path(path))


def figure_path(store: Path) -> Path:
    """The PNG summary beside a store: result.zarr -> result.png."""
    return store.with_suffix(".png")


def write_dataset_atomic(ds: xr.Dataset, path: Path) -> None:
    """Write to a hidden temporary store beside ``path``, then swap it into place."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex}.tmp"
    try:
        ds.to_zarr(tmp, mode="w", consolidated=False)
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

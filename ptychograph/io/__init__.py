"""Readers and writers of measured scans, one module per format, and checks of their frames.

:func:`load_scan` reads any supported input into a :class:`Scan`; with ``data.format: auto``
(:func:`detect_format`) it picks the reader from the file itself:

* a directory that is a ptychograph frames store (chunked Zarr, :mod:`.zarr_store`, written
  by ``ptychograph convert``);
* ``.npz`` / ``.npy``: NumPy arrays with geometry from the YAML (:mod:`.npz`);
* HDF5 with ``/entry_1``: CXI (:mod:`.cxi`); HDF5 without it but with ``diffamp`` (or another
  HXN dataset): NSLS-II HXN (:mod:`.hxn`); any other HDF5 file is read as CXI, which names
  the dataset it misses.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal

import h5py

from ptychograph.config import DataConfig, GeometryConfig
from ptychograph.errors import InputError
from ptychograph.io.cxi import read_cxi, write_cxi
from ptychograph.io.hxn import read_hxn
from ptychograph.io.npz import read_numpy
from ptychograph.io.validate import validate_frames
from ptychograph.io.zarr_store import (
    check_target,
    is_frames_store,
    read_store_info,
    read_store_scan,
    write_frames_store,
)
from ptychograph.paths import clean_leftovers, overlap
from ptychograph.scan import HC_EV_M, Geometry, Scan

__all__ = [
    "apply_geometry",
    "convert_to_store",
    "detect_format",
    "load_scan",
    "read_cxi",
    "read_hxn",
    "read_numpy",
    "read_store_info",
    "read_store_scan",
    "validate_frames",
    "write_cxi",
    "write_frames_store",
]

Format = Literal["cxi", "hxn", "npz", "zarr"]
#: Suffixes read as CXI even when the file lacks the HDF5 signature (to report it unreadable).
HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5")
NUMPY_SUFFIXES = (".npz", ".npy")
#: Top-level datasets that mark an HDF5 file without ``/entry_1`` as HXN's.
HXN_NAMES = ("diffamp", "points", "lambda_nm", "z_m", "ccd_pixel_um")


def load_scan(path: str | os.PathLike[str], data: DataConfig | None = None) -> Scan:
    """Read the scan in ``path`` with the reader for its format.

    ``path`` is a CXI or HXN HDF5 file, a NumPy ``.npz`` or a frames store directory (all its
    frames are read into memory). ``data`` supplies ``format`` (default auto), the geometry
    (required for NumPy inputs; for the other formats its values replace the file's) and
    ``positions_unit`` for NumPy inputs. Returns a :class:`Scan`: frames (N, H, W) float32,
    positions (N, 2) (y, x) metres. Raises InputError("data.path", ...) when the file is
    missing, unreadable or of an unknown format, and InputError naming the dataset when its
    content is wrong.
    """
    overrides = data.geometry if data is not None else GeometryConfig()
    kind = detect_format(path, data.format if data is not None else "auto")
    if kind == "hxn":
        return read_hxn(path, overrides)
    if kind == "npz":
        return read_numpy(path, overrides, data.positions_unit if data is not None else "m")
    scan = read_store_scan(path) if kind == "zarr" else read_cxi(path)
    return dataclasses.replace(scan, geometry=apply_geometry(scan.geometry, overrides))


def detect_format(
    path: str | os.PathLike[str], requested: Literal["auto", "cxi", "hxn", "npz", "zarr"] = "auto"
) -> Format:
    """The reader for ``path``: ``requested`` unless "auto", else found from the file.

    Raises InputError("data.path", ...) when ``path`` is missing, not a file (nor a frames
    store), cannot be opened, or has an unknown format.
    """
    file = Path(path)
    if not file.exists():
        raise InputError("data.path", f"{file} does not exist")
    if requested == "zarr" and not is_frames_store(file):
        raise InputError("data.path", f"{file} is not a Zarr frames store (data.format: zarr)")
    if requested != "auto":
        return requested
    if is_frames_store(file):
        return "zarr"
    if not file.is_file():
        raise InputError("data.path", f"{file} is not a file (nor a Zarr frames store)")
    if file.suffix.lower() in NUMPY_SUFFIXES:
        return "npz"
    try:
        is_hdf5 = h5py.is_hdf5(file)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        raise InputError("data.path", f"{file} cannot be opened ({reason})") from exc
    if is_hdf5:
        return _hdf5_flavour(file)
    if file.suffix.lower() in HDF5_SUFFIXES:
        return "cxi"  # read_cxi reports it unreadable
    known = ", ".join((*HDF5_SUFFIXES, ".npz", "a frames .zarr directory"))
    raise InputError(
        "data.path",
        f"{file} has an unknown format (expected an HDF5/CXI/HXN file or NumPy archive: {known})",
    )


def apply_geometry(geometry: Geometry, overrides: GeometryConfig | None) -> Geometry:
    """``geometry`` with the values given in ``overrides`` (``data.geometry``) replaced.

    energy_ev -> wavelength; distance_m; detector_pixel_m -> both (y, x) pixel sizes.
    """
    if overrides is None:
        return geometry
    pixel = overrides.detector_pixel_m
    return Geometry(
        wavelength=(
            geometry.wavelength if overrides.energy_ev is None else HC_EV_M / overrides.energy_ev
        ),
        distance=geometry.distance if overrides.distance_m is None else overrides.distance_m,
        detector_pixel=geometry.detector_pixel if pixel is None else (pixel, pixel),
        frame_shape=geometry.frame_shape,
    )


def _hdf5_flavour(file: Path) -> Format:
    """The reader of an HDF5 file: CXI with ``/entry_1``; HXN without it but with any HXN
    dataset (``diffamp``, ``points``, ``lambda_nm``, ...); otherwise CXI, which names what
    it misses."""
    try:
        with h5py.File(file, "r") as handle:
            is_hxn = "entry_1" not in handle and any(name in handle for name in HXN_NAMES)
    except OSError:
        return "cxi"  # read_cxi reports it unreadable
    return "hxn" if is_hxn else "cxi"


def check_convert_paths(source: Path, target: Path, overwrite: bool) -> None:
    """Refuse a target without the ``.zarr`` suffix, a target that is (or holds, or lies
    inside) the source, and an existing target that is not a frames store ptychograph wrote."""
    if target.suffix.lower() != ".zarr":
        raise InputError("output", f"a frames store must end in .zarr, got {target.name!r}")
    if overlap(source, target):
        raise InputError("output", f"{target} overlaps the input {source}; choose another path")
    check_target(target, overwrite)
    clean_leftovers([target], {target: "frames"}, "output")


def convert_to_store(
    source: str | os.PathLike[str],
    target: str | os.PathLike[str],
    chunk_frames: int | None = None,
    overwrite: bool = False,
    nonfinite: Literal["error", "drop"] = "error",
    negative: Literal["error", "clip"] = "error",
    data: DataConfig | None = None,
) -> list[str]:
    """Read ``source`` (CXI, HXN, NumPy ``.npz`` or a frames store: :func:`load_scan`), check
    its frames (:func:`validate_frames`), write a frames store.

    ``data`` gives the format, geometry and position unit to read ``source`` with (required
    for NumPy inputs, which carry no geometry). Returns the validation notes (dropped or
    clipped frames). Nothing is written when the source or its frames are refused.
    """
    check_convert_paths(Path(source), Path(target), overwrite)
    scan, notes = validate_frames(load_scan(source, data), nonfinite=nonfinite, negative=negative)
    write_frames_store(scan, target, chunk_frames=chunk_frames, overwrite=overwrite)
    return notes

"""Readers and writers of measured scans, one module per format, and checks of their frames.

:func:`load_scan` picks the reader from the file itself (the HDF5 signature) or its suffix:
CXI files (:mod:`ptychograph.io.cxi`), and directories that are ptychograph frames stores
(chunked Zarr, :mod:`ptychograph.io.zarr_store`, written by ``ptychograph convert``).
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from ptychograph.errors import InputError
from ptychograph.io.cxi import read_cxi, write_cxi
from ptychograph.io.validate import validate_frames
from ptychograph.io.zarr_store import (
    convert_to_store,
    is_frames_store,
    read_store_info,
    read_store_scan,
    write_frames_store,
)
from ptychograph.scan import Scan

__all__ = [
    "convert_to_store",
    "load_scan",
    "read_cxi",
    "read_store_info",
    "read_store_scan",
    "validate_frames",
    "write_cxi",
    "write_frames_store",
]

#: Suffixes read as CXI even when the file lacks the HDF5 signature (to report it unreadable).
HDF5_SUFFIXES = (".cxi", ".h5", ".hdf5")


def load_scan(path: str | os.PathLike[str]) -> Scan:
    """Read the scan in ``path`` with the reader for its format.

    ``path`` is a CXI file or a frames store directory (all its frames are read into memory).
    Returns a :class:`Scan`: frames (N, H, W) float32, positions (N, 2) (y, x) metres.
    Raises InputError("data.path", ...) when the file is missing, unreadable or of an unknown
    format, and InputError naming the dataset when its content is wrong.
    """
    file = Path(path)
    if not file.exists():
        raise InputError("data.path", f"{file} does not exist")
    if is_frames_store(file):
        return read_store_scan(file)
    if not file.is_file():
        raise InputError("data.path", f"{file} is not a file (nor a Zarr frames store)")
    try:
        is_hdf5 = h5py.is_hdf5(file)
    except OSError as exc:
        reason = " ".join(str(exc).split())
        raise InputError("data.path", f"{file} cannot be opened ({reason})") from exc
    if is_hdf5 or file.suffix.lower() in HDF5_SUFFIXES:
        return read_cxi(file)
    raise InputError(
        "data.path",
        f"{file} has an unknown format (expected an HDF5/CXI file: {', '.join(HDF5_SUFFIXES)})",
    )

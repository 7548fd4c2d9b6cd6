"""``ptychograph info FILE``: what a scan file holds, and what reconstructing it will need.

:func:`describe` reads any input :func:`ptychograph.io.load_scan` reads and summarises it in
a few lines: the frames and their counts, mask and illumination, the extent of the positions,
the geometry with the object pixel size, the object's size in pixels, and the memory one
worker needs (:func:`ptychograph.memory.estimate`) for a number of workers and modes. A frames
store is streamed chunk by chunk, so describing a large store does not load its frames.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from ptychograph.config import DataConfig, GeometryConfig, ReconstructionConfig
from ptychograph.errors import InputError
from ptychograph.io import apply_geometry, detect_format, load_scan
from ptychograph.io.cxi import DATA_PATHS
from ptychograph.io.npz import FRAME_KEYS
from ptychograph.io.zarr_store import chunk_ranges, read_frames, read_store_info
from ptychograph.memory import estimate
from ptychograph.problem import layout
from ptychograph.progress import plural
from ptychograph.scan import Geometry

FORMAT_NAMES = {
    "cxi": "CXI (HDF5)",
    "hxn": "NSLS-II HXN (HDF5)",
    "npz": "NumPy .npz",
    "zarr": "ptychograph frames store (Zarr)",
}


@dataclass(frozen=True)
class Contents:
    """What a scan file holds, frames summarised.

    frame_sums : (N,) float64 counts per frame. positions : (N, 2) (y, x) metres.
    mask_pixels : bad pixels, or None without a mask. probe_modes : illumination modes, or
    None without one. stored_dtype : the frames' dtype in the file. chunk_frames : frames
    per chunk of a frames store, else None. live : a store written live: how far it has got.
    """

    kind: str
    frame_shape: tuple[int, int]
    frame_sums: np.ndarray
    positions: np.ndarray
    geometry: Geometry
    mask_pixels: int | None
    probe_modes: int | None
    stored_dtype: str
    chunk_frames: int | None = None
    live: str | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frame_sums.shape[0])


def describe(
    path: str | os.PathLike[str],
    data: DataConfig | None = None,
    n_workers: int = 1,
    probe_modes: int = 1,
    object_modes: int = 1,
    precision: str = "single",
) -> str:
    """A multi-line, human-readable summary of the scan in ``path`` (no trailing newline).

    data : format, geometry and position unit to read it with (as for a run). The memory
    estimate splits the N views evenly over ``n_workers`` with ``probe_modes`` x
    ``object_modes`` modes in ``precision`` ("single" or "double"). Raises InputError for
    an unreadable file or bad arguments.
    """
    _check_arguments(n_workers, probe_modes, object_modes, precision)
    contents = read_contents(path, data)
    geometry = contents.geometry
    pixel_y, pixel_x = geometry.object_pixel
    extent = np.ptp(contents.positions, axis=0)
    lines = [
        f"{Path(path).name}: {FORMAT_NAMES[contents.kind]}"
        + (f", written live: {contents.live}" if contents.live else ""),
        f"frames: {contents.n_frames} x {contents.frame_shape[0]} x {contents.frame_shape[1]} "
        f"(N x H x W), stored as {contents.stored_dtype}"
        + (f", chunks of {contents.chunk_frames} frames" if contents.chunk_frames else ""),
        _counts_line(contents.frame_sums),
        _mask_line(contents.mask_pixels, contents.frame_shape),
        _probe_line(contents.probe_modes),
        f"positions: extent y {_metres(extent[0])} x {_metres(extent[1])} = "
        f"{extent[0] / pixel_y:.1f} x {extent[1] / pixel_x:.1f} object pixels",
        f"geometry: energy {geometry.energy_ev:.1f} eV, wavelength "
        f"{geometry.wavelength * 1e9:.4g} nm, distance {geometry.distance:.4g} m, detector pixel "
        f"{_metres(geometry.detector_pixel[0])} x {_metres(geometry.detector_pixel[1])} (y x)",
        f"object pixel: {_metres(pixel_y)} x {_metres(pixel_x)} (y x)",
    ]
    lines += _object_and_memory(contents, data, n_workers, probe_modes, object_modes, precision)
    return "\n".join(lines)


def read_contents(path: str | os.PathLike[str], data: DataConfig | None = None) -> Contents:
    """Read ``path`` into :class:`Contents`; a frames store is streamed chunk by chunk."""
    kind = detect_format(path, data.format if data is not None else "auto")
    if kind == "zarr":
        return _store_contents(path, data.geometry if data is not None else None)
    scan = load_scan(path, data)
    return Contents(
        kind=kind,
        frame_shape=scan.geometry.frame_shape,
        frame_sums=_frame_sums(scan.frames),
        positions=scan.positions,
        geometry=scan.geometry,
        mask_pixels=None if scan.mask is None else int(np.count_nonzero(scan.mask)),
        probe_modes=None if scan.illumination is None else int(scan.illumination.shape[0]),
        stored_dtype=_stored_dtype(Path(path), kind),
    )


def _store_contents(path: str | os.PathLike[str], overrides: GeometryConfig | None) -> Contents:
    """A frames store's contents, frames read one chunk at a time."""
    info = read_store_info(path)
    sums = [
        _frame_sums(read_frames(info.path, start, stop))
        for start, stop in chunk_ranges(info.n_frames, info.chunk_frames)
    ]
    return Contents(
        kind="zarr",
        frame_shape=info.frame_shape,
        frame_sums=np.concatenate(sums),
        positions=info.positions,
        geometry=apply_geometry(info.geometry, overrides),
        mask_pixels=None if info.mask is None else int(np.count_nonzero(info.mask)),
        probe_modes=None if info.illumination is None else int(info.illumination.shape[0]),
        stored_dtype="float32",
        chunk_frames=info.chunk_frames,
        live=None if info.live is None else info.live.describe(),
    )


def _check_arguments(n_workers: int, probe_modes: int, object_modes: int, precision: str) -> None:
    for name, value in (
        ("workers", n_workers),
        ("probe_modes", probe_modes),
        ("object_modes", object_modes),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(name, f"must be a whole number >= 1, got {value!r}")
    if precision not in ("single", "double"):
        raise InputError("precision", f"must be 'single' or 'double', got {precision!r}")


def _frame_sums(frames: np.ndarray) -> np.ndarray:
    """(N,) float64 sum of each frame (N, H, W)."""
    return np.asarray(frames.sum(axis=(1, 2), dtype=np.float64))


def _counts_line(sums: np.ndarray) -> str:
    finite = sums[np.isfinite(sums)]
    bad = sums.size - finite.size
    note = f" ({bad} frame(s) with NaN/Inf left out)" if bad else ""
    if finite.size == 0:
        return f"counts per frame: no finite frame{note}"
    return (
        f"counts per frame: mean {finite.mean():.4g}, min {finite.min():.4g}, "
        f"max {finite.max():.4g}{note}"
    )


def _mask_line(mask_pixels: int | None, frame_shape: tuple[int, int]) -> str:
    if mask_pixels is None:
        return "mask: none"
    return f"mask: {mask_pixels} bad pixel(s) of {frame_shape[0] * frame_shape[1]}"


def _probe_line(modes: int | None) -> str:
    if modes is None:
        return "illumination: none in the file (the initial probe comes from the data)"
    return f"illumination: {modes} mode(s) in the file"


def _object_and_memory(
    contents: Contents,
    data: DataConfig | None,
    n_workers: int,
    probe_modes: int,
    object_modes: int,
    precision: str,
) -> list[str]:
    """The object size (default margin) and the memory estimate per worker."""
    rec = ReconstructionConfig()
    try:
        shape = layout(contents.positions, contents.geometry, rec, data).obj_shape
    except InputError as exc:
        return [f"object: {exc.problem}", "memory per worker: unknown (object too large)"]
    views = math.ceil(contents.n_frames / n_workers)
    need = estimate(
        views, contents.frame_shape, shape, probe_modes, object_modes, precision, rec.batch_size
    )
    workers = plural(n_workers, "worker")
    modes = f"{probe_modes} probe x {object_modes} object mode(s)"
    return [
        f"object: {shape[0]} x {shape[1]} pixels (margin {rec.object_margin})",
        f"memory per worker ({workers}, {views} views per worker, {modes}, {precision}): "
        f"{need.describe()} [{need.total / 2**20:.1f} MiB]",
    ]


def _metres(value: float) -> str:
    """A length with a readable unit: 1.5e-9 -> '1.5 nm'."""
    for unit, scale in (("m", 1.0), ("mm", 1e-3), ("um", 1e-6), ("nm", 1e-9), ("pm", 1e-12)):
        if abs(value) >= scale:
            return f"{value / scale:.4g} {unit}"
    return f"{value:.4g} m"


def _stored_dtype(path: Path, kind: str) -> str:
    """The frames' dtype as the file stores them ('unknown' when it cannot be told cheaply)."""
    try:
        if kind == "npz":
            return _npz_dtype(path)
        names = ("diffamp",) if kind == "hxn" else DATA_PATHS
        with h5py.File(path, "r") as file:
            for name in names:
                node = file.get(name)
                if isinstance(node, h5py.Dataset):
                    amplitudes = " amplitudes" if kind == "hxn" else ""
                    return f"{node.dtype}{amplitudes}"
    except (OSError, KeyError, ValueError):
        pass
    return "unknown"


def _npz_dtype(path: Path) -> str:
    """Dtype of the frames member of an .npz, from its .npy header (nothing else read)."""
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
        for key in FRAME_KEYS:
            if f"{key}.npy" not in names:
                continue
            with archive.open(f"{key}.npy") as member:
                version = np.lib.format.read_magic(member)
                if version == (1, 0):
                    header = np.lib.format.read_array_header_1_0(member)
                else:
                    header = np.lib.format.read_array_header_2_0(member)
                return str(header[2])
    return "unknown"

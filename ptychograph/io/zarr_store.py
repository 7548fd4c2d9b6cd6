"""Frames stores: a scan as a chunked Zarr group, read chunk by chunk by Dask workers.

``ptychograph convert IN OUT.zarr`` (IN: CXI, HXN or NumPy) writes one (:func:`convert_to_store`):

* ``frames`` (frame, py, px) float32, chunked (chunk_frames, H, W), Blosc/Zstd, CRC-32C;
* ``positions`` (frame, axis) float64 (y, x) metres;
* ``mask`` (py, px) bool, True at bad pixels, and ``illumination`` (probe_mode, py, px)
  complex64, both optional;
* root attributes ``format``, ``format_version``, ``geometry`` and ``ptychograph_version``.

A run then needs no source file: :func:`read_store_info` reads everything but the frames, and
each worker calls :func:`read_frames` for its own range, opening the store itself.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.codecs
import zarr.errors

from ptychograph.errors import InputError
from ptychograph.io.cxi import _check_unique
from ptychograph.io.live_mark import LiveMark, read_mark, usable_frames
from ptychograph.paths import check_folder, check_regular_files, check_replaceable, remove
from ptychograph.scan import Geometry, Scan
from ptychograph.version import __version__

FORMAT = "ptychograph-frames"
FORMAT_VERSION = 1
#: Default bytes per frames chunk: large enough to amortise a read, small enough for a worker.
TARGET_CHUNK_BYTES = 32 * 2**20
#: Files that mark a directory as a Zarr store (v3, and v2 group/array).
ZARR_MARKERS = ("zarr.json", ".zgroup", ".zarray")
#: numpy dtype kinds accepted for real-valued and for possibly complex arrays.
REAL_KINDS = "biuf"
NUMERIC_KINDS = "biufc"


def chunk_codecs() -> tuple[zarr.codecs.BloscCodec, zarr.codecs.Crc32cCodec]:
    """Blosc/Zstd with bit-shuffle (good on float32 counts), then a CRC-32C per chunk: Blosc
    may decode a truncated chunk from whatever memory follows; the checksum refuses it."""
    blosc = zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle")
    return blosc, zarr.codecs.Crc32cCodec()


@dataclass(frozen=True)
class StoreInfo:
    """Everything in a frames store but the frames: path, n_frames N, frame_shape (H, W),
    chunk_frames (frames per chunk), positions (N, 2) float64 (y, x) metres, geometry, mask
    (H, W) bool (True = bad) or None, illumination (M, H, W) complex64 or None."""

    path: Path
    n_frames: int
    frame_shape: tuple[int, int]
    chunk_frames: int
    positions: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None = None
    illumination: np.ndarray | None = None
    live: LiveMark | None = None  # how far a store written live has got; None: convert's


def default_chunk_frames(
    frame_shape: tuple[int, int], itemsize: int = 4, target_bytes: int = TARGET_CHUNK_BYTES
) -> int:
    """Frames per chunk so a chunk of (n, H, W) ``itemsize``-byte pixels is about
    ``target_bytes`` (32 MiB by default: 128 frames of 256 x 256 float32); at least 1."""
    frame_bytes = max(1, int(frame_shape[0]) * int(frame_shape[1]) * int(itemsize))
    return max(1, int(target_bytes) // frame_bytes)


def chunk_ranges(n_frames: int, chunk_frames: int) -> list[tuple[int, int]]:
    """The store's chunk boundaries as [(start, stop), ...] covering frames 0..n_frames."""
    if chunk_frames < 1:
        raise ValueError(f"chunk_frames must be >= 1, got {chunk_frames}")
    return [
        (start, min(start + chunk_frames, n_frames)) for start in range(0, n_frames, chunk_frames)
    ]


def is_frames_store(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a directory that looks like a Zarr store (checked fully on read)."""
    folder = Path(path)
    return folder.is_dir() and any((folder / marker).is_file() for marker in ZARR_MARKERS)


def write_frames_store(
    scan: Scan,
    path: str | os.PathLike[str],
    chunk_frames: int | None = None,
    overwrite: bool = False,
) -> None:
    """Write ``scan`` as a frames store at ``path``, atomically.

    frames (N, H, W) float32 in chunks of (chunk_frames, H, W), default from
    :func:`default_chunk_frames`; written chunk by chunk into a hidden directory beside
    ``path`` that replaces ``path`` only once complete. On failure ``path`` is untouched.
    """
    target = Path(path)
    check_target(target, overwrite)
    if chunk_frames is None:
        chunk_frames = default_chunk_frames(scan.geometry.frame_shape)
    whole = isinstance(chunk_frames, int | np.integer) and not isinstance(chunk_frames, bool)
    if not whole or chunk_frames < 1:
        raise InputError("chunk_frames", f"must be a whole number >= 1, got {chunk_frames!r}")
    tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
    try:
        _write_group(scan, tmp, int(chunk_frames))
        _swap_into_place(tmp, target)
    except OSError as err:  # disk full, permissions: one line, the target untouched
        raise InputError("output", f"could not write {target} ({err.strerror or err})") from None
    finally:
        if tmp.exists():
            remove(tmp)


def check_target(target: Path, overwrite: bool) -> None:
    """Refuse a folder that cannot take the store, an existing target without ``overwrite``,
    and anything at ``target`` not a frames store ptychograph wrote (:mod:`ptychograph.paths`)."""
    check_folder(target, "output")
    check_replaceable(target, "frames", overwrite, "output")


def _write_group(scan: Scan, folder: Path, chunk_frames: int) -> None:
    """Create the store in ``folder``: arrays, then frames chunk by chunk, attributes last."""
    n_frames, height, width = scan.frames.shape
    group = zarr.open_group(folder, mode="w-", zarr_format=3)
    frames = group.create_array(
        "frames",
        shape=(n_frames, height, width),
        chunks=(max(1, min(chunk_frames, n_frames)), height, width),
        dtype="float32",
        compressors=chunk_codecs(),
        dimension_names=("frame", "py", "px"),
        fill_value=np.nan,  # a missing chunk reads as NaN (refused), not as empty frames
    )
    for start, stop in chunk_ranges(n_frames, frames.chunks[0]):
        frames[start:stop] = np.asarray(scan.frames[start:stop], dtype=np.float32)
    extras: dict[str, tuple[np.ndarray, tuple[str, ...]]] = {
        "positions": (np.asarray(scan.positions, dtype=np.float64), ("frame", "axis"))
    }
    if scan.mask is not None:
        extras["mask"] = (np.asarray(scan.mask, dtype=bool), ("py", "px"))
    if scan.illumination is not None:
        probe = np.asarray(scan.illumination, dtype=np.complex64).reshape(-1, height, width)
        extras["illumination"] = (probe, ("probe_mode", "py", "px"))
    for name, (data, dims) in extras.items():
        group.create_array(name, data=data, compressors=chunk_codecs(), dimension_names=dims)
    group.attrs.update(_root_attrs(scan.geometry))


def _root_attrs(geometry: Geometry) -> dict[str, Any]:
    """Format marker, version and geometry (JSON floats round-trip exactly)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "geometry": {
            "wavelength_m": float(geometry.wavelength),
            "distance_m": float(geometry.distance),
            "detector_pixel_m": [float(size) for size in geometry.detector_pixel],
            "frame_shape": [int(size) for size in geometry.frame_shape],
        },
        "ptychograph_version": __version__,
    }


def _swap_into_place(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing target is moved aside and restored on error."""
    if not (target.exists() or target.is_symlink()):
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    remove(old)


def read_store_info(path: str | os.PathLike[str]) -> StoreInfo:
    """Open and check the frames store at ``path``; read all of it but the frames.

    Raises InputError("data.path", "<path>: <problem>") when it is not a readable frames store.
    """
    store = Path(path)
    with _damaged(store, "the store"):
        group = _open_group(store)
        check_regular_files(store, "data.path")
        live = read_mark(store)  # before the arrays, which grow before the mark counts frames
        frames = _array(group, store, "frames", (3,), "(N, H, W)")
        stored, height, width = (int(size) for size in frames.shape)
        n_frames = usable_frames(store, live, stored)
        if min(n_frames, height, width, *frames.chunks) < 1:
            problem = f"frames have shape {frames.shape} in chunks of {frames.chunks}"
            raise _store_error(store, f"{problem}, expected sizes >= 1")
        positions = _read_positions(group, store, n_frames, live is not None)
        geometry = _read_geometry(group.attrs.asdict(), store, (height, width))
        return StoreInfo(
            path=store,
            n_frames=n_frames,
            frame_shape=(height, width),
            chunk_frames=int(frames.chunks[0]),
            positions=positions,
            geometry=geometry,
            mask=_read_optional(group, store, "mask", (height, width)),
            illumination=_read_optional(group, store, "illumination", (height, width)),
            live=live,
        )


@contextmanager
def _damaged(store: Path, what: str) -> Iterator[None]:
    """Any error of zarr or its codecs while reading ``what`` -> one InputError line."""
    try:
        yield
    except InputError:
        raise
    except (ValueError, RuntimeError, OSError, ArithmeticError, TypeError, KeyError) as err:
        raise _store_error(store, f"{what} cannot be read, damaged? ({_first_line(err)})") from None


def read_frames(path: str | os.PathLike[str], start: int, stop: int) -> np.ndarray:
    """Frames ``start:stop`` of the store at ``path``: (stop - start, H, W) float32.

    Opens the store afresh on every call, so a Dask worker in another process can call it
    with nothing but the path; reads only the chunks that overlap the range.
    """
    store = Path(path)
    with _damaged(store, f"frames {start}:{stop}"):
        live = read_mark(store)  # before the array's shape, as in read_store_info
        array = zarr.open_array(store, path="frames", mode="r")
        n_frames = usable_frames(store, live, int(array.shape[0]))
        if not 0 <= start <= stop <= n_frames:
            raise _store_error(store, f"frame range {start}:{stop} outside 0:{n_frames}")
        return np.asarray(array[start:stop], dtype=np.float32)


def read_store_scan(path: str | os.PathLike[str]) -> Scan:
    """The whole store as a :class:`Scan` (all frames (N, H, W) float32 in memory)."""
    info = read_store_info(path)
    return Scan(
        frames=read_frames(info.path, 0, info.n_frames),
        positions=info.positions,
        geometry=info.geometry,
        mask=info.mask,
        illumination=info.illumination,
    )


def _store_error(store: Path, problem: str) -> InputError:
    return InputError("data.path", f"{store}: {problem}")


def _open_group(store: Path) -> zarr.Group:
    """The root group, checked to carry this format's marker and a version this code reads."""
    if not store.exists():
        raise _store_error(store, "does not exist")
    try:
        group = zarr.open_group(store, mode="r", use_consolidated=False)
    except (OSError, ValueError, zarr.errors.BaseZarrError) as exc:
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise _store_error(store, f"is not a Zarr store ({reason})") from exc
    attrs = group.attrs.asdict()
    if attrs.get("format") != FORMAT:
        problem = f"format attribute is {attrs.get('format')!r}, expected {FORMAT!r}"
        raise _store_error(store, f"is not a ptychograph frames store ({problem})")
    version = attrs.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise _store_error(store, f"format_version is {version!r}, expected an integer >= 1")
    if version > FORMAT_VERSION:
        problem = f"has format_version {version}; this ptychograph reads up to {FORMAT_VERSION}"
        raise _store_error(store, f"{problem} (upgrade ptychograph)")
    return group


def _array(
    group: zarr.Group,
    store: Path,
    name: str,
    ranks: tuple[int, ...],
    expected: str,
    kinds: str = REAL_KINDS,
) -> zarr.Array:
    """The array ``name``, refused when missing, not an array, of the wrong kind or rank."""
    try:
        if name not in group:
            raise _store_error(store, f"missing array {name!r}")
        node = group[name]
    except (ValueError, OSError, zarr.errors.BaseZarrError) as err:
        raise _store_error(store, f"{name!r} metadata is unreadable ({_first_line(err)})") from None
    if not isinstance(node, zarr.Array):
        raise _store_error(store, f"{name!r} is a group, expected an array {expected}")
    if np.dtype(node.dtype).kind not in kinds:
        raise _store_error(store, f"{name!r} has dtype {node.dtype}, expected numbers")
    if len(node.shape) not in ranks:
        raise _store_error(store, f"{name!r} has shape {node.shape}, expected {expected}")
    return node


def _read_positions(group: zarr.Group, store: Path, n_frames: int, live: bool) -> np.ndarray:
    """Positions (N, 2) float64 (y, x) metres: one finite pair per (published) frame."""
    array = _array(group, store, "positions", (2,), "(N, 2) (y, x) in metres")
    if array.shape[1] != 2:
        raise _store_error(store, f"'positions' has shape {array.shape}, expected (N, 2)")
    if array.shape[0] < n_frames or (array.shape[0] > n_frames and not live):
        problem = f"'positions' has {array.shape[0]} rows but 'frames' has {n_frames} frames"
        raise _store_error(store, problem)
    positions = np.asarray(array[:n_frames], dtype=np.float64)
    if not np.isfinite(positions).all():
        raise _store_error(store, "'positions' contains NaN or Inf")
    try:
        _check_unique(positions, "positions")
    except InputError as err:
        raise _store_error(store, f"'positions' {err.problem}") from None
    return positions


def _read_optional(
    group: zarr.Group, store: Path, name: str, frame_shape: tuple[int, int]
) -> np.ndarray | None:
    """``mask`` (H, W) -> bool, or ``illumination`` (M, H, W) -> finite complex64; or None."""
    try:
        present = name in group
    except (ValueError, OSError, zarr.errors.BaseZarrError) as err:
        raise _store_error(store, f"{name!r} metadata is unreadable ({_first_line(err)})") from None
    if not present:
        return None
    if name == "mask":
        array = _array(group, store, name, (2,), f"(H, W) = {frame_shape}")
        if tuple(array.shape) != frame_shape:
            raise _store_error(store, f"'mask' has shape {array.shape}, expected {frame_shape}")
        return np.asarray(array[...]) != 0
    expected = f"(M, H, W) with (H, W) = {frame_shape}"
    array = _array(group, store, name, (3,), expected, NUMERIC_KINDS)
    if tuple(array.shape[1:]) != frame_shape or array.shape[0] == 0:
        problem = f"has shape {array.shape}, expected (M, H, W) with (H, W) = {frame_shape}"
        raise _store_error(store, f"'illumination' {problem}")
    probe = np.asarray(array[...]).astype(np.complex64)
    if not np.isfinite(probe).all():
        raise _store_error(store, "'illumination' contains NaN or Inf")
    return probe


def _read_geometry(attrs: dict[str, Any], store: Path, frame_shape: tuple[int, int]) -> Geometry:
    """The ``geometry`` attribute: positive finite lengths, frame_shape equal to the frames'."""
    raw: Any = attrs.get("geometry")
    try:
        wavelength = float(raw["wavelength_m"])
        distance = float(raw["distance_m"])
        pixel_y, pixel_x = (float(size) for size in raw["detector_pixel_m"])
        shape = tuple(int(size) for size in raw["frame_shape"])
    except (KeyError, TypeError, ValueError) as exc:
        problem = "wavelength_m, distance_m, detector_pixel_m [y, x] and frame_shape [H, W]"
        raise _store_error(store, f"geometry attribute {raw!r} lacks {problem}") from exc
    lengths = {"wavelength_m": wavelength, "distance_m": distance}
    lengths |= {"detector_pixel_m[0]": pixel_y, "detector_pixel_m[1]": pixel_x}
    for name, value in lengths.items():
        if not (math.isfinite(value) and value > 0):
            raise _store_error(store, f"geometry {name} must be positive and finite, got {value}")
    if shape != frame_shape:
        raise _store_error(store, f"geometry frame_shape {list(shape)} != frames {frame_shape}")
    return Geometry(wavelength, distance, (pixel_y, pixel_x), frame_shape)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__

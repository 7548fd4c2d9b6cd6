"""Broken Zarr frames stores: the good scan written by ``write_frames_store``, then corrupted.

Corruptions go through zarr (arrays replaced or deleted, root attributes edited) or straight
into the ``zarr.json`` files. Problems with a store are reported as ``data.path: STORE: ...``
naming the array or attribute; checks made after reading name ``frames`` or ``positions``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ptychograph.io.zarr_store import write_frames_store
from ptychograph.scan import Scan

from .case import FRAME_SIDE, N_FRAMES, STORE_NAME, Case, GoodScan, Make, base_config, write_config

#: Frames per chunk of the case stores (30 frames -> four chunks).
CHUNK_FRAMES = 8

Corrupt = Callable[[Path, Scan], None]


def store(corrupt: Corrupt | None = None, change: Callable[[Scan], Scan] | None = None) -> Make:
    """Write the good scan (after ``change``) as ``frames.zarr``, then ``corrupt(path, scan)``."""

    def make(folder: Path, good: GoodScan) -> Path:
        path = folder / STORE_NAME
        scan = good.scan if change is None else change(good.scan)
        write_frames_store(scan, path, chunk_frames=CHUNK_FRAMES)
        if corrupt is not None:
            corrupt(path, good.scan)
        return write_config(folder, base_config(STORE_NAME))

    return make


# --- corruptions through zarr -------------------------------------------------------------


def delete(name: str) -> Corrupt:
    def corrupt(path: Path, scan: Scan) -> None:
        shutil.rmtree(path / name)

    return corrupt


def replace(name: str, value: Callable[[Scan], np.ndarray]) -> Corrupt:
    """Replace array ``name`` by ``value(scan)`` (default chunking and codecs)."""

    def corrupt(path: Path, scan: Scan) -> None:
        group = zarr.open_group(path, mode="r+")
        group.create_array(name, data=value(scan), overwrite=True)

    return corrupt


def attrs(**changes: Any) -> Corrupt:
    def corrupt(path: Path, scan: Scan) -> None:
        zarr.open_group(path, mode="r+").attrs.update(changes)

    return corrupt


def geometry(**changes: Any) -> Corrupt:
    """Edit the ``geometry`` root attribute; a value of None deletes that key."""

    def corrupt(path: Path, scan: Scan) -> None:
        group = zarr.open_group(path, mode="r+")
        old: dict[str, Any] = group.attrs.asdict()["geometry"]  # type: ignore[assignment]
        geo = {**old, **changes}
        group.attrs["geometry"] = {key: value for key, value in geo.items() if value is not None}

    return corrupt


# --- corruptions of the metadata files ----------------------------------------------------


def truncate_json(name: str) -> Corrupt:
    """Cut ``name`` (a zarr.json) in half, as an interrupted copy would."""

    def corrupt(path: Path, scan: Scan) -> None:
        text = (path / name).read_text()
        (path / name).write_text(text[: len(text) // 2])

    return corrupt


def overwrite_json(name: str, text: str) -> Corrupt:
    def corrupt(path: Path, scan: Scan) -> None:
        (path / name).write_text(text)

    return corrupt


# --- damaged chunk files (issue 11, item 11) -----------------------------------------------

#: The chunk file of frames 16..23 (the third chunk), of the positions and of the illumination.
FRAMES_CHUNK = "frames/c/2/0/0"
POSITIONS_CHUNK = "positions/c/0/0"
ILLUMINATION_CHUNK = "illumination/c/0/0/0"


def chunk_bytes(name: str, content: Callable[[bytes], bytes]) -> Corrupt:
    """Replace the chunk file ``name`` by ``content(old bytes)``."""

    def corrupt(path: Path, scan: Scan) -> None:
        (path / name).write_bytes(content((path / name).read_bytes()))

    return corrupt


def random_bytes(old: bytes) -> bytes:
    return np.random.default_rng(11).integers(0, 256, len(old), dtype=np.uint8).tobytes()


def flip_bit(old: bytes) -> bytes:
    """``old`` with one bit flipped in the middle of the compressed data."""
    data = bytearray(old)
    data[len(data) // 2] ^= 0x10
    return bytes(data)


def chunk_special(name: str, kind: str) -> Corrupt:
    """Replace the chunk file ``name`` by a FIFO (a read would block forever) or a symlink
    to /dev/zero (a read would never end)."""

    def corrupt(path: Path, scan: Scan) -> None:
        (path / name).unlink()
        if kind == "fifo":
            os.mkfifo(path / name)
        else:
            os.symlink("/dev/zero", path / name)

    return corrupt


def edit_array_json(name: str, **changes: Any) -> Corrupt:
    """Edit keys of an array's zarr.json (``chunk_shape`` goes into the chunk grid)."""

    def corrupt(path: Path, scan: Scan) -> None:
        meta = json.loads((path / name / "zarr.json").read_text())
        for key, value in changes.items():
            if key == "chunk_shape":
                meta["chunk_grid"]["configuration"]["chunk_shape"] = value
            else:
                meta[key] = value
        (path / name / "zarr.json").write_text(json.dumps(meta))

    return corrupt


# --- changed contents, written with write_frames_store ------------------------------------


def frames_where(change: Callable[[np.ndarray], None]) -> Callable[[Scan], Scan]:
    """The scan with a copy of its frames (N, H, W) edited by ``change``."""

    def apply(scan: Scan) -> Scan:
        values = scan.frames.copy()
        change(values)
        return dataclasses.replace(scan, frames=values)

    return apply


def positions_where(change: Callable[[np.ndarray], None]) -> Callable[[Scan], np.ndarray]:
    """A copy of the positions (N, 2) (y, x) metres edited by ``change``."""

    def value(scan: Scan) -> np.ndarray:
        positions = scan.positions.copy()
        change(positions)
        return positions

    return value


def set_nan(values: np.ndarray) -> None:
    values[[3, 7, 20], 5, 5] = np.nan


def set_negative(values: np.ndarray) -> None:
    values[4, :2, :2] = -3.0


def set_zero(values: np.ndarray) -> None:
    values.fill(0.0)


def repeat_row(positions: np.ndarray) -> None:
    positions[9] = positions[2]


def nan_row(positions: np.ndarray) -> None:
    positions[6, 1] = np.nan


def inf_row(positions: np.ndarray) -> None:
    positions[6, 0] = np.inf


def spread(positions: np.ndarray) -> None:
    positions *= 1e4


STORE_UNCHECKED = (
    "frames stores given as data.path are never checked for non-finite, negative or all-zero "
    "frames, nor for repeated positions (validate_frames runs only when converting a CXI file), "
    "so the run goes on with the bad frames"
)
JSON_UNCAUGHT = (
    "an unreadable array zarr.json raises json.JSONDecodeError in zarr_store._array, "
    "which is not turned into an InputError (traceback)"
)

CASES = [
    # the store and its metadata
    Case(
        "zarr-truncated-root-json", "zarr", store(truncate_json("zarr.json")), ("data.path", "Zarr")
    ),
    Case(
        "zarr-empty-root-json",
        "zarr",
        store(overwrite_json("zarr.json", "")),
        ("data.path", "Zarr"),
    ),
    Case(
        "zarr-garbled-frames-json",
        "zarr",
        store(overwrite_json("frames/zarr.json", "{ not json")),
        ("data.path", "'frames'"),
    ),
    Case(
        "zarr-truncated-positions-json",
        "zarr",
        store(truncate_json("positions/zarr.json")),
        ("data.path", "'positions'"),
    ),
    Case(
        "zarr-wrong-format",
        "zarr",
        store(attrs(format="some-other-format")),
        ("data.path", "format"),
    ),
    Case(
        "zarr-newer-format-version",
        "zarr",
        store(attrs(format_version=99)),
        ("data.path", "format_version"),
    ),
    # missing arrays
    Case(
        "zarr-missing-frames", "zarr", store(delete("frames")), ("data.path", "'frames'", "missing")
    ),
    Case(
        "zarr-missing-positions",
        "zarr",
        store(delete("positions")),
        ("data.path", "'positions'", "missing"),
    ),
    # wrong ranks and dtypes
    Case(
        "zarr-frames-rank-2",
        "zarr",
        store(replace("frames", lambda s: s.frames.reshape(s.n_frames, -1))),
        ("data.path", "'frames'", "(N, H, W)"),
    ),
    Case(
        "zarr-frames-complex",
        "zarr",
        store(replace("frames", lambda s: s.frames.astype(np.complex64))),
        ("data.path", "'frames'", "complex64"),
    ),
    Case(
        "zarr-positions-3-columns",
        "zarr",
        store(replace("positions", lambda s: np.zeros((s.n_frames, 3)))),
        ("data.path", "'positions'", "(N, 2)"),
    ),
    Case(
        "zarr-positions-text",
        "zarr",
        store(replace("positions", lambda s: np.full((s.n_frames, 2), "a"))),
        ("data.path", "'positions'", "dtype"),
    ),
    # how many frames
    Case(
        "zarr-zero-frames",
        "zarr",
        store(replace("frames", lambda s: s.frames[:0])),
        ("data.path", "frames", f"(0, {FRAME_SIDE}, {FRAME_SIDE})"),
    ),
    Case(
        "zarr-fewer-positions",
        "zarr",
        store(replace("positions", lambda s: s.positions[:-2])),
        ("data.path", "'positions'", f"{N_FRAMES - 2} rows", f"{N_FRAMES} frames"),
    ),
    # positions
    Case(
        "zarr-nan-position",
        "zarr",
        store(replace("positions", positions_where(nan_row))),
        ("data.path", "'positions'", "NaN"),
    ),
    Case(
        "zarr-inf-position",
        "zarr",
        store(replace("positions", positions_where(inf_row))),
        ("data.path", "'positions'", "Inf"),
    ),
    Case(
        "zarr-duplicate-positions",
        "zarr",
        store(replace("positions", positions_where(repeat_row))),
        ("positions", "repeat"),
    ),
    Case(
        "zarr-absurd-object",
        "zarr",
        store(replace("positions", positions_where(spread))),
        ("positions", "100000"),
    ),
    # intensities
    Case(
        "zarr-nan-frames",
        "zarr",
        store(change=frames_where(set_nan)),
        ("frames", "NaN"),
    ),
    Case(
        "zarr-negative-counts",
        "zarr",
        store(change=frames_where(set_negative)),
        ("frames", "negative"),
    ),
    Case(
        "zarr-all-zero-frames",
        "zarr",
        store(change=frames_where(set_zero)),
        ("frames", "zero"),
    ),
    # geometry attributes
    Case(
        "zarr-zero-distance",
        "zarr",
        store(geometry(distance_m=0.0)),
        ("data.path", "distance_m", "positive"),
    ),
    Case(
        "zarr-negative-wavelength",
        "zarr",
        store(geometry(wavelength_m=-1.5e-10)),
        ("data.path", "wavelength_m", "positive"),
    ),
    Case(
        "zarr-nan-pixel-size",
        "zarr",
        store(geometry(detector_pixel_m=[float("nan"), 75e-6])),
        ("data.path", "detector_pixel_m", "positive"),
    ),
    Case(
        "zarr-geometry-missing-key",
        "zarr",
        store(geometry(distance_m=None)),
        ("data.path", "geometry", "distance_m"),
    ),
    Case(
        "zarr-geometry-frame-shape",
        "zarr",
        store(geometry(frame_shape=[64, 64])),
        ("data.path", "frame_shape", "[64, 64]"),
    ),
    # masks
    Case(
        "zarr-mask-wrong-shape",
        "zarr",
        store(replace("mask", lambda s: np.zeros((16, 16), bool))),
        ("data.path", "'mask'", "(16, 16)"),
    ),
    # damaged chunk files and edited array metadata (issue 11, item 11)
    Case(
        "zarr-chunk-random-bytes",
        "zarr",
        store(chunk_bytes(FRAMES_CHUNK, random_bytes)),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        "zarr-chunk-truncated",
        "zarr",
        store(chunk_bytes(FRAMES_CHUNK, lambda old: old[: len(old) // 3])),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        # one bit flipped inside the compressed data: Blosc alone may decode it silently
        "zarr-chunk-one-bit-flipped",
        "zarr",
        store(chunk_bytes(FRAMES_CHUNK, flip_bit)),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        "zarr-chunk-empty-file",
        "zarr",
        store(chunk_bytes(FRAMES_CHUNK, lambda old: b"")),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        "zarr-positions-chunk-random",
        "zarr",
        store(chunk_bytes(POSITIONS_CHUNK, random_bytes)),
        ("data.path", "damaged"),
    ),
    Case(
        "zarr-illumination-chunk-truncated",
        "zarr",
        store(chunk_bytes(ILLUMINATION_CHUNK, lambda old: old[:10])),
        ("data.path", "damaged"),
    ),
    Case(
        "zarr-chunk-is-fifo",
        "zarr",
        store(chunk_special(FRAMES_CHUNK, "fifo")),
        ("data.path", "not a regular file"),
    ),
    Case(
        "zarr-chunk-links-dev-zero",
        "zarr",
        store(chunk_special(FRAMES_CHUNK, "zero")),
        ("data.path", "not a regular file"),
    ),
    Case(
        "zarr-dtype-edited",
        "zarr",
        store(edit_array_json("frames", data_type="float64")),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        "zarr-chunk-shape-edited",
        "zarr",
        store(edit_array_json("frames", chunk_shape=[5, FRAME_SIDE, FRAME_SIDE])),
        ("data.path", "frames", "damaged"),
    ),
    Case(
        "zarr-chunk-shape-zero",
        "zarr",
        store(edit_array_json("frames", chunk_shape=[0, FRAME_SIDE, FRAME_SIDE])),
        ("data.path", "chunks", ">= 1"),
    ),
]

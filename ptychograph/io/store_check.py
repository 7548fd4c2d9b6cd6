"""A pass over a frames store's values, chunk by chunk (never all frames in memory)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ptychograph.io.zarr_store import chunk_ranges, read_frames, read_store_info


@dataclass(frozen=True)
class FrameCheck:
    """What a pass over a store's frames found: frames holding NaN/Inf, negative pixels (and
    the frames holding them), and whether every frame is entirely zero."""

    nonfinite_frames: list[int]
    negative_pixels: int
    negative_frames: int
    all_zero: bool


def check_store_frames(path: str | os.PathLike[str]) -> FrameCheck:
    """Scan a store's frames chunk by chunk for bad values."""
    info = read_store_info(path)
    nonfinite: list[int] = []
    negative_pixels = negative_frames = 0
    any_counts = False
    for start, stop in chunk_ranges(info.n_frames, info.chunk_frames):
        frames = read_frames(path, start, stop)
        sums = frames.sum(axis=(1, 2), dtype=np.float64)
        bad = ~np.isfinite(sums)
        nonfinite.extend(int(i) + start for i in np.flatnonzero(bad))
        negative = (frames < 0).sum(axis=(1, 2))
        negative_pixels += int(negative.sum())
        negative_frames += int(np.count_nonzero(negative))
        any_counts = any_counts or bool(np.any(frames[~bad] != 0))
    return FrameCheck(nonfinite, negative_pixels, negative_frames, not any_counts)


#: Frames hashed into a store's fingerprint (evenly spaced, first and last included).
FINGERPRINT_FRAMES = 8


def fingerprint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies a store's content without reading all of it: frame count and shape,
    dtype, and SHA-256 of the positions, the mask and :data:`FINGERPRINT_FRAMES` frames.

    A checkpoint records it; ``--resume`` refuses a store whose fingerprint differs.
    """
    info = read_store_info(path)
    picks = np.unique(np.linspace(0, info.n_frames - 1, FINGERPRINT_FRAMES).round().astype(int))
    frames = hashlib.sha256()
    for index in picks:
        frames.update(read_frames(path, int(index), int(index) + 1).tobytes())
    positions = np.ascontiguousarray(info.positions, dtype=np.float64).tobytes()
    mask = b"" if info.mask is None else np.ascontiguousarray(info.mask).tobytes()
    return {
        "n_frames": info.n_frames,
        "frame_shape": list(info.frame_shape),
        "dtype": str(zarr.open_array(Path(path), path="frames", mode="r").dtype),
        "positions_sha256": hashlib.sha256(positions).hexdigest(),
        "mask_sha256": hashlib.sha256(mask).hexdigest(),
        "frames_sha256": frames.hexdigest(),
    }

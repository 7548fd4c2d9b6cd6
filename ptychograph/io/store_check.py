"""A pass over a frames store's values, chunk by chunk (never all frames in memory)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

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

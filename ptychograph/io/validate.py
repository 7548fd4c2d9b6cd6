"""Checks of measured frames before a reconstruction: finite, non-negative, not all zero, and
a detector mask that leaves at least one good pixel.

Bad frames either stop the run with an :class:`InputError` that says which setting to change,
or are repaired (frames with NaN/Inf dropped with their positions, negative counts clipped to
0) with a note for the run log. Per-frame reductions keep the checks vectorised and avoid
temporaries the size of the frames.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from ptychograph.errors import InputError
from ptychograph.scan import Scan

#: Frame indices listed in a note before it says "... and k more".
MAX_LISTED = 20


def validate_frames(
    scan: Scan,
    nonfinite: Literal["error", "drop"] = "error",
    negative: Literal["error", "clip"] = "error",
) -> tuple[Scan, list[str]]:
    """Check ``scan.frames`` (N, H, W) and return the (possibly repaired) scan and notes.

    nonfinite : "error" refuses frames with NaN/Inf; "drop" removes them and their positions.
    negative : "error" refuses negative counts; "clip" sets them to 0 (in a copy).
    Raises InputError when N is 0, when no frame is left, when every frame is all zero, or
    when the mask marks every detector pixel bad (:func:`validate_mask`).
    """
    if nonfinite not in ("error", "drop"):
        raise InputError("data.nonfinite", f"must be 'error' or 'drop', got {nonfinite!r}")
    if negative not in ("error", "clip"):
        raise InputError("data.negative", f"must be 'error' or 'clip', got {negative!r}")
    if scan.frames.ndim != 3:
        raise InputError("frames", f"have shape {scan.frames.shape}, expected (N, H, W)")
    if scan.frames.shape[0] == 0:
        raise InputError("frames", "the scan has no frames")
    validate_mask(scan.mask)
    notes: list[str] = []
    scan = _handle_nonfinite(scan, nonfinite, notes)
    scan = _handle_negative(scan, negative, notes)
    if not np.any(scan.frames):
        raise InputError("frames", f"all {scan.n_frames} frames are entirely zero")
    return scan, notes


def validate_mask(mask: np.ndarray | None) -> None:
    """Refuse a detector mask (H, W) bool (True = bad) that leaves no good pixel.

    With every pixel bad the Fourier constraint has no data to fit and the Fourier error is
    0 / 0: InputError("mask", ...) before anything runs. None (no mask) is fine.
    """
    if mask is not None and bool(np.all(mask)):
        raise InputError(
            "mask",
            f"every detector pixel is masked bad ({mask.size} of {mask.size}); nothing is "
            "left to fit: remove the mask or mark the good pixels 0",
        )


def _handle_nonfinite(scan: Scan, mode: str, notes: list[str]) -> Scan:
    """Refuse or drop frames containing NaN or Inf (found by a float64 sum per frame)."""
    # A frame's float64 sum is finite exactly when all its float32 pixels are (no overflow).
    sums = scan.frames.sum(axis=(1, 2), dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(sums))
    if bad.size == 0:
        return scan
    count = _frames(bad.size)
    if mode == "error":
        raise InputError(
            "frames",
            f"{count} contain{'s' if bad.size == 1 else ''} NaN or Inf "
            f"(first: frame {int(bad[0])}); set data.nonfinite: drop to drop them",
        )
    if bad.size == scan.n_frames:
        raise InputError("frames", f"all {count} contain NaN or Inf; nothing is left to use")
    keep = np.ones(scan.n_frames, dtype=bool)
    keep[bad] = False
    notes.append(f"dropped {count} with NaN/Inf: {_index_list(bad)}")
    return dataclasses.replace(scan, frames=scan.frames[keep], positions=scan.positions[keep])


def _handle_negative(scan: Scan, mode: str, notes: list[str]) -> Scan:
    """Refuse negative counts, or clip them to 0 in a copy of the frames (N, H, W)."""
    minima = scan.frames.min(axis=(1, 2))
    bad = np.flatnonzero(minima < 0)
    if bad.size == 0:
        return scan
    count = _frames(bad.size)
    if mode == "error":
        first = int(bad[0])
        raise InputError(
            "frames",
            f"{count} contain{'s' if bad.size == 1 else ''} negative counts "
            f"(first: frame {first}, minimum {float(minima[first]):g}); "
            "set data.negative: clip to set them to 0",
        )
    pixels = int(np.count_nonzero(scan.frames[bad] < 0))
    notes.append(f"clipped {pixels} negative pixel{'s' if pixels != 1 else ''} in {count} to 0")
    return dataclasses.replace(scan, frames=np.maximum(scan.frames, 0, dtype=scan.frames.dtype))


def _frames(count: int) -> str:
    """'1 frame' or 'k frames'."""
    return f"{count} frame{'' if count == 1 else 's'}"


def _index_list(indices: np.ndarray) -> str:
    """'[17, 40, 41]', or the first MAX_LISTED indices and '... and k more'."""
    shown = ", ".join(str(int(i)) for i in indices[:MAX_LISTED])
    more = indices.size - MAX_LISTED
    return f"[{shown}, ... and {more} more]" if more > 0 else f"[{shown}]"

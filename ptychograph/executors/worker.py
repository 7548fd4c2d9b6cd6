"""Worker side of the Dask executor: the per-run plugin holding the views, and its tasks.

The views of a run live in a :class:`ViewHolder` worker plugin registered per run and removed
after it, so no task result ever holds psi and nothing moves them. Every per-worker task is
pinned by the client (``workers=[w]``, ``allow_other_workers=False``), which also keeps work
stealing away. :func:`on_views` is the one entry point: it runs an algorithm's per-chunk task on
this worker's :class:`~ptychograph.resident.ResidentViews` (docs/design.md, "Data flow on a
cluster").
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from ptychograph.algorithms.base import on_host
from ptychograph.backend import complex_dtype, real_dtype
from ptychograph.cluster import resolve_backend
from ptychograph.errors import InputError
from ptychograph.io.zarr_store import read_frames
from ptychograph.memory import USABLE_FRACTION
from ptychograph.partials import tree_sum
from ptychograph.resident import ResidentViews

log = logging.getLogger("ptychograph")


@dataclass(frozen=True)
class FrameStats:
    """Sum of a worker's frames (H, W) float64 and their number: reduced to the mean pattern;
    ``clipped`` counts the negative pixels set to zero on loading (``data.negative: clip``)."""

    frame_sum: np.ndarray
    n_frames: int
    clipped: int = 0

    def __add__(self, other: FrameStats) -> FrameStats:
        return FrameStats(
            self.frame_sum + other.frame_sum,
            self.n_frames + other.n_frames,
            self.clipped + other.clipped,
        )


@dataclass(frozen=True)
class LoadSpec:
    """How a worker holds its views: backend choice ("auto", "numpy", "cupy"), working
    ``precision``, ``batch_size``, ``subpixel`` method, the (H, W) bool ``good`` mask, and
    what to do with frames holding NaN/Inf or negative counts (``data.nonfinite`` /
    ``data.negative``: "error" refuses them; "clip" clips negatives to zero)."""

    backend: str
    precision: str
    batch_size: int
    subpixel: str
    good: np.ndarray | None
    nonfinite: str = "error"
    negative: str = "error"


class ViewHolder(WorkerPlugin):
    """Worker plugin holding one run's resident views (registered per run, removed after)."""

    idempotent = False

    def __init__(self) -> None:
        self.views: ResidentViews | None = None

    def setup(self, worker: Any) -> None:
        self.views = None

    def teardown(self, worker: Any) -> None:
        self.views = None


def _holder(name: str) -> ViewHolder:
    from distributed import get_worker

    holder = get_worker().plugins[name]
    assert isinstance(holder, ViewHolder), f"{name} is not a ptychograph view holder"
    return holder


def on_views(name: str, task: Callable[..., Any], *args: Any) -> Any:
    """Run ``task(views, *args)`` on this worker's views of run ``name``; the result comes back
    in host memory (:func:`~ptychograph.algorithms.base.on_host`: it travels to other workers
    and the client, which may have no GPU)."""
    views = _holder(name).views
    if views is None:
        raise RuntimeError(f"worker holds no views of run {name}")
    return on_host(task(views, *args))


def check_device_memory(need_bytes: int) -> None:
    """Refuse (InputError with the numbers) when this worker's share will not fit in the free
    memory of its GPU (estimate from :mod:`ptychograph.memory`, computed by the client)."""
    import cupy

    free, total = cupy.cuda.Device().mem_info
    if need_bytes > USABLE_FRACTION * free:  # pragma: no cover - needs a GPU
        raise InputError(
            "memory",
            f"a worker needs {need_bytes / 2**30:.2f} GiB of GPU memory but its GPU has "
            f"{free / 2**30:.2f} of {total / 2**30:.2f} GiB free; use more GPUs or fewer modes",
        )


def load_task(
    name: str,
    path: str,
    ranges: list[tuple[int, int]],
    origins: np.ndarray,
    spec: LoadSpec,
    need_bytes: int = 0,
) -> FrameStats:
    """Read this worker's frame ranges from the store and keep sqrt(I) resident (as pending
    views: the next reset turns them into chunks). origins : (n, 2) of these frames."""
    check_visible(path)
    holder = _holder(name)
    if holder.views is None:
        backend = resolve_backend(spec.backend)
        holder.views = ResidentViews(backend, spec.batch_size, spec.subpixel)
        holder.views.good = holder.views.device(spec.good)
    views = holder.views
    if views.backend == "cupy":
        check_device_memory(need_bytes)
    rdtype = real_dtype(complex_dtype(spec.precision))
    parts, offset = [], 0
    for start, stop in ranges:
        frames, clipped = checked_frames(read_frames(path, start, stop), start, spec)
        parts.append(FrameStats(frames.sum(axis=0, dtype=np.float64), stop - start, clipped))
        amplitudes = views.device(np.sqrt(frames).astype(rdtype))
        pending_origins = views.device(origins[offset : offset + stop - start])
        views.pending.append((amplitudes, pending_origins, start))
        offset += stop - start
    return tree_sum(parts)


def checked_frames(frames: np.ndarray, first: int, spec: LoadSpec) -> tuple[np.ndarray, int]:
    """frames (n, H, W) of frames ``first``... as the run may use them, and the number of
    negative pixels clipped. Frames are checked here, as each worker loads them, because a
    followed store gains frames after the run's check of the store (docs/design.md, "Live
    reconstruction"): a frame with NaN/Inf, or with negative counts under ``data.negative:
    error``, is an InputError naming it. ``data.nonfinite: drop`` never reaches a worker (a
    batch run converts such a store first; a followed run refuses the option)."""
    finite = np.isfinite(frames).all(axis=(1, 2))
    if not finite.all():
        index = first + int(np.flatnonzero(~finite)[0])
        raise InputError(
            "frames", f"frame {index} contains NaN or Inf (data.nonfinite: {spec.nonfinite})"
        )
    negative = frames < 0
    clipped = int(np.count_nonzero(negative))
    if clipped and spec.negative != "clip":
        index = first + int(np.flatnonzero(negative.any(axis=(1, 2)))[0])
        raise InputError(
            "frames",
            f"frame {index} has negative counts (data.negative: {spec.negative}; "
            "data.negative: clip clips them to zero)",
        )
    return (np.maximum(frames, 0) if clipped else frames), clipped


def set_batch_size(views: ResidentViews, batch: int) -> int:
    """Views per batch from now on (lowered when a grown scan needs the memory)."""
    views.batch_size = batch
    return batch


def check_visible(path: str) -> None:
    """Refuse, naming this worker, a frames store it cannot see: a relative path, or a file
    system the worker's node does not share with the client's."""
    from distributed import get_worker

    if not os.path.isabs(path):
        raise InputError("data.path", f"{path} is relative; workers need an absolute path")
    if not os.path.isdir(path):
        where = get_worker().address
        raise InputError(
            "data.path",
            f"worker {where} cannot see {path}; every worker must reach the frames store at "
            "the same absolute path (a shared file system)",
        )


def combine(*parts: Any) -> Any:
    """One node of the reduction tree: the sum of its children's partials."""
    return tree_sum(list(parts))

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

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
    """Sum of a worker's frames (H, W) float64 and their number: reduced to the mean pattern."""

    frame_sum: np.ndarray
    n_frames: int

    def __add__(self, other: FrameStats) -> FrameStats:
        return FrameStats(self.frame_sum + other.frame_sum, self.n_frames + other.n_frames)


@dataclass(frozen=True)
class LoadSpec:
    """How a worker holds its views: backend choice ("auto", "numpy", "cupy"), working
    ``precision``, ``batch_size``, ``subpixel`` method and the (H, W) bool ``good`` mask."""

    backend: str
    precision: str
    batch_size: int
    subpixel: str
    good: np.ndarray | None


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
    """Run ``task(views, *args)`` on this worker's views of run ``name``."""
    views = _holder(name).views
    if views is None:
        raise RuntimeError(f"worker holds no views of run {name}")
    return task(views, *args)


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
        frames = read_frames(path, start, stop)
        parts.append(FrameStats(frames.sum(axis=0, dtype=np.float64), stop - start))
        amplitudes = views.device(np.sqrt(frames).astype(rdtype))
        views.pending.append((amplitudes, views.device(origins[offset : offset + stop - start])))
        offset += stop - start
    return tree_sum(parts)


def combine(*parts: Any) -> Any:
    """One node of the reduction tree: the sum of its children's partials."""
    return tree_sum(list(parts))

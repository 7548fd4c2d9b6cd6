"""Worker-side tasks of the distributed Difference Map (Dong et al., arXiv:1808.10375).

Placement: the frames are divided almost evenly between the workers; each worker reads only its
own ranges straight from the Zarr store and builds its exit waves there. The views live in a
per-run :class:`ViewStore` worker plugin, so no task result ever holds psi and nothing moves
them; every per-worker task is pinned (``workers=[w]``, ``allow_other_workers=False``), which
also keeps work stealing away.

The functions here are what the tasks run; :mod:`ptychograph.distributed_run` builds the
graph of one iteration from them: per-worker view updates returning only partial sums, a tree
of :func:`combine`, one finalize step that divides, and the new :class:`Estimates` as the input
of the next iteration's tasks.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from ptychograph.backend import Array, complex_dtype, real_dtype, to_host
from ptychograph.modes import orthogonalise
from ptychograph.partials import (
    FourierError,
    OverlapPartials,
    regularised_divide,
    regularised_step,
)
from ptychograph.solver import tree_sum
from ptychograph.state import relative_change
from ptychograph.views import (
    ViewChunk,
    make_chunk,
    object_partials,
    probe_partials,
    reset_exit_waves,
    update_views,
)

log = logging.getLogger("ptychograph")


@dataclass(frozen=True)
class Estimates:
    """Probe (M_P, H, W) and object (M_O, Y, X); ``rotation`` (M_P, M_P) is the mode rotation
    applied to the probe since the exit waves were last updated, or None."""

    probe: Array
    obj: Array
    rotation: Array | None = None


@dataclass(frozen=True)
class UpdateParts:
    """What a worker's exit-wave update returns: error terms and object partials."""

    error: FourierError
    partials: OverlapPartials

    def __add__(self, other: UpdateParts) -> UpdateParts:
        return UpdateParts(self.error + other.error, self.partials + other.partials)


@dataclass(frozen=True)
class FrameStats:
    """Sum of a worker's frames (H, W) float64 and their number: reduced to the mean pattern."""

    frame_sum: np.ndarray
    n_frames: int

    def __add__(self, other: FrameStats) -> FrameStats:
        return FrameStats(self.frame_sum + other.frame_sum, self.n_frames + other.n_frames)


class ViewStore(WorkerPlugin):
    """Worker plugin holding one run's resident views (registered per run, removed after)."""

    idempotent = False

    def __init__(self) -> None:
        self.chunks: list[ViewChunk] = []
        self.amplitudes: list[tuple[Array, Array]] = []
        self.good: Array | None = None
        self.batch_size = 64
        self.backend = "numpy"
        self.subpixel = "fourier"

    def setup(self, worker: Any) -> None:
        self.chunks = []

    def teardown(self, worker: Any) -> None:
        self.chunks = []
        self.amplitudes = []

    @property
    def xp(self) -> Any:
        if self.backend == "cupy":
            import cupy

            return cupy
        return np


def _store(name: str) -> ViewStore:
    from distributed import get_worker

    store = get_worker().plugins[name]
    assert isinstance(store, ViewStore), f"{name} is not a ptychograph view store"
    return store


def check_device_memory(need_bytes: int) -> None:
    """Refuse (InputError with the numbers) when this worker's share will not fit in the free
    memory of its GPU (estimate from :mod:`ptychograph.memory`, computed by the client)."""
    import cupy

    from ptychograph.errors import InputError
    from ptychograph.memory import USABLE_FRACTION

    free, total = cupy.cuda.Device().mem_info
    if need_bytes > USABLE_FRACTION * free:  # pragma: no cover - needs a GPU
        raise InputError(
            "memory",
            f"a worker needs {need_bytes / 2**30:.2f} GiB of GPU memory but its GPU has "
            f"{free / 2**30:.2f} of {total / 2**30:.2f} GiB free; use more GPUs or fewer modes",
        )


# ---------------------------------------------------------------- worker tasks
def load_task(
    name: str,
    path: str,
    ranges: list[tuple[int, int]],
    origins: np.ndarray,
    good: np.ndarray | None,
    precision: str,
    backend: str,
    batch_size: int,
    need_bytes: int = 0,
    subpixel: str = "fourier",
) -> FrameStats:
    """Read this worker's frame ranges from the store and keep sqrt(I) resident."""
    from ptychograph.cluster import resolve_backend
    from ptychograph.io.zarr_store import read_frames

    store = _store(name)
    store.backend, store.batch_size = resolve_backend(backend), batch_size
    store.subpixel = subpixel
    xp = store.xp
    if store.backend == "cupy":
        check_device_memory(need_bytes)
    rdtype = real_dtype(complex_dtype(precision))
    store.good = None if good is None else xp.asarray(good)
    total: np.ndarray | None = None
    offset = 0
    for start, stop in ranges:
        frames = read_frames(path, start, stop)
        part = frames.sum(axis=0, dtype=np.float64)
        total = part if total is None else total + part
        amplitudes = xp.asarray(np.sqrt(frames).astype(rdtype))
        count = stop - start
        store.amplitudes.append((amplitudes, xp.asarray(origins[offset : offset + count])))
        offset += count
    assert total is not None
    return FrameStats(total, offset)


def reset_task(name: str, estimates: Estimates) -> int:
    """psi = phi from the given estimates for every view this worker holds, including views
    loaded since the last reset (start of a run, resume, or recovery from a lost worker).
    Returns the number of views held."""
    store = _store(name)
    xp = store.xp
    probe, obj = xp.asarray(estimates.probe), xp.asarray(estimates.obj)
    for chunk in store.chunks:
        shape = (chunk.n_views, probe.shape[0], obj.shape[0], *chunk.frame_shape)
        if chunk.exit_waves.shape != shape:  # the number of modes changed
            chunk.exit_waves = xp.empty(shape, dtype=probe.dtype)
        reset_exit_waves(chunk, probe, obj, store.batch_size)
    store.chunks.extend(
        make_chunk(amplitudes, store.good, origins, probe, obj, store.batch_size, store.subpixel)
        for amplitudes, origins in store.amplitudes
    )
    store.amplitudes = []
    return sum(c.n_views for c in store.chunks)


def update_task(name: str, estimates: Estimates, beta: float, noise_bound: float) -> UpdateParts:
    """Eqs. 3-4 on every resident view, fused with the first object partials (eq. 6)."""
    store = _store(name)
    xp = store.xp
    probe, obj = xp.asarray(estimates.probe), xp.asarray(estimates.obj)
    rotation = None if estimates.rotation is None else xp.asarray(estimates.rotation)
    parts = []
    for chunk in store.chunks:
        error, partials = update_views(
            chunk, probe, obj, beta, store.batch_size, rotation, noise_bound
        )
        assert partials is not None
        parts.append(UpdateParts(error, partials))
    return tree_sum(parts)


def object_partials_task(name: str, estimates: Estimates) -> OverlapPartials:
    """Eq. 6 partial sums of this worker's views."""
    store = _store(name)
    xp = store.xp
    probe = xp.asarray(estimates.probe)
    shape = (int(estimates.obj.shape[1]), int(estimates.obj.shape[2]))
    return tree_sum([object_partials(c, probe, shape, store.batch_size) for c in store.chunks])


def probe_partials_task(name: str, estimates: Estimates) -> OverlapPartials:
    """Eq. 5 partial sums (residual form) of this worker's views."""
    store = _store(name)
    xp = store.xp
    probe, obj = xp.asarray(estimates.probe), xp.asarray(estimates.obj)
    return tree_sum([probe_partials(c, obj, probe, store.batch_size) for c in store.chunks])


# ---------------------------------------------------------------- reduction and finalize
def combine(*parts: Any) -> Any:
    """One node of the reduction tree: the sum of its children's partials."""
    return tree_sum(list(parts))


def object_step(
    parts: UpdateParts | OverlapPartials, estimates: Estimates, alpha: float
) -> Estimates:
    """Divide once: the new object (eq. 6); the probe is unchanged."""
    partials = parts.partials if isinstance(parts, UpdateParts) else parts
    obj = regularised_divide(partials, estimates.obj, alpha)
    return Estimates(estimates.probe, obj, None)


def probe_step(parts: OverlapPartials, estimates: Estimates, alpha: float) -> Estimates:
    """The new probe (eq. 5, residual form); the object is unchanged."""
    return Estimates(regularised_step(parts, estimates.probe, alpha), estimates.obj, None)


def finish_step(estimates: Estimates, orthogonalise_probe: bool) -> Estimates:
    """Orthogonalise the probe modes; the rotation travels to the next exit-wave update."""
    if not orthogonalise_probe or estimates.probe.shape[0] == 1:
        return estimates
    probe, rotation = orthogonalise(estimates.probe)
    return Estimates(probe, estimates.obj, rotation)


def stats_task(parts: UpdateParts, old: Estimates, new: Estimates) -> tuple[float, float, float]:
    """(Fourier error, eps_P, eps_O) of one iteration (DESIGN.md step 5, eq. 7)."""
    return (
        parts.error.value,
        relative_change(to_host(new.probe), to_host(old.probe)),
        relative_change(to_host(new.obj), to_host(old.obj)),
    )


def accumulate(total: Estimates | None, estimates: Estimates) -> Estimates:
    """Running sum of estimates for the average over the last iterations."""
    if total is None:
        return Estimates(estimates.probe.copy(), estimates.obj.copy())
    return Estimates(total.probe + estimates.probe, total.obj + estimates.obj)

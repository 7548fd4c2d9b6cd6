"""Which worker holds which frames, and how much memory that takes (client side).

The frames are divided almost evenly between the workers, cut at the store's chunk boundaries
so that every worker reads whole chunks of its own; the frames of a lost worker go to new
workers first, then to the least loaded (docs/design.md, "Data flow on a cluster").
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.memory import estimate, fit_batch, worker_limits

log = logging.getLogger("ptychograph")

#: Worker address -> the (start, stop) frame ranges it holds.
Placement = dict[str, list[tuple[int, int]]]


def assign_ranges(n_frames: int, chunk_frames: int, n_workers: int) -> list[list[tuple[int, int]]]:
    """Split frames 0..N almost evenly between workers, cut at the store's chunk boundaries.

    Returns one list of (start, stop) ranges per worker; every frame appears exactly once and
    worker loads differ by at most one frame.
    """
    bounds = np.linspace(0, n_frames, n_workers + 1).round().astype(int)
    out = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        cuts = [start, *range((start // chunk_frames + 1) * chunk_frames, stop, chunk_frames), stop]
        out.append([(a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True) if b > a])
    return out


def n_views(ranges: Sequence[tuple[int, int]]) -> int:
    """Number of frames in ``ranges``."""
    return sum(b - a for a, b in ranges)


def reassign(
    placement: Placement, alive: Sequence[str], limit: int | None
) -> tuple[Placement, Placement]:
    """Give the ranges of workers that are gone to live ones (new workers first, then the least
    loaded). Returns the new placement and, per receiving worker, the ranges it must load."""
    kept = {w: list(r) for w, r in placement.items() if w in alive}
    lost = [rng for w, ranges in placement.items() if w not in alive for rng in ranges]
    spare = [w for w in alive if w not in kept]
    room = (limit or len(alive)) - len(kept)
    for w in spare[: max(room, 0)]:
        kept[w] = []
    if not kept:
        raise InputError("cluster", "every worker of the run was lost and none replaced them")
    moved: Placement = {}
    for rng in lost:
        target = min(kept, key=lambda w: n_views(kept[w]))
        kept[target].append(rng)
        moved.setdefault(target, []).append(rng)
    return {w: ranges for w, ranges in kept.items() if ranges}, moved


def spread(
    placement: Placement, alive: Sequence[str], ranges: Sequence[tuple[int, int]]
) -> tuple[Placement, Placement]:
    """Give new frame ``ranges`` to the least loaded of the ``alive`` workers (workers that
    joined the run first: they hold nothing). Returns the new placement and, per receiving
    worker, the ranges it must load."""
    kept = {w: list(placement.get(w, [])) for w in alive}
    kept |= {w: list(r) for w, r in placement.items() if w not in kept}
    moved: Placement = {}
    for rng in ranges:
        target = min(alive, key=lambda w: n_views(kept[w]))
        kept[target].append(rng)
        moved.setdefault(target, []).append(rng)
    return {w: r for w, r in kept.items() if r}, moved


def rebalance(
    placement: Placement, newcomers: Sequence[str]
) -> list[tuple[str, str, tuple[int, int]]]:
    """Ranges to move from the most loaded workers to ``newcomers`` (workers that joined and
    hold little), while a move narrows the gap: (from, to, range) for each. ``placement`` is
    updated in place."""
    moves = []
    for target in newcomers:
        placement.setdefault(target, [])
        while True:
            source = max(placement, key=lambda w: n_views(placement[w]))
            gap = n_views(placement[source]) - n_views(placement[target])
            smallest = min(placement[source], key=lambda r: r[1] - r[0], default=None)
            if source == target or smallest is None or gap <= smallest[1] - smallest[0]:
                break
            placement[source].remove(smallest)
            placement[target].append(smallest)
            moves.append((source, target, smallest))
    for worker in [w for w, r in placement.items() if not r]:
        del placement[worker]
    return moves


def select_workers(client: Any, limit: int | None, given: Sequence[str] | None) -> list[str]:
    """Worker addresses to use: ``given``, else the client's, at most ``limit`` of them."""
    workers = list(given) if given else sorted(client.scheduler_info()["workers"])
    if not workers:
        raise InputError("cluster", "the cluster has no workers")
    return workers[:limit] if limit else workers


def plan_memory(
    client: Any,
    placement: Placement,
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    config: Config,
) -> int:
    """Check every worker's host memory before loading; returns the batch size to use.

    Logs the estimate of the busiest worker; refuses (InputError with the numbers) when the
    exit waves and frames alone do not fit.
    """
    rec = config.reconstruction
    limits = worker_limits(client, list(placement))
    sizes = (frame_shape, obj_shape, rec.start_probe_modes, rec.object_modes, rec.precision)
    batch = rec.batch_size
    for worker, ranges in placement.items():
        batch = min(batch, fit_batch(n_views(ranges), *sizes, batch, limits[worker]).batch_size)
    busiest = max(placement, key=lambda w: n_views(placement[w]))
    need = estimate(n_views(placement[busiest]), *sizes, batch)
    limit = limits[busiest]
    log.info(
        "memory per worker (host, %d views): %s%s",
        n_views(placement[busiest]),
        need.describe(),
        f" of {limit / 2**30:.1f} GiB" if limit else "",
    )
    if batch < rec.batch_size:
        log.warning(
            "batch size lowered from %d to %d views to fit in memory", rec.batch_size, batch
        )
    return batch


def fit_growth(
    limits: dict[str, float],
    placement: Placement,
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    config: Config,
    batch: int,
) -> int:
    """The memory check of :func:`plan_memory` redone for a grown scan (``placement`` with the
    new frames, the grown ``obj_shape``) before any worker loads them: returns the batch size
    to use (lowered when needed); InputError with the numbers when a worker's views would no
    longer fit (docs/design.md, "Live reconstruction")."""
    rec = config.reconstruction
    sizes = (frame_shape, obj_shape, rec.start_probe_modes, rec.object_modes, rec.precision)
    frames = sum(n_views(r) for r in placement.values())
    for worker, ranges in placement.items():
        try:
            fit = fit_batch(n_views(ranges), *sizes, batch, limits.get(worker, 0.0))
        except InputError as err:
            raise InputError(
                "memory",
                f"with {frames} frames, object {obj_shape[0]} x {obj_shape[1]}: {err.problem}",
            ) from None
        batch = min(batch, fit.batch_size)
    return batch


def projected_need(
    limits: dict[str, float],
    expected: int,
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    config: Config,
) -> str | None:
    """Why the ``expected`` frames of a followed scan, spread over the workers of ``limits``,
    will not fit in the smallest worker's memory (with an object of at least ``obj_shape``);
    None when they fit or no limit is known."""
    known = [limit for limit in limits.values() if limit > 0]
    if not known:
        return None
    rec = config.reconstruction
    per_worker = -(-expected // max(len(limits), 1))
    sizes = (frame_shape, obj_shape, rec.start_probe_modes, rec.object_modes, rec.precision)
    try:
        fit_batch(per_worker, *sizes, 1, min(known))
    except InputError as err:
        return f"the {expected} expected frames on {len(limits)} worker(s): {err.problem}"
    return None

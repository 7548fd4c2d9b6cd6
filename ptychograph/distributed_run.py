"""Client side of a distributed run: placement, the per-iteration task graph, progress,
synchronisation points, checkpoints and recovery from lost workers.

Every iteration is submitted as futures (DESIGN.md "Data flow on a cluster"; the tasks are in
:mod:`ptychograph.worker_tasks`):

    update_task on each worker  ->  tree of combine  ->  object_step
    [probe_partials_task on each worker -> tree -> probe_step]       (from probe_update_start)
    [object / probe passes again]                                    (overlap_passes - 1 times)
    finish_step (orthogonalise)  ->  next iteration's update_task inputs
    stats_task (error, eps_P, eps_O)  ->  the client, for progress and history

The client stays ``lookahead`` iterations ahead of the one it reports and holds references only
to the newest estimates and the pending metrics. Futures alone would still keep their lineage
(the scheduler keeps every released ancestor of a wanted future so that it could recompute it),
so every ``sync_every`` iterations (and at every checkpoint) the client fetches the estimates
and the running average and scatters them again as fresh data: the old chain is forgotten, and
the scheduler's task count and the workers' memory stay flat however long the run.

A sync point is also where a run restarts when a worker is lost: the lost worker's frames are
re-read from the Zarr store by surviving (or replacement) workers, every exit wave is rebuilt
from the sync point's probe and object (psi = P O, a consistent DM state), and the iterations
since the sync point are redone. At most ``sync_every`` iterations of work are repeated.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.config import Config
from ptychograph.solver import Settings
from ptychograph.state import History
from ptychograph.worker_tasks import (
    Estimates,
    FrameStats,
    ViewStore,
    combine,
    finish_step,
    load_task,
    object_partials_task,
    object_step,
    probe_partials_task,
    probe_step,
    reset_task,
    stats_task,
    update_task,
)

log = logging.getLogger("ptychograph")

#: Restarts from a sync point after lost workers before the run gives up.
MAX_RECOVERIES = 5


class WorkerLost(RuntimeError):
    """A worker holding views left the cluster."""


@dataclass
class SyncPoint:
    """The estimates after ``iteration`` completed iterations, held on the client.

    average : running sums of the estimates of the last ``average_count`` iterations (the
    averaging window so far, or None) and ``history`` the metrics of the iterations so far.
    """

    iteration: int
    estimates: Estimates
    average: Estimates | None
    history: History = field(default_factory=History)
    average_count: int = 0


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


def reassign(
    placement: dict[str, list[tuple[int, int]]], alive: Sequence[str], limit: int | None
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, list[tuple[int, int]]]]:
    """Give the ranges of workers that are gone to live ones (new workers first, then the least
    loaded). Returns the new placement and, per receiving worker, the ranges it must load."""
    from ptychograph.errors import InputError

    kept = {w: list(r) for w, r in placement.items() if w in alive}
    lost = [rng for w, ranges in placement.items() if w not in alive for rng in ranges]
    spare = [w for w in alive if w not in kept]
    room = (limit or len(alive)) - len(kept)
    for w in spare[: max(room, 0)]:
        kept[w] = []
    if not kept:
        raise InputError("cluster", "every worker of the run was lost and none replaced them")
    moved: dict[str, list[tuple[int, int]]] = {}
    for rng in lost:
        target = min(kept, key=lambda w: sum(b - a for a, b in kept[w]))
        kept[target].append(rng)
        moved.setdefault(target, []).append(rng)
    return kept, moved


def plan_memory(
    client: Any,
    placement: dict[str, list[tuple[int, int]]],
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    config: Config,
) -> int:
    """Check every worker's host memory before loading; returns the batch size to use.

    Logs the estimate of the busiest worker; refuses (InputError with the numbers) when the
    exit waves and frames alone do not fit.
    """
    from ptychograph.memory import fit_batch, worker_limits

    rec = config.reconstruction
    limits = worker_limits(client, list(placement))
    batch = rec.batch_size
    for worker, ranges in placement.items():
        n_views = sum(b - a for a, b in ranges)
        need = fit_batch(
            n_views,
            frame_shape,
            obj_shape,
            rec.most_probe_modes,
            rec.object_modes,
            rec.precision,
            batch,
            limits[worker],
        )
        batch = min(batch, need.batch_size)
    busiest = max(placement, key=lambda w: sum(b - a for a, b in placement[w]))
    n_busiest = sum(b - a for a, b in placement[busiest])
    need = fit_batch(
        n_busiest,
        frame_shape,
        obj_shape,
        rec.most_probe_modes,
        rec.object_modes,
        rec.precision,
        batch,
        limits[busiest],
    )
    limit = limits[busiest]
    log.info(
        "memory per worker (host, %d views): %s%s",
        n_busiest,
        need.describe(),
        f" of {limit / 2**30:.1f} GiB" if limit else "",
    )
    if batch < rec.batch_size:
        log.warning(
            "batch size lowered from %d to %d views to fit in memory", rec.batch_size, batch
        )
    return batch


def select_workers(client: Any, limit: int | None, given: Sequence[str] | None) -> list[str]:
    """Worker addresses to use: ``given``, else the client's, at most ``limit`` of them."""
    from ptychograph.errors import InputError

    workers = list(given) if given else sorted(client.scheduler_info()["workers"])
    if not workers:
        raise InputError("cluster", "the cluster has no workers")
    return workers[:limit] if limit else workers


class DaskRun:
    """One reconstruction's footprint on a cluster: a worker plugin, its views and tasks."""

    def __init__(self, client: Any, store: Path, origins: np.ndarray, config: Config) -> None:
        self.client = client
        self.store = store
        self.origins = origins
        self.config = config
        self.placement: dict[str, list[tuple[int, int]]] = {}
        self.good: np.ndarray | None = None
        self.batch_size = config.reconstruction.batch_size
        self.frame_shape: tuple[int, int] = (0, 0)
        self.obj_shape: tuple[int, int] = (0, 0)
        self.last_sync: SyncPoint | None = None
        self.name = f"ptychograph-{uuid.uuid4().hex[:12]}"
        client.register_plugin(ViewStore(), name=self.name)

    def need_bytes(self, n_views: int) -> int:
        """Estimated memory for ``n_views`` views (for the workers' GPU check)."""
        from ptychograph.memory import estimate

        rec = self.config.reconstruction
        frame_shape = self.frame_shape
        return estimate(
            n_views,
            frame_shape,
            self.obj_shape,
            rec.most_probe_modes,
            rec.object_modes,
            rec.precision,
            self.batch_size,
        ).total

    @property
    def workers(self) -> list[str]:
        return list(self.placement)

    def close(self) -> None:
        """Drop the views from every worker."""
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception as err:  # noqa: BLE001 - best effort while tearing down
            log.warning("could not remove worker state %s: %s", self.name, err)

    def _on(self, worker: str, func: Any, *args: Any, key: str) -> Any:
        return self.client.submit(
            func,
            *args,
            key=f"{key}-{self.name}",
            workers=[worker],
            allow_other_workers=False,
            pure=False,
        )

    def _reduce(self, futures: list[Any], key: str) -> Any:
        level = 0
        while len(futures) > 1:
            futures = [
                self.client.submit(
                    combine, *futures[i : i + 2], key=f"{key}-{level}-{i}-{self.name}"
                )
                for i in range(0, len(futures), 2)
            ]
            level += 1
        return futures[0]

    def load(self, ranges: dict[str, list[tuple[int, int]]], good: np.ndarray | None) -> FrameStats:
        """Each named worker reads its ranges from the store; returns the reduced frame sums."""
        rec = self.config.reconstruction
        futures = []
        for worker, mine in ranges.items():
            rows = np.concatenate([np.arange(a, b) for a, b in mine])
            args = (
                self.name,
                str(self.store),
                mine,
                self.origins[rows],
                good,
                rec.precision,
                self.config.cluster.backend,
                self.batch_size,
                self.need_bytes(sum(b - a for a, b in mine)),
                rec.subpixel,
            )
            futures.append(self._on(worker, load_task, *args, key=f"load-{uuid.uuid4().hex[:6]}"))
        stats: FrameStats = self._reduce(futures, f"frame-sum-{uuid.uuid4().hex[:6]}").result()
        return stats

    def reset(self, estimates: Estimates) -> Any:
        """Scatter estimates and set psi = P O on every worker; returns the estimates' future."""
        [est] = self.client.scatter([estimates], workers=self.workers, hash=False)
        tag = uuid.uuid4().hex[:6]
        counts = [
            self._on(w, reset_task, self.name, est, key=f"reset-{tag}-{i}")
            for i, w in enumerate(self.workers)
        ]
        self.client.gather(counts)
        return est

    def _overlap_pass(self, task: Any, step: Any, est: Any, alpha: float, key: str) -> Any:
        """Partials of every worker (``task``), a reduction tree, one dividing ``step``."""
        parts = [
            self._on(w, task, self.name, est, key=f"{key}-part-{i}")
            for i, w in enumerate(self.workers)
        ]
        total = self._reduce(parts, f"{key}-sum")
        return self.client.submit(step, total, est, alpha, key=f"{key}-step-{self.name}")

    def submit_iteration(self, k: int, est: Any, settings: Settings) -> tuple[Any, Any]:
        """All tasks of iteration ``k``; returns the futures of the new estimates and metrics."""
        tag, alpha = f"it{k}-{uuid.uuid4().hex[:6]}", settings.regularisation
        parts = [
            self._on(
                w,
                update_task,
                self.name,
                est,
                settings.beta,
                settings.noise_bound,
                key=f"update-{tag}-{i}",
            )
            for i, w in enumerate(self.workers)
        ]
        update = self._reduce(parts, f"update-sum-{tag}")
        new = self.client.submit(object_step, update, est, alpha, key=f"object-{tag}-{self.name}")
        for p in range(settings.overlap_passes):
            if p > 0:
                new = self._overlap_pass(
                    object_partials_task, object_step, new, alpha, f"o-{tag}-{p}"
                )
            if k >= settings.probe_update_start:
                new = self._overlap_pass(
                    probe_partials_task, probe_step, new, alpha, f"p-{tag}-{p}"
                )
        new = self.client.submit(
            finish_step, new, settings.orthogonalise_probe, key=f"finish-{tag}-{self.name}"
        )
        stats = self.client.submit(stats_task, update, est, new, key=f"stats-{tag}-{self.name}")
        return new, stats

    def wait(self, future: Any) -> Any:
        """The future's result, raising :class:`WorkerLost` as soon as a view holder is gone."""
        # Poll done() rather than result(timeout=...): on this distributed version a result()
        # that times out cancels the future, and the next call fails.
        next_check = time.monotonic() + 0.5
        while not future.done():
            time.sleep(0.01)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + 0.5
            alive = set(self.client.scheduler_info()["workers"])
            gone = [w for w in self.workers if w not in alive]
            if gone:
                raise WorkerLost(", ".join(gone))
        if future.status == "cancelled":
            # the client lost contact with the scheduler for a moment (busy or restarted
            # machine): its futures are cancelled, but the workers still hold their views
            raise WorkerLost("none (the client's futures were cancelled)")
        return future.result()

    def recover(self, sync: SyncPoint, gone: str) -> Any:
        """Move lost workers' frames to live workers and restart from ``sync``."""
        alive = sorted(self.client.scheduler_info()["workers"])
        self.placement, moved = reassign(self.placement, alive, self.config.cluster.n_workers)
        for worker, ranges in moved.items():
            n_moved = sum(b - a for a, b in ranges)
            log.warning("%d frames of lost worker(s) %s are re-read by %s", n_moved, gone, worker)
        if moved:
            self.load(moved, self.good)
        log.warning(
            "restarting from iteration %d with exit waves rebuilt from P and O", sync.iteration
        )
        return self.reset(sync.estimates)

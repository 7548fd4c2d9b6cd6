"""Client side of a distributed run: placement, the per-iteration task graph, progress.

Every iteration is submitted as futures (DESIGN.md "Data flow on a cluster"; the tasks are in
:mod:`ptychograph.worker_tasks`):

    update_task on each worker  ->  tree of combine  ->  object_step
    [probe_partials_task on each worker -> tree -> probe_step]       (from probe_update_start)
    [object / probe passes again]                                    (overlap_passes - 1 times)
    finish_step (orthogonalise)  ->  next iteration's update_task inputs
    stats_task (error, eps_P, eps_O)  ->  the client, for progress and history

The client stays ``lookahead`` iterations ahead of the one it reports, and holds references
only to the newest estimates and the pending metrics. Futures alone would still keep their
lineage (the scheduler keeps every released ancestor of a wanted future so that it could
recompute it), so every ``sync_every`` iterations the client fetches the estimates (and the
running average) and scatters them again as fresh data: the old chain is then forgotten, and the
scheduler's task count and the workers' memory stay flat however long the run.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.config import Config
from ptychograph.solver import Callback, Settings
from ptychograph.state import History, State
from ptychograph.worker_tasks import (
    Estimates,
    FrameStats,
    ViewStore,
    accumulate,
    combine,
    finish_step,
    init_task,
    load_task,
    object_partials_task,
    object_step,
    probe_partials_task,
    probe_step,
    stats_task,
    update_task,
)

log = logging.getLogger("ptychograph")


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


def select_workers(client: Any, limit: int | None, given: Sequence[str] | None) -> list[str]:
    """Worker addresses to use: ``given``, else the client's, at most ``limit`` of them."""
    from ptychograph.errors import InputError

    workers = list(given) if given else sorted(client.scheduler_info()["workers"])
    if not workers:
        raise InputError("cluster", "the cluster has no workers")
    return workers[:limit] if limit else workers


class DaskRun:
    """One reconstruction's footprint on a cluster: a worker plugin and its tasks."""

    def __init__(self, client: Any, workers: list[str]) -> None:
        self.client = client
        self.workers = workers
        self.name = f"ptychograph-{uuid.uuid4().hex[:12]}"
        client.register_plugin(ViewStore(), name=self.name)

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
            paired = [
                self.client.submit(
                    combine, *futures[i : i + 2], key=f"{key}-{level}-{i}-{self.name}"
                )
                for i in range(0, len(futures), 2)
            ]
            futures, level = paired, level + 1
        return futures[0]

    def load(
        self,
        path: Path,
        ranges: list[list[tuple[int, int]]],
        origins: np.ndarray,
        good: np.ndarray | None,
        config: Config,
    ) -> FrameStats:
        """Every worker reads its own frames from the store; returns the reduced frame sums."""
        rec = config.reconstruction
        futures = []
        for i, (worker, mine) in enumerate(zip(self.workers, ranges, strict=True)):
            rows = np.concatenate([np.arange(a, b) for a, b in mine])
            futures.append(
                self._on(
                    worker,
                    load_task,
                    self.name,
                    str(path),
                    mine,
                    origins[rows],
                    good,
                    rec.precision,
                    config.cluster.backend,
                    rec.batch_size,
                    key=f"load-{i}",
                )
            )
        stats: FrameStats = self._reduce(futures, "frame-sum").result()
        return stats

    def init(self, state: State) -> Any:
        """Create psi = phi on every worker; returns the future of the initial estimates."""
        [est] = self.client.scatter([Estimates(state.probe, state.obj)], hash=False)
        counts = [
            self._on(w, init_task, self.name, est, key=f"init-{i}")
            for i, w in enumerate(self.workers)
        ]
        self.client.gather(counts)
        return est

    def submit_iteration(self, k: int, est: Any, settings: Settings) -> tuple[Any, Any]:
        """All tasks of iteration ``k``; returns the futures of the new estimates and metrics."""
        tag = f"it{k}"
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
        new = self.client.submit(
            object_step, update, est, settings.regularisation, key=f"object-{tag}-0-{self.name}"
        )
        for p in range(settings.overlap_passes):
            if p > 0:
                parts = [
                    self._on(w, object_partials_task, self.name, new, key=f"opart-{tag}-{p}-{i}")
                    for i, w in enumerate(self.workers)
                ]
                new = self.client.submit(
                    object_step,
                    self._reduce(parts, f"osum-{tag}-{p}"),
                    new,
                    settings.regularisation,
                    key=f"object-{tag}-{p}-{self.name}",
                )
            if k >= settings.probe_update_start:
                parts = [
                    self._on(w, probe_partials_task, self.name, new, key=f"ppart-{tag}-{p}-{i}")
                    for i, w in enumerate(self.workers)
                ]
                new = self.client.submit(
                    probe_step,
                    self._reduce(parts, f"psum-{tag}-{p}"),
                    new,
                    settings.regularisation,
                    key=f"probe-{tag}-{p}-{self.name}",
                )
        new = self.client.submit(
            finish_step, new, settings.orthogonalise_probe, key=f"finish-{tag}-{self.name}"
        )
        stats = self.client.submit(stats_task, update, est, new, key=f"stats-{tag}-{self.name}")
        return new, stats

    def rebase(self, future: Any) -> Any:
        """The same value as a fresh future with no lineage (fetched, then scattered again)."""
        value = future.result()
        [fresh] = self.client.scatter([value], workers=self.workers, hash=False)
        return fresh

    def iterate(
        self,
        est: Any,
        state: State,
        settings: Settings,
        lookahead: int,
        callback: Callback | None = None,
        sync_every: int = 10,
    ) -> tuple[State, History]:
        """Run the iterations with ``lookahead`` submitted ahead; returns final state, history."""
        history = History()
        pending: deque[Any] = deque()
        average_from = settings.iterations - int(round(settings.average_last * settings.iterations))
        total = None
        last = time.perf_counter()
        for k in range(state.iteration, settings.iterations):
            est, stats = self.submit_iteration(k, est, settings)
            if k >= average_from:
                total = self.client.submit(accumulate, total, est, key=f"avg-{k}-{self.name}")
            pending.append(stats)
            if (k + 1) % sync_every == 0 and k + 1 < settings.iterations:
                est = self.rebase(est)
                total = None if total is None else self.rebase(total)
            while len(pending) > lookahead or (k == settings.iterations - 1 and pending):
                error, probe_change, object_change = pending.popleft().result()
                now = time.perf_counter()
                history.append(error, probe_change, object_change, now - last)
                last = now
                if callback is not None:
                    callback(state.iteration + len(history), history)
        final: Estimates = est.result()
        count = settings.iterations - max(average_from, state.iteration)
        if total is not None and count > 1:
            summed: Estimates = total.result()
            return State(summed.probe / count, summed.obj / count, settings.iterations), history
        return State(final.probe, final.obj, settings.iterations), history


def run_distributed(
    client: Any,
    store: Path,
    config: Config,
    callback: Callback | None = None,
    workers: Sequence[str] | None = None,
) -> tuple[State, History, Any]:
    """The whole distributed run on ``client``; returns final state, history and problem."""
    from ptychograph.engine import ScanSummary, prepare, scan_origins, settings_from
    from ptychograph.geometry import object_shape
    from ptychograph.io.zarr_store import read_store_info

    info = read_store_info(store)
    origins = scan_origins(info.positions, info.geometry, config)
    object_shape(origins, info.geometry.frame_shape, config.reconstruction.object_margin)
    chosen = select_workers(client, config.cluster.n_workers, workers)
    ranges = assign_ranges(info.n_frames, info.chunk_frames, len(chosen))
    log.info(
        "%d frames on %d workers: %s",
        info.n_frames,
        len(chosen),
        ", ".join(str(sum(b - a for a, b in r)) for r in ranges),
    )
    good = None if info.mask is None else ~info.mask
    run = DaskRun(client, chosen)
    try:
        stats = run.load(store, ranges, origins, good, config)
        summary = ScanSummary(
            info.positions,
            info.geometry,
            info.mask,
            info.illumination,
            stats.frame_sum / stats.n_frames,
        )
        problem = prepare(summary, config)
        est = run.init(problem.state)
        state, history = run.iterate(
            est,
            problem.state,
            settings_from(config),
            config.cluster.lookahead,
            callback,
            config.cluster.sync_every,
        )
    finally:
        run.close()
    return state, history, problem

"""The iteration loop of a distributed run: sync points and what happens at them.

A *sync point* is where the client holds the estimates (DESIGN.md "Data flow on a cluster"):
every ``cluster.sync_every`` iterations, at the end, and whenever a :class:`SyncHook` is due
(checkpoints, previews, the automatic choice of the probe-mode count). At a sync point the
client fetches the estimates and the running average and scatters them again as fresh data,
which cuts the futures' lineage; a hook may return new estimates (e.g. with another number of
probe modes), after which every exit wave is rebuilt as psi = P O. A lost worker restarts the
run from the latest sync point (:meth:`~ptychograph.distributed_run.DaskRun.recover`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptychograph.auto_modes import mode_hooks
from ptychograph.config import Config
from ptychograph.distributed_run import (
    MAX_RECOVERIES,
    DaskRun,
    SyncPoint,
    WorkerLost,
    assign_ranges,
    plan_memory,
    select_workers,
)
from ptychograph.solver import Callback, Settings
from ptychograph.state import History, State
from ptychograph.worker_tasks import Estimates, accumulate

log = logging.getLogger("ptychograph")


@dataclass(frozen=True)
class SyncHook:
    """Something to do at sync points: every ``every`` iterations (and at the end if
    ``at_end``), while fewer than ``until`` iterations are done. ``action`` may return new
    estimates to continue from (the exit waves are then rebuilt), or None."""

    every: int
    action: Callable[[SyncPoint], Estimates | None]
    at_end: bool = False
    until: int | None = None

    def due(self, done: int, last_one: bool) -> bool:
        if self.until is not None and done >= self.until:
            return False
        return done % self.every == 0 or (self.at_end and last_one)


def run_iterations(
    run: DaskRun,
    sync: SyncPoint,
    settings: Settings,
    callback: Callback | None = None,
    hooks: Sequence[SyncHook] = (),
) -> SyncPoint:
    """Iterate from ``sync`` to ``settings.iterations``; returns the final sync point.

    A lost worker restarts the run from the latest sync point (at most
    :data:`~ptychograph.distributed_run.MAX_RECOVERIES` times).
    """
    est = run.reset(sync.estimates)
    recoveries = 0
    while True:
        try:
            return _iterate(run, est, sync, settings, callback, hooks)
        except WorkerLost as lost:
            recoveries += 1
            if recoveries > MAX_RECOVERIES:
                raise
            log.warning("worker(s) %s lost; recovery %d of %d", lost, recoveries, MAX_RECOVERIES)
            assert run.last_sync is not None
            sync = run.last_sync
            est = run.recover(sync, str(lost))


def _iterate(
    run: DaskRun,
    est: Any,
    sync: SyncPoint,
    settings: Settings,
    callback: Callback | None,
    hooks: Sequence[SyncHook],
) -> SyncPoint:
    cluster = run.config.cluster
    run.last_sync = sync
    history = sync.history.copy()
    average_from = settings.iterations - int(round(settings.average_last * settings.iterations))
    total, count = None, sync.average_count
    if sync.average is not None:
        [total] = run.client.scatter([sync.average], workers=run.workers, hash=False)
    pending: deque[Any] = deque()
    last = time.perf_counter()
    for k in range(sync.iteration, settings.iterations):
        est, stats = run.submit_iteration(k, est, settings)
        if k >= average_from:
            total = run.client.submit(accumulate, total, est, key=f"avg-{k}-{uuid.uuid4().hex[:6]}")
            count += 1
        pending.append(stats)
        done = k + 1
        last_one = done == settings.iterations
        due = [hook for hook in hooks if hook.due(done, last_one)]
        is_sync = bool(due) or done % cluster.sync_every == 0 or last_one
        while pending and (len(pending) > cluster.lookahead or is_sync):
            error, probe_change, object_change = run.wait(pending.popleft())
            now = time.perf_counter()
            history.append(error, probe_change, object_change, now - last)
            last = now
            if callback is not None:
                callback(len(history), history)
        if is_sync:
            estimates = run.wait(est)
            average = None if total is None else run.wait(total)
            sync = SyncPoint(done, estimates, average, history.copy(), count)
            run.last_sync = sync
            restart = None
            for hook in due:
                restart = hook.action(sync) or restart
            if restart is not None:
                sync = SyncPoint(done, restart, average, sync.history, count)
                run.last_sync = sync
            if done < settings.iterations:
                if restart is not None:
                    est = run.reset(restart)
                else:
                    [est] = run.client.scatter([estimates], workers=run.workers, hash=False)
                total = None
                if average is not None:
                    [total] = run.client.scatter([average], workers=run.workers, hash=False)
    return sync


def final_state(sync: SyncPoint) -> State:
    """The result: the average over the window when there is one, else the last estimates."""
    count = sync.average_count
    if sync.average is not None and count > 1:
        return State(sync.average.probe / count, sync.average.obj / count, sync.iteration)
    return State(sync.estimates.probe, sync.estimates.obj, sync.iteration)


def run_distributed(
    client: Any,
    store: Path,
    config: Config,
    callback: Callback | None = None,
    workers: Sequence[str] | None = None,
    resume: SyncPoint | None = None,
    hooks: Sequence[SyncHook] = (),
) -> tuple[State, History, Any]:
    """The whole distributed run on ``client``; returns final state, history and problem."""
    from ptychograph.engine import ScanSummary, prepare, scan_origins, settings_from
    from ptychograph.geometry import object_shape
    from ptychograph.io import apply_geometry
    from ptychograph.io.zarr_store import read_store_info

    info = read_store_info(store)
    info = dataclasses.replace(info, geometry=apply_geometry(info.geometry, config.data.geometry))
    origins = scan_origins(info.positions, info.geometry, config)
    shape = object_shape(origins, info.geometry.frame_shape, config.reconstruction.object_margin)
    chosen = select_workers(client, config.cluster.n_workers, workers)
    ranges = assign_ranges(info.n_frames, info.chunk_frames, len(chosen))
    log.info(
        "%d frames on %d workers: %s",
        info.n_frames,
        len(chosen),
        ", ".join(str(sum(b - a for a, b in r)) for r in ranges),
    )
    run = DaskRun(client, store, origins, config)
    run.good = None if info.mask is None else ~info.mask
    run.placement = dict(zip(chosen, ranges, strict=True))
    run.frame_shape, run.obj_shape = info.geometry.frame_shape, shape
    run.batch_size = plan_memory(client, run.placement, info.geometry.frame_shape, shape, config)
    try:
        stats = run.load(run.placement, run.good)
        mean = stats.frame_sum / stats.n_frames
        summary = ScanSummary(info.positions, info.geometry, info.mask, info.illumination, mean)
        problem = prepare(summary, config)
        start = resume or SyncPoint(0, Estimates(problem.state.probe, problem.state.obj), None)
        settings = settings_from(config)
        final = run_iterations(run, start, settings, callback, [*hooks, *mode_hooks(config)])
    finally:
        run.close()
    return final_state(final), final.history, problem

"""Reconstructing a scan while it is measured: ``ptychograph run CONFIG --follow``
(docs/design.md, "Live reconstruction").

The frames store is the one a :class:`ptychograph.live.FrameWriter` grows. The run

1. waits until the start rule holds (:meth:`FollowConfig.frames_to_start`: ``follow.
   start_frames``, or ``follow.start_fraction`` of the expected frames when that is more) or the
   scan is complete;
2. iterates DM over the frames it has, in stretches of ``follow.check_every`` iterations; at
   the sync point after each stretch it looks at the store: new chunks go to the least loaded
   workers (workers that joined the cluster first, and they take views from the busiest), their
   exit waves start from the current probe and object, the object grows when new views leave it
   (:class:`~ptychograph.growth.ScanFrame`), and the next iteration includes them;
3. when the completion mark appears - or no frame came for ``follow.idle_timeout`` seconds,
   which it says - it moves to the batch layout of every frame and finishes with
   ``follow.final_iterations`` DM iterations (averaged as a batch run averages its DM
   iterations) and ``reconstruction.ml_iterations`` of ML, and returns a result the engine
   writes as it writes a batch run's.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.algorithms import (
    DifferenceMap,
    MaximumLikelihood,
    PositionCorrection,
    Stage,
    dm_options,
    plan_from,
)
from ptychograph.checkpoint import FinalSyncPoint
from ptychograph.config import Config
from ptychograph.driver import Callback, Driver, DriverSettings, SyncHook
from ptychograph.errors import InputError
from ptychograph.executors import WorkerLost
from ptychograph.executors.dask import DaskExecutor
from ptychograph.executors.placement import projected_need
from ptychograph.executors.worker import FrameStats
from ptychograph.geometry import object_shape
from ptychograph.growth import ScanFrame, adopt_task
from ptychograph.io import apply_geometry
from ptychograph.io.zarr_store import chunk_ranges, read_frames, read_store_info
from ptychograph.memory import worker_limits
from ptychograph.noise import SAMPLE_FRAMES, photon_unit
from ptychograph.problem import Problem, Result, ScanSummary, prepare
from ptychograph.progress import ProgressReporter
from ptychograph.scan_watch import ScanWatch
from ptychograph.solve import conclude
from ptychograph.state import SyncPoint

log = logging.getLogger("ptychograph")


def follow_on_cluster(
    client: Any,
    store: Path,
    config: Config,
    progress: Callback | None = None,
    workers: list[str] | None = None,
    start: SyncPoint | None = None,
    hooks: Sequence[SyncHook] = (),
) -> Result:
    """The whole followed run on ``client``'s workers (module docstring)."""
    info = read_store_info(store)
    geometry = apply_geometry(info.geometry, config.data.geometry)
    rec, data = config.reconstruction, config.data
    n_frames = info.n_frames
    if start is not None and start.state.origins is not None:
        n_frames = len(start.state.origins)
        if n_frames > info.n_frames:
            raise InputError(
                "--resume", f"the checkpoint holds {n_frames} frames, the store {info.n_frames}"
            )
        positions = info.positions[:n_frames]
        frame = ScanFrame.resumed(positions, start.state.origins, geometry, rec, data)
        origins = start.state.origins
        obj_shape = (int(start.state.obj.shape[1]), int(start.state.obj.shape[2]))
    else:
        positions = info.positions
        frame = ScanFrame.start(positions, geometry, rec, data)
        origins = frame.origins(positions)
        obj_shape = object_shape(origins, geometry.frame_shape, rec.object_margin)
    good = None if info.mask is None else ~info.mask
    executor, stats = DaskExecutor.open(
        client,
        store,
        origins,
        geometry.frame_shape,
        obj_shape,
        good,
        config,
        workers,
        info.chunk_frames,
    )
    try:
        unit = photon_unit(read_frames(store, 0, min(n_frames, SAMPLE_FRAMES)))
        if stats.clipped:
            log.warning("%d negative pixels clipped to zero (data.negative: clip)", stats.clipped)
        mean = stats.frame_sum / stats.n_frames
        summary = ScanSummary(positions, geometry, info.mask, info.illumination, mean, unit)
        problem = prepare(summary, config)
        follower = Follower(executor, problem, config, frame, stats, progress, hooks)
        return follower.run(start, info.chunk_frames)
    finally:
        executor.close()


class Follower:
    """One followed run: stretches of DM while the scan grows, then the final iterations."""

    def __init__(
        self,
        executor: DaskExecutor,
        problem: Problem,
        config: Config,
        frame: ScanFrame,
        stats: FrameStats,
        progress: Callback | None,
        hooks: Sequence[SyncHook],
    ) -> None:
        self.executor, self.problem, self.config = executor, problem, config
        self.frame, self.progress, self.hooks = frame, progress, list(hooks)
        self.watch = ScanWatch(executor.store, config)
        self.positions = problem.summary.positions
        self.stats = stats  # the sum of the frames held, for the mean frame
        self.chunk_frames = 1
        rec = config.reconstruction
        stage = Stage(DifferenceMap(dm_options(rec, problem.summary)), 0, sys.maxsize)
        self.growth_plan = [stage]

    def run(self, start: SyncPoint | None, chunk_frames: int) -> Result:
        self.chunk_frames = chunk_frames
        sync = start or SyncPoint(self.problem.state)
        self.executor.reset(sync.state)
        if isinstance(start, FinalSyncPoint):  # resumed within the final iterations
            log.info("continuing the final iterations begun at %d", start.final_start)
            return self._finish(sync, start.final_start)
        sync = self._grow(sync)
        self._warn_projected()
        while not self.watch.ended:
            sync = self._stretch(sync)
            sync = self._grow(sync)
        if self.watch.mark.complete:
            log.info(
                "the scan is complete (%s) at iteration %d", self.watch.describe(), sync.iteration
            )
        else:
            log.warning(
                "no new frame for %g s and no completion mark (follow.idle_timeout): finishing "
                "with the %s measured so far",
                self.config.follow.idle_timeout,
                self.watch.describe(),
            )
        return self._finish(sync)

    def _note(self, total: int | None = None) -> None:
        if isinstance(self.progress, ProgressReporter):
            self.progress.note = self.watch.describe()
            if total is not None:
                self.progress.total = total

    def _stretch(self, sync: SyncPoint) -> SyncPoint:
        """``follow.check_every`` DM iterations over the views held, exit waves kept."""
        every, cluster = self.config.follow.check_every, self.config.cluster
        settings = DriverSettings(sync.iteration + every, every, cluster.lookahead)
        hooks = [dataclasses.replace(hook, at_end=False) for hook in self.hooks]
        driver = Driver(self.executor, self.growth_plan, settings, self.progress, hooks)
        return driver.run(sync, fresh=False)

    def _grow(self, sync: SyncPoint) -> SyncPoint:
        """Take the frames published since the last look (and workers that joined)."""
        mark = self.watch.look()
        self._note()
        state = sync.state
        assert state.origins is not None
        held = len(state.origins)
        if mark.frames <= held and not self._joined():
            return sync
        positions = read_store_info(self.executor.store).positions[: max(held, mark.frames)]
        state = self.frame.extend(state, positions)
        ranges = [(a, b) for a, b in chunk_ranges(len(positions), self.chunk_frames) if b > held]
        ranges = [(max(a, held), b) for a, b in ranges]
        ex = self.executor
        try:
            shape = (int(state.obj.shape[1]), int(state.obj.shape[2]))
            new = ex.extend(np.asarray(state.origins), ranges, shape)
            count = ex.fetch(ex.map_reduce(adopt_task, ex.publish(state), key="adopt"))
        except WorkerLost as lost:
            log.warning("worker(s) %s lost while taking new frames: exit waves rebuilt", lost)
            ex.recover(SyncPoint(state), str(lost))
            count = len(positions)
        if count != len(positions):  # never iterate with views missing or twice
            raise RuntimeError(f"{count} views held for {len(positions)} frames")
        if new is not None:
            self.stats = self.stats + new
            if new.clipped:
                log.warning(
                    "%d negative pixels of the new frames clipped to zero (data.negative: clip)",
                    new.clipped,
                )
        self.positions = positions
        if len(positions) > held:
            log.info(
                "iteration %d: +%d frames (%s), object %d x %d",
                sync.iteration,
                len(positions) - held,
                self.watch.describe(),
                *state.obj.shape[1:],
            )
        return dataclasses.replace(sync, state=state.replace(rotation=None))

    def _warn_projected(self) -> None:
        """Warn at the start when the frames the scan expects will not fit on the workers."""
        expected, ex = self.watch.mark.expected_frames, self.executor
        if expected is None or expected <= len(self.positions):
            return
        limits = worker_limits(ex.client, ex.workers)
        why = projected_need(limits, expected, *ex.sizes, self.config)
        if why is not None:
            log.warning("%s; the run stops when the frames no longer fit, unless workers join", why)

    def _joined(self) -> bool:
        """Whether workers joined that the run may use."""
        ex, limit = self.executor, self.config.cluster.n_workers
        if ex.given is not None or (limit is not None and len(ex.placement) >= limit):
            return False
        return any(w not in ex.placement for w in ex.client.scheduler_info()["workers"])

    def _finish(self, sync: SyncPoint, resumed_at: int | None = None) -> Result:
        """Every frame in the batch layout, then the final DM and ML iterations (from
        ``sync``, a checkpoint of them, when they began at iteration ``resumed_at``)."""
        settled = resumed_at is not None
        state = sync.state if settled else self.frame.settle(sync.state, self.positions)
        rec, follow, cluster = self.config.reconstruction, self.config.follow, self.config.cluster
        summary = dataclasses.replace(
            self.problem.summary,
            positions=self.positions,
            mean_frame=self.stats.frame_sum / max(self.stats.n_frames, 1),
        )
        problem = Problem(summary, state)
        first = state.iteration if resumed_at is None else resumed_at
        final = follow.final_iterations
        total = first + final + rec.ml_iterations
        self._note(total)
        settings = DriverSettings(
            total,
            cluster.sync_every,
            cluster.lookahead,
            rec.average_last,
            average_stop=first + final,
            window_length=int(round(rec.average_last * final)),
        )
        plan = final_plan(self.config, summary, np.asarray(state.origins), first)
        hooks = [
            dataclasses.replace(hook, action=functools.partial(_in_final, hook.action, first))
            for hook in self.hooks
        ]
        driver = Driver(self.executor, plan, settings, self.progress, hooks)
        start = sync if settled else SyncPoint(state, None, 0, sync.history)
        last = driver.run(start, fresh=False)
        return conclude(self.executor, driver, problem, self.config, start, last)


def _in_final(action: Callable[[SyncPoint], Any], first: int, sync: SyncPoint) -> Any:
    """``action`` on ``sync`` marked as one of the final iterations begun at ``first``."""
    return action(FinalSyncPoint.of(sync, first))


def final_plan(
    config: Config, summary: ScanSummary, origins: np.ndarray, first: int
) -> list[Stage]:
    """The batch plan of ``follow.final_iterations`` DM iterations (and the ML ones), moved to
    start at iteration ``first``; position correction starts within the final iterations."""
    rec = config.reconstruction.model_copy(update={"iterations": config.follow.final_iterations})
    return [
        Stage(_moved(stage.algorithm, first), stage.start + first, stage.stop + first)
        for stage in plan_from(rec, summary, origins)
    ]


def _moved(algorithm: Any, first: int) -> Any:
    """``algorithm`` with the iteration numbers in its options moved by ``first``."""
    if isinstance(algorithm, PositionCorrection):
        return PositionCorrection(_moved(algorithm.inner, first), algorithm.options.moved(first))
    if isinstance(algorithm, MaximumLikelihood):
        ml = dataclasses.replace(algorithm.options, stop=algorithm.options.stop + first)
        return MaximumLikelihood(ml)
    return algorithm

"""The one iteration loop of every run, in-process or on a cluster (docs/design.md, "Driver").

:class:`Driver` runs a plan of algorithm stages through a
:class:`~ptychograph.executors.RunExecutor`. It stays ``lookahead`` iterations ahead of the one
it reports, keeps the running sum of the averaging window, and stops at *sync points*: every
``sync_every`` iterations, at the end, and whenever a :class:`SyncHook` is due (checkpoints,
previews, the automatic probe-mode count). At a sync point the client holds the state; it is
checked for NaN/Inf, the hooks run (one may return a new state, after which every exit wave is
rebuilt as psi = P O), and the state is published again as fresh data, which cuts the futures'
lineage on a cluster so that the scheduler's state stays flat.

The averaging window covers the last ``average_last`` of the first ``average_stop`` iterations
(DM's). When a refinement stage follows (ML), ``average_stop`` is a sync point too: the better
of the window's average and the last iterate (:func:`choose_final`) is where the refinement
starts, and nothing is averaged after it.

A lost worker restarts the run from the latest sync point (at most ``max_recoveries`` times); a
non-finite error or estimate stops it with :class:`Diverged` before any hook sees it, so the last
checkpoint stays the last good state.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ptychograph.algorithms.base import IterationStats, Stage, stage_of
from ptychograph.algorithms.fit import model_error_task
from ptychograph.errors import Diverged
from ptychograph.executors import RunExecutor, WorkerLost
from ptychograph.state import History, State, SyncPoint, accumulate, window_start

log = logging.getLogger("ptychograph")

#: Called after each reported iteration with the number of completed iterations and the history.
Callback = Callable[[int, History], None]


@dataclass(frozen=True)
class SyncHook:
    """Something to do at sync points: every ``every`` iterations (and at the end if
    ``at_end``), while fewer than ``until`` iterations are done. ``action`` may return a new
    state to continue from (the exit waves are then rebuilt), or None."""

    every: int
    action: Callable[[SyncPoint], State | None]
    at_end: bool = False
    until: int | None = None

    def due(self, done: int, last_one: bool) -> bool:
        if self.until is not None and done >= self.until:
            return False
        return done % self.every == 0 or (self.at_end and last_one)


@dataclass(frozen=True)
class DriverSettings:
    """How the loop runs: total ``iterations``, sync and lookahead, averaging window (the last
    ``average_last`` of the first ``average_stop`` iterations; None: of all of them)."""

    iterations: int
    sync_every: int = 10
    lookahead: int = 2
    average_last: float = 0.0
    max_recoveries: int = 5
    average_stop: int | None = None
    #: Iterations averaged, when not ``average_last`` of ``window_stop`` (a followed scan
    #: averages over its final iterations only).
    window_length: int | None = None

    @property
    def window_stop(self) -> int:
        """The iteration after which nothing is averaged."""
        return self.iterations if self.average_stop is None else self.average_stop

    @property
    def window_first(self) -> int:
        """The first iteration (0-based) whose estimates are averaged."""
        if self.window_length is not None:
            return self.window_stop - self.window_length
        return window_start(self.window_stop, self.average_last)


class Driver:
    """Runs ``plan`` on ``executor``; see the module docstring."""

    def __init__(
        self,
        executor: RunExecutor,
        plan: Sequence[Stage],
        settings: DriverSettings,
        callback: Callback | None = None,
        hooks: Sequence[SyncHook] = (),
    ) -> None:
        self.executor = executor
        self.plan = list(plan)
        self.settings = settings
        self.callback = callback
        self.hooks = list(hooks)
        self.last_sync: SyncPoint | None = None
        #: The choice made where the averaged stage handed over to a refinement, if it did.
        self.handover: Final | None = None

    def run(self, start: SyncPoint, fresh: bool = True) -> SyncPoint:
        """Iterate from ``start`` to ``settings.iterations``; returns the final sync point.
        ``fresh``: set every exit wave to P O first; False keeps them (a followed scan's next
        stretch continues from the exit waves of the last one)."""
        self.last_sync = start
        ex = self.executor
        handle = ex.reset(start.state) if fresh else ex.publish(start.state)
        recoveries = 0
        while True:
            try:
                return self._iterate(handle, self.last_sync)
            except WorkerLost as lost:
                recoveries += 1
                if recoveries > self.settings.max_recoveries:
                    raise
                log.warning(
                    "worker(s) %s lost; recovery %d of %d",
                    lost,
                    recoveries,
                    self.settings.max_recoveries,
                )
                handle = self.executor.recover(self.last_sync, str(lost))

    def _iterate(self, handle: Any, sync: SyncPoint) -> SyncPoint:
        ex, settings = self.executor, self.settings
        history = sync.history.copy()
        window_stop = settings.window_stop
        average_from = settings.window_first
        count = sync.average_count
        total = None if sync.average is None else ex.publish(sync.average)
        pending: deque[tuple[int, Any]] = deque()
        last = time.perf_counter()
        for k in range(sync.iteration, settings.iterations):
            handle, stats = stage_of(self.plan, k).algorithm.iterate(ex, handle, k)
            if average_from <= k < window_stop:
                total = ex.apply(accumulate, total, handle, key=f"average-{k}")
                count += 1
            pending.append((k + 1, stats))
            done = k + 1
            last_one = done == settings.iterations
            handover = done == window_stop and not last_one
            due = [hook for hook in self.hooks if hook.due(done, last_one)]
            is_sync = bool(due) or done % settings.sync_every == 0 or last_one or handover
            while pending and (len(pending) > settings.lookahead or is_sync):
                number, future = pending.popleft()
                self._report(number, ex.fetch(future), history, time.perf_counter() - last)
                last = time.perf_counter()
            if not is_sync:
                continue
            state = ex.fetch(handle)
            bad = state.nonfinite()
            if bad is not None:
                raise Diverged(done, bad)
            average = None if total is None else ex.fetch(total)
            sync = self.last_sync = SyncPoint(state, average, count, history.copy())
            restart = None
            if handover:
                self.handover = choose_final(ex, sync)
                if self.handover.chosen != "last":
                    restart = self.handover.state
                average, count = None, 0
                sync = self.last_sync = SyncPoint(self.handover.state, None, 0, sync.history)
            for hook in due:
                restart = hook.action(sync) or restart
            if restart is not None:
                sync = self.last_sync = SyncPoint(restart, average, count, sync.history)
            if done < settings.iterations:
                handle = ex.reset(restart) if restart is not None else ex.publish(sync.state)
                total = None if average is None else ex.publish(average)
        return sync

    def _report(self, number: int, stats: IterationStats, history: History, dt: float) -> None:
        values = (stats.error, stats.probe_change, stats.object_change)
        if not all(math.isfinite(v) for v in values):
            names = ("Fourier error", "probe change", "object change")
            raise Diverged(
                number, next(n for n, v in zip(names, values, strict=True) if not math.isfinite(v))
            )
        history.append(*values, dt)
        if self.callback is not None:
            self.callback(len(history), history)


@dataclass(frozen=True)
class Final:
    """The returned estimates: ``state``, which candidate it is (``"average"`` of the window or
    ``"last"`` iterate) and the model error R of each candidate that was compared."""

    state: State
    chosen: str
    model_error: dict[str, float]


def choose_final(executor: RunExecutor, sync: SyncPoint) -> Final:
    """The average over the window when it holds two or more iterates and its model fits the
    data at least as well as the last iterate's (model error R on the resident views), else
    the last iterate. Averaging mixes re-orthogonalised modes and a drifting global phase, so
    on some data it fits worse; a run never returns estimates worse than its last iterate."""
    averaged = sync.averaged()
    if averaged is None:
        return Final(sync.state, "last", {})
    errors: dict[str, float] = {}
    for name, state in (("last", sync.state), ("average", averaged)):
        handle = executor.publish(state)
        terms = executor.fetch(executor.map_reduce(model_error_task, handle, key=f"fit-{name}"))
        errors[name] = float(terms.value)
    if math.isfinite(errors["average"]) and errors["average"] <= errors["last"]:
        return Final(averaged, "average", errors)
    log.info(
        "the average of the last %d iterates fits the data worse (R %.4g) than the last "
        "iterate (R %.4g): returning the last iterate",
        sync.average_count,
        errors["average"],
        errors["last"],
    )
    return Final(sync.state, "last", errors)

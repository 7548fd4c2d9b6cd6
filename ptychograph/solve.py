"""One run of the configured plan on any executor: the driver, the hooks, the returned
estimates and what a user must be told about them (docs/design.md, "Driver").

:func:`drive` is shared by the in-process and the cluster paths of
:mod:`ptychograph.engine`.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

from ptychograph.algorithms import plan_from
from ptychograph.algorithms.positions import OUTLIER, error_task, stuck_views
from ptychograph.auto_modes import mode_hooks
from ptychograph.config import Config
from ptychograph.driver import Callback, Driver, DriverSettings, SyncHook, choose_final
from ptychograph.errors import Diverged
from ptychograph.executors import RunExecutor, WorkerLost
from ptychograph.problem import Problem, Result
from ptychograph.state import State, SyncPoint, no_progress

log = logging.getLogger("ptychograph")


def drive(
    executor: RunExecutor,
    problem: Problem,
    config: Config,
    progress: Callback | None = None,
    start: SyncPoint | None = None,
    hooks: Sequence[SyncHook] = (),
) -> Result:
    """Run the configured plan from ``start`` (or the problem's initial state) to the end."""
    rec, cluster = config.reconstruction, config.cluster
    plan = plan_from(rec, problem.summary, problem.origins)
    settings = DriverSettings(
        rec.total_iterations,
        cluster.sync_every,
        cluster.lookahead,
        rec.average_last,
        average_stop=rec.iterations,
    )
    driver = Driver(executor, plan, settings, progress, [*hooks, *mode_hooks(config)])
    start = start or SyncPoint(problem.state)
    if start.state.origins is None:
        start = dataclasses.replace(start, state=start.state.replace(origins=problem.origins))
    _say_photon_unit(problem.summary.photon_unit, rec.noise_bound)
    return conclude(executor, driver, problem, config, start, driver.run(start))


def conclude(
    executor: RunExecutor,
    driver: Driver,
    problem: Problem,
    config: Config,
    start: SyncPoint,
    last: SyncPoint,
) -> Result:
    """The result of ``driver``'s run from ``start`` to ``last``: the better of the window's
    average and the last iterate, checked finite; says when the run made no progress."""
    final = choose_final(executor, last)
    bad = final.state.nonfinite()
    if bad is not None:  # never an exit 0 with a non-finite value in the result
        raise Diverged(last.iteration, bad)
    idle = no_progress(start.state, final.state, last.history)
    if idle is not None:
        log.warning(
            "the run made no progress: %s; check the data (scaling, mask) and the settings", idle
        )
    if config.reconstruction.position_correction:
        _say_stuck_views(executor, final.state, problem.summary.photon_unit)
    if driver.handover is not None:  # refined after DM: say from which DM estimate
        errors = {f"dm_{name}": value for name, value in driver.handover.model_error.items()}
        chosen = f"refined from the DM {driver.handover.chosen}"
        return Result(final.state, last.history, problem, config, chosen, errors)
    return Result(final.state, last.history, problem, config, final.chosen, final.model_error)


def _say_photon_unit(unit: float, noise_bound: float) -> None:
    """Log how the frames' scale was read (docs/design.md, "Noise")."""
    if unit == 0 and noise_bound > 0:
        log.warning(
            "the frames are not photon counts (nor counts divided by a factor): the noise "
            "relaxation (reconstruction.noise_bound) is off"
        )
    elif unit != 1:
        log.info("the frames are photon counts scaled by 1/%.4g; noise_bound follows", 1 / unit)


def _say_stuck_views(executor: RunExecutor, state: State, unit: float) -> None:
    """Warn about the views that still fit their frames far worse than the median view after
    position correction (docs/design.md, "Position correction"): their positions may be
    wrong."""
    try:
        handle = executor.publish(state)
        rows = executor.fetch(executor.map_reduce(error_task, handle, unit, key="stuck"))
    except Exception as err:  # a diagnosis: it never fails a finished run
        why = f"worker(s) {err} lost" if isinstance(err, WorkerLost) else type(err).__name__
        log.warning("the corrected positions were not checked: %s", why)
        return
    stuck = stuck_views(rows)
    if stuck.size:
        shown = ", ".join(str(int(j)) for j in stuck[:10]) + (", ..." if stuck.size > 10 else "")
        log.warning(
            "%d view(s) fit their frames more than %g times worse than the median view after "
            "position correction (views %s, counted from 0, the worst first): their positions or "
            "frames may be wrong",
            stuck.size,
            OUTLIER,
            shown,
        )

"""The one driver: divergence stops a run loudly, a new algorithm plugs in without driver code,
and the in-process and Dask executors run the same algorithm code to the same result."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

import ptychograph.algorithms.dm as dm
from ptychograph.algorithms.base import Executor, Handle, IterationStats, Stage
from ptychograph.algorithms.dm import object_partials_task, object_step, update_task
from ptychograph.cli import main
from ptychograph.config import parse_config
from ptychograph.driver import Driver, DriverSettings, SyncHook
from ptychograph.engine import reconstruct, reconstruct_in_process
from ptychograph.errors import DIVERGED_EXIT, Diverged
from ptychograph.executors.local import LocalExecutor
from ptychograph.io.cxi import write_cxi
from ptychograph.problem import prepare
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.state import State, SyncPoint, relative_change


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=40, frame_size=32, photons=1e5, seed=5))
    path = tmp_path_factory.mktemp("scan") / "scan.cxi"
    write_cxi(path, sim.scan)
    return path


@pytest.fixture(scope="module")
def thread_client():  # type: ignore[no-untyped-def]
    """Workers in this process, so that a patched function reaches them."""
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _config(path: Path, out: Path, **rec):  # type: ignore[no-untyped-def]
    base = {"iterations": 8, "probe_modes": 2, "precision": "double", "seed": 1}
    base.update(rec)
    return parse_config(
        {
            "data": {"path": str(path)},
            "reconstruction": base,
            "output": {"path": str(out), "checkpoint_every": 2, "figure": False},
            "cluster": {"sync_every": 2},
        }
    )


def _poison_from(iteration: int, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Make the probe step return NaN from ``iteration`` (1-based) on."""
    real = dm.finish_step

    def finish(state: State, orthogonalise_probe: bool, k: int) -> State:
        new = real(state, orthogonalise_probe, k)
        if k + 1 >= iteration:
            return new.replace(probe=new.probe * np.nan)
        return new

    monkeypatch.setattr(dm, "finish_step", finish)


def test_divergence_stops_the_run_keeps_the_checkpoint_writes_nothing(
    scan_path, tmp_path, thread_client, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    config = _config(scan_path, tmp_path / "r.zarr")
    _poison_from(5, monkeypatch)
    with pytest.raises(Diverged, match=r"diverged at iteration 5 \(non-finite") as info:
        reconstruct(config, client=thread_client)
    assert info.value.iteration == 5
    assert not (tmp_path / "r.zarr").exists()
    checkpoint = config.output.checkpoint_path
    assert checkpoint.exists()
    monkeypatch.undo()
    # the checkpoint is the last good state: resume finishes the run with finite estimates
    result = reconstruct(config, client=thread_client, resume=True)
    assert len(result.history) == 8
    assert np.isfinite(result.state.probe).all() and np.isfinite(result.state.obj).all()
    assert (tmp_path / "r.zarr").exists()


def test_divergence_in_process_names_the_iteration(scan_path, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    config = _config(scan_path, tmp_path / "r.zarr")
    _poison_from(3, monkeypatch)
    with pytest.raises(Diverged) as info:
        reconstruct_in_process(config)
    assert info.value.iteration == 3
    assert "probe" in str(info.value) or "change" in str(info.value)


def test_cli_says_diverged_in_one_line(scan_path, tmp_path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    def diverging(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise Diverged(7, "object")

    monkeypatch.setattr("ptychograph.engine.reconstruct", diverging)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{path: {scan_path}}}\noutput: {{path: {tmp_path / 'r.zarr'}}}\n")
    code = main(["run", str(cfg)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == DIVERGED_EXIT
    assert err[-1] == "error: reconstruction diverged at iteration 7 (non-finite object)"


# ---------------------------------------------------------------- a new algorithm, no driver code
@dataclass(frozen=True)
class ObjectOnlyOptions:
    """Options of a toy algorithm defined only here: exit-wave update, object update."""

    beta: float = 1.0
    regularisation: float = 1e-2


class ObjectOnly:
    """An algorithm written in a test: uses only the executor interface and existing tasks."""

    name = "object-only"

    def __init__(self, options: ObjectOnlyOptions) -> None:
        self.options = options

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        alpha = self.options.regularisation
        update = executor.map_reduce(update_task, state, self.options.beta, 0.0, key="u")
        new = executor.apply(object_step, update, state, alpha, key="o")
        parts = executor.map_reduce(object_partials_task, new, key="op")
        new = executor.apply(object_step, parts, new, alpha, key="o2")
        new = executor.apply(_count, new, iteration, key="n")
        return new, executor.apply(_stats, update, state, new, key="s")


def _count(state: State, iteration: int) -> State:
    return state.replace(iteration=iteration + 1)


def _stats(update: dm.UpdateParts, old: State, new: State) -> IterationStats:
    return IterationStats(update.error.value, 0.0, relative_change(new.obj, old.obj))


def test_a_new_algorithm_chains_after_dm_without_driver_changes(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.algorithms import plan_from
    from ptychograph.engine import load_validated

    config = _config(scan_path, tmp_path / "r.zarr", iterations=12)
    scan, _ = load_validated(config)
    problem = prepare(scan, config)
    amplitudes = np.sqrt(scan.frames)
    seen: list[int] = []

    def executor() -> LocalExecutor:
        return LocalExecutor.from_frames(amplitudes, problem.origins, None, 16, "fourier", 3)

    [dm_stage] = plan_from(config.reconstruction)
    plan = [Stage(dm_stage.algorithm, 0, 8), Stage(ObjectOnly(ObjectOnlyOptions()), 8, 12)]
    hook = SyncHook(4, lambda sync: seen.append(sync.iteration))  # type: ignore[func-returns-value]
    driver = Driver(executor(), plan, DriverSettings(12, sync_every=4), hooks=[hook])
    final = driver.run(SyncPoint(problem.state))
    assert final.iteration == 12 and seen == [4, 8, 12]
    errors = final.history.fourier_error
    assert all(np.isfinite(errors)) and errors[-1] < errors[0]
    # the last four iterations left the probe alone
    dm_only = Driver(executor(), [Stage(dm_stage.algorithm, 0, 8)], DriverSettings(8, 4))
    after_dm = dm_only.run(SyncPoint(problem.state))
    np.testing.assert_array_equal(final.state.probe, after_dm.state.probe)
    assert not np.allclose(final.state.obj, after_dm.state.obj)


# ---------------------------------------------------------------- the returned estimates
def _model_error(state: State, scan, problem) -> float:  # type: ignore[no-untyped-def]
    from ptychograph.algorithms.fit import model_error_task

    executor = LocalExecutor.from_frames(np.sqrt(scan.frames), problem.origins, None, 16)
    executor.reset(state)
    return float(executor.map_reduce(model_error_task, state).value)


def test_reset_drops_a_pending_mode_rotation(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """psi = P O is made from the probe as it is: after a reset (recovery from a lost worker,
    a hook's restart) a rotation still pending in the sync point must not be applied to psi
    again, or the first iteration after it turns psi twice."""
    from ptychograph.algorithms.dm import update_task
    from ptychograph.engine import load_validated

    config = _config(scan_path, tmp_path / "r.zarr", iterations=2, probe_modes=2)
    scan, _ = load_validated(config)
    problem = prepare(scan, config)
    amplitudes = np.sqrt(scan.frames)
    q, _ = np.linalg.qr(np.array([[1.0, 2.0], [0.5, -1.0]]) + 0j)
    state = problem.state.replace(rotation=q)
    executor = LocalExecutor.from_frames(amplitudes, problem.origins, None, 16, "fourier")
    handle = executor.reset(state)
    assert handle.rotation is None
    plain = LocalExecutor.from_frames(amplitudes, problem.origins, None, 16, "fourier")
    plain.reset(problem.state)
    turned = executor.map_reduce(update_task, handle, 1.0, 0.0)
    straight = plain.map_reduce(update_task, problem.state, 1.0, 0.0)
    # the object terms of the updated psi (the error is phi's, before the update)
    np.testing.assert_allclose(
        turned.partials.numerator, straight.partials.numerator, rtol=1e-6, atol=1e-6
    )


def test_returned_state_fits_at_least_as_well_as_the_last_iterate(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.engine import load_validated

    config = _config(scan_path, tmp_path / "r.zarr", iterations=10, probe_modes=3, average_last=0.5)
    result = reconstruct_in_process(config, n_chunks=2)
    assert set(result.model_error) == {"average", "last"}
    assert result.chosen in ("average", "last")
    best = min(result.model_error.values())
    assert result.model_error[result.chosen] == best
    scan, _ = load_validated(config)
    # the recorded R is the R of the returned state, computed afresh
    assert _model_error(result.state, scan, result.problem) == pytest.approx(best, rel=1e-6)


def test_a_worse_average_is_not_returned(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.driver import choose_final
    from ptychograph.engine import load_validated

    config = _config(scan_path, tmp_path / "r.zarr")
    scan, _ = load_validated(config)
    problem = prepare(scan, config)
    executor = LocalExecutor.from_frames(np.sqrt(scan.frames), problem.origins, None, 16)
    executor.reset(problem.state)
    good = problem.state
    bad = good.replace(obj=good.obj * 0.3)  # summed twice: an average of 0.3 |O|
    sync = SyncPoint(good, bad.replace(obj=bad.obj * 2, probe=good.probe * 2), 2)
    final = choose_final(executor, sync)
    assert final.chosen == "last" and final.state is good
    assert final.model_error["average"] > final.model_error["last"]
    better = SyncPoint(bad, good.replace(obj=good.obj * 2, probe=good.probe * 2), 2)
    assert choose_final(executor, better).chosen == "average"


class NaNObject:
    """Reports finite metrics but leaves NaN in the object: the sync-point check catches it."""

    name = "nan-object"

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        new = executor.apply(_nan_object, state, iteration, key="n")
        return new, executor.apply(lambda: IterationStats(0.1, 0.0, 0.0), key="s")


def _nan_object(state: State, iteration: int) -> State:
    obj = state.obj.copy()
    obj[0, 0, 0] = np.nan
    return state.replace(obj=obj, iteration=iteration + 1)


def test_a_nonfinite_state_with_finite_metrics_stops_at_the_sync_point(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.engine import load_validated

    config = _config(scan_path, tmp_path / "r.zarr")
    scan, _ = load_validated(config)
    problem = prepare(scan, config)
    executor = LocalExecutor.from_frames(np.sqrt(scan.frames), problem.origins, None, 16)
    seen: list[int] = []
    hook = SyncHook(1, lambda sync: seen.append(sync.iteration))  # type: ignore[func-returns-value]
    driver = Driver(executor, [Stage(NaNObject(), 0, 6)], DriverSettings(6, 3), hooks=[hook])
    with pytest.raises(Diverged, match="iteration 1 \\(non-finite object\\)"):
        driver.run(SyncPoint(problem.state))
    assert seen == []  # no hook (checkpoint) ever saw the bad state

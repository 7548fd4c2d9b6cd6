"""Workers that are elsewhere, blind, too many, killed while loading, or frozen (issue 11,
items 5, 8, 9, 10, 14). Every test is bounded by pytest-timeout: a hang fails, not blocks."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from distributed import Client, LocalCluster

import ptychograph.executors.dask as dask_executor
from ptychograph.config import load_config
from ptychograph.engine import reconstruct
from ptychograph.errors import InputError
from ptychograph.executors import WorkerLost
from ptychograph.executors.worker import LoadSpec, load_task
from ptychograph.io.zarr_store import write_frames_store
from ptychograph.simulate import SimulationConfig, simulate

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def scan():  # type: ignore[no-untyped-def]
    return simulate(SimulationConfig(n_frames=60, frame_size=32, photons=1e6, seed=5)).scan


@pytest.fixture
def cluster3():  # type: ignore[no-untyped-def]
    with LocalCluster(n_workers=3, threads_per_worker=1, dashboard_address=None) as cluster:
        with Client(cluster) as client:
            yield client


def raw(store: Path | str, iterations: int, **cluster: Any) -> dict[str, Any]:
    return {
        "data": {"path": str(store)},
        "reconstruction": {"iterations": iterations, "probe_modes": 1, "seed": 1},
        "output": {"path": str(Path(store).parent / "r.zarr"), "checkpoint_every": 0},
        "cluster": {"chunk_frames": 10, "sync_every": 5, **cluster},
    }


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "ptychograph"]


@pytest.mark.timeout(240)
def test_workers_started_in_another_folder_read_the_runs_frames(
    scan, cluster3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """Relative paths reach the workers absolute: a decoy frames.zarr in the workers' own
    folder is never read (before: the decoy was reconstructed, or FileNotFoundError)."""
    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    run.mkdir(), elsewhere.mkdir()
    write_frames_store(scan, run / "frames.zarr", chunk_frames=10)
    decoy = dataclasses.replace(scan, frames=scan.frames * 50.0)
    write_frames_store(decoy, elsewhere / "frames.zarr", chunk_frames=10)
    (run / "run.yaml").write_text("data: {path: frames.zarr}\nreconstruction: {iterations: 3}\n")
    monkeypatch.chdir(run)
    right = reconstruct(load_config("run.yaml"), client=cluster3, write=False)
    cluster3.run(os.chdir, str(elsewhere))
    try:
        moved = reconstruct(load_config("run.yaml"), client=cluster3, write=False)
    finally:
        cluster3.run(os.chdir, str(run))
    np.testing.assert_allclose(moved.history.fourier_error, right.history.fourier_error)


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_see_the_store_says_so(cluster3, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    spec = LoadSpec("numpy", "single", 8, "off", None)
    origins = np.zeros((1, 2))
    for path, words in ((str(tmp_path / "missing.zarr"), "cannot see"), ("f.zarr", "relative")):
        future = cluster3.submit(load_task, "run", path, [(0, 1)], origins, spec, pure=False)
        with pytest.raises(InputError, match=words) as info:
            future.result(timeout=60)
        assert info.value.field == "data.path"


@pytest.mark.timeout(180)
def test_more_workers_than_frames(cluster3, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    small = simulate(SimulationConfig(n_frames=2, frame_size=32, photons=1e6, seed=2)).scan
    write_frames_store(small, tmp_path / "two.zarr")
    caplog.set_level(logging.INFO, logger="ptychograph")
    result = reconstruct(raw(tmp_path / "two.zarr", 3), client=cluster3, write=False)
    assert len(result.history) == 3
    assert any("using 2 of the 3 workers" in m for m in messages(caplog))


@pytest.mark.timeout(240)
def test_worker_killed_during_the_initial_load(
    scan, cluster3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:  # type: ignore[no-untyped-def]
    """Killed after the frames were placed and before they are read: its frames go to
    another worker and the run completes (before: waited forever on the dead worker)."""
    write_frames_store(scan, tmp_path / "frames.zarr", chunk_frames=10)
    pids = cluster3.run(os.getpid)
    plan = dask_executor.plan_memory
    killed: list[str] = []

    def kill_then_plan(client, placement, *args):  # type: ignore[no-untyped-def]
        victim = sorted(placement)[0]
        os.kill(pids[victim], signal.SIGKILL)
        killed.append(victim)
        return plan(client, placement, *args)

    monkeypatch.setattr(dask_executor, "plan_memory", kill_then_plan)
    caplog.set_level(logging.INFO, logger="ptychograph")
    result = reconstruct(raw(tmp_path / "frames.zarr", 6), client=cluster3, write=False)
    assert killed and len(result.history) == 6
    assert np.all(np.isfinite(result.history.fourier_error))
    assert any("re-read by" in m and killed[0] in m for m in messages(caplog)), messages(caplog)


@pytest.mark.timeout(300)
def test_frozen_worker_is_detected_and_its_frames_moved(
    scan, cluster3, tmp_path: Path, caplog
) -> None:  # type: ignore[no-untyped-def]
    """SIGSTOP at iteration 12: within cluster.worker_timeout (5 s) the run says so, drops
    the worker and finishes (before: no message for minutes)."""
    write_frames_store(scan, tmp_path / "frames.zarr", chunk_frames=10)
    config = raw(tmp_path / "frames.zarr", 30, worker_timeout=5)
    calm = reconstruct(config, client=cluster3, write=False)
    pids = cluster3.run(os.getpid)
    victim = sorted(pids)[1]
    stopped: list[int] = []

    def freeze(iteration: int, history: Any) -> None:
        if iteration == 12 and not stopped:
            os.kill(pids[victim], signal.SIGSTOP)
            stopped.append(pids[victim])

    caplog.set_level(logging.INFO, logger="ptychograph")
    try:
        hurt = reconstruct(config, client=cluster3, progress=freeze, write=False)
    finally:
        for pid in stopped:
            os.kill(pid, signal.SIGKILL)
    assert stopped, "the worker was never frozen"
    log = messages(caplog)
    assert any("no heartbeat" in m and victim in m for m in log), log
    assert any("re-read by" in m for m in log), log
    assert len(hurt.history) == 30
    # the exit waves restart as P O from the last sync point, so the path differs: the run
    # must end no worse than 5 % above the undisturbed one (lower is fine: seen 5.6 % lower)
    calm_error, hurt_error = calm.history.fourier_error[-1], hurt.history.fourier_error[-1]
    assert hurt_error < 1.05 * calm_error, (calm_error, hurt_error)


def test_too_many_lost_workers_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scan
) -> None:  # type: ignore[no-untyped-def]
    write_frames_store(scan, tmp_path / "frames.zarr", chunk_frames=10)

    def lose(*args: Any, **kwargs: Any) -> None:
        raise WorkerLost("tcp://127.0.0.1:1")

    monkeypatch.setattr("ptychograph.engine.run_on_cluster", lose)
    monkeypatch.setattr("ptychograph.engine.open_client", _no_client)
    with pytest.raises(InputError, match="gave up after more than 5 lost workers") as info:
        reconstruct(raw(tmp_path / "frames.zarr", 3), write=False)
    assert info.value.field == "cluster"


class _no_client:
    def __init__(self, *args: Any) -> None:
        pass

    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: Any) -> None:
        return None

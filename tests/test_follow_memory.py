"""The per-worker memory check of a followed run, redone as frames arrive and the object
grows (:func:`ptychograph.executors.placement.fit_growth`), and the warning at the start when
the expected frames will not fit."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

import ptychograph.executors.dask as dask_executor
import ptychograph.executors.placement as placement_module
import ptychograph.follow as follow_module
from ptychograph.config import Config, parse_config
from ptychograph.engine import reconstruct
from ptychograph.errors import InputError
from ptychograph.executors.placement import fit_growth, projected_need
from ptychograph.live import FrameWriter
from ptychograph.memory import USABLE_FRACTION, estimate
from ptychograph.problem import layout
from ptychograph.simulate import SimulationConfig, simulate

SCAN = simulate(SimulationConfig(n_frames=24, frame_size=32, photons=1e5, seed=5)).scan
FRAME = (32, 32)


def _config(store: Path, out: Path) -> Config:
    return parse_config(
        {
            "data": {"path": str(store), "follow": True},
            "reconstruction": {"iterations": 2, "ml_iterations": 0, "batch_size": 1},
            "output": {"path": str(out), "checkpoint_every": 0, "preview_every": 0},
            "follow": {
                "start_frames": 8,
                "check_every": 1,
                "final_iterations": 1,
                "poll_interval": 0.05,
            },
            "cluster": {"n_workers": 1},
        }
    )


def _need(n_views: int, obj_shape: tuple[int, int]) -> int:
    return estimate(n_views, FRAME, obj_shape, 1, 1, "single", 1).total


def test_fit_growth_lowers_the_batch_then_refuses() -> None:
    config = _config(Path("/x.zarr"), Path("/o.zarr"))
    place = {"a": [(0, 40)], "b": [(40, 60)]}
    obj = (80, 80)
    roomy = {"a": 1e12, "b": 1e12}
    assert fit_growth(roomy, place, FRAME, obj, config, 64) == 64
    assert fit_growth({}, place, FRAME, obj, config, 64) == 64  # no limit known
    tight = estimate(40, FRAME, obj, 1, 1, "single", 4).total / USABLE_FRACTION
    assert fit_growth({"a": tight, "b": tight}, place, FRAME, obj, config, 64) == 4
    small = _need(40, obj) / USABLE_FRACTION * 0.99
    with pytest.raises(InputError, match="with 60 frames, object 80 x 80: a worker needs"):
        fit_growth({"a": small, "b": 1e12}, place, FRAME, obj, config, 64)


def test_projected_need_says_when_the_expected_frames_will_not_fit() -> None:
    config = _config(Path("/x.zarr"), Path("/o.zarr"))
    limit = _need(100, (80, 80)) / USABLE_FRACTION
    limits = {"a": limit, "b": limit}
    assert projected_need(limits, 200, FRAME, (80, 80), config) is None
    why = projected_need(limits, 400, FRAME, (80, 80), config)
    assert why is not None and why.startswith("the 400 expected frames on 2 worker(s)")
    assert projected_need({"a": 0.0}, 10**9, FRAME, (80, 80), config) is None


class Detector(threading.Thread):
    """Publishes 8 frames of SCAN at once, the other 16 once the run has iterated
    (:meth:`go`, its progress callback), then the completion mark."""

    def __init__(self, store: Path) -> None:
        super().__init__(daemon=True)
        self.writer = FrameWriter(store, SCAN.geometry, FRAME, chunk_frames=4, expected_frames=24)
        self.writer.append(SCAN.frames[:8], SCAN.positions[:8])
        self.started = threading.Event()

    def go(self, iteration: int, history: object) -> None:
        self.started.set()

    def run(self) -> None:
        self.started.wait(30)
        self.writer.append(SCAN.frames[8:], SCAN.positions[8:])
        self.writer.close()

    def __enter__(self) -> Detector:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.started.set()
        self.join()


@pytest.fixture
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_followed_run_stops_before_a_worker_runs_out(
    tmp_path: Path,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A worker whose memory holds the first 8 frames but not all 24: warned at the start,
    refused with one line once the frames would no longer fit, nothing written."""
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    config = _config(store, out)
    rec, data = config.reconstruction, config.data
    first = layout(SCAN.positions[:8], SCAN.geometry, rec, data).obj_shape
    whole = layout(SCAN.positions, SCAN.geometry, rec, data).obj_shape
    limit = (_need(8, first) + _need(24, whole)) / 2 / USABLE_FRACTION
    assert _need(8, first) < USABLE_FRACTION * limit < _need(24, whole)

    def limits(client: object, workers: list[str]) -> dict[str, float]:
        return {worker: limit for worker in workers}

    for module in (dask_executor, placement_module, follow_module):
        monkeypatch.setattr(module, "worker_limits", limits)
    caplog.set_level(logging.INFO, logger="ptychograph")
    with (
        Detector(store) as detector,
        pytest.raises(InputError, match=r"memory: with (1[26]|2[04]) frames, object"),
    ):
        reconstruct(config, client=client, progress=detector.go)
    assert "the 24 expected frames on 1 worker(s): a worker needs" in caplog.text
    assert not out.exists()


def test_a_grown_scan_gets_a_smaller_batch_on_every_worker(
    tmp_path: Path,
    client: Client,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Room for all 24 frames only a few views at a time: the batch is lowered as they come
    (on the worker too: the run finishes) instead of running out."""
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    config = _config(store, out)
    config = config.model_copy(
        update={"reconstruction": config.reconstruction.model_copy(update={"batch_size": 64})}
    )
    whole = layout(SCAN.positions, SCAN.geometry, config.reconstruction, config.data).obj_shape
    limit = estimate(24, FRAME, whole, 1, 1, "single", 2).total / USABLE_FRACTION * 1.001

    def limits(client: object, workers: list[str]) -> dict[str, float]:
        return {worker: limit for worker in workers}

    for module in (dask_executor, placement_module, follow_module):
        monkeypatch.setattr(module, "worker_limits", limits)
    caplog.set_level(logging.INFO, logger="ptychograph")
    original = dask_executor.set_batch_size

    def spy(views: object, batch: int) -> int:  # runs on the (in-process) worker
        logging.getLogger("ptychograph").info("worker batch size now %d", batch)
        return original(views, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(dask_executor, "set_batch_size", spy)
    with Detector(store) as detector:
        result = reconstruct(config, client=client, progress=detector.go)
    found = re.search(r"batch size lowered from 4 to (\d) views", caplog.text)
    assert found is not None and int(found.group(1)) < 4
    assert f"worker batch size now {found.group(1)}" in caplog.text
    assert result.state.origins is not None and len(result.state.origins) == 24
    assert np.isfinite(result.history.fourier_error).all()

"""``run --follow`` side by side with a simulated detector on a local cluster (issue 13's
done-when test), a scan that stops without its completion mark, and a worker that joins."""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct
from ptychograph.io.live_mark import read_mark
from ptychograph.io.zarr_store import read_store_scan
from ptychograph.live import FrameWriter, simulate_live
from ptychograph.simulate import SimulationConfig

SCAN = SimulationConfig(n_frames=200, frame_size=64, photons=1e6, seed=4)
FINAL, ML, CHECK = 20, 4, 3


@pytest.fixture(scope="module")
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _config(store: Path, out: Path, following: bool, **sections: dict[str, Any]) -> Any:
    raw: dict[str, Any] = {
        "data": {"path": str(store), "follow": following},
        "reconstruction": {"iterations": FINAL, "ml_iterations": ML, "seed": 2},
        "output": {"path": str(out), "preview_every": CHECK, "checkpoint_every": 0},
        "follow": {"final_iterations": FINAL, "check_every": CHECK, "poll_interval": 0.05},
        "cluster": {"n_workers": 2, "sync_every": 5},
    }
    for name, values in sections.items():
        raw[name].update(values)
    return parse_config(raw)


class PreviewWatch(threading.Thread):
    """Notes when the preview PNG first appears, and whether the scan was complete then."""

    def __init__(self, preview: Path, store: Path) -> None:
        super().__init__(daemon=True)
        self.preview, self.store = preview, store
        self.seen: tuple[float, bool] | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and self.seen is None:
            if self.preview.exists():
                mark = read_mark(self.store)
                self.seen = (time.monotonic(), mark is not None and mark.complete)
            time.sleep(0.02)


@pytest.mark.slow
def test_follow_beside_a_detector(
    tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """The first preview comes while the scan runs; the result comes a bounded number of
    iterations after the last frame; its Fourier error is within 10 % of an offline run's over
    the same frames with as many iterations after completion."""
    store, out = tmp_path / "live.zarr", tmp_path / "follow.zarr"
    detector = threading.Thread(target=simulate_live, args=(SCAN, store, 40.0, 20))
    watch = PreviewWatch(tmp_path / "follow.preview.png", store)
    detector.start()
    watch.start()
    caplog.set_level(logging.INFO, logger="ptychograph")
    followed = reconstruct(_config(store, out, True), client=client)
    done = time.monotonic()
    detector.join()
    watch.stop.set()
    assert watch.seen is not None and not watch.seen[1], "no preview before the scan finished"
    found = re.search(r"scan is complete \(.*\) at iteration (\d+)", caplog.text)
    assert found is not None
    complete_at = int(found.group(1))
    assert len(followed.history) == complete_at + FINAL + ML
    assert complete_at > CHECK  # it iterated while frames came
    # the last frame is published at most one stretch before the run sees the mark
    assert followed.state.origins is not None and len(followed.state.origins) == SCAN.n_frames
    offline = reconstruct(_config(store, tmp_path / "offline.zarr", False), client=client)
    assert len(offline.history) == FINAL + ML
    ratio = followed.history.fourier_error[-1] / offline.history.fourier_error[-1]
    assert ratio < 1.1, f"followed / offline Fourier error {ratio:.3f}"
    with (
        xr.open_zarr(out, consolidated=False) as ds,
        xr.open_zarr(tmp_path / "offline.zarr", consolidated=False) as batch,
    ):
        assert ds["object"].shape == batch["object"].shape
        np.testing.assert_allclose(ds["view_origin"], batch["view_origin"], atol=1e-6)
        np.testing.assert_allclose(ds["x"], batch["x"], rtol=1e-9)
        assert ds.attrs["config"]["data"]["follow"] is True
    assert done > 0


def test_a_scan_that_stops_without_its_mark_ends_after_the_idle_time(
    tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """A detector that broke off: the run says so after follow.idle_timeout and writes a
    result over the frames it had."""
    scan = read_store_scan(_small_store(tmp_path / "whole.zarr"))
    store = tmp_path / "broken.zarr"
    with (
        pytest.raises(RuntimeError),
        FrameWriter(
            store, scan.geometry, scan.geometry.frame_shape, chunk_frames=8, expected_frames=40
        ) as writer,
    ):
        writer.append(scan.frames[:28], scan.positions[:28])
        raise RuntimeError("the detector broke off")
    caplog.set_level(logging.INFO, logger="ptychograph")
    config = _config(
        store,
        tmp_path / "out.zarr",
        True,
        follow={"idle_timeout": 1.0, "final_iterations": 3, "check_every": 2},
        reconstruction={"ml_iterations": 0},
        output={"preview_every": 0},
    )
    result = reconstruct(config, client=client)
    assert "no new frame for 1 s and no completion mark" in caplog.text
    assert "28 of 40 frames" in caplog.text
    assert result.state.origins is not None and len(result.state.origins) == 28
    with xr.open_zarr(tmp_path / "out.zarr", consolidated=False) as ds:
        assert ds["view_origin"].shape == (28, 2)
        assert np.isfinite(ds["fourier_error"].values).all()


def _small_store(path: Path) -> Path:
    simulate_live(SimulationConfig(n_frames=40, frame_size=32, photons=1e5, seed=6), path, 1e6)
    return path


def test_a_worker_that_joins_takes_frames(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A cluster that grows mid-run (as an adaptive deployment): the new worker receives
    frames at the next sync point and the run holds every frame once."""
    store = tmp_path / "live.zarr"
    scan = SimulationConfig(n_frames=60, frame_size=32, photons=1e5, seed=7)
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        detector = threading.Thread(target=simulate_live, args=(scan, store, 15.0, 6))
        detector.start()

        def grow() -> None:
            while read_mark(store) is None or read_mark(store).frames < 24:  # type: ignore[union-attr]
                time.sleep(0.05)
            cluster.scale(2)

        scaler = threading.Thread(target=grow, daemon=True)
        scaler.start()
        caplog.set_level(logging.INFO, logger="ptychograph")
        config = _config(
            store,
            tmp_path / "out.zarr",
            True,
            follow={"final_iterations": 4, "check_every": 2, "start_frames": 12},
            reconstruction={"ml_iterations": 0},
            cluster={"n_workers": None},
        )
        result = reconstruct(config, client=client)
        detector.join()
    assert "joined the run" in caplog.text
    assert result.state.origins is not None and len(result.state.origins) == 60
    assert np.isfinite(result.history.fourier_error).all()


def test_a_followed_run_resumes_after_a_crash(tmp_path: Path, client: Client) -> None:
    """A crash mid-scan keeps the checkpoint (the views seen so far and the grown object);
    --resume continues from it with the frames published since and finishes."""
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    scan = SimulationConfig(n_frames=60, frame_size=32, photons=1e5, seed=8)
    detector = threading.Thread(target=simulate_live, args=(scan, store, 12.0, 6))
    detector.start()
    config = _config(
        store,
        out,
        True,
        follow={"final_iterations": 4, "check_every": 2, "start_frames": 12},
        reconstruction={"ml_iterations": 2},
        output={"checkpoint_every": 4, "preview_every": 0},
    )

    def crash(iteration: int, history: Any) -> None:
        if iteration == 6:
            raise RuntimeError("the node went down")

    with pytest.raises(RuntimeError, match="went down"):
        reconstruct(config, client=client, progress=crash)
    with xr.open_zarr(config.output.checkpoint_path, consolidated=False) as ds:
        seen, saved = ds["view_origin"].shape[0], ds["fourier_error"].values
    assert 12 <= seen < 60 and len(saved) == 4
    detector.join()
    result = reconstruct(config, client=client, resume=True)
    assert result.state.origins is not None and len(result.state.origins) == 60
    np.testing.assert_array_equal(result.history.fourier_error[:4], saved)
    assert len(result.history) >= 4 + 4 + 2 and not config.output.checkpoint_path.exists()

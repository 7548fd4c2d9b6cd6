"""A followed run resumed from a checkpoint taken during its final iterations continues them
from where they were (the checkpoint records where they began) instead of running them all
again."""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from distributed import Client, LocalCluster

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct
from ptychograph.live import FrameWriter
from ptychograph.simulate import SimulationConfig, simulate

SCAN = simulate(SimulationConfig(n_frames=24, frame_size=32, photons=1e5, seed=9)).scan
FINAL, ML, CHECK = 6, 2, 2


@pytest.fixture
def client() -> Iterator[Client]:
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def test_a_resume_within_the_final_iterations_continues_them(
    tmp_path: Path, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    config = parse_config(
        {
            "data": {"path": str(store), "follow": True},
            "reconstruction": {"ml_iterations": ML, "seed": 3},
            "output": {"path": str(out), "checkpoint_every": 2, "preview_every": 0},
            "follow": {
                "start_frames": 8,
                "check_every": CHECK,
                "final_iterations": FINAL,
                "poll_interval": 0.05,
            },
            "cluster": {"n_workers": 2},
        }
    )
    writer = FrameWriter(store, SCAN.geometry, (32, 32), chunk_frames=4, expected_frames=24)
    writer.append(SCAN.frames[:8], SCAN.positions[:8])
    iterated = threading.Event()

    def detector() -> None:  # the rest of the scan once the run has iterated
        iterated.wait(30)
        writer.append(SCAN.frames[8:], SCAN.positions[8:])
        writer.close()

    thread = threading.Thread(target=detector)
    thread.start()
    caplog.set_level(logging.INFO, logger="ptychograph")
    complete_at: list[int] = []

    def crash(iteration: int, history: Any) -> None:
        iterated.set()
        found = re.search(r"scan is complete \(24 of 24 frames\) at iteration (\d+)", caplog.text)
        if found and not complete_at:
            complete_at.append(int(found.group(1)))
        if complete_at and iteration == complete_at[0] + 5:
            raise RuntimeError("the node went down")

    try:
        with pytest.raises(RuntimeError, match="went down"):
            reconstruct(config, client=client, progress=crash)
    finally:
        iterated.set()
        thread.join()
    first = complete_at[0]
    assert first >= CHECK  # it iterated over part of the scan first
    with xr.open_zarr(config.output.checkpoint_path, consolidated=False) as ds:
        assert ds.attrs["final_start"] == first and ds.attrs["iteration"] == first + 4
        saved = ds["fourier_error"].values
    caplog.clear()
    result = reconstruct(config, client=client, resume=True)
    assert f"continuing the final iterations begun at {first}" in caplog.text
    assert len(result.history) == first + FINAL + ML  # not first + 4 + FINAL + ML
    np.testing.assert_array_equal(result.history.fourier_error[: first + 4], saved)
    assert np.isfinite(result.history.fourier_error).all()
    with xr.open_zarr(out, consolidated=False) as ds:
        assert ds["view_origin"].shape == (24, 2)
    assert not config.output.checkpoint_path.exists()

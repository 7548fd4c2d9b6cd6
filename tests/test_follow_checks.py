"""``run --follow`` through the command line with frames that go wrong mid-run: a frame with
NaN or negative counts published after the run started is checked as the worker loads it
(``data.nonfinite`` / ``data.negative``), and ``nonfinite: drop`` is refused up front."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr
from conftest import CliResult, write_yaml

from ptychograph.live import FrameWriter
from ptychograph.simulate import SimulationConfig, simulate

SCAN = simulate(SimulationConfig(n_frames=24, frame_size=32, photons=1e5, seed=3)).scan
CHUNK, BAD = 4, 13  # frame 13 (in the fourth chunk) goes wrong


class UncheckedWriter(FrameWriter):
    """Acquisition code that does not check the values it writes (a detector glitch reaches
    the store, as with any writer of the live format other than FrameWriter)."""

    def _checked(self, frames: Any, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        block, where = super()._checked(np.nan_to_num(np.abs(frames)), positions)
        return np.asarray(frames, dtype=np.float32).reshape(block.shape), where


def _write_with_a_bad_frame(store: Path, started: Path, bad: float, stop: threading.Event) -> None:
    """12 good frames, then (once ``started`` exists: the run has iterated) the rest with
    frame BAD holding ``bad`` in one pixel; the completion mark only if the run is still on."""
    frames = SCAN.frames.copy()
    frames[BAD, 5, 7] = bad
    writer = UncheckedWriter(store, SCAN.geometry, (32, 32), chunk_frames=CHUNK)
    writer.append(frames[:12], SCAN.positions[:12])
    deadline = time.monotonic() + 60
    while not started.exists() and time.monotonic() < deadline and not stop.is_set():
        time.sleep(0.05)
    writer.append(frames[12:20], SCAN.positions[12:20])
    time.sleep(1.0)  # a sync point or two with the bad chunk
    writer.append(frames[20:], SCAN.positions[20:])
    writer.close()


def _follow(
    tmp_path: Path, cli: Callable[..., CliResult], bad: float, **data: str
) -> tuple[CliResult, Path]:
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    config: dict[str, Any] = {
        "data": {"path": str(store), **data},
        "reconstruction": {"iterations": 2, "ml_iterations": 0},
        "output": {"path": str(out), "checkpoint_every": 2},
        "follow": {
            "start_frames": 8,
            "check_every": 2,
            "final_iterations": 2,
            "poll_interval": 0.05,
        },
        "cluster": {"n_workers": 1, "threads_per_worker": 1},
    }
    stop = threading.Event()
    started = tmp_path / "out.checkpoint.zarr"
    writer = threading.Thread(target=_write_with_a_bad_frame, args=(store, started, bad, stop))
    writer.start()
    try:
        result = cli("run", write_yaml(tmp_path / "run.yaml", config), "--follow")
    finally:
        stop.set()
        writer.join()
    return result, out


def _last_line_error(result: CliResult, *needles: str) -> str:
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bad", "needle"),
    [(np.nan, "contains NaN or Inf (data.nonfinite: error)"), (-3.0, "negative counts")],
)
def test_a_bad_frame_published_mid_run_stops_it(
    tmp_path: Path, cli: Callable[..., CliResult], bad: float, needle: str
) -> None:
    """The run stops with one line naming the frame; no result, the checkpoint is kept."""
    result, out = _follow(tmp_path, cli, bad)
    _last_line_error(result, "frames:", f"frame {BAD} ", needle)
    assert not out.exists()
    assert (tmp_path / "out.checkpoint.zarr").exists()


@pytest.mark.slow
def test_negative_counts_published_mid_run_are_clipped(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    result, out = _follow(tmp_path, cli, -3.0, negative="clip")
    assert result.code == 0, result.stderr
    assert "1 negative pixels of the new frames clipped to zero" in result.stderr
    with xr.open_zarr(out, consolidated=False) as ds:
        assert ds["view_origin"].shape == (24, 2)
        assert np.isfinite(ds["fourier_error"].values).all()
        assert np.isfinite(ds["object"].values).all()


def test_nonfinite_drop_is_refused_with_follow_before_waiting(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = {
        "data": {"path": str(tmp_path / "never.zarr"), "follow": True, "nonfinite": "drop"},
        "output": {"path": str(tmp_path / "out.zarr")},
        "follow": {"idle_timeout": 60},
    }
    began = time.monotonic()
    result = cli("run", write_yaml(tmp_path / "run.yaml", config))
    result.assert_input_error("data.nonfinite", "'drop' is not supported with data.follow")
    assert time.monotonic() - began < 30
    assert list(tmp_path.iterdir()) == [tmp_path / "run.yaml"]


def test_ctrl_c_during_a_followed_run_keeps_the_checkpoint(
    tmp_path: Path, cli: Callable[..., CliResult], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C (as KeyboardInterrupt at iteration 3): one line that says the checkpoint is
    kept and how to continue; no result."""
    store, out = tmp_path / "live.zarr", tmp_path / "out.zarr"
    with FrameWriter(store, SCAN.geometry, (32, 32), chunk_frames=CHUNK) as writer:
        writer.append(SCAN.frames, SCAN.positions)

    def progress(total: int | None) -> Callable[[int, object], None]:
        def interrupt(iteration: int, history: object) -> None:
            if iteration == 3:
                raise KeyboardInterrupt

        return interrupt

    monkeypatch.setattr("ptychograph.cli._progress", progress)
    config = {
        "data": {"path": str(store)},
        "output": {"path": str(out), "checkpoint_every": 2},
        "follow": {"final_iterations": 6},
        "cluster": {"n_workers": 1, "threads_per_worker": 1},
    }
    result = cli("run", write_yaml(tmp_path / "run.yaml", config), "--follow")
    assert result.code == 130
    checkpoint = tmp_path / "out.checkpoint.zarr"
    line = result.stderr.strip().splitlines()[-1]
    assert line == (
        "error: interrupted (Ctrl-C); no result written; "
        f"{checkpoint} is kept: continue with --resume"
    )
    assert checkpoint.exists() and not out.exists()


def test_a_missing_store_is_waited_for_and_said(
    tmp_path: Path, cli: Callable[..., CliResult]
) -> None:
    config = {
        "data": {"path": str(tmp_path / "late.zarr"), "follow": True},
        "output": {"path": str(tmp_path / "out.zarr")},
        "follow": {"idle_timeout": 0.3, "poll_interval": 0.05, "start_frames": 5},
    }
    result = cli("run", write_yaml(tmp_path / "run.yaml", config))
    first, last = result.stderr.strip().splitlines()
    assert first.startswith(f"waiting for {tmp_path / 'late.zarr'}: 0 of ? frames")
    assert "(the store does not exist yet), starting at 5" in first
    assert last == (
        f"error: data.path: {tmp_path / 'late.zarr'} does not exist: no frames published in "
        "0.3 s (follow.idle_timeout)"
    )

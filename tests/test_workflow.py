"""Beamline workflow: automatic mode count, previews, the plot command, progress output."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from ptychograph.cli import _progress, main
from ptychograph.cluster import resolve_backend
from ptychograph.engine import reconstruct
from ptychograph.io.cxi import write_cxi
from ptychograph.results import open_result
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.state import History


@pytest.fixture(scope="module")
def client():  # type: ignore[no-untyped-def]
    with (
        LocalCluster(n_workers=1, threads_per_worker=2, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _fly(tmp_path: Path, blur: float) -> Path:
    sim = simulate(
        SimulationConfig(n_frames=120, frame_size=48, photons=1e6, fly_blur=blur, seed=3)
    )
    path = tmp_path / f"fly{blur}.cxi"
    write_cxi(path, sim.scan)
    return path


@pytest.mark.slow
def test_auto_modes_grow_with_motion_blur(client, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    chosen = {}
    for blur in (0.0, 10.0):
        raw = {
            "data": {"path": str(_fly(tmp_path, blur))},
            "reconstruction": {"iterations": 100, "probe_modes": "auto"},
            "output": {"path": str(tmp_path / "r.zarr")},
        }
        with caplog.at_level(logging.INFO, logger="ptychograph"):
            result = reconstruct(raw, client=client, write=False)
        chosen[blur] = result.state.probe.shape[0]
        assert len(result.history) == 100
    # measured (120 frames of 48 x 48, 1e6 photons): 2 modes without blur, 4 with 10 px blur
    assert chosen[10.0] > chosen[0.0], chosen
    assert chosen[10.0] >= 3
    assert any("carry at least 1 %" in r.getMessage() for r in caplog.records)


def test_preview_and_plot_command(client, tmp_path) -> None:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=30, frame_size=32, photons=1e5))
    write_cxi(tmp_path / "s.cxi", sim.scan)
    raw = {
        "data": {"path": str(tmp_path / "s.cxi")},
        "reconstruction": {"iterations": 4, "probe_modes": 2},
        "output": {"path": str(tmp_path / "r.zarr"), "preview_every": 2},
    }
    reconstruct(raw, client=client)
    assert (tmp_path / "r.preview.png").stat().st_size > 5_000
    attrs = open_result(tmp_path / "r.zarr").attrs  # how it ran, from the engine
    expected = resolve_backend("auto")  # numpy here, cupy on a GPU machine
    assert (attrs["backend"], attrs["workers"]) == (expected, 1) and attrs["wall_seconds"] > 0
    (tmp_path / "r.png").unlink()
    assert main(["plot", str(tmp_path / "r.zarr"), "--remove-phase-ramp"]) == 0
    assert (tmp_path / "r.png").stat().st_size > 10_000
    assert main(["plot", str(tmp_path / "r.zarr"), "--out", str(tmp_path / "x.png")]) == 0
    assert main(["plot", str(tmp_path / "missing.zarr")]) == 2
    assert main(["plot", str(tmp_path / "s.cxi")]) == 2


def test_resume_says_where_it_continues(client, tmp_path, caplog) -> None:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=20, frame_size=32, photons=1e5))
    write_cxi(tmp_path / "s.cxi", sim.scan)
    raw = {
        "data": {"path": str(tmp_path / "s.cxi")},
        "reconstruction": {"iterations": 4},
        "output": {"path": str(tmp_path / "r.zarr"), "checkpoint_every": 2},
    }
    with caplog.at_level(logging.INFO, logger="ptychograph"):
        reconstruct({**raw, "output": {**raw["output"], "keep_checkpoint": True}}, client=client)
        raw["reconstruction"] = {"iterations": 6}
        reconstruct(raw, client=client, resume=True, overwrite=True)
    messages = [r.getMessage() for r in caplog.records]
    assert any("resuming from" in m and "at iteration 4" in m for m in messages)
    assert any("removed its checkpoint" in m for m in messages)
    assert not (tmp_path / "r.checkpoint.zarr").exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal_and_log_lines_otherwise(caplog) -> None:  # type: ignore[no-untyped-def]
    history = History()
    terminal = FakeTerminal()
    report = _progress(4, terminal)
    for it in range(1, 5):
        history.append(1.0 / it, 0.1, 0.1, 0.01)
        report(it, history)
    text = terminal.getvalue()
    assert text.count("\r") == 4 and "4/4" in text and "ETA" in text and text.endswith("\n")
    with caplog.at_level(logging.INFO, logger="ptychograph"):
        plain = _progress(40, io.StringIO())
        for it in range(1, 41):
            plain(it, history)
    lines = [r.getMessage() for r in caplog.records if "iteration" in r.getMessage()]
    assert 20 <= len(lines) <= 22 and all("\r" not in line for line in lines)
    assert np.isfinite(history.fourier_error).all()


def test_cli_prints_the_dashboard_link_and_progress(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=20, frame_size=32, photons=1e5))
    write_cxi(tmp_path / "s.cxi", sim.scan)
    config = tmp_path / "run.yaml"
    config.write_text(
        "data: {path: s.cxi}\nreconstruction: {iterations: 3}\noutput: {path: r.zarr}\n"
        "cluster: {n_workers: 1}\n"
    )
    assert main(["run", str(config)]) == 0
    err = capsys.readouterr().err
    assert "Dask dashboard: http" in err
    assert "iteration 3/3" in err and "fourier error" in err

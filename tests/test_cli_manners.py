"""The command line's courtesies: --version, help on every option, plural counts, a first
ETA that waits for measurements, demo arguments checked first, one line on Ctrl-C
(ptychograph.cli, ptychograph.progress, ptychograph.interrupts)."""

from __future__ import annotations

import argparse
import io
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from ptychograph import __version__
from ptychograph.cli import _parser, main
from ptychograph.interrupts import NOISY_ON_INTERRUPT, quiet_interrupt
from ptychograph.progress import WARM_UP, ProgressReporter, plural, progress_reporter
from ptychograph.state import History


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"ptychograph {__version__}"


def test_every_option_has_help_and_no_raw_markup() -> None:
    parser = _parser()
    commands = subparsers(parser)
    assert {"run", "simulate", "convert", "info", "plot", "export", "demo"} <= set(commands)
    for name, sub in commands.items():
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}"
        assert "``" not in sub.format_help(), name
    assert "``" not in parser.format_help()
    help_of = {a.dest: a.help for a in commands["simulate"]._actions}
    assert "fraction" in str(help_of["overlap"]) and "pixels" in str(help_of["fly_blur"])
    assert "m" in str({a.dest: a.help for a in commands["info"]._actions}["distance_m"])


def test_plural() -> None:
    assert plural(1, "worker") == "1 worker" and plural(2, "worker") == "2 workers"
    assert plural(0, "frame") == "0 frames"


def test_first_eta_waits_for_measurements(caplog: pytest.LogCaptureFixture) -> None:
    """The first iteration takes 30 s (start-up), the others 1 s: the first ETA shown is
    the true remaining time, not 30 x too long."""
    now = [0.0]
    history = History()
    report = progress_reporter(20, io.StringIO(), clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="ptychograph"):
        for it in range(1, 21):
            now[0] += 30.0 if it == 1 else 1.0
            history.append(0.1, 0.1, 0.1, 1.0)
            report(it, history)
    lines = [r.getMessage() for r in caplog.records]
    assert "ETA estimating" in lines[0]
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    now[0] = 0.0
    bar = progress_reporter(20, terminal, clock=lambda: now[0])
    shown = []
    for it in range(1, 21):
        now[0] += 30.0 if it == 1 else 1.0
        bar(it, history)
        shown.append(terminal.getvalue().rsplit("\r", 1)[-1])
    assert all("ETA estimating" in text for text in shown[:WARM_UP])
    assert "ETA 10 s" in shown[9] and "1.000 s/it" in shown[9]


def test_resumed_run_is_measured_from_where_it_continues() -> None:
    now = [0.0]
    history = History()
    history.append(0.1, 0.1, 0.1, 1.0)
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    bar = progress_reporter(100, terminal, clock=lambda: now[0])
    for it in range(51, 61):
        now[0] += 2.0
        bar(it, history)
    assert terminal.getvalue().rsplit("\r", 1)[-1].count("ETA 80 s") == 1


def test_demo_refuses_zero_iterations_before_simulating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iterations", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: demo --iterations: must be at least 1, got 0"]
    assert not out.exists()


def test_interrupt_is_one_line_and_restores_the_handler(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C during a command: Dask's teardown messages are silenced before the interrupt
    unwinds, the user gets one line and exit code 130."""
    levels = {name: logging.getLogger(name).level for name in NOISY_ON_INTERRUPT}

    def interrupted_command(args: argparse.Namespace) -> int:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        finally:  # what a cluster's teardown says while the interrupt unwinds
            logging.getLogger("distributed.client").warning("CancelledError in teardown")
        return 0

    monkeypatch.setattr("ptychograph.cli.cmd_plot", interrupted_command)
    before = signal.getsignal(signal.SIGINT)
    try:
        with warnings.catch_warnings():
            assert main(["plot", "anything.zarr"]) == 130
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    assert signal.getsignal(signal.SIGINT) is before
    err = capfd.readouterr().err.strip().splitlines()
    assert err == ["error: interrupted (Ctrl-C); no result written"]


def test_quiet_interrupt_asks_local_workers_to_ignore_ctrl_c() -> None:
    import dask

    with quiet_interrupt():
        assert "ptychograph.interrupts" in dask.config.get("distributed.worker.preload")
    assert "ptychograph.interrupts" not in (dask.config.get("distributed.worker.preload", []) or [])


@pytest.mark.slow
def test_ctrl_c_on_a_cluster_run_prints_one_line(tmp_path: Path) -> None:
    """A terminal's Ctrl-C (SIGINT to the whole process group, workers included) during a
    real run on a local cluster: exit code 130 and nothing after the progress but one line."""
    assert main(["simulate", str(tmp_path / "s.cxi"), "--frames", "200", "--size", "64"]) == 0
    (tmp_path / "run.yaml").write_text(
        "data: {path: s.cxi}\nreconstruction: {iterations: 5000}\n"
        "output: {path: r.zarr, checkpoint_every: 0}\ncluster: {n_workers: 1}\n"
    )
    command = [sys.executable, "-m", "ptychograph.cli", "run", str(tmp_path / "run.yaml")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr))  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 120
    while not any("iteration 1/" in line for line in lines) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    os.killpg(process.pid, signal.SIGINT)
    assert process.wait(timeout=60) == 130
    reader.join(timeout=10)
    after = [line for line in lines if not line.startswith(("iteration", "Dask", "memory"))]
    after = [line for line in after if "frames on" not in line]
    assert after == ["error: interrupted (Ctrl-C); no result written\n"], "".join(lines)
    assert not (tmp_path / "r.zarr").exists()


def test_frames_and_workers_are_counted_in_words(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from distributed import Client, LocalCluster

    from ptychograph.config import parse_config
    from ptychograph.engine import reconstruct
    from ptychograph.io.cxi import write_cxi
    from ptychograph.simulate import SimulationConfig, simulate

    write_cxi(tmp_path / "scan.cxi", simulate(SimulationConfig(n_frames=6, frame_size=16)).scan)
    config = parse_config(
        {
            "data": {"path": str(tmp_path / "scan.cxi")},
            "reconstruction": {"iterations": 1},
            "output": {"path": str(tmp_path / "r.zarr"), "figure": False},
        }
    )
    with (
        LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
        caplog.at_level(logging.INFO, logger="ptychograph"),
    ):
        reconstruct(config, client=client, write=False)
    assert "6 frames on 1 worker: 6" in caplog.text


def test_a_growing_scan_has_no_countdown(caplog: pytest.LogCaptureFixture) -> None:
    """While a followed scan grows the total is unknown: the line says so, not 'estimating'
    for ever; once the total is known the countdown starts."""
    now, history = [0.0], History()
    report = ProgressReporter(None, io.StringIO(), clock=lambda: now[0], every=1)
    report.note = "120 of 400 frames"
    with caplog.at_level(logging.INFO, logger="ptychograph"):
        for it in range(1, 6):
            now[0] += 1.0
            history.append(0.1, 0.1, 0.1, 1.0)
            report(it, history)
        report.total = 10
        now[0] += 1.0
        report(6, history)
    lines = [r.getMessage() for r in caplog.records]
    assert all("ETA once the scan ends" in line and "120 of 400" in line for line in lines[:5])
    assert "ETA 4 s" in lines[5], lines[5]

"""``ptychograph run`` over the bad-input corpus (``tests/bad_inputs``).

Every case must end with exit code 2 and exactly one stderr line ``error: FIELD: PROBLEM``
naming the field, without a traceback, within a bounded time. Each run is given ``--overwrite``
over an existing ``out/result.zarr``: without it the run would stop at "output exists" before
looking at the input, and with it the existing result is at stake, so a failed run must leave
it byte for byte as it was and add nothing (hidden work folders included) anywhere.

Recoverable cases (a few NaN frames, some negative counts) must then succeed with the ``--set``
option their error line names, and the log must say how many frames or pixels were affected.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from bad_inputs import CASES, KINDS, OUTPUT, Case, GoodScan, base_config, write_config
from bad_inputs.case import FRAME_SIDE, N_FRAMES
from conftest import CliResult, console_script, file_bytes, tree

from ptychograph.io.cxi import read_cxi, write_cxi

Cli = Callable[..., CliResult]

#: Seconds any bad input may take to be refused (the issue's bound for an unanswered scheduler).
MAX_SECONDS = 30.0
#: A scheduler that does not answer must be given up within connect_timeout plus this (start-up
#: of a fresh interpreter included).
SCHEDULER_SLACK = 10.0
CONNECT_TIMEOUT = 2

#: Result stores are written unconsolidated, so a plain ``xr.open_zarr`` warns; zarr warns that
#: text arrays (zarr-positions-text) have no stable v3 specification.
pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"
    ),
    pytest.mark.filterwarnings("ignore:The data type .* does not have a Zarr V3 specification"),
]


@pytest.fixture(scope="session")
def good(simulated_scan: Path) -> GoodScan:
    """The session's simulated scan (written once, by conftest), also read into memory."""
    scan = read_cxi(simulated_scan)
    assert scan.frames.shape == (N_FRAMES, FRAME_SIDE, FRAME_SIDE), "the corpus assumes this"
    return GoodScan(simulated_scan, scan)


@pytest.fixture(scope="session")
def old_result(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small Zarr store standing in for the result of an earlier run (copied per test)."""
    path = tmp_path_factory.mktemp("old") / "result.zarr"
    attrs = {"note": "an earlier result", "ptychograph_version": "0", "config": {}}
    ds = xr.Dataset({"stale": ("x", np.arange(4.0))}, attrs=attrs)
    ds.to_zarr(path, consolidated=False)
    return path


def case_params(cases: list[Case]) -> list[object]:
    """Cases as pytest params; a known product bug makes the case a strict xfail."""
    return [
        pytest.param(
            case,
            id=case.id,
            marks=[pytest.mark.xfail(strict=True, reason=f"product bug: {case.bug}")]
            if case.bug
            else [],
        )
        for case in cases
    ]


def make_case(case: Case, folder: Path, good: GoodScan, old_result: Path) -> Path:
    """Write ``case`` into ``folder`` beside ``out/result.zarr`` (a copy of ``old_result``)."""
    out = folder / OUTPUT
    out.parent.mkdir()
    shutil.copytree(old_result, out)
    return case.make(folder, good)


def test_corpus_is_complete() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 35
    for kind in KINDS:
        of_kind = [case for case in CASES if case.kind == kind]
        assert len(of_kind) >= 10, kind
        assert all(case.id.startswith(f"{kind}-") for case in of_kind)
    assert all(case.fields for case in CASES)
    assert {case.id for case in CASES if case.recover} >= {"cxi-nan-frames", "cxi-negative-counts"}


@pytest.mark.parametrize("case", case_params(CASES))
def test_bad_input_is_refused_and_touches_nothing(
    case: Case, good: GoodScan, old_result: Path, tmp_path: Path, cli: Cli
) -> None:
    config = make_case(case, tmp_path, good, old_result)
    entries = tree(tmp_path)
    before = file_bytes(tmp_path)
    start = time.perf_counter()
    result = cli("run", config, "--overwrite", *case.args)
    seconds = time.perf_counter() - start
    result.assert_input_error(*case.fields)
    assert seconds < MAX_SECONDS, f"refused only after {seconds:.1f} s"
    assert tree(tmp_path) == entries, "the failed run added or removed files or folders"
    assert file_bytes(tmp_path) == before, "the failed run changed a file"


# --- recoverable cases --------------------------------------------------------------------


@pytest.mark.parametrize("case", case_params([case for case in CASES if case.recover]))
def test_recoverable_input_runs_with_its_option(
    case: Case,
    good: GoodScan,
    tmp_path: Path,
    cli: Cli,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ptychograph")
    config = case.make(tmp_path, good)
    (tmp_path / OUTPUT).parent.mkdir()
    overrides = [arg for fix in case.recover for arg in ("--set", fix)]
    result = cli("run", config, *overrides)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    for note in case.recovered:
        assert note in caplog.text, f"{note!r} not logged"
    with xr.open_zarr(tmp_path / OUTPUT, consolidated=False) as ds:
        assert ds["view_origin"].shape == (case.frames_kept, 2)
        assert np.all(np.isfinite(ds["object"].values))
        assert np.all(np.isfinite(ds["fourier_error"].values))
        for fix in case.recover:
            key, _, value = fix.partition("=")
            section, name = key.split(".")
            assert ds.attrs["config"][section][name] == value


def test_one_frame_scan_runs(good: GoodScan, tmp_path: Path, cli: Cli) -> None:
    """One frame is a valid (if useless) scan: it reconstructs rather than being refused."""
    one = dataclasses.replace(
        good.scan, frames=good.scan.frames[:1], positions=good.scan.positions[:1]
    )
    write_cxi(tmp_path / "scan.cxi", one)
    (tmp_path / OUTPUT).parent.mkdir()
    result = cli("run", write_config(tmp_path, base_config()))
    assert result.code == 0, result.stderr
    with xr.open_zarr(tmp_path / OUTPUT, consolidated=False) as ds:
        assert ds["view_origin"].shape == (1, 2)
        assert ds["probe"].shape[1:] == (FRAME_SIDE, FRAME_SIDE)
        assert np.all(np.isfinite(ds["fourier_error"].values))


# --- the real console script --------------------------------------------------------------


def run_script(*args: str | Path, limit: float) -> tuple[CliResult, float]:
    """Run the console script; fail the test if it is still running after ``limit`` s."""
    start = time.perf_counter()
    try:
        done = subprocess.run(
            [console_script(), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"ptychograph still running after {limit:.0f} s (hangs)")
    return CliResult(done.returncode, done.stdout, done.stderr), time.perf_counter() - start


def test_error_found_on_the_cluster_is_still_one_line(
    good: GoodScan, old_result: Path, tmp_path: Path
) -> None:
    [case] = [case for case in CASES if case.id == "cxi-absurd-object"]
    config = make_case(case, tmp_path, good, old_result)
    entries = tree(tmp_path)
    result, _ = run_script("run", config, "--overwrite", limit=120)
    assert tree(tmp_path) == entries
    result.assert_input_error(*case.fields)


@contextmanager
def scheduler_impostor(answer: bytes | None) -> Iterator[str]:
    """A local TCP port that accepts connections and then sends ``answer`` (None: nothing,
    ever, like a hung scheduler or a firewall that swallows packets); yields its address."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.1)
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            if answer is not None:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join()
        for conn in accepted:
            conn.close()
        server.close()


HTTP_REPLY = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"


@pytest.mark.parametrize(
    ("answer", "words"),
    [
        pytest.param(None, "did not answer", id="accepts-but-never-answers"),
        # issue 11, item 16: was reported as "(MemoryError)"
        pytest.param(HTTP_REPLY, "not as a Dask scheduler", id="answers-http"),
    ],
)
def test_scheduler_that_does_not_answer_fails_in_bounded_time(
    answer: bytes | None, words: str, good: GoodScan, tmp_path: Path
) -> None:
    shutil.copyfile(good.cxi, tmp_path / "scan.cxi")
    (tmp_path / OUTPUT).parent.mkdir()
    limit = CONNECT_TIMEOUT + SCHEDULER_SLACK
    with scheduler_impostor(answer) as address:
        cluster = {"address": address, "connect_timeout": CONNECT_TIMEOUT}
        config = write_config(tmp_path, {**base_config(), "cluster": cluster})
        entries = tree(tmp_path)
        result, seconds = run_script("run", config, limit=limit)
    result.assert_input_error("cluster.address", address, words)
    assert seconds < limit
    assert tree(tmp_path) == entries

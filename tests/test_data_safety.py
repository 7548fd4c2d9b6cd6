"""Never destroy what the user did not name (issue 11): what ``--overwrite`` may replace, paths
that overlap, ``convert``'s target, where relative paths point, leftovers of a killed run,
write failures, and resuming from a checkpoint of other data.

The run-level cases with a broken config are in the corpus (``tests/bad_inputs/yaml_cases.py``);
here are the ones that need a successful run, another command, or a second run.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
import zarr
from bad_inputs import GoodScan
from bad_inputs.zarr_cases import CASES as ZARR_CASES
from conftest import CliResult, Workspace, file_bytes, tree

from ptychograph import run_lock as run_lock_module
from ptychograph.config import load_config
from ptychograph.engine import reconstruct
from ptychograph.errors import InputError
from ptychograph.io.cxi import read_cxi, write_cxi
from ptychograph.io.zarr_store import write_frames_store
from ptychograph.paths import check_folder
from ptychograph.run_lock import lock_path, run_lock

Cli = Callable[..., CliResult]
REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"
)


def user_folder(path: Path) -> Path:
    """A folder of the user's, holding a file that must survive."""
    path.mkdir()
    (path / "thesis.txt").write_text("years of work")
    return path


def assert_error_after_log(result: CliResult, *needles: str) -> None:
    """Exit 2, no traceback, and the last stderr line (after the run's log) the error."""
    assert result.code == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: ") and all(n in last for n in needles), last
    assert sum(line.startswith("error:") for line in result.stderr.splitlines()) == 1


# --- convert ------------------------------------------------------------------------------


def test_convert_refuses_its_own_input_as_target(workspace: Workspace, cli: Cli) -> None:
    before = workspace.scan.read_bytes()
    result = cli("convert", workspace.scan, workspace.scan, "--overwrite")
    result.assert_input_error("output")
    assert workspace.scan.read_bytes() == before


def test_convert_refuses_a_target_without_zarr_suffix(workspace: Workspace, cli: Cli) -> None:
    entries = tree(workspace.root)
    result = cli("convert", workspace.scan, workspace.root / "frames.h5")
    result.assert_input_error("output", ".zarr", "frames.h5")
    assert tree(workspace.root) == entries


def test_convert_refuses_a_target_inside_its_input(workspace: Workspace, cli: Cli) -> None:
    write_frames_store(read_cxi(workspace.scan), workspace.root / "frames.zarr")
    result = cli(
        "convert", workspace.root / "frames.zarr", workspace.root / "frames.zarr" / "again.zarr"
    )
    result.assert_input_error("output", "overlaps the input")


def test_convert_overwrite_keeps_a_users_folder(workspace: Workspace, cli: Cli) -> None:
    folder = user_folder(workspace.root / "other.zarr")
    result = cli("convert", workspace.scan, folder, "--overwrite")
    result.assert_input_error("output", "not written by ptychograph")
    assert (folder / "thesis.txt").read_text() == "years of work"


def test_convert_overwrite_replaces_its_own_store(workspace: Workspace, cli: Cli) -> None:
    target = workspace.root / "frames.zarr"
    assert cli("convert", workspace.scan, target).code == 0
    leftover = workspace.root / f".frames.zarr.{uuid.uuid4().hex}.tmp"
    zarr.open_group(leftover, mode="w")  # a killed conversion's half-written store
    assert cli("convert", workspace.scan, target, "--overwrite").code == 0
    assert not leftover.exists()


# --- a run's outputs ----------------------------------------------------------------------


def test_overwrite_keeps_a_users_folder_named_like_the_checkpoint(
    workspace: Workspace, cli: Cli
) -> None:
    precious = user_folder(workspace.root / "precious")
    workspace.write_config(output={"checkpoint": "precious", "checkpoint_every": 1})
    result = cli("run", workspace.config_path, "--overwrite")
    result.assert_input_error("output.checkpoint", "not written by ptychograph")
    assert (precious / "thesis.txt").read_text() == "years of work"
    assert not workspace.store.exists()


def test_a_run_removes_only_its_own_leftovers(workspace: Workspace, cli: Cli) -> None:
    """Hidden stores of a killed run beside the result, its work folder and a half-drawn
    figure go; a user's files with similar names stay."""
    hexes = [uuid.uuid4().hex for _ in range(4)]
    tmp = workspace.out / f".result.zarr.{hexes[0]}.tmp"
    old = workspace.out / f".result.zarr.{hexes[1]}.old"  # beside the store it was replaced by
    checkpoint_tmp = workspace.out / f".result.checkpoint.zarr.{hexes[2]}.tmp"
    for path in (tmp, checkpoint_tmp):
        zarr.open_group(path, mode="w")
    for path in (old, workspace.store):
        xr.Dataset(attrs={"ptychograph_version": "0", "config": {}}).to_zarr(path)
    work = workspace.out / ".result.work"
    work.mkdir()
    write_frames_store(read_cxi(workspace.scan), work / "frames.zarr")
    users = user_folder(workspace.out / f".result.zarr.{hexes[3]}.tmp")
    notes = workspace.out / ".result.zarr.notes"
    notes.write_text("mine")
    result = cli("run", workspace.config_path, "--overwrite")
    assert result.code == 0, result.stderr
    for path in (tmp, old, checkpoint_tmp, work):
        assert not path.exists(), path
    assert (users / "thesis.txt").exists() and notes.read_text() == "mine"


def test_a_second_run_on_the_same_output_is_refused(workspace: Workspace, cli: Cli) -> None:
    """While one run writes result.zarr, a second run of the same output (or checkpoint) is
    refused with one line and leaves the first run's half-written store alone; afterwards the
    lock is gone and the same run goes through."""
    writing = workspace.out / f".result.zarr.{uuid.uuid4().hex}.tmp"
    zarr.open_group(writing, mode="w")  # the first run's store in progress
    with run_lock({workspace.store: "output.path"}):
        result = cli("run", workspace.config_path, "--overwrite")
        result.assert_input_error("output.path", "another run is writing", "result.zarr")
        assert writing.exists() and not workspace.store.exists()
    checkpoint = workspace.out / "result.checkpoint.zarr"
    with run_lock({checkpoint: "output.checkpoint"}):
        result = cli("run", workspace.config_path)
        result.assert_input_error("output.checkpoint", "another run is writing")
    assert not lock_path(workspace.store).exists()
    result = cli("run", workspace.config_path)
    assert result.code == 0, result.stderr
    assert workspace.store.exists() and not writing.exists()
    assert not lock_path(workspace.store).exists() and not lock_path(checkpoint).exists()
    lock_path(workspace.store).write_text("mine")  # a user's file of that name is kept
    result = cli("run", workspace.config_path, "--overwrite")
    assert result.code == 0, result.stderr
    assert lock_path(workspace.store).read_text() == "mine"


def test_run_lock_edge_cases(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A link, folder or FIFO at the lock's name is refused with one line and left alone; a
    file system without flock runs unlocked with a warning; a lock file replaced during a run
    (someone removed it and another run took a new one) is not removed by the first run; the
    same lock named twice (another spelling of the folder) is taken once."""
    target = tmp_path / "result.zarr"
    lock = lock_path(target)
    elsewhere = tmp_path / "elsewhere.txt"
    elsewhere.write_text("")
    lock.symlink_to(elsewhere)
    with pytest.raises(InputError, match="in the way of the run's lock file"):
        with run_lock({target: "output.path"}):
            pass
    assert lock.is_symlink() and elsewhere.read_text() == ""
    lock.unlink()
    lock.mkdir()
    with pytest.raises(InputError, match="in the way"):
        with run_lock({target: "output.path"}):
            pass
    lock.rmdir()
    os.mkfifo(lock)
    with pytest.raises(InputError, match="in the way"):
        with run_lock({target: "output.path"}):
            pass
    lock.unlink()

    def no_flock(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    with monkeypatch.context() as patch:
        patch.setattr(run_lock_module.fcntl, "flock", no_flock)
        with run_lock({target: "output.path"}):
            pass
    assert "the run is not locked" in caplog.text and not lock.exists()

    with run_lock({target: "output.path"}):
        lock.unlink()  # removed by hand; a second run takes a new lock file
        with run_lock({target: "output.path"}):
            pass
        lock.write_text("ptychograph run lock\n")  # the second run's, say
    assert lock.exists()  # not ours: kept
    lock.unlink()
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "sub")
    with run_lock(
        {tmp_path / "sub" / "r.zarr": "output.path", link / "r.zarr": "output.checkpoint"}
    ):
        assert lock_path(tmp_path / "sub" / "r.zarr").exists()


def test_a_users_work_folder_is_refused(workspace: Workspace, cli: Cli) -> None:
    user_folder(workspace.out / ".result.work")
    result = cli("run", workspace.config_path)
    result.assert_input_error("output.path", ".result.work", "not written by ptychograph")
    assert (workspace.out / ".result.work" / "thesis.txt").exists()


def test_api_without_writing_keeps_a_users_work_folder(workspace: Workspace) -> None:
    """write=False still converts into the work folder, which is removed afterwards: a
    user's folder of that name must be refused, not used and deleted."""
    work = user_folder(workspace.out / ".result.work")
    with pytest.raises(InputError, match="not written by ptychograph"):
        reconstruct(workspace.config_path, write=False)
    assert (work / "thesis.txt").read_text() == "years of work"


def test_disk_full_while_drawing_the_figure_writes_nothing(
    workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed figure leaves neither store nor figure, so a rerun does not say "exists"."""

    def full(ds: xr.Dataset, path: Path, **kwargs: object) -> None:
        Path(path).write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr("ptychograph.plotting.summary_figure", full)
    workspace.write_config(output={"checkpoint_every": 0})
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path)
    assert_error_after_log(result, "output.path", "could not write", "No space left")
    assert tree(workspace.root) == entries
    monkeypatch.undo()
    assert cli("run", workspace.config_path).code == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_read_only_output_folder_is_one_line(workspace: Workspace, cli: Cli) -> None:
    workspace.out.chmod(0o555)
    try:
        result = cli("run", workspace.config_path)
    finally:
        workspace.out.chmod(0o755)
    result.assert_input_error("output.path", "not writable")


def test_folder_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each reason a folder cannot take a result is its own message (root included)."""
    (tmp_path / "file").write_text("")
    for path, words in (
        (tmp_path / "missing" / "r.zarr", "does not exist"),
        (tmp_path / "file" / "r.zarr", "not a folder"),
        (Path("/proc/r.zarr"), "system folder"),
        (Path("/sys/kernel/r.zarr"), "system folder"),
    ):
        with pytest.raises(InputError, match=words):
            check_folder(path, "output.path")
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)
    with pytest.raises(InputError, match="not writable"):
        check_folder(tmp_path / "r.zarr", "output.path")


def test_python_api_names_its_own_argument(workspace: Workspace) -> None:
    (workspace.out / "result.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    with pytest.raises(InputError, match=r"overwrite=True"):
        reconstruct(workspace.config_path)


def test_plot_into_a_missing_folder_is_one_line(workspace: Workspace, cli: Cli) -> None:
    workspace.write_config(output={"checkpoint_every": 0})
    assert cli("run", workspace.config_path).code == 0
    result = cli("plot", workspace.store, "--out", workspace.root / "nodir" / "x.png")
    result.assert_input_error("--out", "nodir", "does not exist")


# --- path semantics -----------------------------------------------------------------------


def test_set_paths_resolve_against_the_current_folder(
    workspace: Workspace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In the file: against the file's folder; on the command line: against the cwd."""
    here = tmp_path / "shell"
    here.mkdir()
    monkeypatch.chdir(here)
    config = load_config(workspace.config_path, ["data.path=work/small.cxi"])
    assert config.data.path == here / "work" / "small.cxi"
    assert config.output.path == workspace.root / "out" / "result.zarr"
    plain = load_config(workspace.config_path, ["output.path=r.zarr"])
    assert plain.data.path == workspace.scan
    assert plain.output.path == here / "r.zarr"


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_example_configs_do_not_write_into_the_repository(
    path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs' ``run configs/X.yaml --set data.path=$PWD/scan.cxi`` writes in $PWD."""
    monkeypatch.chdir(tmp_path)
    config = load_config(path, [f"data.path={tmp_path / 'scan.cxi'}"])
    for written in (config.output.path, config.output.checkpoint_path):
        assert written.parent == tmp_path, written
        assert REPO not in written.parents


# --- resuming -----------------------------------------------------------------------------


def kept_checkpoint_run(ws: Workspace, cli: Cli) -> Path:
    ws.write_config(output={"checkpoint_every": 1, "keep_checkpoint": True})
    assert cli("run", ws.config_path).code == 0
    checkpoint = ws.out / "result.checkpoint.zarr"
    assert checkpoint.exists()
    return checkpoint


def test_resume_refuses_a_changed_input(workspace: Workspace, cli: Cli) -> None:
    kept_checkpoint_run(workspace, cli)
    scan = read_cxi(workspace.scan)
    frames = scan.frames.copy()
    frames[0] *= 1.5  # the same extent, other counts
    write_cxi(workspace.scan, dataclasses.replace(scan, frames=frames))
    before = file_bytes(workspace.out)
    result = cli("run", workspace.config_path, "--resume", "--overwrite")
    result.assert_input_error("--resume", "other input data", "frames_sha256")
    assert file_bytes(workspace.out) == before


def test_resume_refuses_another_extent(workspace: Workspace, cli: Cli) -> None:
    kept_checkpoint_run(workspace, cli)
    scan = read_cxi(workspace.scan)
    write_cxi(
        workspace.scan,
        dataclasses.replace(scan, frames=scan.frames[:20], positions=scan.positions[:20]),
    )
    result = cli("run", workspace.config_path, "--resume", "--overwrite")
    result.assert_input_error("--resume", "other input data", "n_frames")


@pytest.mark.parametrize("damage", ["chunk", "bit-flip", "attrs", "not-a-store"])
def test_a_damaged_checkpoint_is_one_line(workspace: Workspace, cli: Cli, damage: str) -> None:
    checkpoint = kept_checkpoint_run(workspace, cli)
    if damage == "chunk":
        chunk = next(p for p in (checkpoint / "probe" / "c").rglob("*") if p.is_file())
        chunk.write_bytes(np.random.default_rng(0).bytes(chunk.stat().st_size))
    elif damage == "bit-flip":  # decodes without the per-chunk CRC-32C: caught only by it
        chunk = next(p for p in (checkpoint / "object" / "c").rglob("*") if p.is_file())
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 0x10
        chunk.write_bytes(bytes(data))
    elif damage == "attrs":
        group = zarr.open_group(checkpoint, mode="r+")
        del group.attrs["config"]
    else:
        shutil.rmtree(checkpoint)
        user_folder(checkpoint)
    result = cli("run", workspace.config_path, "--resume", "--overwrite")
    result.assert_input_error("checkpoint" if damage == "not-a-store" else "--resume")


# --- damaged stores in info and convert (item 11) -----------------------------------------

DAMAGED = {
    case.id: case
    for case in ZARR_CASES
    if case.id
    in {
        "zarr-chunk-random-bytes",
        "zarr-chunk-truncated",
        "zarr-chunk-empty-file",
        "zarr-chunk-is-fifo",
        "zarr-chunk-links-dev-zero",
        "zarr-dtype-edited",
        "zarr-chunk-shape-edited",
        "zarr-positions-chunk-random",
        "zarr-illumination-chunk-truncated",
    }
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["info", "convert"])
@pytest.mark.parametrize("case_id", sorted(DAMAGED))
def test_damaged_store_in_info_and_convert(
    case_id: str, command: str, tmp_path: Path, simulated_scan: Path, cli: Cli
) -> None:
    good = GoodScan(simulated_scan, read_cxi(simulated_scan))
    DAMAGED[case_id].make(tmp_path, good)
    store = tmp_path / "frames.zarr"
    args = [store] if command == "info" else [store, tmp_path / "copy.zarr"]
    entries = tree(tmp_path)
    result = cli(command, *args)
    result.assert_input_error("data.path", "frames.zarr")
    assert tree(tmp_path) == entries


# --- messages (item 16) -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--frames", "0"), ("--frames", "greater than or equal to 1", "0")),
        (("--size", "7"), ("--size", "16", "7")),
        (("--photons", "-5"), ("--photons", "greater than 0", "-5")),
    ],
)
def test_simulate_names_the_option(
    args: tuple[str, ...], words: tuple[str, ...], tmp_path: Path, cli: Cli
) -> None:
    """Before: only a pydantic URL, and a negative photon count taken as "no noise"."""
    result = cli("simulate", tmp_path / "s.cxi", *args)
    line = result.assert_input_error(*words)
    assert "pydantic" not in line and "http" not in line
    assert list(tmp_path.iterdir()) == []

"""Never destroy what the user did not name, beyond ``run`` and ``convert`` (issue 11 audit):
``simulate --overwrite`` and ``demo --out`` replace only what ptychograph wrote; a run that
would write its checkpoint over its result is refused before it starts (not after); a disk
that fills while the result store is written keeps the earlier result; a checkpoint of another
configuration is one line, one of an older version (fewer config keys) still resumes; a
geometry far from any beamline's is warned about.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import CliResult, Workspace, file_bytes, tree

from ptychograph import checkpoint, export
from ptychograph.demo import DEMO_CONFIG, DEMO_FILES, run_demo, write_simulation
from ptychograph.errors import InputError
from ptychograph.io import zarr_store
from ptychograph.paths import written_kind
from ptychograph.run_checks import check_plausible
from ptychograph.scan import HC_EV_M, Geometry
from ptychograph.simulate import SimulationConfig

Cli = Callable[..., CliResult]
SMALL = ("--frames", "12", "--size", "16")

pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"
)


def user_file(path: Path) -> Path:
    path.write_text("years of work")
    return path


def measured_scan(path: Path, simulated: Path) -> Path:
    """A CXI file as a beamline writes it: the simulated scan without ptychograph's creator."""
    shutil.copyfile(simulated, path)
    with h5py.File(path, "r+") as file:
        del file.attrs["creator"]
        file.attrs["beamline"] = "HXN"
    return path


# --- simulate and demo --------------------------------------------------------------------


@pytest.mark.parametrize("what", ["measured-scan", "text-file", "folder", "truth-file"])
def test_simulate_overwrite_keeps_what_it_did_not_write(
    what: str, tmp_path: Path, simulated_scan: Path, cli: Cli
) -> None:
    """Before: a measured scan or any file was replaced, a folder gave a traceback."""
    target = tmp_path / ("sim.cxi" if what in ("measured-scan", "truth-file") else "mine")
    if what == "measured-scan":
        measured_scan(target, simulated_scan)
    elif what == "text-file":
        user_file(target)
    elif what == "folder":
        target.mkdir()
        user_file(target / "thesis.txt")
    else:
        user_file(tmp_path / "sim-truth.npz")
    entries, before = tree(tmp_path), file_bytes(tmp_path)
    result = cli("simulate", target, "--overwrite", *SMALL)
    result.assert_input_error("output", "not written by ptychograph")
    assert tree(tmp_path) == entries and file_bytes(tmp_path) == before


def test_simulate_live_overwrite_keeps_a_users_truth_file(tmp_path: Path, cli: Cli) -> None:
    """``simulate --live X.zarr --overwrite`` replaced any ``X-truth.npz``."""
    mine = user_file(tmp_path / "live-truth.npz")
    result = cli(
        "simulate", tmp_path / "live.zarr", "--live", "--rate", "1000", "--overwrite", *SMALL
    )
    result.assert_input_error("output", "live-truth.npz", "not written by ptychograph")
    assert mine.read_text() == "years of work"


def test_simulate_overwrite_replaces_its_own_simulation(tmp_path: Path, cli: Cli) -> None:
    target = tmp_path / "sim.cxi"
    assert cli("simulate", target, *SMALL).code == 0
    assert written_kind(target) == "scan"
    assert written_kind(tmp_path / "sim-truth.npz") == "truth"
    first = target.read_bytes()
    cli("simulate", target, *SMALL, "--seed", "3").assert_input_error("output", "exists")
    assert cli("simulate", target, "--overwrite", *SMALL, "--seed", "3").code == 0
    assert target.read_bytes() != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sim-truth.npz", "sim.cxi"]


def test_simulate_and_export_remove_their_killed_writes(workspace: Workspace, cli: Cli) -> None:
    """A killed ``simulate`` or ``export`` leaves ``.NAME.<uuid>.tmp`` (a partial HDF5 file);
    the next one writing NAME removes it, and only it (issue 11, item 15)."""
    workspace.write_config(output={"checkpoint_every": 0, "figure": False})
    assert cli("run", workspace.config_path).code == 0
    sim, exported = workspace.root / "sim.cxi", workspace.root / "r.cxi"
    killed = [p.parent / f".{p.name}.{uuid.uuid4().hex}.tmp" for p in (sim, exported)]
    for path in killed:
        path.write_bytes(b"\x89HDF\r\n\x1a\n")  # cut off after the signature
    mine = user_file(workspace.root / f".sim.cxi.{uuid.uuid4().hex}.tmp")
    assert cli("simulate", sim, *SMALL).code == 0
    assert cli("export", workspace.store, exported).code == 0
    assert not any(path.exists() for path in killed)
    assert mine.read_text() == "years of work"


def test_simulate_into_a_missing_folder_is_one_line(tmp_path: Path, cli: Cli) -> None:
    """Before: a FileNotFoundError traceback from h5py."""
    result = cli("simulate", tmp_path / "nodir" / "s.cxi", *SMALL)
    result.assert_input_error("output", "nodir", "does not exist")


@pytest.mark.parametrize("name", sorted(DEMO_FILES))
def test_demo_keeps_a_users_file_in_its_folder(
    name: str, tmp_path: Path, simulated_scan: Path
) -> None:
    """``demo --out FOLDER`` replaces only an earlier demo's files (before: a user's scan.cxi
    or demo.yaml there was silently replaced); refused before anything is written."""
    out = tmp_path / "demo"
    out.mkdir()
    if name == "scan.cxi":
        measured_scan(out / name, simulated_scan)
    elif name == "result.zarr":
        (out / name).mkdir()
        user_file(out / name / "notes.txt")
    else:
        user_file(out / name)
    entries, before = tree(tmp_path), file_bytes(tmp_path)
    with pytest.raises(InputError, match="not written by ptychograph") as info:
        run_demo(out, iterations=1, frames=12)
    assert info.value.field == "demo --out"
    assert tree(tmp_path) == entries and file_bytes(tmp_path) == before


def test_demo_recognises_its_own_files(tmp_path: Path) -> None:
    """What an earlier demo wrote is what the next one may replace."""
    write_simulation(SimulationConfig(n_frames=12, frame_size=16), tmp_path / "scan.cxi")
    (tmp_path / "demo.yaml").write_text(DEMO_CONFIG.format(iterations=1, ml_iterations=0))
    for name in ("scan.cxi", "scan-truth.npz", "demo.yaml"):
        assert written_kind(tmp_path / name) == DEMO_FILES[name], name


def test_demo_into_a_file_is_one_line(tmp_path: Path, cli: Cli) -> None:
    result = cli("demo", "--out", user_file(tmp_path / "notes.txt"), "--iterations", "1")
    result.assert_input_error("demo --out", "not a folder")


def test_only_ptychographs_hdf5_files_may_be_replaced(tmp_path: Path) -> None:
    """A CXI file with ptychograph as its creator is an export when it holds a reconstructed
    image, else a scan when it holds frames; an HDF5 file of anyone else is neither."""
    with h5py.File(tmp_path / "export.cxi", "w") as file:
        file.attrs["creator"] = "ptychograph 1.0"
        file["entry_1/image_1/data"] = np.zeros((2, 2))
        file["entry_1/instrument_1/detector_1/data"] = np.zeros((1, 2, 2))
    with h5py.File(tmp_path / "plain.h5", "w") as file:
        file["entry_1/image_1/data"] = np.zeros((2, 2))
        file["entry_1/instrument_1/detector_1/data"] = np.zeros((1, 2, 2))
    (tmp_path / "fake.npz").write_bytes(b"PK\x03\x04 not a zip")
    (tmp_path / "broken.h5").write_bytes(b"\x89HDF\r\n\x1a\n and nothing else")
    assert written_kind(tmp_path / "export.cxi") == "export"
    for name in ("plain.h5", "fake.npz", "broken.h5"):
        assert written_kind(tmp_path / name) is None, name


# --- paths the file system refuses -------------------------------------------------------

LONG = "a" * 300


@pytest.mark.parametrize(
    "args",
    [
        ("info", LONG),
        ("convert", LONG, "x.zarr"),
        ("convert", "scan.cxi", LONG + ".zarr"),
        ("simulate", LONG + ".cxi", *SMALL),
        ("plot", LONG),
        ("run", LONG + ".yaml"),
    ],
    ids=["info", "convert-source", "convert-target", "simulate", "plot", "run-config"],
)
def test_a_name_too_long_is_one_line(
    args: tuple[str, ...], workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an OSError traceback (File name too long) from every command."""
    monkeypatch.chdir(workspace.root)
    entries = tree(workspace.root)
    line = cli(*args).assert_input_error("aaaa", "too long")
    assert len(line) < 1000
    assert tree(workspace.root) == entries


# --- convert ------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["/proc/x.zarr", "notes.txt/x.zarr", "nodir/x.zarr"])
def test_convert_into_a_folder_that_cannot_take_it_is_one_line(
    where: str, workspace: Workspace, cli: Cli
) -> None:
    """Before: a FileNotFoundError traceback from zarr for /proc."""
    user_file(workspace.root / "notes.txt")
    target = Path(where) if where.startswith("/") else workspace.root / where
    result = cli("convert", workspace.scan, target)
    result.assert_input_error("output", "folder")


def test_disk_full_while_converting_keeps_the_earlier_store(
    workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = workspace.root / "frames.zarr"
    assert cli("convert", workspace.scan, target).code == 0
    before = file_bytes(workspace.root)
    write_group = zarr_store._write_group

    def full(scan: Any, folder: Path, chunk_frames: int) -> None:
        write_group(scan, folder, chunk_frames)  # every chunk written, then the disk fills
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))

    monkeypatch.setattr(zarr_store, "_write_group", full)
    result = cli("convert", workspace.scan, target, "--overwrite")
    result.assert_input_error("output", "could not write", "No space left")
    assert file_bytes(workspace.root) == before


# --- export -------------------------------------------------------------------------------


def test_export_that_cannot_be_written_is_one_line(
    workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: an h5py traceback for /proc; a full disk is one line and leaves nothing."""
    workspace.write_config(output={"checkpoint_every": 0, "figure": False})
    assert cli("run", workspace.config_path).code == 0
    for where, words in (("/proc/x.cxi", "system folder"), ("notes.txt/x.cxi", "not a folder")):
        user_file(workspace.root / "notes.txt")
        target = Path(where) if where.startswith("/") else workspace.root / where
        cli("export", workspace.store, target).assert_input_error("target", words)

    def full(file: h5py.File, ds: xr.Dataset) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(export, "write_entry", full)
    entries = tree(workspace.root)
    result = cli("export", workspace.store, workspace.root / "x.cxi")
    result.assert_input_error("target", "could not write", "No space left")
    assert tree(workspace.root) == entries


# --- plot ---------------------------------------------------------------------------------


def test_plot_redraws_only_a_figure(workspace: Workspace, cli: Cli) -> None:
    """Before: ``plot r.zarr --out scan.cxi`` replaced the scan with a PNG."""
    workspace.write_config(output={"checkpoint_every": 0})
    assert cli("run", workspace.config_path).code == 0
    scan = workspace.scan.read_bytes()
    cli("plot", workspace.store, "--out", workspace.scan).assert_input_error("--out", ".png")
    picture = user_file(workspace.root / "mine.png")
    result = cli("plot", workspace.store, "--out", picture)
    result.assert_input_error("--out", "not written by ptychograph")
    assert workspace.scan.read_bytes() == scan and picture.read_text() == "years of work"
    figure = workspace.out / "result.png"
    figure.unlink()
    assert cli("plot", workspace.store).code == 0 and cli("plot", workspace.store).code == 0
    assert written_kind(figure) == "figure"


# --- a run's outputs ----------------------------------------------------------------------


def test_checkpoint_named_like_the_result_is_refused_before_the_run(
    workspace: Workspace, cli: Cli
) -> None:
    """Item 2 without --overwrite: before, the whole run executed and then exit 2 left a
    checkpoint named like the result; now one line before any cluster starts."""
    workspace.write_config(output={"checkpoint": "out/result.zarr", "checkpoint_every": 1})
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path)
    result.assert_input_error("output.path", "overlaps output.checkpoint")
    assert tree(workspace.root) == entries


def test_overwrite_keeps_a_users_picture_named_like_the_figure(
    workspace: Workspace, cli: Cli
) -> None:
    """A PNG that matplotlib did not draw (a photo, a scanned page) is not ptychograph's."""
    picture = workspace.out / "result.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR a photo\0\0\0\x10tEXtSoftware\0GIMP")
    result = cli("run", workspace.config_path, "--overwrite")
    result.assert_input_error("output.path", "result.png", "not written by ptychograph")
    assert picture.read_bytes().endswith(b"GIMP")


def test_preview_keeps_a_users_file_of_its_name(workspace: Workspace, cli: Cli) -> None:
    """``result.preview.png`` is rewritten every ``preview_every`` iterations: a user's file
    of that name must stop the run up front, not be replaced (found in the issue 11 audit)."""
    mine = user_file(workspace.out / "result.preview.png")
    workspace.write_config(output={"preview_every": 1, "checkpoint_every": 0})
    result = cli("run", workspace.config_path)
    assert mine.read_text() == "years of work"
    result.assert_input_error("result.preview.png", "not written by ptychograph")


@pytest.mark.parametrize("command", ["run", "convert"])
def test_an_earlier_store_moved_aside_by_a_killed_write_is_kept(
    command: str, workspace: Workspace, cli: Cli
) -> None:
    """Killed between its two renames, a write leaves the target missing and the earlier
    store only in ``.NAME.<uuid>.old``: the next run or conversion must not delete it as a
    leftover (before: it did, then wrote, and a failure there lost both)."""
    target = workspace.store if command == "run" else workspace.root / "frames.zarr"
    workspace.write_config(output={"checkpoint_every": 0})
    args = [workspace.config_path] if command == "run" else [workspace.scan, target]
    assert cli(command, *args).code == 0
    moved = target.parent / f".{target.name}.{uuid.uuid4().hex}.old"
    target.rename(moved)
    before = file_bytes(workspace.root)
    result = cli(command, *args, "--overwrite")
    result.assert_input_error(moved.name, "interrupted write", f"rename it to {target.name}")
    assert file_bytes(workspace.root) == before


def test_disk_full_while_writing_the_store_keeps_the_earlier_result(
    workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC half-way through the new store: one line, the earlier result and figure stay
    byte for byte, no hidden store is left beside them."""
    workspace.write_config(output={"checkpoint_every": 0})
    assert cli("run", workspace.config_path).code == 0
    before = file_bytes(workspace.out)
    write = xr.Dataset.to_zarr

    def full(self: xr.Dataset, store: Any, *args: Any, **kwargs: Any) -> None:
        part = self[[next(iter(self.data_vars))]]
        encoding = {k: v for k, v in kwargs.pop("encoding", {}).items() if k in part.variables}
        write(part, store, *args, encoding=encoding, **kwargs)  # partly written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(store))

    monkeypatch.setattr(xr.Dataset, "to_zarr", full)
    result = cli("run", workspace.config_path, "--overwrite")
    assert result.code == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: output.path: could not write") and "No space" in last
    assert file_bytes(workspace.out) == before


def test_disk_full_while_writing_a_checkpoint_is_one_line(
    workspace: Workspace, cli: Cli, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run stops at the failed checkpoint with one line naming it; no result is written
    and no hidden store is left."""
    workspace.write_config(output={"checkpoint_every": 1})
    entries = tree(workspace.root)

    def full(ds: xr.Dataset, path: Path) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(checkpoint, "write_dataset_atomic", full)
    result = cli("run", workspace.config_path)
    assert result.code == 2 and "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: output.checkpoint: ") and "result.checkpoint.zarr" in last, last
    assert "No space left" in last
    assert tree(workspace.root) == entries


# --- resuming -----------------------------------------------------------------------------


def kept_checkpoint(ws: Workspace, cli: Cli) -> Path:
    ws.write_config(output={"checkpoint_every": 1, "keep_checkpoint": True})
    assert cli("run", ws.config_path).code == 0
    return ws.out / "result.checkpoint.zarr"


def test_a_checkpoint_of_another_configuration_is_one_line(workspace: Workspace, cli: Cli) -> None:
    kept_checkpoint(workspace, cli)
    before = file_bytes(workspace.out)
    args = ("--resume", "--overwrite", "--set", "reconstruction.probe_modes=2")
    result = cli("run", workspace.config_path, *args)
    result.assert_input_error("reconstruction.probe_modes", "differs from the checkpoint")
    assert file_bytes(workspace.out) == before


def test_a_checkpoint_without_a_newer_key_resumes_at_its_default(
    workspace: Workspace, cli: Cli
) -> None:
    """A checkpoint written before a config key existed (an older version) lacks it: the key
    at its default is no difference; anything else still is."""
    checkpoint = kept_checkpoint(workspace, cli)
    for iterations, extra in ((3, ()), (4, ("--set", "data.swap_xy=true"))):
        group = zarr.open_group(checkpoint, mode="r+")
        config: dict[str, Any] = dict(group.attrs["config"])  # type: ignore[arg-type]
        config["data"] = {k: v for k, v in config["data"].items() if k != "swap_xy"}
        group.attrs["config"] = config
        more = ("--resume", "--overwrite", "--set", f"reconstruction.iterations={iterations}")
        result = cli("run", workspace.config_path, *more, *extra)
        if not extra:
            assert result.code == 0, result.stderr
    result.assert_input_error("data.swap_xy", "differs from the checkpoint")


# --- implausible geometry (item 7) --------------------------------------------------------


def test_geometry_far_from_any_beamline_is_warned(caplog: pytest.LogCaptureFixture) -> None:
    """An energy or distance in the wrong units warns (the run goes on when the views still
    spread over the object); views within one object pixel are refused."""
    caplog.set_level(logging.WARNING, logger="ptychograph")
    positions = np.array([[0.0, 0.0], [0.0, 1e-6]])
    origins = np.array([[0.0, 0.0], [0.0, 20.0]])
    odd = Geometry(HC_EV_M / 5.0, 2e4, (75e-6, 75e-6), (32, 32))  # 5 eV, 20 km
    check_plausible(odd, positions, origins)
    assert "photon energy 5 eV is far from X-rays" in caplog.text
    assert "distance 2e+04 m is far from a detector's" in caplog.text
    caplog.clear()
    usual = Geometry(HC_EV_M / 8000.0, 2.0, (75e-6, 75e-6), (32, 32))
    check_plausible(usual, positions, origins)
    assert caplog.text == ""
    with pytest.raises(InputError, match="one object pixel") as info:
        check_plausible(usual, positions * 1e-7, origins * 1e-7)
    assert info.value.field == "positions"

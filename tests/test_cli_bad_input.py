"""``ptychograph run CONFIG [--set section.key=value ...] [--overwrite]`` on bad input.

Every kind of bad input must end with exit code 2 and exactly one stderr line
``error: FIELD: PROBLEM`` naming what is wrong, with no traceback, and must leave the
workspace exactly as it was: no new files or folders (hidden temporaries included) and an
existing result untouched. Malformed CXI files are made by editing a copy of a good one.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import FRAME_SHAPE, N_FRAMES, CliResult, Workspace, file_bytes, tree

from ptychograph.io.cxi import DETECTOR, ENERGY_PATH, MASK_PATH, TRANSLATION_PATHS

DATA = f"{DETECTOR}/data"
TRANSLATION = TRANSLATION_PATHS[0]
RESULT_VARIABLES = (
    "object",
    "probe",
    "view_origin",
    "fourier_error",
    "probe_change",
    "object_change",
    "probe_mode_power",
)

#: Result stores are written unconsolidated, so a plain ``xr.open_zarr`` warns (reported).
pytestmark = pytest.mark.filterwarnings(
    "ignore:Failed to open Zarr store with consolidated metadata:RuntimeWarning"
)

Cli = Callable[..., CliResult]
#: Prepares a bad workspace; returns the arguments after ``run``.
Setup = Callable[[Workspace], list[str]]


# --- helpers to break a workspace ---------------------------------------------------------


def replace_dataset(ws: Workspace, path: str, value: object) -> None:
    """Put ``value`` at ``path`` in the workspace's CXI file (replacing what was there)."""
    with ws.edit_scan() as file:
        if path in file:
            del file[path]
        file[path] = value


def edit_frames(ws: Workspace, change: Callable[[np.ndarray], None]) -> None:
    """Rewrite the frames after ``change`` edits them in place."""
    with ws.edit_scan() as file:
        frames = np.asarray(file[DATA][()])
        change(frames)
        file[DATA][...] = frames


def set_nan(frames: np.ndarray) -> None:
    frames[[3, 7, 20], 5, 5] = np.nan


def set_negative(frames: np.ndarray) -> None:
    frames[4, :2, :2] = -3.0


def default(ws: Workspace) -> list[str]:
    return [str(ws.config_path)]


def with_cxi(edit: Callable[[Workspace], None]) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        edit(ws)
        return default(ws)

    return setup


def with_config(**sections: dict[str, object]) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        ws.write_config(**sections)
        return default(ws)

    return setup


def with_text(text: str) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        ws.write_config(text)
        return default(ws)

    return setup


def with_args(*args: str) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        return [*default(ws), *args]

    return setup


def missing_config(ws: Workspace) -> list[str]:
    return [str(ws.root / "nope.yaml")]


def data_file(name: str, content: bytes) -> Setup:
    def setup(ws: Workspace) -> list[str]:
        (ws.root / name).write_bytes(content)
        ws.write_config(data={"path": name})
        return default(ws)

    return setup


def truncated(ws: Workspace) -> None:
    content = ws.scan.read_bytes()
    ws.scan.write_bytes(content[: len(content) // 2])


def no_translation(ws: Workspace) -> None:
    with ws.edit_scan() as file:
        for path in TRANSLATION_PATHS:  # the dataset and the soft link to it
            del file[path]


def no_frames(ws: Workspace) -> None:
    with ws.edit_scan() as file:
        del file["/entry_1/data_1/data"]
        del file[DATA]


def fewer_positions(ws: Workspace) -> None:
    with ws.edit_scan() as file:
        translation = np.asarray(file[TRANSLATION][()])
    replace_dataset(ws, TRANSLATION, translation[:-2])


def nan_position(ws: Workspace) -> None:
    with ws.edit_scan() as file:
        file[TRANSLATION][6, 1] = np.nan


def repeated_position(ws: Workspace) -> None:
    with ws.edit_scan() as file:
        file[TRANSLATION][9] = file[TRANSLATION][2]


def all_nan_dropped(ws: Workspace) -> list[str]:
    edit_frames(ws, lambda frames: frames.fill(np.nan))
    return [*default(ws), "--set", "data.nonfinite=drop"]


def existing_png(ws: Workspace) -> list[str]:
    (ws.out / "result.png").write_bytes(b"not to be overwritten")
    return default(ws)


def nested_output(ws: Workspace) -> list[str]:
    ws.write_config(output={"path": "out/missing/result.zarr"})
    return default(ws)


def probe_previous_missing(ws: Workspace) -> list[str]:
    ws.write_config(initial={"probe": "previous", "previous": "old.zarr"})
    return default(ws)


def not_utf8(ws: Workspace) -> list[str]:
    ws.config_path.write_bytes(b"\xff\xfe\x00d\x00a\x00t\x00a")
    return default(ws)


def bug(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"product bug: {reason}")


CASES = [
    pytest.param(missing_config, ("config", "nope.yaml", "does not exist"), id="missing-config"),
    pytest.param(
        with_config(data={"path": "gone.cxi"}),
        ("data.path", "gone.cxi", "does not exist"),
        id="missing-data-file",
    ),
    pytest.param(data_file("scan.cxi", b"not HDF5 at all\n"), ("data.path",), id="cxi-not-hdf5"),
    pytest.param(data_file("scan.txt", b"1 2 3\n"), ("data.path", "format"), id="txt-data-file"),
    pytest.param(data_file("scan.cxi", b""), ("data.path",), id="empty-data-file"),
    pytest.param(with_cxi(truncated), ("data.path", "truncated"), id="truncated-cxi"),
    pytest.param(with_cxi(no_translation), ("translation", "missing"), id="no-translation"),
    pytest.param(with_cxi(no_frames), ("data", "missing"), id="no-frames"),
    pytest.param(
        with_cxi(lambda ws: replace_dataset(ws, ENERGY_PATH, np.float64(0.0))),
        ("energy", "positive"),
        id="zero-energy",
    ),
    pytest.param(
        with_cxi(lambda ws: replace_dataset(ws, f"{DETECTOR}/distance", np.float64(-2.0))),
        ("distance", "positive"),
        id="negative-distance",
    ),
    pytest.param(
        with_cxi(lambda ws: replace_dataset(ws, MASK_PATH, np.zeros((16, 16), np.uint32))),
        ("mask", "shape"),
        id="mask-wrong-shape",
    ),
    pytest.param(
        with_cxi(fewer_positions), ("translation", f"{N_FRAMES} frames"), id="count-mismatch"
    ),
    pytest.param(with_cxi(nan_position), ("translation", "NaN"), id="nan-position"),
    pytest.param(with_cxi(repeated_position), ("translation", "repeat"), id="repeated-position"),
    pytest.param(
        with_cxi(lambda ws: edit_frames(ws, set_nan)),
        ("frames", "3 frames", "NaN", "data.nonfinite"),
        id="nan-frames",
    ),
    pytest.param(
        with_cxi(lambda ws: edit_frames(ws, lambda f: f.__setitem__((0, 1, 1), np.inf))),
        ("frames", "frame 0", "Inf"),
        id="inf-frame",
    ),
    pytest.param(all_nan_dropped, ("frames", "nothing is left"), id="all-nan-frames-dropped"),
    pytest.param(
        with_cxi(lambda ws: edit_frames(ws, set_negative)),
        ("frames", "negative", "frame 4", "data.negative"),
        id="negative-frames",
    ),
    pytest.param(
        with_cxi(lambda ws: edit_frames(ws, lambda f: f.fill(0.0))),
        ("frames", "zero"),
        id="all-zero-frames",
    ),
    pytest.param(
        with_config(reconstruction={"iteratons": 5}),
        ("reconstruction.iteratons", "unknown key"),
        id="misspelt-key",
    ),
    pytest.param(
        with_config(reconstrution={"beta": 0.5}), ("reconstrution", "unknown key"), id="bad-section"
    ),
    pytest.param(
        with_config(reconstruction={"beta": 1.5}), ("reconstruction.beta", "1.5"), id="beta-range"
    ),
    pytest.param(
        with_config(reconstruction={"precision": "quad"}),
        ("reconstruction.precision", "quad"),
        id="bad-choice",
    ),
    pytest.param(
        with_config(reconstruction={"iterations": "many"}),
        ("reconstruction.iterations", "many"),
        id="wrong-type",
    ),
    pytest.param(
        with_args("--set", "reconstruction.probe_modes=0"),
        ("reconstruction.probe_modes",),
        id="set-out-of-range",
    ),
    pytest.param(
        with_args("--set", "reconstruction.iterations"),
        ("--set", "reconstruction.iterations"),
        id="set-no-equals",
    ),
    pytest.param(with_args("--set", "=3"), ("--set",), id="set-no-key"),
    pytest.param(
        with_args("--set", "reconstruction.beta=["),
        ("reconstruction.beta",),
        id="set-value-not-yaml",
    ),
    pytest.param(
        with_args("--set", ".beta=0.5"),
        ("--set", ".beta"),
        id="set-empty-section",
    ),
    pytest.param(
        with_text("data:\n  path: scan.cxi\nreconstruction:\n  iterations: [2\n"),
        ("config", "YAML", "line"),
        id="invalid-yaml",
    ),
    pytest.param(with_text("- data\n- output\n"), ("config", "mapping"), id="yaml-list"),
    pytest.param(
        with_config(initial={"probe": "file"}), ("initial", "probe_path"), id="probe-file-no-path"
    ),
    pytest.param(
        with_config(initial={"probe": "file", "probe_path": "probe.npy"}),
        ("initial.probe_path", "does not exist"),
        id="probe-file-missing",
    ),
    pytest.param(
        probe_previous_missing,
        ("initial.previous", "does not exist"),
        id="probe-previous-missing",
    ),
    pytest.param(nested_output, ("output.path", "does not exist"), id="output-folder-missing"),
    pytest.param(
        with_config(output={"path": "out/result.png"}),
        ("output.path", "png"),
        id="output-path-is-figure-path",
    ),
    pytest.param(
        existing_png,
        ("output", "result.png", "--overwrite"),
        id="existing-figure",
    ),
    pytest.param(
        not_utf8,
        ("config",),
        id="config-not-utf8",
    ),
]


@pytest.mark.parametrize(("setup", "needles"), CASES)
def test_bad_input_exits_2_with_one_line(
    workspace: Workspace, cli: Cli, setup: Setup, needles: tuple[str, ...]
) -> None:
    args = setup(workspace)
    before = file_bytes(workspace.root)
    folders_before = tree(workspace.root)
    result = cli("run", *args)
    result.assert_input_error(*needles)
    assert tree(workspace.root) == folders_before, "the failed run added or removed entries"
    assert file_bytes(workspace.root) == before, "the failed run changed a file"


# --- existing outputs ---------------------------------------------------------------------


def write_old_store(path: Path) -> None:
    """A small, valid Zarr store standing in for an earlier result."""
    xr.Dataset({"stale": ("x", np.arange(4.0))}).to_zarr(path, consolidated=False)


def test_existing_output_is_kept_without_overwrite(workspace: Workspace, cli: Cli) -> None:
    write_old_store(workspace.store)
    (workspace.out / "result.png").write_bytes(b"old figure")
    before = file_bytes(workspace.root)
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path)
    result.assert_input_error("output.path", "result.zarr", "exists", "--overwrite")
    assert tree(workspace.root) == entries
    assert file_bytes(workspace.root) == before
    with xr.open_zarr(workspace.store, consolidated=False) as ds:
        assert list(ds.data_vars) == ["stale"]


def test_existing_output_is_replaced_with_overwrite(workspace: Workspace, cli: Cli) -> None:
    write_old_store(workspace.store)
    (workspace.out / "result.png").write_bytes(b"old figure")
    result = cli("run", workspace.config_path, "--overwrite")
    assert result.code == 0, result.stderr
    assert_clean_output(workspace)
    with xr.open_zarr(workspace.store) as ds:
        assert "stale" not in ds
        assert set(RESULT_VARIABLES) <= set(ds.data_vars)


def test_bad_data_with_overwrite_keeps_the_old_output(workspace: Workspace, cli: Cli) -> None:
    write_old_store(workspace.store)
    edit_frames(workspace, set_nan)
    before = file_bytes(workspace.root)
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path, "--overwrite")
    result.assert_input_error("frames", "NaN")
    assert tree(workspace.root) == entries
    assert file_bytes(workspace.root) == before


# --- runs that succeed --------------------------------------------------------------------


def open_result(ws: Workspace) -> xr.Dataset:
    return xr.open_zarr(ws.store)


def assert_clean_output(ws: Workspace) -> None:
    """out/ holds result.zarr and result.png and nothing else (no hidden temporaries)."""
    top = {name for name in tree(ws.out) if "/" not in name}
    assert top == {"result.zarr", "result.png"}
    assert (ws.out / "result.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tiny_run_writes_a_complete_result(workspace: Workspace, cli: Cli) -> None:
    workspace.write_config(reconstruction={"iterations": 2, "probe_modes": 2})
    result = cli("run", workspace.config_path)
    assert result.code == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert_clean_output(workspace)
    with open_result(workspace) as ds:
        assert set(RESULT_VARIABLES) <= set(ds.data_vars)
        assert ds["object"].dims == ("obj_mode", "y", "x")
        assert ds["probe"].dims == ("probe_mode", "py", "px")
        assert ds["probe"].shape == (2, *FRAME_SHAPE)
        assert np.iscomplexobj(ds["object"].values) and np.iscomplexobj(ds["probe"].values)
        assert ds["view_origin"].shape == (N_FRAMES, 2)
        for name in ("fourier_error", "probe_change", "object_change"):
            values = ds[name].values
            assert values.shape == (2,) and np.all(np.isfinite(values)), name
        assert np.all(ds["fourier_error"].values > 0)
        power = ds["probe_mode_power"].values
        assert power.shape == (2,)
        assert power.sum() == pytest.approx(1.0, abs=1e-6)
        assert np.all(power >= 0) and power[0] >= power[1]
        assert ds.attrs["config"]["reconstruction"]["probe_modes"] == 2


def test_nonfinite_drop_drops_and_logs(
    workspace: Workspace, cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptychograph")
    edit_frames(workspace, set_nan)
    result = cli("run", workspace.config_path, "--set", "data.nonfinite=drop")
    assert result.code == 0, result.stderr
    assert "dropped 3 frames" in caplog.text
    assert "[3, 7, 20]" in caplog.text
    assert_clean_output(workspace)
    with open_result(workspace) as ds:
        assert ds["view_origin"].shape == (N_FRAMES - 3, 2)
        assert np.all(np.isfinite(ds["object"].values))
        assert ds.attrs["config"]["data"]["nonfinite"] == "drop"


def test_negative_clip_clips_and_logs(
    workspace: Workspace, cli: Cli, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ptychograph")
    edit_frames(workspace, set_negative)
    result = cli("run", workspace.config_path, "--set", "data.negative=clip")
    assert result.code == 0, result.stderr
    assert "clipped 4 negative pixels in 1 frame" in caplog.text
    assert_clean_output(workspace)
    with open_result(workspace) as ds:
        assert ds["view_origin"].shape == (N_FRAMES, 2)
        assert np.all(np.isfinite(ds["fourier_error"].values))


# --- the real console script --------------------------------------------------------------


def console_script() -> str:
    beside = Path(sys.executable).with_name("ptychograph")
    found = str(beside) if beside.exists() else shutil.which("ptychograph")
    if found is None:
        pytest.skip("the ptychograph console script is not installed")
    return found


def test_console_script_exit_code_and_no_traceback(workspace: Workspace) -> None:
    edit_frames(workspace, set_nan)
    entries = tree(workspace.root)
    done = subprocess.run(
        [console_script(), "run", str(workspace.config_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("error: frames: 3 frames contain NaN or Inf")
    assert done.stdout == ""
    assert tree(workspace.root) == entries

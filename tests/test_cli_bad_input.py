"""``ptychograph run``: existing outputs, a complete successful run, and the real console script.

The bad-input corpus (``tests/bad_inputs``, run by ``tests/test_bad_inputs.py``) covers every
kind of broken data file and config, each run with ``--overwrite`` over an existing result.
What is left here: what happens to existing outputs without ``--overwrite`` and with it on a
good input, the contents of a successful run's result, and exit code and stderr of the
installed console script in a separate process.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from conftest import FRAME_SHAPE, N_FRAMES, CliResult, Workspace, console_script, file_bytes, tree

from ptychograph.io.cxi import DETECTOR

DATA = f"{DETECTOR}/data"
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
#: What a successful run writes into out/ (a checkpoint of the last iteration may join them).
OUTPUTS = ("result.zarr", "result.png")


# --- helpers ------------------------------------------------------------------------------


def edit_frames(ws: Workspace, change: Callable[[np.ndarray], None]) -> None:
    """Rewrite the frames after ``change`` edits them in place."""
    with ws.edit_scan() as file:
        frames = np.asarray(file[DATA][()])
        change(frames)
        file[DATA][...] = frames


def set_nan(frames: np.ndarray) -> None:
    frames[[3, 7, 20], 5, 5] = np.nan


# --- existing outputs ---------------------------------------------------------------------


def write_old_store(path: Path) -> None:
    """A small Zarr store standing in for an earlier result (with the attributes by which
    ptychograph recognises a result it wrote)."""
    attrs = {"ptychograph_version": "0", "config": {}}
    xr.Dataset({"stale": ("x", np.arange(4.0))}, attrs=attrs).to_zarr(path, consolidated=False)


#: The start of a PNG drawn by matplotlib: what ptychograph recognises as a figure it may replace.
OLD_FIGURE = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR old\0\0\0:tEXtSoftware\0Matplotlib version3"


def test_existing_output_is_kept_without_overwrite(workspace: Workspace, cli: Cli) -> None:
    write_old_store(workspace.store)
    (workspace.out / "result.png").write_bytes(OLD_FIGURE)
    before = file_bytes(workspace.root)
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path)
    result.assert_input_error("output.path", "result.zarr", "exists", "--overwrite")
    assert tree(workspace.root) == entries
    assert file_bytes(workspace.root) == before
    with xr.open_zarr(workspace.store, consolidated=False) as ds:
        assert list(ds.data_vars) == ["stale"]


def test_existing_figure_alone_is_kept_without_overwrite(workspace: Workspace, cli: Cli) -> None:
    (workspace.out / "result.png").write_bytes(b"not to be overwritten")
    before = file_bytes(workspace.root)
    entries = tree(workspace.root)
    result = cli("run", workspace.config_path)
    result.assert_input_error("output", "result.png", "--overwrite")
    assert tree(workspace.root) == entries
    assert file_bytes(workspace.root) == before


def test_existing_output_is_replaced_with_overwrite(workspace: Workspace, cli: Cli) -> None:
    write_old_store(workspace.store)
    (workspace.out / "result.png").write_bytes(OLD_FIGURE)
    result = cli("run", workspace.config_path, "--overwrite")
    assert result.code == 0, result.stderr
    assert_clean_output(workspace)
    with xr.open_zarr(workspace.store) as ds:
        assert "stale" not in ds
        assert set(RESULT_VARIABLES) <= set(ds.data_vars)


# --- runs that succeed --------------------------------------------------------------------


def open_result(ws: Workspace) -> xr.Dataset:
    return xr.open_zarr(ws.store)


def assert_clean_output(ws: Workspace) -> None:
    """out/ holds result.zarr, result.png and at most the final checkpoint; nothing hidden."""
    top = {name for name in tree(ws.out) if "/" not in name}
    assert set(OUTPUTS) <= top <= {*OUTPUTS, "result.checkpoint.zarr"}, top
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


# --- the real console script --------------------------------------------------------------


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

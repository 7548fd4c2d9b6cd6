"""The example notebook runs top to bottom on a small simulated scan, and its result is sound.

Executed with nbclient in a fresh ``python3`` kernel, in a temporary working folder, with
``PTYCHOGRAPH_NOTEBOOK_SMALL=1`` (100 frames of 32 x 32, 30 iterations). Any cell error fails
the test with the cell's traceback.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import numpy as np
import pytest
import xarray as xr
from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

NOTEBOOK = Path(__file__).parent.parent / "notebooks" / "reconstruct.ipynb"
KERNEL = "python3"


def _has_kernel(name: str) -> bool:
    try:
        KernelSpecManager().get_kernel_spec(name)
    except NoSuchKernel:
        return False
    return True


def _images(cell: nbformat.NotebookNode) -> list[str]:
    return [out["data"]["image/png"] for out in cell.outputs if "image/png" in out.get("data", {})]


@pytest.mark.timeout(300)
def test_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not _has_kernel(KERNEL):
        pytest.skip(f"no Jupyter kernel named {KERNEL!r} (pip install ipykernel)")
    work = tmp_path / "work"
    monkeypatch.setenv("PTYCHOGRAPH_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("PTYCHOGRAPH_WORKDIR", str(work))
    monkeypatch.delenv("PTYCHOGRAPH_SCHEDULER", raising=False)
    monkeypatch.delenv("PTYCHOGRAPH_SCAN", raising=False)

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), (
        "commit the notebook without outputs"
    )

    client = NotebookClient(
        notebook,
        timeout=300,
        kernel_name=KERNEL,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    try:
        client.execute()
    except CellExecutionError as err:  # the message holds the failing cell and its traceback
        pytest.fail(f"notebook cell failed:\n{err}")

    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors
    # The live plot is one display, updated in place: exactly one image in the run's cells.
    live = [cell for cell in code if "display_id=True" in cell.source]
    assert len(live) == 1 and len(_images(live[0])) == 1
    # Object phase and probe modes are drawn.
    assert sum(len(_images(cell)) for cell in code) >= 3

    result = xr.open_zarr(work / "result.zarr", consolidated=False)
    error = result.fourier_error.values
    assert error.shape == (30,)
    assert np.all(np.isfinite(error))
    assert error[-1] < 0.1 * error[0], "DM did not converge on the simulated scan"
    assert result.probe.sizes["probe_mode"] == 2
    assert result.object.sizes["obj_mode"] == 1
    np.testing.assert_allclose(float(result.probe_mode_power.sum()), 1.0, rtol=1e-6)
    assert (work / "result.png").is_file()

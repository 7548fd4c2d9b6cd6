"""``ptychograph export``: a result store as CXI, read back with h5py (ptychograph.export)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychograph.cli import main
from ptychograph.config import parse_config
from ptychograph.engine import reconstruct_in_process
from ptychograph.errors import InputError
from ptychograph.export import CXI_HAS_SIGNAL, export_cxi
from ptychograph.io.cxi import write_cxi
from ptychograph.results import open_result, result_dataset, write_dataset_atomic
from ptychograph.scan import EV_J
from ptychograph.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("export")
    sim = simulate(SimulationConfig(n_frames=24, frame_size=32, photons=1e6, seed=4))
    write_cxi(folder / "s.cxi", sim.scan)
    raw = {
        "data": {"path": str(folder / "s.cxi")},
        "reconstruction": {"iterations": 3, "probe_modes": 2},
        "output": {"path": str(folder / "r.zarr")},
    }
    write_dataset_atomic(
        result_dataset(reconstruct_in_process(parse_config(raw))), folder / "r.zarr"
    )
    return folder / "r.zarr"


def test_export_reads_back(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "r.cxi"
    assert main(["export", str(store), str(target)]) == 0
    ds = open_result(store).load()
    geometry = ds.attrs["geometry"]
    with h5py.File(target, "r") as file:
        assert int(file["cxi_version"][()]) == 150
        np.testing.assert_array_equal(file["/entry_1/image_1/data"][()], ds["object"].values)
        np.testing.assert_array_equal(file["/entry_1/object/data"][()], ds["object"].values)
        np.testing.assert_array_equal(file["/entry_1/data_1/data"][()], ds["object"].values)
        np.testing.assert_array_equal(file["/entry_1/image_2/data"][()], ds["probe"].values)
        np.testing.assert_array_equal(file["/entry_1/probe/data"][()], ds["probe"].values)
        image = file["/entry_1/image_1"]
        assert image["data_space"][()] == b"real"
        assert image["x_pixel_size"][()] == pytest.approx(geometry["object_pixel_m"][1])
        assert image["y_pixel_size"][()] == pytest.approx(geometry["object_pixel_m"][0])
        np.testing.assert_array_equal(image["row_coords"][()], ds["y"].values)
        np.testing.assert_array_equal(image["col_coords"][()], ds["x"].values)
        mask = image["mask"][()]
        assert set(np.unique(mask)) == {0, CXI_HAS_SIGNAL}
        assert mask[mask.shape[0] // 2, mask.shape[1] // 2] == CXI_HAS_SIGNAL and mask[0, 0] == 0
        translation = file["/entry_1/sample_1/geometry_1/translation"][()]
        np.testing.assert_array_equal(translation[:, :2], ds["position"].values[:, ::-1])
        energy = file["/entry_1/instrument_1/source_1/energy"]
        assert energy.attrs["units"] == "J"
        assert energy[()] == pytest.approx(geometry["energy_ev"] * EV_J)
        distance = file["/entry_1/instrument_1/detector_1/distance"][()]
        assert distance == pytest.approx(geometry["distance_m"])
        process = image["process_1"]
        assert json.loads(process["configuration"][()]) == ds.attrs["config"]
        errors = process["results/fourier_error"]
        np.testing.assert_array_equal(errors[()], ds["fourier_error"].values)
        assert "sqrt(I_j)" in errors.attrs["definition"]


def test_export_refuses_to_replace_what_it_did_not_write(store: Path, tmp_path: Path) -> None:
    target = tmp_path / "r.cxi"
    export_cxi(store, target)
    with pytest.raises(InputError, match="exists"):
        export_cxi(store, target)
    export_cxi(store, target, overwrite=True)
    scan = Path(open_result(store).attrs["config"]["data"]["path"])
    with pytest.raises(InputError, match="is a scan, not an export"):
        export_cxi(store, scan, overwrite=True)
    with pytest.raises(InputError, match=r"\.cxi"):
        export_cxi(store, tmp_path / "r.zarr")
    with pytest.raises(InputError, match="does not exist"):
        export_cxi(tmp_path / "missing.zarr", tmp_path / "x.cxi")
    with pytest.raises(InputError, match="not a result store|lacks"):
        export_cxi(scan, tmp_path / "x.cxi")

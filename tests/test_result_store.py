"""The result store describes itself: CF units and long names, metric definitions, one
coordinate frame for the object and the positions, absolute paths, input fingerprint,
versions and how the run ran (ptychograph.results, ptychograph.provenance)."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct_in_process
from ptychograph.io.cxi import write_cxi
from ptychograph.problem import Result
from ptychograph.provenance import RunInfo, fingerprint, library_versions
from ptychograph.results import (
    DEFINITIONS,
    object_frame,
    open_result,
    result_dataset,
    write_result,
)
from ptychograph.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def scan_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("store")
    sim = simulate(SimulationConfig(n_frames=24, frame_size=32, photons=1e6, seed=2))
    write_cxi(folder / "s.cxi", sim.scan)
    return folder / "s.cxi"


@contextlib.contextmanager
def inside(folder: Path) -> Iterator[None]:
    """Run with ``folder`` as the current directory (relative paths resolve there)."""
    cwd = Path.cwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(cwd)


def run(scan_file: Path, **data: Any) -> Result:
    """Two in-process iterations with relative paths, from the scan's folder."""
    raw = {
        "data": {"path": scan_file.name, **data},
        "reconstruction": {"iterations": 2, "probe_modes": 2},
        "output": {"path": "r.zarr", "figure": False},
    }
    with inside(scan_file.parent):
        return reconstruct_in_process(parse_config(raw))


@pytest.fixture(scope="module")
def result(scan_file: Path) -> Result:
    return run(scan_file)


def test_every_variable_has_cf_units_and_long_name(result: Result) -> None:
    ds = result_dataset(result)
    for name in ds.variables:
        attrs = ds[name].attrs
        assert attrs.get("units") and attrs.get("long_name"), name
    assert ds["position"].attrs["units"] == "m" and ds["x"].attrs["units"] == "m"
    assert ds["iteration_seconds"].attrs["units"] == "s"
    for name, definition in DEFINITIONS.items():
        assert ds[name].attrs["definition"] == definition
    assert "sqrt(I_j)" in ds["fourier_error"].attrs["definition"]


@pytest.mark.parametrize(
    "orientation",
    [{}, {"flip_x": True}, {"flip_y": True}, {"swap_xy": True}, {"swap_xy": True, "flip_x": True}],
)
def test_object_coordinates_in_the_frame_of_the_positions(
    scan_file: Path, orientation: dict[str, bool]
) -> None:
    ds = result_dataset(run(scan_file, **orientation))
    size = np.asarray(ds["probe"].shape[1:])
    centres = ds["view_origin"].values + size // 2
    axis_y, axis_x = ds["y"].attrs["position_axis"], ds["x"].attrs["position_axis"]
    assert {axis_y, axis_x} == {0, 1} and "frame of position" in ds["y"].attrs["long_name"]
    y, x = ds["y"].values, ds["x"].values
    pixel = ds.attrs["geometry"]["object_pixel_m"]
    at_y = y[0] + (y[1] - y[0]) * centres[:, 0]
    at_x = x[0] + (x[1] - x[0]) * centres[:, 1]
    np.testing.assert_allclose(at_y, ds["position"].values[:, axis_y], atol=1e-6 * pixel[0])
    np.testing.assert_allclose(at_x, ds["position"].values[:, axis_x], atol=1e-6 * pixel[1])


def test_positions_from_refined_origins(result: Result) -> None:
    """The corrected positions a run with position correction writes: views moved by one
    pixel are one pixel size away from where they were measured."""
    problem, config = result.problem, result.config
    frame = object_frame(problem.summary.positions, problem.summary.geometry, config)
    shape = problem.summary.geometry.frame_shape
    np.testing.assert_allclose(
        frame.positions(problem.origins, shape), problem.summary.positions, atol=1e-15
    )
    moved = problem.origins + np.array([1.0, -2.0])
    pixel = problem.summary.geometry.object_pixel
    delta = frame.positions(moved, shape) - problem.summary.positions
    np.testing.assert_allclose(delta, np.broadcast_to([pixel[0], -2 * pixel[1]], delta.shape))
    rec = config.reconstruction.model_copy(update={"position_correction": True})
    corrected = dataclasses.replace(
        result,
        config=config.model_copy(update={"reconstruction": rec}),
        state=result.state.replace(origins=moved),
    )
    ds = result_dataset(corrected)
    np.testing.assert_allclose(ds["position_initial"].values, problem.summary.positions)
    np.testing.assert_allclose(ds["position"].values - ds["position_initial"].values, delta)
    assert ds["position_initial"].attrs["units"] == "m"


def test_provenance_attrs(result: Result, scan_file: Path, tmp_path: Path) -> None:
    """A run from the scan's folder with relative paths records them as absolute paths."""
    with inside(scan_file.parent):
        write_result(result, tmp_path / "r.zarr", run=RunInfo("numpy", 3, 12.5))
    attrs = open_result(tmp_path / "r.zarr").attrs
    data_path = Path(attrs["config"]["data"]["path"])
    assert data_path.is_absolute() and data_path == scan_file.resolve()
    assert Path(attrs["input_path"]) == scan_file.resolve()
    assert attrs["input_fingerprint"] == fingerprint(scan_file)
    assert attrs["input_fingerprint_definition"].startswith("sha256")
    for name in ("numpy", "dask", "distributed", "zarr", "xarray"):
        assert attrs["versions"][name][0].isdigit(), name
    assert "cupy" not in attrs["versions"] and "cupy" in library_versions("cupy")
    assert (attrs["backend"], attrs["workers"], attrs["wall_seconds"]) == ("numpy", 3, 12.5)
    assert attrs["ptychograph_version"]


def test_fingerprint_sees_a_changed_input(tmp_path: Path) -> None:
    path = tmp_path / "a.bin"
    path.write_bytes(b"x" * 3_000_000)
    first = fingerprint(path)
    path.write_bytes(b"x" * 2_999_999 + b"y")  # the last byte of a file over 2 MiB
    assert fingerprint(path) != first and first.startswith("sha256:")
    store = tmp_path / "f.zarr"
    store.mkdir()
    (store / "zarr.json").write_text("{}")
    before = fingerprint(store)
    (store / "zarr.json").write_text('{"a": 1}')
    assert fingerprint(store) != before


def test_a_flipped_bit_in_a_result_chunk_is_refused(result: Result, tmp_path: Path) -> None:
    """Every array of a result store carries a CRC-32C per chunk: one flipped bit, which
    Blosc alone may decode into a wrong value, fails the read."""
    path = tmp_path / "r.zarr"
    write_result(result, path)
    np.testing.assert_array_equal(open_result(path)["object"].values, result.state.obj)
    for name in ("object", "probe", "fourier_error"):
        codecs = zarr.open_array(path / name, mode="r").compressors
        assert any(isinstance(codec, zarr.codecs.Crc32cCodec) for codec in codecs), name
    chunk = next(p for p in (path / "object" / "c").rglob("*") if p.is_file())
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    with pytest.raises(Exception, match="checksum"):
        open_result(path)["object"].load()

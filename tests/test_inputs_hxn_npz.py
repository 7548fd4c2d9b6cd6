"""HXN HDF5 (ptychograph.io.hxn) and NumPy (ptychograph.io.npz) inputs, dispatch, conversion.

The HXN files here are written the way HXN's tools write them (``fftshift(rot90(D, axes=(1,
0)))`` of the detector image D, square roots, points (2, N) (x, y) in micrometres), starting
from a known Scan; reading them back must give that Scan, which pins the orientation.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from ptychograph.config import DataConfig, GeometryConfig
from ptychograph.errors import InputError
from ptychograph.geometry import view_origins
from ptychograph.io import (
    convert_to_store,
    detect_format,
    load_scan,
    read_hxn,
    read_numpy,
    read_store_scan,
    validate_frames,
    write_cxi,
)
from ptychograph.scan import HC_EV_M, Geometry, Scan
from ptychograph.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def scan() -> Scan:
    """A realistic simulated scan: 20 frames of 32 x 32, square 75 um pixels, 8 keV."""
    return simulate(SimulationConfig(n_frames=20, frame_size=32)).scan


def rectangular_scan(seed: int = 3) -> Scan:
    """7 frames of 16 x 12 (H != W pins which axis is which), random counts and positions."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(30.0, size=(7, 16, 12)).astype(np.float32)
    positions = rng.uniform(-2e-6, 2e-6, size=(7, 2))
    geometry = Geometry(HC_EV_M / 9500.0, 1.8, (55e-6, 55e-6), (16, 12))
    return Scan(frames, positions, geometry)


def hxn_datasets(scan: Scan) -> dict[str, Any]:
    """The datasets HXN's tools would write for ``scan`` (square detector pixels)."""
    detector = scan.frames[:, ::-1, :].astype(np.float64)  # assumed: frame = flipud(D)
    stored = np.fft.ifftshift(np.rot90(detector, axes=(2, 1)), axes=(1, 2))
    wavelength, distance = scan.geometry.wavelength, scan.geometry.distance
    pixel = scan.geometry.detector_pixel[1]
    height, width = scan.geometry.frame_shape
    return {
        "diffamp": np.sqrt(stored),
        "points": np.stack([scan.positions[:, 1], scan.positions[:, 0]]) * 1e6,
        "lambda_nm": wavelength * 1e9,
        "z_m": distance,
        "ccd_pixel_um": pixel * 1e6,
        "x_pixel_m": wavelength * distance / (width * pixel),
        "y_pixel_m": wavelength * distance / (height * pixel),
        "angle": 15.0,
    }


def write_hxn(path: Path, scan: Scan, **changes: Any) -> Path:
    """An HXN file for ``scan``; ``changes`` replace datasets (None removes one)."""
    datasets = hxn_datasets(scan) | changes
    with h5py.File(path, "w") as file:
        for name, value in datasets.items():
            if value is not None:
                file.create_dataset(name, data=value)
    return path


def assert_same_scan(got: Scan, want: Scan, rtol: float = 1e-6) -> None:
    assert got.frames.dtype == np.float32
    assert got.frames.shape == want.frames.shape
    np.testing.assert_allclose(got.frames, want.frames, rtol=rtol, atol=1e-3)
    np.testing.assert_allclose(got.positions, want.positions, rtol=1e-12, atol=1e-18)
    assert got.geometry.frame_shape == want.geometry.frame_shape
    np.testing.assert_allclose(got.geometry.wavelength, want.geometry.wavelength, rtol=1e-12)
    np.testing.assert_allclose(got.geometry.distance, want.geometry.distance, rtol=1e-12)
    np.testing.assert_allclose(got.geometry.detector_pixel, want.geometry.detector_pixel)


# ----------------------------------------------------------------------------- HXN


@pytest.mark.parametrize("which", ["simulated", "rectangular"])
def test_hxn_round_trip(
    tmp_path: Path, scan: Scan, which: str, caplog: pytest.LogCaptureFixture
) -> None:
    want = scan if which == "simulated" else rectangular_scan()
    path = write_hxn(tmp_path / "scan_1.h5", want)
    with caplog.at_level(logging.WARNING, logger="ptychograph"):
        got = read_hxn(path)
    assert_same_scan(got, want)
    assert got.mask is None and got.illumination is None
    assert caplog.records == []  # x_pixel_m / y_pixel_m agree with the geometry
    assert_same_scan(load_scan(path), want)


def test_hxn_matches_the_hxn_tools_literally(tmp_path: Path) -> None:
    """HXN's save_data: data[i] = fftshift(rot90(crop, axes=(1, 0))) -- flipud(crop).T."""
    want = rectangular_scan()
    detector = want.frames[:, ::-1, :].astype(np.float64)
    literal = np.stack([np.fft.fftshift(np.flipud(image).T) for image in detector])
    np.testing.assert_allclose(literal, hxn_datasets(want)["diffamp"] ** 2, rtol=1e-12)
    path = write_hxn(tmp_path / "literal.h5", want, diffamp=np.sqrt(literal))
    assert_same_scan(read_hxn(path), want)


def test_hxn_axis_pairing(tmp_path: Path, scan: Scan) -> None:
    """diffamp axis 1 pairs with points[0] = x = our columns; zero frequency at the corner."""
    diffamp = np.zeros((1, 16, 12))
    diffamp[0, 1, 0] = 2.0  # one pixel from zero frequency along axis 1 (x)
    path = write_hxn(
        tmp_path / "one.h5",
        scan,
        diffamp=diffamp,
        points=np.array([[3.0], [-1.0]]),
        x_pixel_m=None,
        y_pixel_m=None,
    )
    got = read_hxn(path)
    assert got.frames.shape == (1, 12, 16)
    assert np.argwhere(got.frames[0]).tolist() == [[6, 9]]  # centre (6, 8) + one column
    assert got.frames[0, 6, 9] == 4.0
    np.testing.assert_allclose(got.positions, [[-1e-6, 3e-6]])  # (y, x) metres


def test_hxn_points_n_by_2_and_float32_amplitudes(tmp_path: Path, scan: Scan) -> None:
    datasets = hxn_datasets(scan)
    path = write_hxn(
        tmp_path / "scan.h5",
        scan,
        points=datasets["points"].T,
        diffamp=datasets["diffamp"].astype(np.float32),
    )
    assert_same_scan(read_hxn(path), scan, rtol=1e-5)


def test_hxn_geometry_overrides(tmp_path: Path, scan: Scan) -> None:
    path = write_hxn(tmp_path / "scan.h5", scan, lambda_nm=None, z_m=None, ccd_pixel_um=None)
    with pytest.raises(InputError, match="^lambda_nm: missing"):
        read_hxn(path)
    overrides = GeometryConfig(energy_ev=9000.0, distance_m=1.5, detector_pixel_m=55e-6)
    got = read_hxn(path, overrides)
    assert got.geometry == Geometry(HC_EV_M / 9000.0, 1.5, (55e-6, 55e-6), (32, 32))
    data = DataConfig(path=path, geometry=overrides)
    assert load_scan(path, data).geometry == got.geometry
    partial = read_hxn(write_hxn(tmp_path / "b.h5", scan), GeometryConfig(distance_m=4.0))
    assert partial.geometry.distance == 4.0
    np.testing.assert_allclose(partial.geometry.wavelength, scan.geometry.wavelength)


def test_hxn_pixel_cross_check_warns(
    tmp_path: Path, scan: Scan, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = hxn_datasets(scan)["x_pixel_m"] * 1.05
    path = write_hxn(tmp_path / "scan.h5", scan, x_pixel_m=wrong)
    with caplog.at_level(logging.WARNING, logger="ptychograph"):
        read_hxn(path)
    assert len(caplog.records) == 1
    assert "x_pixel_m" in caplog.text and "5.0 %" in caplog.text


def test_hxn_points_in_metres_warn(
    tmp_path: Path, scan: Scan, caplog: pytest.LogCaptureFixture
) -> None:
    points = hxn_datasets(scan)["points"] * 1e-6  # metres where micrometres belong
    with caplog.at_level(logging.WARNING, logger="ptychograph"):
        read_hxn(write_hxn(tmp_path / "scan.h5", scan, points=points))
    assert "micrometres" in caplog.text


def test_hxn_negative_amplitudes_reach_the_frame_checks(tmp_path: Path, scan: Scan) -> None:
    diffamp = hxn_datasets(scan)["diffamp"]
    diffamp[3, 0, 0] = -2.0
    got = read_hxn(write_hxn(tmp_path / "scan.h5", scan, diffamp=diffamp))
    assert got.frames.min() == -4.0
    with pytest.raises(InputError, match="negative counts"):
        validate_frames(got)


HXN_BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "no diffamp": ({"diffamp": None}, "diffamp", "missing"),
    "diffamp rank 2": ({"diffamp": np.ones((32, 32))}, "diffamp", "shape"),
    "diffamp complex": ({"diffamp": np.ones((20, 32, 32), np.complex64)}, "diffamp", "dtype"),
    "diffamp no frames": ({"diffamp": np.ones((0, 32, 32))}, "diffamp", "zero frames"),
    "no points": ({"points": None}, "points", "missing"),
    "points count": ({"points": np.zeros((2, 19))}, "points", "N = 20"),
    "points rank": ({"points": np.zeros(20)}, "points", "shape"),
    "points nan": ({"points": np.full((2, 20), np.nan)}, "points", "NaN"),
    "no lambda": ({"lambda_nm": None}, "lambda_nm", "missing"),
    "lambda negative": ({"lambda_nm": -0.15}, "lambda_nm", "positive"),
    "lambda vector": ({"lambda_nm": np.ones(3)}, "lambda_nm", "scalar"),
    "z zero": ({"z_m": 0.0}, "z_m", "positive"),
    "no z": ({"z_m": None}, "z_m", "missing"),
    "pixel nan": ({"ccd_pixel_um": np.nan}, "ccd_pixel_um", "positive"),
    "pixel text": ({"ccd_pixel_um": "55"}, "ccd_pixel_um", "dtype"),
}


@pytest.mark.parametrize("case", list(HXN_BAD))
def test_hxn_bad_input(tmp_path: Path, scan: Scan, case: str) -> None:
    changes, field, problem = HXN_BAD[case]
    path = write_hxn(tmp_path / "scan.h5", scan, **changes)
    for reader in (read_hxn, load_scan):
        with pytest.raises(InputError) as info:
            reader(path)
        assert info.value.field == field
        assert problem in info.value.problem
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------- NumPy


def illumination(scan: Scan) -> np.ndarray:
    assert scan.illumination is not None
    return scan.illumination


def geometry_of(scan: Scan) -> GeometryConfig:
    return GeometryConfig(
        energy_ev=scan.geometry.energy_ev,
        distance_m=scan.geometry.distance,
        detector_pixel_m=scan.geometry.detector_pixel[0],
    )


def test_npz_metres(tmp_path: Path, scan: Scan) -> None:
    mask = np.zeros(scan.geometry.frame_shape, dtype=np.uint8)
    mask[0, :3] = 1
    path = tmp_path / "scan.npz"
    probe = illumination(scan)
    np.savez(path, frames=scan.frames, positions=scan.positions, mask=mask, probe=probe)
    got = read_numpy(path, geometry_of(scan), "m")
    assert_same_scan(got, scan, rtol=0)
    np.testing.assert_array_equal(got.frames, scan.frames)
    assert got.mask is not None and got.mask.dtype == bool and got.mask.sum() == 3
    assert got.illumination is not None
    np.testing.assert_array_equal(got.illumination, scan.illumination)
    data = DataConfig(path=path, geometry=geometry_of(scan))
    assert_same_scan(load_scan(path, data), scan, rtol=0)


def test_npz_other_names_and_integer_frames(tmp_path: Path, scan: Scan) -> None:
    path = tmp_path / "scan.npz"
    probe = illumination(scan)[0]
    np.savez(path, data=scan.frames.astype(np.uint32), scan=scan.positions, probe=probe)
    got = read_numpy(path, geometry_of(scan))
    np.testing.assert_array_equal(got.frames, scan.frames)
    assert got.frames.dtype == np.float32
    assert got.illumination is not None and got.illumination.shape == (1, 32, 32)
    assert got.mask is None


def test_npz_pixels(tmp_path: Path, scan: Scan) -> None:
    pixels = np.array([[10.0, 3.5], [12.25, 7.0], [9.0, 15.0]])
    frames = scan.frames[:3]
    path = tmp_path / "px.npz"
    np.savez(path, frames=frames, positions=pixels)
    got = read_numpy(path, geometry_of(scan), "px")
    object_pixel = got.geometry.object_pixel
    np.testing.assert_allclose(got.positions, pixels * np.asarray(object_pixel))
    origins = view_origins(got.positions, object_pixel, margin=0)
    np.testing.assert_allclose(origins, pixels - pixels.min(axis=0), atol=1e-9)
    data = DataConfig(path=path, geometry=geometry_of(scan), positions_unit="px")
    np.testing.assert_allclose(load_scan(path, data).positions, got.positions)


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ({}, "energy_ev"),
        ({"distance_m": 2.0, "detector_pixel_m": 75e-6}, "energy_ev"),
        ({"energy_ev": 8000.0, "detector_pixel_m": 75e-6}, "distance_m"),
        ({"energy_ev": 8000.0, "distance_m": 2.0}, "detector_pixel_m"),
    ],
)
def test_npz_needs_geometry(
    tmp_path: Path, scan: Scan, given: dict[str, float], missing: str
) -> None:
    path = tmp_path / "scan.npz"
    np.savez(path, frames=scan.frames, positions=scan.positions)
    with pytest.raises(InputError) as info:
        read_numpy(path, GeometryConfig(**given))
    assert info.value.field == f"data.geometry.{missing}"
    with pytest.raises(InputError) as info:
        load_scan(path)  # no DataConfig: no geometry at all
    assert info.value.field == "data.geometry.energy_ev"


def test_npy_refused(tmp_path: Path, scan: Scan) -> None:
    path = tmp_path / "frames.npy"
    np.save(path, scan.frames)
    data = DataConfig(path=path, geometry=geometry_of(scan))
    with pytest.raises(InputError, match=r"^data\.path: .*\.npy.*no positions.*np\.savez"):
        load_scan(path, data)


def test_npz_pickled_object_array_refused(tmp_path: Path, scan: Scan) -> None:
    path = tmp_path / "pickled.npz"
    frames = np.empty(scan.n_frames, dtype=object)
    frames[:] = list(scan.frames)
    np.savez(path, frames=frames, positions=scan.positions)
    with pytest.raises(InputError) as info:
        read_numpy(path, geometry_of(scan))
    assert info.value.field == "pickled.npz['frames']"
    assert "object array" in info.value.problem


NPZ_BAD: dict[str, tuple[dict[str, Any], str, str]] = {
    "no frames": ({"frames": None, "images": "frames"}, "data.path", "no frames array"),
    "no positions": ({"positions": None}, "data.path", "no positions array"),
    "frames rank": ({"frames": ("frames", lambda a: a[0])}, "['frames']", "(N, H, W)"),
    "frames complex": ({"frames": ("frames", lambda a: a + 0j)}, "['frames']", "dtype"),
    "positions transposed": (
        {"positions": ("positions", lambda a: a.T)},
        "['positions']",
        "transpose",
    ),
    "positions count": ({"positions": ("positions", lambda a: a[:-1])}, "['positions']", "19"),
    "positions nan": (
        {"positions": ("positions", lambda a: np.where(a > 0, np.nan, a))},
        "['positions']",
        "NaN",
    ),
    "mask shape": ({"mask": np.zeros((3, 3))}, "['mask']", "shape"),
    "probe nan": ({"probe": np.full((32, 32), np.nan, np.complex64)}, "['probe']", "NaN"),
}


@pytest.mark.parametrize("case", list(NPZ_BAD))
def test_npz_bad_input(tmp_path: Path, scan: Scan, case: str) -> None:
    changes, field, problem = NPZ_BAD[case]
    arrays: dict[str, Any] = {"frames": scan.frames, "positions": scan.positions}
    for key, change in changes.items():
        if isinstance(change, tuple):
            source, edit = change
            arrays[key] = edit(arrays[source])
        elif isinstance(change, str):
            arrays[key] = arrays[change]
        else:
            arrays[key] = change
    path = tmp_path / "scan.npz"
    np.savez(path, **{key: value for key, value in arrays.items() if value is not None})
    with pytest.raises(InputError) as info:
        read_numpy(path, geometry_of(scan))
    assert info.value.field.endswith(field)
    assert problem in info.value.problem


def test_npz_not_a_zip(tmp_path: Path, scan: Scan) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(InputError, match=r"^data\.path: .*not a readable \.npz"):
        read_numpy(path, geometry_of(scan))


# ----------------------------------------------------------------------------- dispatch


def test_detect_format(tmp_path: Path, scan: Scan) -> None:
    hxn = write_hxn(tmp_path / "scan_7.h5", scan)
    cxi = tmp_path / "scan.cxi"
    write_cxi(cxi, scan)
    npz = tmp_path / "scan.npz"
    np.savez(npz, frames=scan.frames, positions=scan.positions)
    store = tmp_path / "frames.zarr"
    convert_to_store(cxi, store)
    assert [detect_format(p) for p in (hxn, cxi, npz, store)] == ["hxn", "cxi", "npz", "zarr"]
    assert detect_format(cxi, "hxn") == "hxn"
    with pytest.raises(InputError, match="^diffamp: missing"):
        load_scan(cxi, DataConfig(path=cxi, format="hxn"))
    with h5py.File(cxi, "r+") as file:  # a CXI file that also holds diffamp stays CXI
        file.create_dataset("diffamp", data=np.ones((1, 2, 2)))
    assert detect_format(cxi) == "cxi"
    with h5py.File(hxn, "r+") as file:  # an HXN file missing diffamp is still HXN's
        del file["diffamp"]
    assert detect_format(hxn) == "hxn"
    empty = tmp_path / "empty.h5"
    h5py.File(empty, "w").close()
    with pytest.raises(InputError, match="^/entry_1/data_1/data: missing"):
        load_scan(empty)
    with pytest.raises(InputError, match=r"^data\.path: .*not a Zarr frames store"):
        load_scan(cxi, DataConfig(path=cxi, format="zarr"))


def test_cxi_and_store_geometry_overrides(tmp_path: Path, scan: Scan) -> None:
    cxi = tmp_path / "scan.cxi"
    write_cxi(cxi, scan)
    data = DataConfig(path=cxi, geometry=GeometryConfig(distance_m=3.0))
    got = load_scan(cxi, data)
    assert got.geometry == dataclasses.replace(scan.geometry, distance=3.0)
    np.testing.assert_array_equal(got.frames, scan.frames)
    store = tmp_path / "frames.zarr"
    convert_to_store(cxi, store, data=data)
    assert read_store_scan(store).geometry == got.geometry
    energy = DataConfig(path=store, geometry=GeometryConfig(energy_ev=10_000.0))
    np.testing.assert_allclose(load_scan(store, energy).geometry.energy_ev, 10_000.0)


ConvertSource = Callable[[Path, Scan], tuple[Path, DataConfig | None]]


def _hxn_source(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    return write_hxn(folder / "scan_9.h5", scan), None


def _npz_source(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    path = folder / "scan.npz"
    np.savez(path, frames=scan.frames, positions=scan.positions, probe=illumination(scan))
    return path, DataConfig(path=path, geometry=geometry_of(scan))


@pytest.mark.parametrize("make_source", [_hxn_source, _npz_source], ids=["hxn", "npz"])
def test_convert_to_store(tmp_path: Path, scan: Scan, make_source: ConvertSource) -> None:
    source, data = make_source(tmp_path, scan)
    store = tmp_path / "frames.zarr"
    notes = convert_to_store(source, store, chunk_frames=6, data=data)
    assert notes == []
    got = read_store_scan(store)
    assert_same_scan(got, scan)
    assert_same_scan(got, load_scan(source, data), rtol=0)

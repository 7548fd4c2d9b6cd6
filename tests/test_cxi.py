"""CXI reading and writing (ptychograph.io.cxi), dispatch (load_scan) and frame checks."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from ptychograph.errors import InputError
from ptychograph.io import load_scan, read_cxi, validate_frames, write_cxi
from ptychograph.scan import EV_J, HC_EV_M, Geometry, Scan

DET = "/entry_1/instrument_1/detector_1"
SRC = "/entry_1/instrument_1/source_1"
DATA = "/entry_1/data_1/data"
TRANSLATION = "/entry_1/sample_1/geometry_1/translation"
ENERGY = f"{SRC}/energy"
N, H, W = 6, 16, 16


def make_scan(seed: int = 0, with_extras: bool = True) -> Scan:
    """A tiny synthetic scan: 6 frames of 16 x 16, 8 keV, distinct y/x pixel sizes."""
    rng = np.random.default_rng(seed)
    frames = rng.poisson(50.0, size=(N, H, W)).astype(np.float32)
    yy, xx = np.meshgrid(np.arange(2), np.arange(3), indexing="ij")
    positions = np.stack([yy.ravel() * 1.5e-6, xx.ravel() * 2.0e-6 - 1e-6], axis=1)
    geometry = Geometry(
        wavelength=HC_EV_M / 8000.0,
        distance=2.5,
        detector_pixel=(75e-6, 55e-6),
        frame_shape=(H, W),
    )
    mask = illumination = None
    if with_extras:
        mask = np.zeros((H, W), dtype=bool)
        mask[3, 5] = mask[0, :] = True
        shape = (2, H, W)
        illumination = (rng.normal(size=shape) + 1j * rng.normal(size=shape)).astype(np.complex64)
    return Scan(frames, positions, geometry, mask, illumination)


@pytest.fixture
def cxi_file(tmp_path: Path) -> Path:
    """A valid CXI file holding make_scan()."""
    path = tmp_path / "scan.cxi"
    write_cxi(path, make_scan())
    return path


def replace(file: h5py.File, path: str, value: object) -> None:
    """Put ``value`` at ``path``, removing the dataset or link there first."""
    if path in file or file.get(path, getlink=True) is not None:
        del file[path]
    file[path] = value


def assert_same_scan(got: Scan, want: Scan) -> None:
    np.testing.assert_array_equal(got.frames, want.frames)
    assert got.frames.dtype == np.float32
    np.testing.assert_array_equal(got.positions, want.positions)
    assert got.positions.dtype == np.float64
    assert got.geometry.wavelength == pytest.approx(want.geometry.wavelength, rel=1e-12)
    assert got.geometry.distance == want.geometry.distance
    assert got.geometry.detector_pixel == want.geometry.detector_pixel
    assert got.geometry.frame_shape == want.geometry.frame_shape


@pytest.mark.parametrize("energy_units", ["J", "eV"])
def test_round_trip(tmp_path: Path, energy_units: str) -> None:
    scan = make_scan()
    path = tmp_path / "scan.cxi"
    write_cxi(path, scan, energy_units=energy_units)  # type: ignore[arg-type]
    got = read_cxi(path)
    assert_same_scan(got, scan)
    assert got.mask is not None and got.mask.dtype == bool
    np.testing.assert_array_equal(got.mask, scan.mask)
    assert got.illumination is not None and got.illumination.dtype == np.complex64
    np.testing.assert_array_equal(got.illumination, scan.illumination)
    assert_same_scan(load_scan(path), scan)


def test_round_trip_without_mask_and_illumination(tmp_path: Path) -> None:
    scan = make_scan(with_extras=False)
    write_cxi(tmp_path / "bare.cxi", scan)
    got = read_cxi(tmp_path / "bare.cxi")
    assert_same_scan(got, scan)
    assert got.mask is None and got.illumination is None


def test_written_layout(cxi_file: Path) -> None:
    scan = make_scan()
    with h5py.File(cxi_file, "r") as file:
        assert int(file["cxi_version"][()]) == 150
        assert isinstance(file.get(DATA, getlink=True), h5py.SoftLink)
        assert file[f"{DET}/data"].chunks == (1, H, W)
        translation = file[TRANSLATION][()]
        np.testing.assert_array_equal(translation[:, 0], scan.positions[:, 1])  # x
        np.testing.assert_array_equal(translation[:, 1], scan.positions[:, 0])  # y
        np.testing.assert_array_equal(translation[:, 2], 0.0)
        assert file[ENERGY][()] == pytest.approx(8000.0 * EV_J, rel=1e-12)
        assert "units" not in file[ENERGY].attrs
    assert [p.name for p in cxi_file.parent.iterdir()] == ["scan.cxi"]  # no temporary left


def test_failed_write_leaves_target_untouched(cxi_file: Path) -> None:
    before = cxi_file.read_bytes()
    broken = dataclasses.replace(make_scan(), frames=np.full((N, H, W), object()))
    with pytest.raises(TypeError):
        write_cxi(cxi_file, broken)
    assert cxi_file.read_bytes() == before
    assert [p.name for p in cxi_file.parent.iterdir()] == ["scan.cxi"]


@pytest.mark.parametrize(
    ("value", "units"),
    [(8000.0, None), (8000.0, "eV"), (8000.0, b"eV"), (8.0, "keV"), (8000.0 * EV_J, "J")],
)
def test_energy_units(cxi_file: Path, value: float, units: str | bytes | None) -> None:
    with h5py.File(cxi_file, "r+") as file:
        replace(file, ENERGY, np.float64(value))
        if units is not None:
            file[ENERGY].attrs["units"] = units
    got = read_cxi(cxi_file)
    assert got.geometry.wavelength == pytest.approx(HC_EV_M / 8000.0, rel=1e-12)
    assert got.geometry.energy_ev == pytest.approx(8000.0, rel=1e-12)


def test_fallback_paths_and_scalar_shape_one(cxi_file: Path) -> None:
    """Frames only under the detector, translation only under data_1, scalars of shape (1,)."""
    with h5py.File(cxi_file, "r+") as file:
        translation = file[TRANSLATION][()]
        del file[DATA], file["/entry_1/data_1/translation"], file[TRANSLATION]
        file["/entry_1/data_1/translation"] = translation
        replace(file, f"{DET}/distance", np.array([2.5]))
        file[f"{SRC}/probe"] = file[f"{SRC}/illumination"][0]
        del file[f"{SRC}/illumination"]
    got = read_cxi(cxi_file)
    assert_same_scan(got, make_scan())
    assert got.illumination is not None and got.illumination.shape == (1, H, W)


def _write_text(path: Path) -> Path:
    path.write_text("this is not HDF5\n")
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _edit(edit: Callable[[h5py.File], None]) -> Callable[[Path], Path]:
    def apply(path: Path) -> Path:
        with h5py.File(path, "r+") as file:
            edit(file)
        return path

    return apply


def _set(path: str, value: object) -> Callable[[Path], Path]:
    return _edit(lambda file: replace(file, path, value))


def _delete(*paths: str) -> Callable[[Path], Path]:
    def edit(file: h5py.File) -> None:
        for path in paths:
            del file[path]

    return _edit(edit)


def _duplicate_positions(file: h5py.File) -> None:
    translation = file[TRANSLATION][()]
    translation[4] = translation[1]
    replace(file, TRANSLATION, translation)


def _nan_position(file: h5py.File) -> None:
    translation = file[TRANSLATION][()]
    translation[2, 0] = np.nan
    replace(file, TRANSLATION, translation)


def _energy_in_ev_labelled_joules(file: h5py.File) -> None:
    replace(file, ENERGY, 8000.0)
    file[ENERGY].attrs["units"] = "J"


def _data_as_group(file: h5py.File) -> None:
    del file[DATA]
    file.create_group(DATA)


def _units(units: str) -> Callable[[Path], Path]:
    return _edit(lambda file: file[ENERGY].attrs.__setitem__("units", units))


BAD_INPUTS: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "not hdf5": (_write_text, "data.path", "not a readable HDF5"),
    "truncated": (_truncate, "data.path", "not a readable HDF5"),
    "missing data": (_delete(DATA, f"{DET}/data"), DATA, "missing"),
    "missing translation": (
        _delete(TRANSLATION, "/entry_1/data_1/translation"),
        TRANSLATION,
        "missing",
    ),
    "data rank 2": (_set(DATA, np.ones((N, H * W), np.float32)), DATA, "shape"),
    "string data": (_set(DATA, np.full((N, H, W), b"x")), DATA, "non-numeric"),
    "complex data": (_set(DATA, np.ones((N, H, W), np.complex64)), DATA, "real"),
    "zero frames": (_set(DATA, np.ones((0, H, W), np.float32)), DATA, "zero frames"),
    "count mismatch": (_set(TRANSLATION, np.zeros((N - 1, 3))), TRANSLATION, "5 positions"),
    "translation (N, 2)": (_set(TRANSLATION, np.zeros((N, 2))), TRANSLATION, "(N, 3)"),
    "nan positions": (_edit(_nan_position), TRANSLATION, "NaN"),
    "duplicate positions": (
        _edit(_duplicate_positions),
        TRANSLATION,
        "position 4 repeats position 1",
    ),
    "zero energy": (_set(ENERGY, 0.0), ENERGY, "positive"),
    "inf energy": (_set(ENERGY, np.inf), ENERGY, "positive"),
    "unknown energy units": (_units("furlongs"), ENERGY, "units"),
    "joules mislabelled": (_edit(_energy_in_ev_labelled_joules), ENERGY, "units really J"),
    "missing distance": (_delete(f"{DET}/distance"), f"{DET}/distance", "missing"),
    "negative distance": (_set(f"{DET}/distance", -1.0), f"{DET}/distance", "positive"),
    "distance (2,)": (_set(f"{DET}/distance", [1.0, 2.0]), f"{DET}/distance", "scalar"),
    "zero pixel size": (_set(f"{DET}/x_pixel_size", 0.0), f"{DET}/x_pixel_size", "positive"),
    "nan pixel size": (_set(f"{DET}/y_pixel_size", np.nan), f"{DET}/y_pixel_size", "positive"),
    "mask wrong shape": (_set(f"{DET}/mask", np.zeros((H, W + 1))), f"{DET}/mask", "shape"),
    "illumination wrong shape": (
        _set(f"{SRC}/illumination", np.ones((2, H - 1, W), np.complex64)),
        f"{SRC}/illumination",
        "shape",
    ),
    "illumination rank 4": (
        _set(f"{SRC}/illumination", np.ones((1, 2, H, W), np.complex64)),
        f"{SRC}/illumination",
        "shape",
    ),
    "data is a group": (_edit(_data_as_group), DATA, "Group"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input(cxi_file: Path, case: str) -> None:
    make_bad, field, problem = BAD_INPUTS[case]
    path = make_bad(cxi_file)
    for reader in (read_cxi, load_scan):
        with pytest.raises(InputError) as info:
            reader(path)
        assert info.value.field == field
        assert str(info.value).startswith(f"{field}: ")
        assert problem in info.value.problem
        assert "\n" not in str(info.value)


def test_load_scan_dispatch(tmp_path: Path, cxi_file: Path) -> None:
    with pytest.raises(InputError, match=r"^data\.path: .*does not exist"):
        load_scan(tmp_path / "absent.cxi")
    with pytest.raises(InputError, match=r"^data\.path: .*unknown format"):
        load_scan(_write_text(tmp_path / "notes.txt"))
    renamed = cxi_file.rename(tmp_path / "scan.dat")  # HDF5 signature, unusual suffix
    assert_same_scan(load_scan(renamed), make_scan())


def test_validate_clean_scan_is_unchanged() -> None:
    scan = make_scan()
    scan.frames[2] = 0.0  # one empty frame is fine
    got, notes = validate_frames(scan, nonfinite="drop", negative="clip")
    assert got is scan and notes == []


@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_validate_nonfinite(bad_value: float) -> None:
    scan = make_scan()
    scan.frames[1, 3, 4] = bad_value
    scan.frames[4, 0, 0] = bad_value
    with pytest.raises(InputError) as info:
        validate_frames(scan)
    assert info.value.field == "frames"
    assert "2 frames contain NaN or Inf (first: frame 1)" in info.value.problem
    assert "data.nonfinite: drop" in info.value.problem

    got, notes = validate_frames(scan, nonfinite="drop")
    keep = [0, 2, 3, 5]
    np.testing.assert_array_equal(got.frames, scan.frames[keep])
    np.testing.assert_array_equal(got.positions, scan.positions[keep])
    assert notes == ["dropped 2 frames with NaN/Inf: [1, 4]"]


def test_validate_all_nonfinite_dropped_is_error() -> None:
    scan = make_scan()
    scan.frames[:, 0, 0] = np.nan
    with pytest.raises(InputError, match="all 6 frames contain NaN or Inf"):
        validate_frames(scan, nonfinite="drop")


def test_validate_negative() -> None:
    scan = make_scan()
    scan.frames[3, 1, 1:4] = -2.0
    original = scan.frames.copy()
    with pytest.raises(InputError) as info:
        validate_frames(scan)
    assert info.value.field == "frames"
    assert "1 frame contains negative counts (first: frame 3, minimum -2)" in info.value.problem

    got, notes = validate_frames(scan, negative="clip")
    assert got.frames.min() == 0.0 and got.frames.dtype == np.float32
    np.testing.assert_array_equal(got.frames, np.maximum(original, 0))
    np.testing.assert_array_equal(scan.frames, original)  # the input is not modified
    assert notes == ["clipped 3 negative pixels in 1 frame to 0"]


def test_validate_all_zero_and_empty() -> None:
    scan = dataclasses.replace(make_scan(), frames=np.zeros((N, H, W), np.float32))
    with pytest.raises(InputError, match="all 6 frames are entirely zero"):
        validate_frames(scan)
    negative = dataclasses.replace(scan, frames=-np.ones((N, H, W), np.float32))
    with pytest.raises(InputError, match="entirely zero"):
        validate_frames(negative, negative="clip")
    empty = dataclasses.replace(scan, frames=np.zeros((0, H, W), np.float32))
    with pytest.raises(InputError, match="no frames"):
        validate_frames(empty)
    with pytest.raises(InputError, match="data.nonfinite"):
        validate_frames(scan, nonfinite="ignore")  # type: ignore[arg-type]

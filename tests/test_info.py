"""``describe`` (ptychograph.info): the summary of CXI, HXN, NumPy and frames-store inputs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

import ptychograph.info
from ptychograph.config import DataConfig, GeometryConfig
from ptychograph.errors import InputError
from ptychograph.geometry import object_shape, view_origins
from ptychograph.info import describe
from ptychograph.io import convert_to_store, write_cxi
from ptychograph.memory import estimate
from ptychograph.scan import Scan
from ptychograph.simulate import SimulationConfig, simulate


@pytest.fixture(scope="module")
def scan() -> Scan:
    """20 simulated frames of 32 x 32 with a one-mode illumination; no mask."""
    return simulate(SimulationConfig(n_frames=20, frame_size=32)).scan


def geometry_of(scan: Scan) -> GeometryConfig:
    """The scan's geometry as ``data.geometry`` (square detector pixels)."""
    return GeometryConfig(
        energy_ev=scan.geometry.energy_ev,
        distance_m=scan.geometry.distance,
        detector_pixel_m=scan.geometry.detector_pixel[0],
    )


def write_hxn(path: Path, scan: Scan) -> Path:
    """An HXN file for ``scan`` (the inverse of ptychograph.io.hxn's reading)."""
    stored = np.fft.ifftshift(scan.frames.astype(np.float64), axes=(1, 2)).transpose(0, 2, 1)
    with h5py.File(path, "w") as file:
        file["diffamp"] = np.sqrt(stored)
        file["points"] = scan.positions[:, ::-1].T * 1e6
        file["lambda_nm"] = scan.geometry.wavelength * 1e9
        file["z_m"] = scan.geometry.distance
        file["ccd_pixel_um"] = scan.geometry.detector_pixel[1] * 1e6
    return path


Writer = Callable[[Path, Scan], tuple[Path, DataConfig | None]]


def _cxi(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    path = folder / "scan.cxi"
    write_cxi(path, scan)
    return path, None


def _hxn(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    return write_hxn(folder / "scan_5.h5", scan), None


def _npz(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    path = folder / "scan.npz"
    np.savez(path, frames=scan.frames.astype(np.uint16), positions=scan.positions)
    return path, DataConfig(path=path, geometry=geometry_of(scan))


def _zarr(folder: Path, scan: Scan) -> tuple[Path, DataConfig | None]:
    source, _ = _cxi(folder, scan)
    store = folder / "frames.zarr"
    convert_to_store(source, store, chunk_frames=6)
    return store, None


WRITERS: dict[str, tuple[Writer, str, str]] = {
    "cxi": (_cxi, "CXI", "float32"),
    "hxn": (_hxn, "HXN", "float64 amplitudes"),
    "npz": (_npz, "NumPy", "uint16"),
    "zarr": (_zarr, "frames store", "float32, chunks of 6 frames"),
}


def expected_numbers(scan: Scan, workers: int, probe_modes: int, precision: str) -> list[str]:
    """Lines/fragments every summary of ``scan`` must hold."""
    pixel = scan.geometry.object_pixel
    origins = view_origins(scan.positions, pixel, margin=8)
    shape = object_shape(origins, scan.geometry.frame_shape, margin=8)
    views = -(-scan.n_frames // workers)
    need = estimate(views, (32, 32), shape, probe_modes, 1, precision, batch_size=64)
    sums = scan.frames.sum(axis=(1, 2), dtype=np.float64)
    extent = np.ptp(scan.positions, axis=0)
    return [
        "frames: 20 x 32 x 32 (N x H x W)",
        f"counts per frame: mean {sums.mean():.4g}, min {sums.min():.4g}, max {sums.max():.4g}",
        f"object pixel: {pixel[0] * 1e9:.4g} nm x {pixel[1] * 1e9:.4g} nm (y x)",
        f"= {extent[0] / pixel[0]:.1f} x {extent[1] / pixel[1]:.1f} object pixels",
        f"energy {scan.geometry.energy_ev:.1f} eV, wavelength 0.155 nm",
        "distance 2 m, detector pixel 75 um x 75 um",
        f"object: {shape[0]} x {shape[1]} pixels (margin 8)",
        f"{views} views per worker",
        need.describe(),
        "GiB",
    ]


@pytest.mark.parametrize("kind", list(WRITERS))
def test_describe_formats(tmp_path: Path, scan: Scan, kind: str) -> None:
    write, name, dtype = WRITERS[kind]
    path, data = write(tmp_path, scan)
    text = describe(path, data)
    assert text.splitlines()[0].startswith(f"{path.name}: ")
    assert name in text.splitlines()[0]
    assert f"stored as {dtype}" in text
    for fragment in expected_numbers(scan, workers=1, probe_modes=1, precision="single"):
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "mask: none" in text
    has_probe = kind in ("cxi", "zarr")
    assert ("illumination: 1 mode(s) in the file" in text) == has_probe


def test_describe_workers_modes_precision(tmp_path: Path, scan: Scan) -> None:
    path, _ = _cxi(tmp_path, scan)
    text = describe(path, n_workers=3, probe_modes=4, precision="double")
    for fragment in expected_numbers(scan, workers=3, probe_modes=4, precision="double"):
        assert fragment in text, f"{fragment!r} not in:\n{text}"
    assert "3 workers, 7 views per worker, 4 probe x 1 object mode(s), double" in text
    single = describe(path, n_workers=3, probe_modes=4)
    assert single != text


def test_describe_mask_and_overrides(tmp_path: Path, scan: Scan) -> None:
    mask = np.zeros((32, 32), dtype=bool)
    mask[4, 5:9] = True
    path = tmp_path / "scan.npz"
    np.savez(path, frames=scan.frames, positions=scan.positions, mask=mask)
    geometry = GeometryConfig(energy_ev=8000.0, distance_m=4.0, detector_pixel_m=75e-6)
    text = describe(path, DataConfig(path=path, geometry=geometry))
    assert "mask: 4 bad pixel(s) of 1024" in text
    assert "distance 4 m" in text
    store, _ = _zarr(tmp_path, scan)
    override = DataConfig(path=store, geometry=GeometryConfig(distance_m=4.0))
    assert "distance 4 m" in describe(store, override)


def test_describe_streams_stores(
    tmp_path: Path, scan: Scan, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store is read chunk by chunk, never loaded whole."""
    store, _ = _zarr(tmp_path, scan)
    ranges: list[tuple[int, int]] = []
    read_frames = ptychograph.info.read_frames

    def spy(path: Path, start: int, stop: int) -> np.ndarray:
        ranges.append((start, stop))
        return read_frames(path, start, stop)

    def refuse(*args: object, **kwargs: object) -> Scan:
        raise AssertionError("describe loaded the whole store")

    monkeypatch.setattr(ptychograph.info, "read_frames", spy)
    monkeypatch.setattr(ptychograph.info, "load_scan", refuse)
    text = describe(store)
    assert ranges == [(0, 6), (6, 12), (12, 18), (18, 20)]
    assert "frames: 20 x 32 x 32" in text


def test_describe_reports_nonfinite_frames(tmp_path: Path, scan: Scan) -> None:
    frames = scan.frames.copy()
    frames[2, 0, 0] = np.nan
    path = tmp_path / "scan.npz"
    np.savez(path, frames=frames, positions=scan.positions)
    text = describe(path, DataConfig(path=path, geometry=geometry_of(scan)))
    assert "(1 frame(s) with NaN/Inf left out)" in text


@pytest.mark.parametrize(
    ("arguments", "field"),
    [
        ({"n_workers": 0}, "workers"),
        ({"probe_modes": 0}, "probe_modes"),
        ({"object_modes": -1}, "object_modes"),
        ({"precision": "half"}, "precision"),
    ],
)
def test_describe_bad_arguments(
    tmp_path: Path, scan: Scan, arguments: dict[str, object], field: str
) -> None:
    path, _ = _cxi(tmp_path, scan)
    with pytest.raises(InputError) as info:
        describe(path, **arguments)  # type: ignore[arg-type]
    assert info.value.field == field


def test_describe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^data\.path: .*does not exist"):
        describe(tmp_path / "absent.cxi")

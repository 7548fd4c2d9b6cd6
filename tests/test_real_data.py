"""A real measured scan (Siemens star, Velociprobe at the APS, from tike's BSD-licensed test
data; see tests/data/LICENSE-tike.txt) written as CXI and reconstructed end to end on a local
Dask cluster."""

from __future__ import annotations

import bz2
import io
from pathlib import Path

import numpy as np
import pytest

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct
from ptychograph.io.cxi import write_cxi
from ptychograph.results import open_result
from ptychograph.scan import HC_EV_M, Geometry, Scan

DATA = Path(__file__).parent / "data" / "siemens-star-small.npz.bz2"


def siemens_star_scan(object_pixel: float = 1e-8) -> Scan:
    """The measured frames (centred) with positions converted to metres.

    The file gives positions in object pixels and no geometry; a 10 keV beam, 75 um pixels and
    a distance chosen so that the object pixel is ``object_pixel`` reproduce them exactly.
    """
    with bz2.open(DATA) as handle:
        data = np.load(io.BytesIO(handle.read()))
    frames = np.fft.fftshift(data["data"][0], axes=(-2, -1)).astype(np.float32)
    positions_px = data["scan"][0].astype(np.float64)
    probe = np.asarray(data["probe"]).reshape(-1, *frames.shape[1:]).astype(np.complex64)
    wavelength = HC_EV_M / 10_000.0
    distance = object_pixel * frames.shape[1] * 75e-6 / wavelength
    geometry = Geometry(wavelength, distance, (75e-6, 75e-6), frames.shape[1:])
    return Scan(frames, positions_px * object_pixel, geometry, None, probe)


@pytest.mark.slow
def test_siemens_star_reaches_stated_error(tmp_path: Path) -> None:
    scan = siemens_star_scan()
    path = tmp_path / "star.cxi"
    write_cxi(path, scan)
    config = parse_config(
        {
            "data": {"path": str(path)},
            "reconstruction": {"iterations": 40, "probe_modes": 1},
            "output": {"path": str(tmp_path / "star.zarr")},
            "cluster": {"n_workers": 2, "threads_per_worker": 1},
        }
    )
    result = reconstruct(config)  # the full path: Zarr frames, a local 2-worker cluster
    with open_result(tmp_path / "star.zarr") as ds:
        np.testing.assert_allclose(ds["fourier_error"].values, result.history.fourier_error)
        assert ds.attrs["geometry"]["object_pixel_m"] == [1e-8, 1e-8]
    assert (tmp_path / "star.png").stat().st_size > 10_000
    errors = np.asarray(result.history.fourier_error)
    assert np.allclose(scan.geometry.object_pixel, 1e-8)
    np.testing.assert_allclose(
        result.problem.origins - result.problem.origins.min(axis=0),
        np.asarray(scan.positions / 1e-8) - (scan.positions / 1e-8).min(axis=0),
        atol=1e-6,
    )
    # measured: 0.165 after 2 iterations, 1.49e-2 after 40, 1.41e-2 after 50
    assert errors[-1] < 0.02
    assert np.all(np.isfinite(result.state.obj))
    assert np.max(result.history.probe_change[-5:]) < 0.05

"""Position correction on CuPy against NumPy (GPU; skipped unless CuPy finds a CUDA device):
the per-view systems (object and leave-one-out terms), the illumination, the per-view model
errors and the whole-pixel search, on random positions, single and double precision."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ptychograph.backend import device_available, to_host
from ptychograph.position_search import search_views, view_errors
from ptychograph.positions import illumination, shift_terms
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.views import make_chunk

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not device_available(), reason="needs CuPy and a CUDA device"),
]
#: Relative tolerances: sums over a view of products of single-precision values, or double.
TOLERANCE = {np.complex64: 2e-3, np.complex128: 1e-9}


def _pair(dtype: type) -> tuple[tuple[Any, ...], tuple[Any, ...], np.ndarray]:
    """(chunk, probe, obj) on the host and on the device, of a noisy textured scan whose views
    sit at sub-pixel positions off by up to 2 px from the frames'; and the positions."""
    import cupy as cp

    sim = simulate(
        SimulationConfig(n_frames=24, frame_size=32, photons=1e5, seed=6, phantom="texture")
    )
    rng = np.random.default_rng(0)
    origins = sim.origins + rng.uniform(-2, 2, sim.origins.shape)
    probe = np.stack([sim.probe[0], 0.3 * np.roll(sim.probe[0], 3, axis=-1)]).astype(dtype)
    obj = sim.obj.astype(dtype)
    amplitudes = np.sqrt(sim.scan.frames).astype(probe.real.dtype)
    host = make_chunk(amplitudes, None, origins, probe, obj, batch_size=5)
    device = make_chunk(
        cp.asarray(amplitudes), None, cp.asarray(origins), cp.asarray(probe), cp.asarray(obj), 5
    )
    return (host, probe, obj), (device, cp.asarray(probe), cp.asarray(obj)), origins


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_position_terms_on_cupy_equal_numpy(dtype: type) -> None:
    (host, probe, obj), (device, d_probe, d_obj), _ = _pair(dtype)
    tol = TOLERANCE[dtype]
    lit = illumination(host, probe, obj.shape[1:], 5)
    d_lit = illumination(device, d_probe, obj.shape[1:], 5)
    np.testing.assert_allclose(to_host(d_lit), lit, rtol=tol, atol=tol * float(lit.max()))
    for given, d_given in ((None, None), (lit, d_lit)):
        system, rhs = shift_terms(host, probe, obj, 5, given)
        d_system, d_rhs = shift_terms(device, d_probe, d_obj, 5, d_given)
        scale = float(np.abs(system).max())
        np.testing.assert_allclose(d_system, system, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(d_rhs, rhs, rtol=tol, atol=tol * float(np.abs(rhs).max()))


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_position_search_on_cupy_equals_numpy(dtype: type) -> None:
    (host, probe, obj), (device, d_probe, d_obj), origins = _pair(dtype)
    tol = TOLERANCE[dtype]
    for unit in (0.0, 1.0):  # divided by the counts, and by the Poisson noise (on the device)
        errors = view_errors(host, probe, obj, 5, unit)
        np.testing.assert_allclose(view_errors(device, d_probe, d_obj, 5, unit), errors, rtol=tol)
    local = np.array([2, 11, 17])
    lower, upper = origins[local] - 4.0, origins[local] + 4.0
    best, error, here = search_views(host, probe, obj, local, 3, lower, upper, 5)
    d_best, d_error, d_here = search_views(device, d_probe, d_obj, local, 3, lower, upper, 5)
    np.testing.assert_array_equal(d_best, best)
    np.testing.assert_allclose(d_error, error, rtol=tol)
    np.testing.assert_allclose(d_here, here, rtol=tol)

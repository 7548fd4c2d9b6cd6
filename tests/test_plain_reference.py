"""The fast DM iteration (ptychograph.views) agrees with the plain NumPy reference.

``benchmarks/plain_dm.py`` implements the same iteration the straightforward way (a loop over
views, one FFT per view, object insertion by slicing). Two iterations from the same start must
give the same probe, object, exit waves and Fourier error to double-precision round-off.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ptychograph.partials import regularised_divide, regularised_step
from ptychograph.views import make_chunk, object_partials, probe_partials, view_update

PLAIN_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_dm.py"
BETA = 0.8
ALPHA = 1e-3
TOLERANCE = 1e-10


def load_plain() -> ModuleType:
    """Import benchmarks/plain_dm.py from its file path."""
    spec = importlib.util.spec_from_file_location("plain_dm", PLAIN_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| / max |reference|."""
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def scene(
    plain: ModuleType, subpixel: bool, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """20 views of 32 x 32, 2 probe modes, 1 object mode, complex128.

    Returns amplitudes (20, 32, 32), origins (20, 2), starting probe (2, 32, 32) and starting
    object (1, Y, X); the amplitudes come from a different (true) probe and object.
    """
    size, n_views = 32, 20
    grid = np.stack(np.divmod(np.arange(n_views), 5), axis=1) * 6.0 + 3
    origins = grid + (rng.uniform(-1.5, 1.5, grid.shape) if subpixel else 0)
    side = int(np.ceil(origins.max())) + size + 4
    yy, xx = np.mgrid[:size, :size] - size / 2
    disc = np.exp(-(yy**2 + xx**2) / 60.0) * np.exp(0.02j * (yy**2 + xx**2))
    probe_true = np.stack([disc, 0.3 * disc * xx / 8]).astype(np.complex128)
    obj_true = np.exp(1j * rng.uniform(-1, 1, (1, side, side))) * rng.uniform(0.5, 1, (side, side))
    amplitudes = np.sqrt(plain.intensities(probe_true, obj_true, origins))
    noise = rng.standard_normal(probe_true.shape) + 1j * rng.standard_normal(probe_true.shape)
    probe = probe_true + 0.05 * noise * np.abs(probe_true)
    obj = np.ones_like(obj_true) * (0.9 + 0.1j)
    return amplitudes, origins, probe, obj


@pytest.mark.parametrize("subpixel", [True, False], ids=["subpixel", "integer"])
@pytest.mark.parametrize("overlap_passes", [1, 2])
def test_fast_iteration_matches_plain_reference(subpixel: bool, overlap_passes: int) -> None:
    plain = load_plain()
    amplitudes, origins, probe, obj = scene(plain, subpixel, np.random.default_rng(7))
    batch_size = 6  # several batches, the last one partial
    chunk = make_chunk(amplitudes, None, origins, probe, obj, batch_size)
    psi = plain.initial_exit_waves(probe, obj, origins)
    assert relative_difference(chunk.exit_waves, psi) < TOLERANCE

    fast_probe, fast_obj = probe, obj
    plain_probe, plain_obj = probe, obj
    for _ in range(2):
        fast_error = view_update(chunk, fast_probe, fast_obj, BETA, batch_size).value
        for _ in range(overlap_passes):
            numbers = object_partials(chunk, fast_probe, fast_obj.shape[1:], batch_size)
            fast_obj = regularised_divide(numbers, fast_obj, ALPHA)
            numbers = probe_partials(chunk, fast_obj, fast_probe, batch_size)
            fast_probe = regularised_step(numbers, fast_probe, ALPHA)
        plain_probe, plain_obj, plain_error = plain.dm_iteration(
            psi, amplitudes, origins, plain_probe, plain_obj, BETA, ALPHA, overlap_passes
        )
        assert fast_error == pytest.approx(plain_error, rel=TOLERANCE)

    assert fast_probe.dtype == np.complex128 and fast_obj.dtype == np.complex128
    assert relative_difference(fast_probe, plain_probe) < TOLERANCE
    assert relative_difference(fast_obj, plain_obj) < TOLERANCE
    assert relative_difference(chunk.exit_waves, psi) < TOLERANCE
    # The iteration did something: the estimates moved away from the start.
    assert relative_difference(plain_probe, probe) > 1e-3
    assert relative_difference(plain_obj, obj) > 1e-3

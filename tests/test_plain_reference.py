"""The fast DM iteration (ptychograph.views) agrees with the plain NumPy reference.

``benchmarks/plain_dm.py`` implements the same iteration the straightforward way (a loop over
views, one FFT per view, object insertion by slicing). Two iterations from the same start must
give the same probe, object, exit waves and Fourier error to double-precision round-off, with
and without sub-pixel positions (on ptychograph's grid of offsets, where its table of shifted
probes is exact; tests/test_shifted_probe.py covers the rounding), noise relaxation, and the
fused first object-partials sweep.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from ptychograph.partials import OverlapPartials, regularised_divide, regularised_step
from ptychograph.shifted_probe import SUBPIXEL_STEPS
from ptychograph.views import (
    ViewChunk,
    make_chunk,
    object_partials,
    probe_partials,
    update_views,
)

PLAIN_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "plain_dm.py"
BETA = 0.8
ALPHA = 1e-3
TOLERANCE = 1e-10
BATCH = 6  # several batches of views, the last one partial


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
    object (1, Y, X); the amplitudes (about 5e4 counts a frame, so that the noise relaxation
    acts) come from a different (true) probe and object.
    """
    size, n_views = 32, 20
    grid = np.stack(np.divmod(np.arange(n_views), 5), axis=1) * 6.0 + 3
    origins = grid + (rng.uniform(-1.5, 1.5, grid.shape) if subpixel else 0)
    origins = np.round(origins * SUBPIXEL_STEPS) / SUBPIXEL_STEPS  # on ptychograph's grid
    side = int(np.ceil(origins.max())) + size + 4
    yy, xx = np.mgrid[:size, :size] - size / 2
    disc = np.exp(-(yy**2 + xx**2) / 60.0) * np.exp(0.02j * (yy**2 + xx**2))
    probe_true = 30 * np.stack([disc, 0.3 * disc * xx / 8]).astype(np.complex128)
    obj_true = np.exp(1j * rng.uniform(-1, 1, (1, side, side))) * rng.uniform(0.5, 1, (side, side))
    amplitudes = np.sqrt(plain.intensities(probe_true, obj_true, origins))
    noise = rng.standard_normal(probe_true.shape) + 1j * rng.standard_normal(probe_true.shape)
    probe = probe_true + 0.05 * noise * np.abs(probe_true)
    obj = np.ones_like(obj_true) * (0.9 + 0.1j)
    return amplitudes, origins, probe, obj


def fast_iteration(
    chunk: ViewChunk,
    probe: np.ndarray,
    obj: np.ndarray,
    overlap_passes: int,
    noise_bound: float,
    fused: bool,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One ptychograph iteration as the DM algorithm runs it (psi in place)."""
    partials: OverlapPartials | None = None
    error, partials = update_views(chunk, probe, obj, BETA, BATCH, None, noise_bound, fused)
    for _ in range(overlap_passes):
        if partials is None:
            partials = object_partials(chunk, probe, obj.shape[1:], BATCH)
        obj = regularised_divide(partials, obj, ALPHA)
        partials = None
        probe = regularised_step(probe_partials(chunk, obj, probe, BATCH), probe, ALPHA)
    return probe, obj, error.value


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("noise_bound", [0.0, 1.0])
@pytest.mark.parametrize("subpixel", [True, False], ids=["subpixel", "integer"])
@pytest.mark.parametrize("overlap_passes", [1, 2])
def test_fast_iteration_matches_plain_reference(
    subpixel: bool, overlap_passes: int, noise_bound: float, fused: bool
) -> None:
    plain = load_plain()
    amplitudes, origins, probe, obj = scene(plain, subpixel, np.random.default_rng(7))
    chunk = make_chunk(amplitudes, None, origins, probe, obj, BATCH)
    psi = plain.initial_exit_waves(probe, obj, origins)
    assert relative_difference(chunk.exit_waves, psi) < TOLERANCE

    fast_probe, fast_obj = probe, obj
    plain_probe, plain_obj = probe, obj
    for _ in range(2):
        fast_probe, fast_obj, fast_error = fast_iteration(
            chunk, fast_probe, fast_obj, overlap_passes, noise_bound, fused
        )
        plain_probe, plain_obj, plain_error = plain.dm_iteration(
            psi,
            amplitudes,
            origins,
            plain_probe,
            plain_obj,
            BETA,
            ALPHA,
            overlap_passes,
            noise_bound,
        )
        assert fast_error == pytest.approx(plain_error, rel=TOLERANCE)

    assert fast_probe.dtype == np.complex128 and fast_obj.dtype == np.complex128
    assert relative_difference(fast_probe, plain_probe) < TOLERANCE
    assert relative_difference(fast_obj, plain_obj) < TOLERANCE
    assert relative_difference(chunk.exit_waves, psi) < TOLERANCE
    # The iteration did something: the estimates moved away from the start.
    assert relative_difference(plain_probe, probe) > 1e-3
    assert relative_difference(plain_obj, obj) > 1e-3

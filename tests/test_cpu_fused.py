"""The fused numba kernels of :mod:`ptychograph.cpu_fused` against the NumPy references.

* :class:`ptychograph.cpu_ops.CpuOps` with the kernels gives :class:`ptychograph.ops.NumpyOps`'
  exit waves, error terms and partials - complex64 and complex128, 1 and several probe and
  object modes, with and without a mask, noise bound 0 and > 0, one probe for all views or one
  per view, in sub-batches;
* the fused modulus constraint takes the safe and extreme paths of
  :func:`ptychograph.fourier.modulus_constraint` (zero, denormal, underflowing, negligible and
  huge models) and stays finite, against the independent complex128 reference of
  tests/test_fourier_safety.py;
* without numba (or with ``PTYCHOGRAPH_NUMBA=0``) CpuOps runs its NumPy code; with numba
  installed (or ``PTYCHOGRAPH_NUMBA=1``), the kernels.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from test_cpu_fast_paths import TOL, batch, close, crandom, run_update, sums_close, unitary, zeros
from test_fourier_safety import EXTREMES, KINDS, extreme_case, reference

from ptychograph import cpu_ops, views
from ptychograph.cpu_ops import CpuOps
from ptychograph.ops import NumpyOps

pytest.importorskip("numba")
from ptychograph import cpu_fused  # noqa: E402

DTYPES = [np.complex64, np.complex128]
MODES = [(1, 1), (3, 1), (2, 2)]


def fused() -> CpuOps:
    ops = CpuOps(fused=True)
    assert ops.kernels is cpu_fused
    return ops


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modes", MODES)
@pytest.mark.parametrize("noise_bound", [0.0, 0.5])
@pytest.mark.parametrize("masked", [True, False], ids=["masked", "unmasked"])
@pytest.mark.parametrize("shared_probe", [False, True], ids=["per-view", "shared"])
@pytest.mark.parametrize("rotated", [False, True], ids=["unrotated", "rotated"])
def test_fused_exit_wave_update_equals_reference(
    dtype, modes, noise_bound, masked, shared_probe, rotated
):
    """Also with a pending probe-mode rotation R, which the kernels fold in (X = 2 F phi -
    R F psi, psi <- R psi + beta (...)) and the reference applies to psi first."""
    b = batch(dtype, seed=2, modes=modes)
    if not masked:
        b = {**b, "good": None}
    if shared_probe:
        b = {**b, "probe_views": b["probe_views"][:1]}
    rotation = unitary(modes[0], dtype) if rotated else None
    for with_partials in (False, True):
        psi, error, sums = run_update(fused(), b, noise_bound, with_partials, rotation)
        want_psi, want_error, want_sums = run_update(
            NumpyOps(), b, noise_bound, with_partials, rotation
        )
        close(psi, want_psi, TOL[dtype])
        assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype])
        assert error.total == pytest.approx(want_error.total, rel=TOL[dtype])
        if with_partials:
            sums_close(sums, want_sums, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", ["zero", "underflow", "huge"])
@pytest.mark.parametrize("noise_bound", [0.0, 1.0])
@pytest.mark.parametrize("rotated", [False, True], ids=["unrotated", "rotated"])
def test_fused_update_of_extreme_models_is_finite_and_equals_reference(
    dtype, scale, noise_bound, rotated
):
    """A whole batch whose model and iterate are zero, underflow or overflow in the mode power
    gives the reference's finite exit waves (and object terms, where those do not overflow); a
    zero model gives error terms (sum a^2, sum a^2). Also with a pending mode rotation."""
    factor = EXTREMES[dtype][scale]
    b = batch(dtype, seed=3, modes=(2, 1))
    b = {**b, "probe_views": b["probe_views"] * factor, "psi": b["psi"] * factor}
    rotation = unitary(2, dtype) if rotated else None
    psi, error, sums = run_update(fused(), b, noise_bound, True, rotation)
    want_psi, want_error, want_sums = run_update(NumpyOps(), b, noise_bound, True, rotation)
    assert np.all(np.isfinite(psi))
    close(psi, want_psi, TOL[dtype])
    if scale == "huge":  # |S_j P|^2 of 1e30 (1e200) overflows, in the reference too
        assert not np.isfinite(error.residual) and not np.isfinite(want_error.residual)
    else:
        sums_close(sums, want_sums, TOL[dtype])
        np.testing.assert_allclose(error.residual, want_error.residual, rtol=TOL[dtype])
    if scale == "zero":
        assert np.all(psi == 0)
        good_power = float(np.sum(b["amplitudes"].astype(np.float64) ** 2 * b["good"]))
        assert error.residual == pytest.approx(good_power, rel=TOL[dtype])
        assert error.total == pytest.approx(good_power, rel=TOL[dtype])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("probe_modes", [1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True], ids=["unmasked", "masked"])
@pytest.mark.parametrize("noise_bound", [0.0, 1.0], ids=["plain", "relaxed"])
@pytest.mark.parametrize("beta", [None, 0.8])
def test_fused_modulus_constraint_of_extreme_pixels(
    dtype, probe_modes, kind, masked, noise_bound, beta
):
    """fourier_step with a zero model projects -F psi = X: the cases of
    tests/test_fourier_safety.py (some pixels extreme, the rest ordinary) against its reference;
    given beta, beta F_c X - X (what the exit-wave update needs)."""
    spectrum, amplitudes, good, extreme = extreme_case(dtype, probe_modes, kind, masked)
    iterate = -spectrum  # 2 * 0 - (-X) = X, exactly
    residual, total = cpu_fused.fourier_step(
        np.zeros_like(spectrum), iterate, amplitudes, good, noise_bound, beta=beta
    )
    assert iterate.dtype == dtype and np.all(np.isfinite(iterate))
    expected = reference(spectrum, amplitudes, good, noise_bound, extreme, EXTREMES[dtype][kind])
    if beta is not None:
        expected = beta * expected - spectrum.astype(np.complex128)
    tol = 4 * np.finfo(amplitudes.dtype).eps * (1 if noise_bound == 0 else 8)
    size = np.maximum(np.abs(expected), np.abs(spectrum.astype(np.complex128)))
    size = np.maximum(size, amplitudes[:, None, None])
    assert np.all(np.abs(iterate - expected) <= tol * size)
    if good is not None and beta is None:  # bad pixels keep their value, bit for bit
        np.testing.assert_array_equal(iterate[..., ~good], spectrum[..., ~good])
    if kind == "zero":
        views, rows, cols = extreme.nonzero()
        assert np.all(iterate[views, :, :, rows, cols] == 0)
    weights = np.ones(amplitudes.shape[1:]) if good is None else good
    data = float(np.sum(amplitudes.astype(np.float64) ** 2 * weights))
    assert residual == pytest.approx(data, rel=TOL[dtype]) and total == residual


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modes", MODES)
@pytest.mark.parametrize("shift", ["ramps", "bins", "none"])
def test_fused_partials_equal_reference(dtype, modes, shift):
    b = batch(dtype, seed=4, modes=modes)
    bins = np.array([1, 0, 1, 2, 0, 1]) if shift == "bins" else None
    ramps = b["ramps"] if shift == "ramps" else None
    if shift == "none":  # one probe for every view
        b = {**b, "probe_views": b["probe_views"][:1]}
    rows = () if bins is None else (3,)
    got, want = zeros((*rows, *b["probe_shape"]), dtype), zeros((*rows, *b["probe_shape"]), dtype)
    for ops, out in ((fused(), got), (NumpyOps(), want)):
        ops.probe_partials(b["psi"], b["probe_views"], b["obj_views"], ramps, out, bins=bins)
    sums_close(got, want, TOL[dtype])
    got, want = zeros(b["obj_shape"], dtype), zeros(b["obj_shape"], dtype)
    fused().object_partials(b["psi"], b["probe_views"], b["corners"], got)
    NumpyOps().object_partials(b["psi"], b["probe_views"], b["corners"], want)
    sums_close(got, want, TOL[dtype])
    assert got.numerator.dtype == dtype and got.denominator.dtype == want.denominator.dtype


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rotated", [False, True], ids=["unrotated", "rotated"])
def test_fused_ops_in_sub_batches_equal_reference(dtype, rotated, monkeypatch):
    monkeypatch.setattr(cpu_ops, "SUB_BATCH", 4)
    b = batch(dtype, seed=6, n=11)
    rotation = unitary(b["psi"].shape[1], dtype) if rotated else None
    psi, error, sums = run_update(fused(), b, 0.5, True, rotation)
    want_psi, want_error, want_sums = run_update(NumpyOps(), b, 0.5, True, rotation)
    close(psi, want_psi, TOL[dtype])
    assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype])
    sums_close(sums, want_sums, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("probe_modes", [1, 3])
@pytest.mark.parametrize("noise_bound", [0.0, 1.0])
def test_update_views_with_a_rotation_equals_reference(dtype, probe_modes, noise_bound):
    """views.update_views with a pending rotation (the call of the DM step after the probe
    was orthogonalised), in batches of 5 over two threads' worth of views: the fused CpuOps
    give NumpyOps' exit waves, error and object partials; the rotation is not a no-op."""
    rng = np.random.default_rng(9)
    frame, n_views = (16, 12), 13
    probe = crandom(rng, (probe_modes, *frame), dtype)
    obj = crandom(rng, (1, 40, 36), dtype)
    origins = rng.uniform(0, 20, (n_views, 2))
    amplitudes = np.abs(crandom(rng, (n_views, *frame), dtype)).astype(probe.real.dtype)
    good = rng.uniform(size=frame) > 0.1
    rotation = unitary(probe_modes, dtype, seed=10)
    turned = (rotation @ probe.reshape(probe_modes, -1)).reshape(probe.shape)
    results = []
    for ops, rotate in ((fused(), rotation), (NumpyOps(), rotation), (NumpyOps(), None)):
        chunk = views.make_chunk(amplitudes, good, origins, probe, obj, batch_size=5)
        chunk.exit_waves[:] = crandom(np.random.default_rng(11), chunk.exit_waves.shape, dtype)
        error, sums = views.update_views(chunk, turned, obj, 0.8, 5, rotate, noise_bound, ops=ops)
        results.append((chunk.exit_waves, error, sums))
    (psi, error, sums), (want_psi, want_error, want_sums), (unrotated, _, _) = results
    close(psi, want_psi, TOL[dtype])
    assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype])
    sums_close(sums, want_sums, TOL[dtype])
    assert float(np.abs(unrotated - want_psi).max()) > 0.01 * float(np.abs(want_psi).max())


def test_numpy_path_without_numba(monkeypatch):
    """numba not importable, or switched off: CpuOps keeps its NumPy code; fused=True refuses.
    With numba installed the kernels are on unless PTYCHOGRAPH_NUMBA=0."""
    monkeypatch.setenv("PTYCHOGRAPH_NUMBA", "1")
    monkeypatch.setitem(sys.modules, "numba", None)
    monkeypatch.setitem(sys.modules, "ptychograph.cpu_fused", None)
    cpu_ops.fused_kernels.cache_clear()
    try:
        assert cpu_ops.fused_kernels() is None
        assert CpuOps().kernels is None
        with pytest.raises(ImportError, match="numba"):
            CpuOps(fused=True)
    finally:
        cpu_ops.fused_kernels.cache_clear()
    monkeypatch.undo()
    monkeypatch.delenv("PTYCHOGRAPH_NUMBA", raising=False)  # unset: numba when installed
    try:
        assert cpu_ops.FUSED_BY_DEFAULT and cpu_ops.fused_kernels() is cpu_fused
    finally:
        cpu_ops.fused_kernels.cache_clear()
    for setting, kernels in (("0", None), ("1", cpu_fused)):
        monkeypatch.setenv("PTYCHOGRAPH_NUMBA", setting)
        try:
            assert cpu_ops.fused_kernels() is kernels
            assert CpuOps().kernels is kernels
            assert CpuOps(fused=False).kernels is None
        finally:
            cpu_ops.fused_kernels.cache_clear()

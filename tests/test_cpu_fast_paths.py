"""The CPU fast paths of issue 15 against their NumPy references, on random inputs.

* :class:`ptychograph.cpu_ops.CpuOps` (what a NumPy worker runs), on its NumPy code and with
  the numba kernels (tests/test_cpu_fused.py has more of those), gives the results of
  :class:`ptychograph.ops.NumpyOps`, also for spectra whose modulus constraint takes the
  extreme paths (zero, denormal, overflowing models);
* the probe terms added per bin (the adjoint left to the table of shifts) equal the reference's
  (tests/test_shifted_probe.py checks the table itself);
* :func:`ptychograph.views.rotate_modes` equals the tensordot over the mode axis;
* FFTW's transforms (when pyFFTW is installed) equal scipy.fft's, also from many threads.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.fft

from ptychograph import backend
from ptychograph.cpu_ops import CpuOps, mode_power
from ptychograph.operators import SubpixelShift, extract_views
from ptychograph.ops import NumpyOps
from ptychograph.partials import OverlapPartials
from ptychograph.views import (
    rotate_modes,
)

TOL = {np.complex64: 2e-5, np.complex128: 1e-12}
DTYPES = [np.complex64, np.complex128]
FRAME = (24, 20)


def crandom(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def close(value: np.ndarray, reference: np.ndarray, tol: float) -> None:
    assert value.shape == reference.shape
    scale = max(float(np.abs(reference).max()), 1e-300)
    assert float(np.abs(value - reference).max()) <= tol * scale


def sums_close(value: OverlapPartials, reference: OverlapPartials, tol: float) -> None:
    close(value.numerator, reference.numerator, tol)
    close(value.denominator, reference.denominator, tol)


def batch(dtype: type, seed: int = 0, n: int = 6, modes: tuple[int, int] = (3, 2)) -> dict:
    """Random views of one batch: psi, S_j P, E_j O, corners, amplitudes, mask, ramps."""
    rng = np.random.default_rng(seed)
    probe_modes, obj_modes = modes
    obj = crandom(rng, (obj_modes, 40, 44), dtype)
    corners = rng.integers(0, 16, (n, 2))
    frac = rng.uniform(0, 1, (n, 2)).astype(np.empty(0, dtype).real.dtype)
    shifter = SubpixelShift(frac, FRAME, dtype)
    probe = crandom(rng, (probe_modes, *FRAME), dtype)
    return {
        "psi": crandom(rng, (n, probe_modes, obj_modes, *FRAME), dtype),
        "probe_views": shifter.shift(probe),
        "obj_views": extract_views(obj, corners, FRAME),
        "corners": corners,
        "amplitudes": np.abs(rng.standard_normal((n, *FRAME))).astype(frac.dtype) * 3,
        "good": rng.uniform(size=FRAME) > 0.1,
        "ramps": shifter.ramps,
        "obj_shape": obj.shape,
        "probe_shape": probe.shape,
    }


@pytest.fixture(params=["numpy", "numba"])
def cpu(request: pytest.FixtureRequest) -> CpuOps:
    """CpuOps on its NumPy code, and with the fused numba kernels (skipped without numba)."""
    if request.param == "numba":
        pytest.importorskip("numba")
    return CpuOps(fused=request.param == "numba")


def zeros(shape: tuple[int, ...], dtype: type) -> OverlapPartials:
    """Zero partials: numerator ``shape``, denominator its last two axes (as the callers)."""
    return OverlapPartials(
        np.zeros(shape, dtype), np.zeros(shape[-2:], np.empty(0, dtype).real.dtype)
    )


def run_update(  # type: ignore[no-untyped-def]
    ops, b: dict, noise_bound: float, fused: bool, rotation: np.ndarray | None = None
):
    """``ops.exit_wave_update`` on a copy of psi, with the object terms when ``fused``; given
    ``rotation`` (M_P, M_P), passed on (NumpyOps: psi rotated first, as before issue 16)."""
    psi = b["psi"].copy()
    out = zeros(b["obj_shape"], psi.dtype) if fused else None
    args = (b["probe_views"], b["obj_views"], b["corners"], b["amplitudes"], b["good"], 0.8)
    if rotation is None:  # the call every BatchOps took before the rotation argument
        return psi, ops.exit_wave_update(psi, *args, noise_bound, out), out
    return psi, ops.exit_wave_update(psi, *args, noise_bound, out, rotation), out


def unitary(modes: int, dtype: type, seed: int = 7) -> np.ndarray:
    """A random (modes, modes) unitary in ``dtype``: a probe-mode rotation."""
    q, _ = np.linalg.qr(crandom(np.random.default_rng(seed), (modes, modes), np.complex128))
    return q.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise_bound", [0.0, 0.5])
@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("rotated", [False, True], ids=["unrotated", "rotated"])
def test_cpu_exit_wave_update_equals_reference(dtype, noise_bound, fused, rotated, cpu):
    b = batch(dtype)
    rotation = unitary(b["psi"].shape[1], dtype) if rotated else None
    psi, error, sums = run_update(cpu, b, noise_bound, fused, rotation)
    want_psi, want_error, want_sums = run_update(NumpyOps(), b, noise_bound, fused, rotation)
    close(psi, want_psi, TOL[dtype])
    assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype])
    assert error.total == pytest.approx(want_error.total, rel=TOL[dtype])
    if fused:
        sums_close(sums, want_sums, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scale", [0.0, 1e-30, 1e30], ids=["zero", "tiny", "huge"])
def test_cpu_exit_wave_update_equals_reference_on_extreme_models(dtype, scale, cpu):
    """Models that take the extreme paths of the modulus constraint (zero, denormal or
    overflowing mode powers) give the reference's finite result."""
    b = batch(dtype, seed=3)
    b = {**b, "probe_views": b["probe_views"] * scale, "psi": b["psi"] * scale}
    psi, error, _ = run_update(cpu, b, 0.0, False)
    want_psi, want_error, _ = run_update(NumpyOps(), b, 0.0, False)
    assert np.all(np.isfinite(psi))
    close(psi, want_psi, TOL[dtype])
    if np.isfinite(want_error.residual):
        np.testing.assert_allclose(error.residual, want_error.residual, rtol=TOL[dtype])
    else:  # the error of an overflowing model (NaN in the reference, inf fused)
        assert not np.isfinite(error.residual)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("modes", [(1, 1), (3, 1), (2, 2)])
@pytest.mark.parametrize("subpixel", [True, False])
def test_cpu_partials_equal_reference(dtype, modes, subpixel, cpu):
    b = batch(dtype, seed=1, modes=modes)
    if not subpixel:  # one probe for every view, no ramps
        b = {**b, "probe_views": b["probe_views"][:1], "ramps": None}
    for ops_name, shape in (("object_partials", b["obj_shape"]), ("probe_partials", None)):
        shape = shape or b["probe_shape"]
        got, want = zeros(shape, dtype), zeros(shape, dtype)
        for ops, out in ((cpu, got), (NumpyOps(), want)):
            if ops_name == "object_partials":
                ops.object_partials(b["psi"], b["probe_views"], b["corners"], out)
            else:
                ops.probe_partials(b["psi"], b["probe_views"], b["obj_views"], b["ramps"], out)
        sums_close(got, want, TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_binned_probe_terms_equal_reference(dtype, cpu):
    """With ``bins``, each view's terms land in its bin unshifted: summing the bins with S_j^H
    of one view per bin gives the reference; CpuOps and NumpyOps agree."""
    b = batch(dtype, seed=5, n=6)
    bins = np.array([2, 0, 2, 1, 0, 2])
    got, ref = zeros((3, *b["probe_shape"]), dtype), zeros((3, *b["probe_shape"]), dtype)
    cpu.probe_partials(b["psi"], b["probe_views"], b["obj_views"], None, got, bins=bins)
    NumpyOps().probe_partials(b["psi"], b["probe_views"], b["obj_views"], None, ref, bins=bins)
    sums_close(got, ref, TOL[dtype])
    for row in range(3):
        views = np.flatnonzero(bins == row)
        want = zeros(b["probe_shape"], dtype)
        NumpyOps().probe_partials(
            b["psi"][views], b["probe_views"][views], b["obj_views"][views], None, want
        )
        close(got.numerator[row], want.numerator, TOL[dtype])


def test_mode_power_is_the_sum_of_squares():
    x = crandom(np.random.default_rng(2), (4, 3, 2, 5, 6), np.complex128)
    np.testing.assert_allclose(mode_power(x), np.sum(np.abs(x) ** 2, axis=(1, 2)), rtol=1e-13)
    np.testing.assert_allclose(mode_power(x[:, :, 0], axes=1), np.sum(np.abs(x[:, :, 0]) ** 2, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotate_modes_equals_tensordot(dtype):
    rng = np.random.default_rng(4)
    waves = crandom(rng, (5, 3, 2, *FRAME), dtype)
    rotation = crandom(rng, (3, 3), dtype)
    expected = np.moveaxis(np.tensordot(rotation, waves, axes=([1], [1])), 0, 1)
    close(rotate_modes(waves, rotation), expected, TOL[dtype])


# ---------------------------------------------------------------- FFTW (optional extra)
needs_fftw = pytest.mark.skipif(backend.fftw_library() is None, reason="pyFFTW not installed")


@needs_fftw
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("contiguous", [True, False])
def test_fftw_transforms_equal_scipy(dtype, overwrite, contiguous):
    rng = np.random.default_rng(7)
    x = crandom(rng, (3, 2, 24, 40), dtype)
    if not contiguous:
        x = x[:, :, :, ::2]
    keep = x.copy()
    for transform, reference in ((backend.fft2, scipy.fft.fft2), (backend.ifft2, scipy.fft.ifft2)):
        given = x.copy() if overwrite else x
        got = transform(given, overwrite=overwrite)
        close(got, reference(keep, norm="ortho"), TOL[dtype])
        assert got.dtype == dtype
        if not overwrite:
            np.testing.assert_array_equal(x, keep)  # the input is left as it was


@needs_fftw
def test_fftw_plans_run_in_many_threads_at_once():
    rng = np.random.default_rng(8)
    inputs = [crandom(rng, (4, 3, 32, 32), np.complex64) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda x: backend.fft2(x.copy(), overwrite=True), inputs * 3))
    for x, got in zip(inputs * 3, results, strict=True):
        close(got, scipy.fft.fft2(x, norm="ortho"), TOL[np.complex64])


def test_scipy_fft_can_be_forced(monkeypatch):
    monkeypatch.setenv("PTYCHOGRAPH_FFT", "scipy")
    assert backend.fftw_library() is None
    x = crandom(np.random.default_rng(1), (2, 8, 8), np.complex128)
    close(backend.fft2(x), scipy.fft.fft2(x, norm="ortho"), 1e-13)


def test_single_precision_iteration_stays_single(monkeypatch):
    """No accidental upcast on the default NumPy path: every FFT of a complex64 DM iteration
    (exit-wave update, table of shifted probes, binned adjoint) takes and gives complex64, and
    the partials and new estimates are complex64 / float32."""
    from ptychograph import cpu_ops, operators, shifted_probe
    from ptychograph.algorithms import dm
    from ptychograph.executors.local import LocalExecutor
    from ptychograph.state import State
    from ptychograph.views import probe_partials

    seen: list[str] = []

    def checked(transform):  # type: ignore[no-untyped-def]
        def run(x, overwrite=False):  # type: ignore[no-untyped-def]
            out = transform(x, overwrite)
            seen.append(f"{x.dtype}->{out.dtype}")
            return out

        return run

    for module in (cpu_ops, shifted_probe, operators):
        monkeypatch.setattr(module, "fft2", checked(backend.fft2))
        monkeypatch.setattr(module, "ifft2", checked(backend.ifft2))
    rng = np.random.default_rng(8)
    origins = rng.uniform(0, 30, (400, 2))  # 400 views, at most 81 shifts: binned adjoint
    amplitudes = np.abs(rng.standard_normal((400, *FRAME))).astype(np.float32)
    probe = crandom(rng, (2, *FRAME), np.complex64)
    obj = np.ones((1, 60, 56), np.complex64)
    executor = LocalExecutor.from_frames(amplitudes, origins, None, 16, "fourier")
    state = executor.reset(State(probe, obj))
    algorithm = dm.DifferenceMap(dm.DMOptions(probe_update_start=0))
    for iteration in range(2):
        state, _ = algorithm.iterate(executor, state, iteration)
    assert seen and set(seen) == {"complex64->complex64"}
    assert state.probe.dtype == np.complex64 and state.obj.dtype == np.complex64
    chunk = executor.slots[0].chunks[0]
    assert chunk.exit_waves.dtype == np.complex64 and chunk.table.rows.dtype == np.complex64
    assert chunk.table.bins(chunk.slots())[0] is not None  # the binned adjoint ran
    sums = probe_partials(chunk, state.obj, state.probe, 16, ops=CpuOps())
    assert (sums.numerator.dtype, sums.denominator.dtype) == (np.complex64, np.float32)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_cpu_ops_in_sub_batches_equal_reference(dtype, subpixel, monkeypatch, cpu):
    """CpuOps cuts a batch into sub-batches (cpu_ops.SUB_BATCH views, here 4 of 6: one full,
    one partial); each op still gives NumpyOps' result for the whole batch."""
    from ptychograph import cpu_ops

    monkeypatch.setattr(cpu_ops, "SUB_BATCH", 4)
    b = batch(dtype, seed=6)
    if not subpixel:
        b = {**b, "probe_views": b["probe_views"][:1], "ramps": None}
    psi, error, sums = run_update(cpu, b, 0.5, True)
    want_psi, want_error, want_sums = run_update(NumpyOps(), b, 0.5, True)
    close(psi, want_psi, TOL[dtype])
    assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype])
    sums_close(sums, want_sums, TOL[dtype])
    got, want = zeros(b["probe_shape"], dtype), zeros(b["probe_shape"], dtype)
    cpu.probe_partials(b["psi"], b["probe_views"], b["obj_views"], b["ramps"], got)
    NumpyOps().probe_partials(b["psi"], b["probe_views"], b["obj_views"], b["ramps"], want)
    sums_close(got, want, TOL[dtype])
    bins = np.array([1, 0, 1, 1, 0, 0])
    got, want = zeros((2, *b["probe_shape"]), dtype), zeros((2, *b["probe_shape"]), dtype)
    cpu.probe_partials(b["psi"], b["probe_views"], b["obj_views"], None, got, bins=bins)
    NumpyOps().probe_partials(b["psi"], b["probe_views"], b["obj_views"], None, want, bins=bins)
    sums_close(got, want, TOL[dtype])


def test_rotate_modes_in_place_equals_a_new_array():
    rng = np.random.default_rng(11)
    waves = crandom(rng, (37, 3, 2, *FRAME), np.complex128)  # two blocks of 16 and a rest
    rotation = crandom(rng, (3, 3), np.complex128)
    expected = rotate_modes(waves, rotation)
    assert rotate_modes(waves, rotation, in_place=True) is waves
    close(waves, expected, 1e-13)


@pytest.mark.parametrize("dtype", DTYPES)
def test_reference_rotation_is_rotate_modes_then_the_update(dtype):
    """NumpyOps given a rotation R does what update_views did before issue 16: psi <- R psi
    (:func:`rotate_modes`), then the update; R = 1 changes nothing, a real R does."""
    b = batch(dtype, seed=8, modes=(3, 1))
    rotation = unitary(3, dtype)
    psi, error, sums = run_update(NumpyOps(), b, 0.5, True, rotation)
    turned = {**b, "psi": rotate_modes(b["psi"], rotation)}
    want_psi, want_error, want_sums = run_update(NumpyOps(), turned, 0.5, True)
    np.testing.assert_array_equal(psi, want_psi)
    assert error == want_error
    np.testing.assert_array_equal(sums.numerator, want_sums.numerator)
    identity = run_update(NumpyOps(), b, 0.5, True, np.eye(3, dtype=dtype))[0]
    close(identity, run_update(NumpyOps(), b, 0.5, True)[0], TOL[dtype])
    assert float(np.abs(psi - identity).max()) > 0.1 * float(np.abs(psi).max())

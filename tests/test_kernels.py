"""The batch ops: NumpyOps against the equations, the CUDA kernels against NumpyOps.

:class:`ptychograph.ops.NumpyOps` is the one NumPy reference of each batch step; the fused CUDA
kernels (``ptychograph/gpu/cuda/*.cu``, wrapped in :mod:`ptychograph.gpu.kernels` and chained
into :class:`ptychograph.gpu.ops.CupyOps`) are checked against it.

* NumPy only (every CI run): each NumpyOps method against the per-view equations written out
  below (one view at a time, complex128, explicit windows and Fourier phase ramps), and against
  the adjoint identities of its sums; views.py routes every batch through the ops it is given;
  :func:`~ptychograph.ops.select_ops`; the kernels' launch grid and size arguments (against the
  C types of the kernels' parameters), source loading, package data, and that
  ``import ptychograph`` stays free of CuPy. Random inputs in complex64 and complex128, frames of
  188 x 188 and 33 x 47, with and without sub-pixel shifts, mask and noise bound.
* GPU (``@pytest.mark.gpu``, skipped unless CuPy finds a CUDA device): every CupyOps method
  against NumpyOps, views.py with CupyOps against views.py with NumpyOps, and each kernel
  wrapper against the NumPy it stands for (the package functions NumpyOps is built from).

Agreement is measured as max |a - b| / max |b| (the benchmark's metric). Tolerances: 1e-5
(single) and 1e-12 (double) for elementwise work; sums over views done with atomicAdd, or in
another order than NumPy's pairwise sums, get 1e-4 / 1e-10.
"""

from __future__ import annotations

import itertools
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from dataclasses import dataclass, replace
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychograph import gpu
from ptychograph.backend import device_available
from ptychograph.cpu_ops import CpuOps
from ptychograph.fourier import fourier_error, modulus_constraint
from ptychograph.gpu import kernels as gpu_kernels
from ptychograph.gpu.ops import CupyOps, noise_steps
from ptychograph.operators import SubpixelShift, extract_views, sum_unshifted
from ptychograph.operators import exit_waves as form_views
from ptychograph.ops import BatchOps, NumpyOps, select_ops
from ptychograph.partials import OverlapPartials
from ptychograph.views import ViewChunk, object_partials, probe_partials, update_views

ROOT = Path(__file__).resolve().parents[1]
DTYPES = [np.complex64, np.complex128]
SIZES = [(188, 188), (33, 47)]
GPU_SIZES = [(188, 188), (33, 47), (64, 64)]
#: max |a - b| / max |b| allowed: elementwise work, and sums in a different order (atomics).
TOL = {np.complex64: 1e-5, np.complex128: 1e-12}
SUM_TOL = {np.complex64: 1e-4, np.complex128: 1e-10}
BETA = 0.8

#: GPU tests: marked ``gpu`` and skipped unless CuPy finds a CUDA device (a device check -
#: CuPy installed on a machine without a GPU skips too).
requires_device = pytest.mark.skipif(not device_available(), reason="needs CuPy and a CUDA device")
#: Batches on the host and on the device: dtype x frame size x sub-pixel (or integer) positions.
#: The host ops: the NumPy reference and the CPU ops a NumPy worker runs (the same results).
HOST_OPS = pytest.mark.parametrize("ops", [NumpyOps, CpuOps], ids=["reference", "cpu"])
BATCHES = pytest.mark.parametrize(
    "dtype, size, subpixel", list(itertools.product(DTYPES, SIZES, [True, False]))
)
GPU_BATCHES = pytest.mark.parametrize(
    "dtype, size, subpixel", list(itertools.product(DTYPES, GPU_SIZES, [True, False]))
)


def gpu_test(test: Any) -> Any:
    """Marked ``gpu`` and skipped unless CuPy finds a CUDA device."""
    return pytest.mark.gpu(requires_device(test))


def assert_close(actual: Any, expected: Any, tol: float) -> None:
    """max |actual - expected| <= tol * max |expected| (host or device arrays, or floats)."""
    actual, expected = _host(actual), _host(expected)
    assert np.shape(actual) == np.shape(expected)
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    error = float(np.max(np.abs(actual - expected))) if np.size(expected) else 0.0
    assert error <= tol * max(scale, np.finfo(np.float64).tiny), (error, scale, tol)


def assert_partials_close(actual: OverlapPartials, expected: OverlapPartials, tol: float) -> None:
    """Numerators and denominators agree (:func:`assert_close`)."""
    assert_close(actual.numerator, expected.numerator, tol)
    assert_close(actual.denominator, expected.denominator, tol)


def _host(array: Any) -> Any:
    return array.get() if hasattr(array, "get") else np.asarray(array)


@dataclass(frozen=True)
class Batch:
    """A random batch of views and everything the ops take (NumPy arrays)."""

    probe: np.ndarray  # (M_P, H, W)
    obj: np.ndarray  # (M_O, Y, X)
    corners: np.ndarray  # (n, 2) int64
    frac: np.ndarray  # (n, 2) real; zeros for integer positions
    psi: np.ndarray  # (n, M_P, M_O, H, W)
    amplitudes: np.ndarray  # (n, H, W) real, FFT order
    good: np.ndarray | None  # (H, W) bool

    @property
    def shifter(self) -> SubpixelShift:
        return SubpixelShift(self.frac, self.frame, self.psi.dtype)

    @property
    def probe_views(self) -> np.ndarray:
        """(n, M_P, H, W), or (1, M_P, H, W) for integer positions."""
        return np.ascontiguousarray(self.shifter.shift(self.probe))

    @property
    def obj_views(self) -> np.ndarray:
        return extract_views(self.obj, self.corners, self.frame)

    @property
    def frame(self) -> tuple[int, int]:
        return int(self.psi.shape[-2]), int(self.psi.shape[-1])

    @property
    def obj_shape(self) -> tuple[int, int]:
        return int(self.obj.shape[1]), int(self.obj.shape[2])

    @property
    def mask(self) -> np.ndarray:
        """(H, W) bool, all True without a mask."""
        return np.ones(self.frame, bool) if self.good is None else self.good

    def chunk(self) -> ViewChunk:
        """The package's chunk over these views (psi copied: the package updates in place)."""
        return ViewChunk(self.amplitudes, self.good, self.corners, self.frac, self.psi.copy())


def make_batch(
    dtype: Any,
    size: tuple[int, int],
    n_views: int = 5,
    n_probe: int = 3,
    n_obj: int = 2,
    subpixel: bool = True,
    masked: bool = True,
    seed: int = 0,
) -> Batch:
    rng = np.random.default_rng(seed)
    real = np.empty(0, dtype).real.dtype
    height, width = size
    obj_shape = (height + 23, width + 17)  # windows overlap heavily: atomics collide

    def noise(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)

    corners = np.stack([rng.integers(0, 24, n_views), rng.integers(0, 18, n_views)], axis=1).astype(
        np.int64
    )
    frac = rng.uniform(0, 1, (n_views, 2)) if subpixel else np.zeros((n_views, 2))
    scale = np.sqrt(2.0 * n_probe * n_obj)  # about |F psi| summed over the modes
    amplitudes = (rng.uniform(0, 2 * scale, (n_views, *size))).astype(real)
    good = rng.random(size) > 0.1 if masked else None
    return Batch(
        probe=noise(n_probe, *size),
        obj=noise(n_obj, *obj_shape),
        corners=corners,
        frac=frac.astype(real),
        psi=noise(n_views, n_probe, n_obj, *size),
        amplitudes=amplitudes,
        good=good,
    )


def zero_sums(xp: Any, numerator_shape: tuple[int, ...], dtype: Any) -> OverlapPartials:
    """Sums to add into: (modes, ...) complex numerator, (...) real denominator."""
    real = np.empty(0, dtype).real.dtype
    numerator = xp.zeros(numerator_shape, dtype=dtype)
    return OverlapPartials(numerator, xp.zeros(numerator_shape[1:], dtype=real))


def host_arrays(batch: Batch) -> dict[str, Any]:
    """The batch's arrays by the names the ops take (psi copied: the ops update it in place)."""
    return {
        "psi": batch.psi.copy(),
        "probe_views": batch.probe_views,
        "obj_views": batch.obj_views,
        "amplitudes": batch.amplitudes,
        "good": batch.good,
        "corners": batch.corners,
        "ramps": batch.shifter.ramps,
    }


def run_update(
    ops: BatchOps, arrays: dict[str, Any], noise_bound: float, out: OverlapPartials | None
) -> Any:
    """``ops.exit_wave_update`` on ``arrays`` (:func:`host_arrays` or :func:`_device`)."""
    views = (arrays["psi"], arrays["probe_views"], arrays["obj_views"], arrays["corners"])
    data = (arrays["amplitudes"], arrays["good"])
    return ops.exit_wave_update(*views, *data, BETA, noise_bound, out)


# ============================================== the equations, one view at a time (complex128)
def fourier(x: np.ndarray) -> np.ndarray:
    """F in FFT order (the package keeps the frames ifftshifted)."""
    return np.fft.fft2(x, norm="ortho")


def modulus(spectrum: np.ndarray) -> np.ndarray:
    """|X| = sqrt(sum_{k,l} |X^(k,l)|^2): (M_P, M_O, H, W) -> (H, W)."""
    return np.sqrt(np.sum(np.abs(spectrum) ** 2, axis=(0, 1)))


def ramp(frac: np.ndarray, frame: tuple[int, int]) -> np.ndarray:
    """exp(-2 pi i (q_y f_y + q_x f_x)): S_j is multiplication by it in Fourier space."""
    q_y, q_x = np.fft.fftfreq(frame[0]), np.fft.fftfreq(frame[1])
    return np.exp(-2j * np.pi * (frac[0] * q_y[:, None] + frac[1] * q_x[None, :]))


def probe_of(batch: Batch, j: int) -> np.ndarray:
    """S_j P^(k) for view j: (M_P, H, W) complex128."""
    views = batch.probe_views
    return views[j if views.shape[0] > 1 else 0].astype(np.complex128)


def window(batch: Batch, j: int) -> tuple[slice, slice]:
    """E_j: the object pixels of view j."""
    row, col = batch.corners[j]
    return slice(row, row + batch.frame[0]), slice(col, col + batch.frame[1])


def model_of(batch: Batch, j: int) -> np.ndarray:
    """Eq. 2, phi_j^(k,l) = (S_j P^(k)) (E_j O^(l)): (M_P, M_O, H, W) complex128."""
    obj_view = batch.obj[(slice(None), *window(batch, j))].astype(np.complex128)
    return probe_of(batch, j)[:, None] * obj_view[None, :]


def iterate_residual(batch: Batch, j: int) -> float:
    """D_j = sum over good pixels of (|F(2 phi - psi)| - a)^2 (the noise relaxation's misfit)."""
    spectrum = fourier(2 * model_of(batch, j) - batch.psi[j])
    return float(np.sum(((modulus(spectrum) - batch.amplitudes[j]) ** 2)[batch.mask]))


def updated_view(batch: Batch, j: int, beta: float, noise_bound: float) -> np.ndarray:
    """Eqs. 3-4 for view j: psi + beta (F^-1 F_c[2 phi - psi] - phi), where F_c scales every mode
    by a / |X| at good pixels, relaxed to 1 + s_j (a / |X| - 1) with
    s_j = 1 - sqrt(B / max(D_j, B)), B = noise_bound * 0.25 * (good pixels)."""
    phi = model_of(batch, j)
    spectrum = fourier(2 * phi - batch.psi[j])
    scale = np.where(batch.mask, batch.amplitudes[j] / modulus(spectrum), 1.0)
    if noise_bound > 0:
        bound = noise_bound * 0.25 * batch.mask.sum()
        relax = 1 - np.sqrt(bound / max(iterate_residual(batch, j), bound))
        scale = 1 + relax * (scale - 1)
    projected = np.fft.ifft2(scale * spectrum, norm="ortho")
    return batch.psi[j] + beta * (projected - phi)


def error_terms(batch: Batch) -> tuple[float, float]:
    """Step 5 of the model phi: sum over good pixels of (a - |F phi|)^2, and of a^2."""
    residual = total = 0.0
    for j in range(batch.psi.shape[0]):
        amplitude = batch.amplitudes[j].astype(np.float64)
        misfit = amplitude - modulus(fourier(model_of(batch, j)))
        residual += float(np.sum((misfit**2)[batch.mask]))
        total += float(np.sum((amplitude**2)[batch.mask]))
    return residual, total


def object_sums(batch: Batch) -> OverlapPartials:
    """Eq. 6 over the views of ``batch``: numerator[l] = sum_{j,k} E_j^H conj(S_j P^(k))
    psi_j^(k,l) (M_O, Y, X), denominator = sum_{j,k} E_j^H |S_j P^(k)|^2 (Y, X)."""
    numerator = np.zeros(batch.obj.shape, np.complex128)
    denominator = np.zeros(batch.obj_shape)
    for j in range(batch.psi.shape[0]):
        probe = probe_of(batch, j)
        for obj_mode in range(batch.obj.shape[0]):
            term = np.sum(np.conj(probe) * batch.psi[j, :, obj_mode], axis=0)
            numerator[(obj_mode, *window(batch, j))] += term
        denominator[window(batch, j)] += np.sum(np.abs(probe) ** 2, axis=0)
    return OverlapPartials(numerator, denominator)


def probe_sums(batch: Batch) -> OverlapPartials:
    """Eq. 5 in residual form: numerator[k] = sum_{j,l} S_j^H conj(O_j^(l)) (psi_j^(k,l) -
    O_j^(l) S_j P^(k)) (M_P, H, W), denominator = sum_{j,l} |O_j^(l)|^2 (H, W); S_j^H is the
    conj ramp in Fourier space."""
    numerator = np.zeros(batch.probe.shape, np.complex128)
    denominator = np.zeros(batch.frame)
    for j in range(batch.psi.shape[0]):
        obj_view = batch.obj[(slice(None), *window(batch, j))].astype(np.complex128)
        residual = batch.psi[j] - model_of(batch, j)
        for probe_mode in range(batch.probe.shape[0]):
            term = np.sum(np.conj(obj_view) * residual[probe_mode], axis=0)
            unshifted = np.fft.ifft2(np.fft.fft2(term) * np.conj(ramp(batch.frac[j], batch.frame)))
            numerator[probe_mode] += unshifted
        denominator += np.sum(np.abs(obj_view) ** 2, axis=0)
    return OverlapPartials(numerator, denominator)


def noise_bound_between(batch: Batch) -> float:
    """A noise bound that leaves about half the views unchanged: B = median D_j of 2 phi - psi."""
    residuals = [iterate_residual(batch, j) for j in range(batch.psi.shape[0])]
    return float(np.median(residuals) / (0.25 * batch.mask.sum()))


# ================================================================ NumPy: NumpyOps == equations
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "subpixel, masked, relaxed", [(True, True, False), (False, False, False), (True, True, True)]
)
@pytest.mark.parametrize("fused", [False, True], ids=["update", "fused"])
@HOST_OPS
def test_numpy_exit_wave_update_follows_the_equations(
    dtype, size, subpixel, masked, relaxed, fused, ops
):
    batch = make_batch(dtype, size, subpixel=subpixel, masked=masked)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    arrays = host_arrays(batch)
    sums = zero_sums(np, batch.obj.shape, dtype) if fused else None
    error = run_update(ops(), arrays, noise_bound, sums)
    psi = arrays["psi"]
    expected = np.stack([updated_view(batch, j, BETA, noise_bound) for j in range(psi.shape[0])])
    assert psi.dtype == dtype
    assert_close(psi, expected, TOL[dtype])
    residual, total = error_terms(batch)
    assert_close(error.residual, residual, SUM_TOL[dtype])
    assert_close(error.total, total, SUM_TOL[dtype])
    if fused:  # the object sums are those of the new psi
        assert sums is not None
        expected_sums = object_sums(replace(batch, psi=expected))
        assert_partials_close(sums, expected_sums, SUM_TOL[dtype])


@BATCHES
@HOST_OPS
def test_numpy_object_partials_follow_the_equations(dtype, size, subpixel, ops):
    batch = make_batch(dtype, size, subpixel=subpixel)
    sums = zero_sums(np, batch.obj.shape, dtype)
    result = ops().object_partials(batch.psi, batch.probe_views, batch.corners, sums)
    assert result is sums
    expected = object_sums(batch)
    assert_partials_close(sums, expected, SUM_TOL[dtype])
    # ``out`` accumulates: two halves of the batch add up to the whole
    halves = zero_sums(np, batch.obj.shape, dtype)
    for part in (slice(0, 2), slice(2, None)):
        half = replace(
            batch, psi=batch.psi[part], corners=batch.corners[part], frac=batch.frac[part]
        )
        ops().object_partials(half.psi, half.probe_views, half.corners, halves)
    assert_partials_close(halves, expected, SUM_TOL[dtype])


@BATCHES
@HOST_OPS
def test_numpy_probe_partials_follow_the_equations(dtype, size, subpixel, ops):
    batch = make_batch(dtype, size, subpixel=subpixel)
    sums = zero_sums(np, batch.probe.shape, dtype)
    ops().probe_partials(batch.psi, batch.probe_views, batch.obj_views, batch.shifter.ramps, sums)
    expected = probe_sums(batch)
    assert sums.numerator.dtype == dtype
    assert_partials_close(sums, expected, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subpixel", [True, False])
@HOST_OPS
def test_object_partials_are_the_adjoint_of_the_forward_model(dtype, subpixel, ops):
    """<numerator, Q> = <psi, (S_j P)(E_j Q)> for any object Q; the denominator sums
    |S_j P|^2, so its total is the views' probe power (S_j is unitary)."""
    batch = make_batch(dtype, (33, 47), subpixel=subpixel)
    sums = ops().object_partials(
        batch.psi, batch.probe_views, batch.corners, zero_sums(np, batch.obj.shape, dtype)
    )
    other = make_batch(dtype, (33, 47), seed=5).obj
    forward = form_views(batch.probe_views, extract_views(other, batch.corners, batch.frame))
    assert_close(np.vdot(sums.numerator, other), np.vdot(batch.psi, forward), SUM_TOL[dtype])
    power = batch.psi.shape[0] * np.sum(np.abs(batch.probe.astype(np.complex128)) ** 2)
    assert_close(sums.denominator.sum(), power, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subpixel", [True, False])
@HOST_OPS
def test_probe_partials_are_the_adjoint_of_the_forward_model(dtype, subpixel, ops):
    """<numerator, Q> = <psi - phi, (S_j Q)(E_j O)> for any probe Q (S_j^H is the adjoint of
    the shift S_j of the forward model); the denominator sums |E_j O|^2."""
    batch = make_batch(dtype, (33, 47), subpixel=subpixel)
    sums = ops().probe_partials(
        batch.psi,
        batch.probe_views,
        batch.obj_views,
        batch.shifter.ramps,
        zero_sums(np, batch.probe.shape, dtype),
    )
    other = make_batch(dtype, (33, 47), seed=5).probe
    residual = batch.psi - form_views(batch.probe_views, batch.obj_views)
    forward = form_views(batch.shifter.shift(other), batch.obj_views)
    assert_close(np.vdot(sums.numerator, other), np.vdot(residual, forward), SUM_TOL[dtype])
    power = np.sum(np.abs(batch.obj_views.astype(np.complex128)) ** 2)
    assert_close(sums.denominator.sum(), power, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_bound_case_relaxes_some_views_only(dtype):
    """The relaxed cases really mix untouched (step 0) and partly moved views; the GPU's
    per-view steps (computed on any array module) say so on the same D_j."""
    batch = make_batch(dtype, (33, 47), n_views=8)
    residuals = np.array([iterate_residual(batch, j) for j in range(8)])
    steps = noise_steps(residuals, batch.good, noise_bound_between(batch), batch.frame)
    assert steps.dtype == np.float64
    assert np.any(steps == 0) and np.any((steps > 0) & (steps < 1))


def test_noise_steps_without_good_pixels_are_plain_constraint():
    """B = 0 (every pixel masked) gives step 1, plain eq. 4, not 0 / 0."""
    steps = noise_steps(np.array([0.0, 2.0]), np.zeros((4, 5), bool), 1.0, (4, 5))
    np.testing.assert_array_equal(steps, [1.0, 1.0])


class CountingOps(NumpyOps):
    """NumpyOps that counts its calls per method (the batches may run in threads)."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self._lock = threading.Lock()

    def _count(self, method: str) -> None:
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1

    def exit_wave_update(self, *args: Any, **kwargs: Any) -> Any:
        self._count("exit_wave_update")
        return super().exit_wave_update(*args, **kwargs)

    def object_partials(self, *args: Any, **kwargs: Any) -> Any:
        self._count("object_partials")
        return super().object_partials(*args, **kwargs)

    def probe_partials(self, *args: Any, **kwargs: Any) -> Any:
        self._count("probe_partials")
        return super().probe_partials(*args, **kwargs)


def test_views_route_every_batch_through_the_given_ops():
    """views.py runs each batch body through ``ops``: the counts are the batches, and the
    results are bit for bit those of the default ops."""
    batch = make_batch(np.complex128, (33, 47), n_views=7)
    counting, default = CountingOps(), batch.chunk()
    chunk = batch.chunk()
    error, sums = update_views(chunk, batch.probe, batch.obj, BETA, 3, None, 0.5, ops=counting)
    want_error, want_sums = update_views(default, batch.probe, batch.obj, BETA, 3, None, 0.5)
    assert error == want_error and sums is not None and want_sums is not None
    np.testing.assert_array_equal(chunk.exit_waves, default.exit_waves)
    np.testing.assert_array_equal(sums.numerator, want_sums.numerator)
    got = object_partials(chunk, batch.probe, batch.obj_shape, 3, ops=counting)
    want = object_partials(default, batch.probe, batch.obj_shape, 3)
    np.testing.assert_array_equal(got.numerator, want.numerator)
    got = probe_partials(chunk, batch.obj, batch.probe, 3, ops=counting)
    want = probe_partials(default, batch.obj, batch.probe, 3)
    np.testing.assert_array_equal(got.numerator, want.numerator)
    # 3 batches; NumpyOps' fused update adds its object terms through object_partials
    assert counting.calls == {"exit_wave_update": 3, "object_partials": 3 + 3, "probe_partials": 3}


@pytest.mark.parametrize("backend, kind", [("numpy", CpuOps), ("cupy", CupyOps)])
def test_select_ops_picks_the_backend(backend, kind):
    ops = select_ops(backend)
    assert type(ops) is kind and ops.name == backend
    assert isinstance(ops, BatchOps)


def test_select_ops_refuses_unknown_backends():
    with pytest.raises(ValueError, match="backend"):
        select_ops("auto")


# ============================================================== kernels without a device
def test_launch_grid_covers_every_pixel_and_strides_rows():
    assert gpu.launch_grid(1, 1) == (1, 1)
    assert gpu.launch_grid(gpu.BLOCK, 3) == (1, 3)
    assert gpu.launch_grid(188 * 188, 70_000) == (139, gpu.MAX_GRID_Y)
    assert 139 * gpu.BLOCK >= 188 * 188 > 138 * gpu.BLOCK
    assert gpu.BLOCK % 32 == 0  # the block reductions sum whole warps


def _entry_parameters(name: str) -> list[str]:
    """The C types of the parameters of kernel ``name``'s entry point in its source."""
    text = (gpu.kernels_dir() / gpu.SOURCES[name]).read_text()
    found = re.search(rf"void {name}_##SUFFIX\((.*?)\)\s*\{{", text, re.DOTALL)
    assert found is not None, name
    parameters = found.group(1).replace("\\", " ").split(",")
    return [" ".join(p.split()[:-1]) for p in parameters]


C_TYPES = {np.int64: "long long", np.int32: "int"}
SIZE_ARGUMENTS = {
    "views_and_iterate": "wave",
    "exit_wave_update": "wave",
    "probe_terms": "wave",
    "update_and_object_partials": "window",
    "object_partials": "window",
    "fourier_residuals": "spectrum",
    "modulus_constraint": "spectrum",
}


@pytest.mark.parametrize("name", sorted(SIZE_ARGUMENTS))
def test_size_arguments_have_the_kernels_c_types(name):
    """The wrappers' trailing size arguments have the C types of the kernels' parameters (a
    32-bit value where the kernel reads 64 bits would read garbage on the device)."""
    psi = np.zeros((5, 3, 2, 4, 6), np.complex64)
    probe_views = np.zeros((5, 3, 4, 6), np.complex64)
    sizes = {
        "wave": gpu_kernels._wave_sizes(psi, probe_views),
        "window": gpu_kernels._window_sizes(psi, probe_views, (9, 11)),
        "spectrum": gpu_kernels._spectrum_sizes(psi),
    }[SIZE_ARGUMENTS[name]]
    parameters = _entry_parameters(name)
    assert [C_TYPES[type(value)] for value in sizes] == parameters[-len(sizes) :]
    if SIZE_ARGUMENTS[name] == "wave":
        assert [int(v) for v in sizes] == [3 * 4 * 6, 5, 3, 2, 4 * 6]
    shared = gpu_kernels._wave_sizes(psi, probe_views[:1])
    assert shared[0] == 0  # one probe for every view: stride 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32])
def test_get_kernel_refuses_non_complex_dtypes(dtype):
    with pytest.raises(TypeError, match="complex64 or complex128"):
        gpu.get_kernel("views_and_iterate", dtype)


# ======================================================= sources, loading, lazy import
def test_import_ptychograph_does_not_import_gpu_code():
    code = (
        "import sys, ptychograph, ptychograph.ops; "
        "print('ptychograph.gpu' in sys.modules, 'cupy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_kernel_sources_are_found_with_line_directives(monkeypatch):
    monkeypatch.delenv(gpu.KERNELS_ENV, raising=False)
    folder = gpu.kernels_dir()
    assert folder == ROOT / "ptychograph" / "gpu" / "cuda"
    for name in set(gpu.SOURCES.values()):
        text = gpu.kernel_source(folder / name)
        assert text.startswith(f'#line 1 "{(folder / name).resolve().as_posix()}"\n')
        assert "#include" not in text  # self-contained: NVRTC and nvcc compile it as it is


def test_kernel_sources_are_package_data():
    """pyproject.toml ships every source in the wheel, where :func:`kernels_dir` looks."""
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["ptychograph"]
    folder = gpu.kernels_dir().relative_to(ROOT / "ptychograph")
    for name in set(gpu.SOURCES.values()):
        assert any(fnmatch((folder / name).as_posix(), pattern) for pattern in patterns), name


def test_kernels_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv(gpu.KERNELS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=gpu.KERNELS_ENV):
        gpu.kernels_dir()
    monkeypatch.delenv(gpu.KERNELS_ENV)
    sources = gpu.kernels_dir()
    for name in set(gpu.SOURCES.values()):
        shutil.copy(sources / name, tmp_path / name)
    monkeypatch.setenv(gpu.KERNELS_ENV, str(tmp_path))
    assert gpu.kernels_dir() == tmp_path


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_compile_errors_name_the_real_file(tmp_path):
    """The #line directive makes the compiler report the .cu file, not the copy it compiles."""
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void k(float* x) {\n    x[0] = undeclared;\n}\n')
    compiled = tmp_path / "compiled.cu"
    compiled.write_text(gpu.kernel_source(broken))
    result = subprocess.run(
        ["nvcc", "--cubin", "-arch=sm_80", "-o", str(tmp_path / "k.cubin"), str(compiled)],
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert f"{broken.resolve().as_posix()}(2): error" in result.stdout + result.stderr


@pytest.mark.skipif(
    shutil.which("nvcc") is None or shutil.which("nm") is None, reason="needs nvcc and nm"
)
def test_every_wrapped_kernel_is_compiled(tmp_path):
    """Each kernel a wrapper launches exists, in both precisions, in its compiled source."""
    folder = gpu.kernels_dir()
    for source in sorted(set(gpu.SOURCES.values())):
        cubin = tmp_path / (source + ".cubin")
        command = ["nvcc", "-std=c++17", "--cubin", "-arch=sm_80", "-o", str(cubin)]
        subprocess.run([*command, str(folder / source)], check=True)
        listing = subprocess.run(["nm", str(cubin)], capture_output=True, text=True, check=True)
        symbols = {line.split()[-1] for line in listing.stdout.splitlines() if " T " in line}
        wanted = {
            f"{name}_{suffix}"
            for name, file in gpu.SOURCES.items()
            if file == source
            for suffix in gpu.SUFFIXES.values()
        }
        assert wanted <= symbols, wanted - symbols


# ======================================================== GPU: CupyOps and kernels == NumPy
def _device(batch: Batch) -> dict[str, Any]:
    """:func:`host_arrays` on the device."""
    import cupy

    arrays = host_arrays(batch)
    ramps = arrays.pop("ramps")
    device = {k: None if v is None else cupy.asarray(v) for k, v in arrays.items()}
    device["ramps"] = None if ramps is None else tuple(cupy.asarray(r) for r in ramps)
    return device


def _spectra(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(F(2 phi - psi), F phi) on the host, in the batch's precision."""
    views = form_views(batch.probe_views, batch.obj_views)
    return np.fft.fft2(2 * views - batch.psi, norm="ortho"), np.fft.fft2(views, norm="ortho")


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize(
    "subpixel, masked, relaxed, fused",
    [
        (True, True, False, False),
        (False, False, True, False),
        (True, True, True, True),
        (False, True, False, True),
    ],
)
def test_gpu_exit_wave_update_equals_numpy_ops(dtype, size, subpixel, masked, relaxed, fused):
    """The whole kernel chain (views, cuFFT, constraint, update, atomics) against NumpyOps."""
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel, masked=masked)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    dev = _device(batch)
    sums = zero_sums(cupy, batch.obj.shape, dtype) if fused else None
    error = run_update(CupyOps(), dev, noise_bound, sums)
    arrays = host_arrays(batch)
    expected_sums = zero_sums(np, batch.obj.shape, dtype) if fused else None
    expected = run_update(NumpyOps(), arrays, noise_bound, expected_sums)
    psi = arrays["psi"]
    assert_close(dev["psi"], psi, TOL[dtype])
    assert_close(error.residual, expected.residual, SUM_TOL[dtype])
    assert_close(error.total, expected.total, SUM_TOL[dtype])
    if fused:
        assert sums is not None and expected_sums is not None
        assert_partials_close(sums, expected_sums, SUM_TOL[dtype])


@gpu_test
@GPU_BATCHES
def test_gpu_object_partials_equal_numpy_ops(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    sums = zero_sums(cupy, batch.obj.shape, dtype)
    assert CupyOps().object_partials(dev["psi"], dev["probe_views"], dev["corners"], sums) is sums
    expected = NumpyOps().object_partials(
        batch.psi, batch.probe_views, batch.corners, zero_sums(np, batch.obj.shape, dtype)
    )
    assert_partials_close(sums, expected, SUM_TOL[dtype])


@gpu_test
@GPU_BATCHES
def test_gpu_probe_partials_equal_numpy_ops(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    sums = zero_sums(cupy, batch.probe.shape, dtype)
    sums.numerator[...] = 1  # ``out`` is added into
    CupyOps().probe_partials(dev["psi"], dev["probe_views"], dev["obj_views"], dev["ramps"], sums)
    expected = zero_sums(np, batch.probe.shape, dtype)
    expected.numerator[...] = 1
    NumpyOps().probe_partials(
        batch.psi, batch.probe_views, batch.obj_views, batch.shifter.ramps, expected
    )
    assert_partials_close(sums, expected, SUM_TOL[dtype])


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_gpu_views_with_cupy_ops_equal_numpy_ops(dtype, subpixel):
    """views.py over a device chunk with CupyOps equals views.py over the host chunk."""
    import cupy

    batch = make_batch(dtype, (33, 47), n_views=7, subpixel=subpixel)
    rotation = np.linalg.qr(np.random.default_rng(2).standard_normal((3, 3)))[0]
    host = batch.chunk()
    dev = ViewChunk(
        *(None if a is None else cupy.asarray(a) for a in (batch.amplitudes, batch.good)),
        cupy.asarray(batch.corners),
        cupy.asarray(batch.frac),
        cupy.asarray(batch.psi),
    )
    probe, obj, ops = cupy.asarray(batch.probe), cupy.asarray(batch.obj), CupyOps()
    noise_bound = noise_bound_between(batch)
    got = update_views(dev, probe, obj, BETA, 3, cupy.asarray(rotation), noise_bound, ops=ops)
    want = update_views(host, batch.probe, batch.obj, BETA, 3, rotation, noise_bound)
    assert got[1] is not None and want[1] is not None
    assert_close(dev.exit_waves, host.exit_waves, TOL[dtype])
    assert_close(got[0].residual, want[0].residual, SUM_TOL[dtype])
    assert_close(got[1].numerator, want[1].numerator, SUM_TOL[dtype])
    got_probe = probe_partials(dev, obj, probe, 3, ops=ops)
    want_probe = probe_partials(host, batch.obj, batch.probe, 3)
    assert_close(got_probe.numerator, want_probe.numerator, SUM_TOL[dtype])
    got_obj = object_partials(dev, probe, batch.obj_shape, 3, ops=ops)
    want_obj = object_partials(host, batch.probe, batch.obj_shape, 3)
    assert_close(got_obj.denominator, want_obj.denominator, SUM_TOL[dtype])


@gpu_test
@GPU_BATCHES
def test_gpu_views_and_iterate(dtype, size, subpixel):
    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    views, iterate = gpu_kernels.views_and_iterate(dev["probe_views"], dev["obj_views"], dev["psi"])
    expected = form_views(batch.probe_views, batch.obj_views)
    assert_close(views, expected, TOL[dtype])
    assert_close(iterate, 2 * expected - batch.psi, TOL[dtype])


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("masked", [True, False])
def test_gpu_fourier_residuals(dtype, size, masked):
    """Per-view sums against the package's error terms of each view's spectrum."""
    import cupy

    batch = make_batch(dtype, size, masked=masked)
    spectrum, model = _spectra(batch)
    dev = _device(batch)
    result = gpu_kernels.fourier_residuals(
        cupy.asarray(spectrum), cupy.asarray(model), dev["amplitudes"], dev["good"]
    )
    views = [slice(j, j + 1) for j in range(batch.psi.shape[0])]
    iterate = [fourier_error(spectrum[v], batch.amplitudes[v], batch.good) for v in views]
    fitted = [fourier_error(model[v], batch.amplitudes[v], batch.good) for v in views]
    expected = (
        [e.residual for e in iterate],
        [e.residual for e in fitted],
        [e.total for e in fitted],
    )
    for got, want in zip(result, expected, strict=True):
        assert got.dtype == np.float64 and got.shape == (batch.psi.shape[0],)
        assert_close(got, np.array(want), SUM_TOL[dtype])


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize(
    "masked, with_model, relaxed",
    [
        (True, True, False),
        (False, True, False),
        (True, False, True),
        (False, False, False),
    ],
)
def test_gpu_modulus_constraint(dtype, size, masked, with_model, relaxed):
    """Against :func:`ptychograph.fourier.modulus_constraint` (relaxed: with the steps of
    :func:`noise_steps`, as CupyOps runs it) and the package's error terms of F phi."""
    import cupy

    batch = make_batch(dtype, size, masked=masked)
    spectrum, model = _spectra(batch)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    dev = _device(batch)
    data = cupy.asarray(spectrum)
    step = None
    if relaxed:
        residual, _, _ = gpu_kernels.fourier_residuals(
            data, cupy.asarray(model), dev["amplitudes"], dev["good"]
        )
        step = noise_steps(residual, dev["good"], noise_bound, batch.frame)
    out, residual, total = gpu_kernels.modulus_constraint(
        data, dev["amplitudes"], dev["good"], cupy.asarray(model) if with_model else None, step
    )
    assert out is data  # in place
    expected = modulus_constraint(spectrum.copy(), batch.amplitudes, batch.good, noise_bound)
    assert_close(out, expected, TOL[dtype] if not relaxed else SUM_TOL[dtype])
    if with_model:
        error = fourier_error(model, batch.amplitudes, batch.good)
        assert_close(residual.sum(), error.residual, SUM_TOL[dtype])
        assert_close(total.sum(), error.total, SUM_TOL[dtype])
    else:
        assert not residual.any() and not total.any()


@gpu_test
@GPU_BATCHES
def test_gpu_exit_wave_update(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    projected = make_batch(dtype, size, seed=7).psi
    dev = _device(batch)
    psi = gpu_kernels.exit_wave_update(
        dev["psi"], cupy.asarray(projected), dev["probe_views"], dev["obj_views"], BETA
    )
    assert psi is dev["psi"]
    views = form_views(batch.probe_views, batch.obj_views)
    assert_close(psi, batch.psi + BETA * (projected - views), TOL[dtype])


@gpu_test
@GPU_BATCHES
def test_gpu_update_and_object_partials(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    projected = make_batch(dtype, size, seed=7).psi
    dev = _device(batch)
    psi, partials = gpu_kernels.update_and_object_partials(
        dev["psi"],
        cupy.asarray(projected),
        dev["probe_views"],
        dev["obj_views"],
        BETA,
        dev["corners"],
        batch.obj_shape,
    )
    expected_psi = batch.psi + BETA * (projected - form_views(batch.probe_views, batch.obj_views))
    expected = NumpyOps().object_partials(
        expected_psi, batch.probe_views, batch.corners, zero_sums(np, batch.obj.shape, dtype)
    )
    assert_close(psi, expected_psi, TOL[dtype])
    assert_partials_close(partials, expected, SUM_TOL[dtype])


@gpu_test
@GPU_BATCHES
def test_gpu_object_partials_kernel_checks_its_outputs(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    partials = gpu_kernels.object_partials(
        dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape
    )
    expected = NumpyOps().object_partials(
        batch.psi, batch.probe_views, batch.corners, zero_sums(np, batch.obj.shape, dtype)
    )
    assert partials.numerator.dtype == dtype
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    # accumulating into ``out`` doubles the sums
    again = gpu_kernels.object_partials(
        dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape, out=partials
    )
    assert again is partials
    assert_close(partials.numerator, 2 * expected.numerator, SUM_TOL[dtype])
    with pytest.raises(ValueError, match="leave the object"):
        gpu_kernels.object_partials(
            dev["psi"], dev["probe_views"], dev["corners"] + 1000, batch.obj_shape
        )
    other_real = np.float32 if dtype == np.complex128 else np.float64
    wrong = OverlapPartials(partials.numerator, cupy.zeros(batch.obj_shape, other_real))
    with pytest.raises(TypeError, match="out.denominator"):
        gpu_kernels.object_partials(
            dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape, out=wrong
        )
    wrong = OverlapPartials(partials.numerator[:1], partials.denominator)
    with pytest.raises(ValueError, match="shape"):
        gpu_kernels.object_partials(
            dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape, out=wrong
        )


@gpu_test
@GPU_BATCHES
def test_gpu_probe_kernels(dtype, size, subpixel):
    """probe_terms, sum_over_views (= sum_j S_j^H in Fourier space) and object_power."""
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    terms = gpu_kernels.probe_terms(dev["psi"], dev["probe_views"], dev["obj_views"])
    residual = batch.psi - form_views(batch.probe_views, batch.obj_views)
    expected_terms = np.sum(np.conj(batch.obj_views)[:, None] * residual, axis=2)
    assert_close(terms, expected_terms, TOL[dtype])
    ramps = batch.shifter.ramps
    spectrum = cupy.asarray(np.fft.fft2(expected_terms, norm="ortho"))
    summed = np.fft.ifft2(_host(gpu_kernels.sum_over_views(spectrum, dev["ramps"])), norm="ortho")
    assert_close(summed, sum_unshifted(expected_terms, ramps), SUM_TOL[dtype])
    power = gpu_kernels.object_power(dev["obj_views"])
    expected_power = np.sum(np.abs(batch.obj_views) ** 2, axis=(0, 1))
    assert_close(power, expected_power, SUM_TOL[dtype])


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_batches_beyond_one_grid_row(dtype):
    """More (view, mode) rows than grid y holds (65535): the kernels stride over grid y."""
    import cupy

    batch = make_batch(dtype, (4, 5), n_views=70_000, n_probe=1, n_obj=1, seed=3)
    dev = _device(batch)
    views, iterate = gpu_kernels.views_and_iterate(dev["probe_views"], dev["obj_views"], dev["psi"])
    expected_views = form_views(batch.probe_views, batch.obj_views)
    assert_close(views, expected_views, TOL[dtype])
    assert_close(iterate, 2 * expected_views - batch.psi, TOL[dtype])
    spectrum, model = _spectra(batch)
    out, residual, _ = gpu_kernels.modulus_constraint(
        cupy.asarray(spectrum), dev["amplitudes"], dev["good"], cupy.asarray(model)
    )
    expected = modulus_constraint(spectrum.copy(), batch.amplitudes, batch.good)
    assert_close(out, expected, TOL[dtype])
    error = fourier_error(model, batch.amplitudes, batch.good)
    assert_close(residual.sum(), error.residual, SUM_TOL[dtype])
    sums = zero_sums(cupy, batch.obj.shape, dtype)
    CupyOps().object_partials(dev["psi"], dev["probe_views"], dev["corners"], sums)
    expected_sums = NumpyOps().object_partials(
        batch.psi, batch.probe_views, batch.corners, zero_sums(np, batch.obj.shape, dtype)
    )
    assert_close(sums.numerator, expected_sums.numerator, SUM_TOL[dtype])


@gpu_test
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_wrappers_refuse_mixed_precision_and_bad_outputs(dtype):
    import cupy

    batch = make_batch(dtype, (33, 47))
    dev = _device(batch)
    other = np.complex128 if dtype == np.complex64 else np.complex64
    with pytest.raises(TypeError, match="expected"):
        gpu_kernels.views_and_iterate(
            dev["probe_views"].astype(other), dev["obj_views"], dev["psi"]
        )
    strided = cupy.asarray(np.fft.fft2(batch.psi, norm="ortho"))[:, :, :, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        gpu_kernels.modulus_constraint(strided, dev["amplitudes"][:, :, ::2], None)
    with pytest.raises(TypeError, match="CuPy"):
        gpu_kernels.exit_wave_update(
            batch.psi, dev["psi"], dev["probe_views"], dev["obj_views"], BETA
        )

"""The fused CUDA kernels (``kernels/*.cu``), their NumPy references and the package's path.

Two layers of parity, so that kernel == reference == package:

* NumPy only (every CI run): each reference in :mod:`ptychograph.gpu.reference` equals the
  package's own NumPy code - the exit-wave update of :func:`ptychograph.fourier.
  dm_exit_wave_update` (``centred=False``), the fused update + object partials of
  :func:`ptychograph.views.update_views`, and :func:`ptychograph.views.object_partials` /
  :func:`~ptychograph.views.probe_partials` - on random inputs in complex64 and complex128,
  frames of 188 x 188 and 33 x 47, with and without sub-pixel shifts, mask and noise bound.
  Plus: every kernel a wrapper launches is defined in the compiled sources (nvcc), and
  ``import ptychograph`` stays free of CuPy.
* GPU (``@pytest.mark.gpu``, skipped unless CuPy finds a CUDA device): every kernel wrapper of
  :mod:`ptychograph.gpu.kernels` against its reference on the same random inputs.

Agreement is measured as max |a - b| / max |b| (the benchmark's metric). Tolerances: 1e-5
(single) and 1e-12 (double) for elementwise kernels; sums over views done with atomicAdd, or
in another order than NumPy's pairwise sums, get 1e-4 / 1e-10.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ptychograph.fourier import dm_exit_wave_update
from ptychograph.fourier import modulus_constraint as package_modulus_constraint
from ptychograph.gpu import device_available, reference
from ptychograph.gpu import kernels as gpu_kernels
from ptychograph.operators import SubpixelShift, extract_views
from ptychograph.operators import exit_waves as form_views
from ptychograph.partials import OverlapPartials
from ptychograph.views import ViewChunk, object_partials, probe_partials, update_views

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


def assert_close(actual: Any, expected: Any, tol: float) -> None:
    """max |actual - expected| <= tol * max |expected| (host or device arrays, or floats)."""
    actual, expected = _host(actual), _host(expected)
    assert np.shape(actual) == np.shape(expected)
    scale = float(np.max(np.abs(expected))) if np.size(expected) else 0.0
    error = float(np.max(np.abs(actual - expected))) if np.size(expected) else 0.0
    assert error <= tol * max(scale, np.finfo(np.float64).tiny), (error, scale, tol)


def _host(array: Any) -> Any:
    return array.get() if hasattr(array, "get") else np.asarray(array)


@dataclass(frozen=True)
class Batch:
    """A random batch of views and everything the kernels take (NumPy arrays)."""

    probe: np.ndarray  # (M_P, H, W)
    obj: np.ndarray  # (M_O, Y, X)
    corners: np.ndarray  # (n, 2) int64
    frac: np.ndarray  # (n, 2) real; zeros for integer positions
    psi: np.ndarray  # (n, M_P, M_O, H, W)
    amplitudes: np.ndarray  # (n, H, W) real, FFT order
    good: np.ndarray | None  # (H, W) bool

    @property
    def shifter(self) -> SubpixelShift:
        return SubpixelShift(self.frac, self.psi.shape[-2:], self.psi.dtype)

    @property
    def probe_views(self) -> np.ndarray:
        """(n, M_P, H, W), or (1, M_P, H, W) for integer positions."""
        return np.ascontiguousarray(self.shifter.shift(self.probe))

    @property
    def obj_views(self) -> np.ndarray:
        return extract_views(self.obj, self.corners, self.psi.shape[-2:])

    @property
    def obj_shape(self) -> tuple[int, int]:
        return int(self.obj.shape[1]), int(self.obj.shape[2])

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


def noise_bound_between(batch: Batch) -> float:
    """A noise bound that leaves about half the views unchanged: B = median D_j of 2 phi - psi."""
    views, iterate = reference.views_and_iterate(batch.probe_views, batch.obj_views, batch.psi)
    spectrum, model = np.fft.fft2(iterate, norm="ortho"), np.fft.fft2(views, norm="ortho")
    residual, _, _ = reference.fourier_residuals(spectrum, model, batch.amplitudes, batch.good)
    n_good = batch.good.sum() if batch.good is not None else batch.amplitudes[0].size
    return float(np.median(residual) / (0.25 * n_good))


# ============================================================ NumPy: reference == package
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize(
    "subpixel, masked, relaxed", [(True, True, False), (False, False, False), (True, True, True)]
)
def test_reference_dm_update_equals_package(dtype, size, subpixel, masked, relaxed):
    batch = make_batch(dtype, size, subpixel=subpixel, masked=masked)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    probe_views, obj_views = batch.probe_views, batch.obj_views
    expected = batch.psi.copy()
    expected_error = dm_exit_wave_update(
        expected,
        form_views(probe_views, obj_views),
        batch.amplitudes,
        batch.good,
        BETA,
        noise_bound,
        centred=False,
    )
    psi, error, partials = reference.dm_update(
        batch.psi, probe_views, obj_views, batch.amplitudes, batch.good, BETA, noise_bound
    )
    assert partials is None
    assert psi.dtype == dtype
    assert_close(psi, expected, TOL[dtype])
    assert_close(error.residual, expected_error.residual, SUM_TOL[dtype])
    assert_close(error.total, expected_error.total, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
def test_noise_bound_case_relaxes_some_views_only(dtype):
    """The relaxed test above really mixes untouched (step 0) and partly moved views."""
    batch = make_batch(dtype, (33, 47), n_views=8)
    views, iterate = reference.views_and_iterate(batch.probe_views, batch.obj_views, batch.psi)
    spectrum, model = np.fft.fft2(iterate, norm="ortho"), np.fft.fft2(views, norm="ortho")
    residual, _, _ = reference.fourier_residuals(spectrum, model, batch.amplitudes, batch.good)
    steps = reference.noise_steps(
        residual, batch.good, noise_bound_between(batch), batch.amplitudes.shape[1:]
    )
    assert np.any(steps == 0) and np.any((steps > 0) & (steps < 1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("masked", [True, False])
def test_reference_modulus_constraint_equals_package(dtype, size, masked):
    batch = make_batch(dtype, size, masked=masked)
    spectrum = np.fft.fft2(batch.psi, norm="ortho")
    model = np.fft.fft2(form_views(batch.probe_views, batch.obj_views), norm="ortho")
    expected = package_modulus_constraint(spectrum.copy(), batch.amplitudes, batch.good)
    constrained, residual, total = reference.modulus_constraint(
        spectrum, batch.amplitudes, batch.good, model
    )
    assert_close(constrained, expected, TOL[dtype])
    _, model_residual, model_total = reference.fourier_residuals(
        spectrum, model, batch.amplitudes, batch.good
    )
    assert_close(residual, model_residual, TOL[dtype])
    assert_close(total, model_total, TOL[dtype])
    # with a model the error terms are those of F phi, pixel for pixel the package's
    from ptychograph.fourier import fourier_error

    expected_error = fourier_error(model, batch.amplitudes, batch.good)
    assert_close(residual.sum(), expected_error.residual, SUM_TOL[dtype])
    assert_close(total.sum(), expected_error.total, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("subpixel, relaxed", [(True, False), (False, False), (True, True)])
def test_reference_update_and_object_partials_equals_update_views(dtype, size, subpixel, relaxed):
    batch = make_batch(dtype, size, subpixel=subpixel)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    chunk = batch.chunk()
    error, expected = update_views(
        chunk, batch.probe, batch.obj, BETA, batch_size=64, noise_bound=noise_bound
    )
    assert expected is not None
    psi, ref_error, partials = reference.dm_update(
        batch.psi,
        batch.probe_views,
        batch.obj_views,
        batch.amplitudes,
        batch.good,
        BETA,
        noise_bound,
        batch.corners,
        batch.obj_shape,
    )
    assert partials is not None
    assert_close(psi, chunk.exit_waves, TOL[dtype])
    assert_close(ref_error.residual, error.residual, SUM_TOL[dtype])
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_reference_object_partials_equal_package(dtype, size, subpixel):
    batch = make_batch(dtype, size, subpixel=subpixel)
    expected = object_partials(batch.chunk(), batch.probe, batch.obj_shape, batch_size=64)
    partials = reference.object_partials(
        batch.psi, batch.probe_views, batch.corners, batch.obj_shape
    )
    assert partials.numerator.shape == (2, *batch.obj_shape)
    assert partials.denominator.shape == batch.obj_shape
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])
    # ``out`` accumulates: two halves of the batch add up to the whole
    half = replace(batch, psi=batch.psi[:2], corners=batch.corners[:2], frac=batch.frac[:2])
    rest = replace(batch, psi=batch.psi[2:], corners=batch.corners[2:], frac=batch.frac[2:])
    total = reference.object_partials(half.psi, half.probe_views, half.corners, batch.obj_shape)
    reference.object_partials(rest.psi, rest.probe_views, rest.corners, batch.obj_shape, total)
    assert_close(total.numerator, expected.numerator, SUM_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_reference_probe_partials_equal_package(dtype, size, subpixel):
    batch = make_batch(dtype, size, subpixel=subpixel)
    expected = probe_partials(batch.chunk(), batch.obj, batch.probe, batch_size=64)
    partials = reference.probe_partials(
        batch.psi, batch.probe_views, batch.obj_views, batch.shifter.ramps
    )
    assert partials.numerator.shape == batch.probe.shape
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])


def test_reference_views_and_iterate():
    batch = make_batch(np.complex128, (33, 47), subpixel=False)
    views, iterate = reference.views_and_iterate(batch.probe_views, batch.obj_views, batch.psi)
    assert views.shape == batch.psi.shape
    view, probe_mode, obj_mode = 3, 2, 1
    expected = batch.probe[probe_mode] * batch.obj_views[view, obj_mode]
    np.testing.assert_array_equal(views[view, probe_mode, obj_mode], expected)
    np.testing.assert_array_equal(
        iterate[view, probe_mode, obj_mode], 2 * expected - batch.psi[view, probe_mode, obj_mode]
    )


# ======================================================= sources, loading, lazy import
def test_import_ptychograph_does_not_import_gpu_code():
    code = "import sys, ptychograph; print('ptychograph.gpu' in sys.modules, 'cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_kernel_sources_are_found_with_line_directives(monkeypatch):
    monkeypatch.delenv(gpu_kernels.KERNELS_ENV, raising=False)
    folder = gpu_kernels.kernels_dir()
    assert folder == Path(__file__).resolve().parents[1] / "kernels"
    for name in set(gpu_kernels.SOURCES.values()):
        text = gpu_kernels.kernel_source(folder / name)
        assert text.startswith(f'#line 1 "{(folder / name).resolve().as_posix()}"\n')
        assert "#include" not in text  # self-contained: NVRTC and nvcc compile it as it is


def test_kernels_dir_override(monkeypatch, tmp_path):
    monkeypatch.setenv(gpu_kernels.KERNELS_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=gpu_kernels.KERNELS_ENV):
        gpu_kernels.kernels_dir()
    for name in set(gpu_kernels.SOURCES.values()):
        shutil.copy(Path(__file__).resolve().parents[1] / "kernels" / name, tmp_path / name)
    assert gpu_kernels.kernels_dir() == tmp_path


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_compile_errors_name_the_real_file(tmp_path):
    """The #line directive makes the compiler report the .cu file, not the copy it compiles."""
    broken = tmp_path / "broken.cu"
    broken.write_text('extern "C" __global__ void k(float* x) {\n    x[0] = undeclared;\n}\n')
    compiled = tmp_path / "compiled.cu"
    compiled.write_text(gpu_kernels.kernel_source(broken))
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
    folder = gpu_kernels.kernels_dir()
    for source in sorted(set(gpu_kernels.SOURCES.values())):
        cubin = tmp_path / (source + ".cubin")
        subprocess.run(
            [
                "nvcc",
                "-std=c++17",
                "--cubin",
                "-arch=sm_80",
                "-o",
                str(cubin),
                str(folder / source),
            ],
            check=True,
        )
        listing = subprocess.run(["nm", str(cubin)], capture_output=True, text=True, check=True)
        symbols = {line.split()[-1] for line in listing.stdout.splitlines() if " T " in line}
        wanted = {
            f"{name}_{suffix}"
            for name, file in gpu_kernels.SOURCES.items()
            if file == source
            for suffix in gpu_kernels.SUFFIXES.values()
        }
        assert wanted <= symbols, wanted - symbols


# ===================================================================== GPU: kernel == reference
def _device(batch: Batch) -> dict[str, Any]:
    """The batch's arrays on the device, by the names the kernels take."""
    import cupy

    return {
        "psi": cupy.asarray(batch.psi),
        "probe_views": cupy.asarray(batch.probe_views),
        "obj_views": cupy.asarray(batch.obj_views),
        "amplitudes": cupy.asarray(batch.amplitudes),
        "good": None if batch.good is None else cupy.asarray(batch.good),
        "corners": cupy.asarray(batch.corners),
    }


def _spectra(batch: Batch) -> tuple[np.ndarray, np.ndarray]:
    """(F(2 phi - psi), F phi) on the host."""
    views, iterate = reference.views_and_iterate(batch.probe_views, batch.obj_views, batch.psi)
    return np.fft.fft2(iterate, norm="ortho"), np.fft.fft2(views, norm="ortho")


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_gpu_views_and_iterate(dtype, size, subpixel):
    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    views, iterate = gpu_kernels.views_and_iterate(dev["probe_views"], dev["obj_views"], dev["psi"])
    ref_views, ref_iterate = reference.views_and_iterate(
        batch.probe_views, batch.obj_views, batch.psi
    )
    assert_close(views, ref_views, TOL[dtype])
    assert_close(iterate, ref_iterate, TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("masked", [True, False])
def test_gpu_fourier_residuals(dtype, size, masked):
    import cupy

    batch = make_batch(dtype, size, masked=masked)
    spectrum, model = _spectra(batch)
    dev = _device(batch)
    result = gpu_kernels.fourier_residuals(
        cupy.asarray(spectrum), cupy.asarray(model), dev["amplitudes"], dev["good"]
    )
    expected = reference.fourier_residuals(spectrum, model, batch.amplitudes, batch.good)
    for got, want in zip(result, expected, strict=True):
        assert got.dtype == np.float64 and got.shape == (batch.psi.shape[0],)
        assert_close(got, want, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
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
    import cupy

    batch = make_batch(dtype, size, masked=masked)
    spectrum, model = _spectra(batch)
    step = np.random.default_rng(1).uniform(0, 1, batch.psi.shape[0]) if relaxed else None
    dev = _device(batch)
    data = cupy.asarray(spectrum)
    out, residual, total = gpu_kernels.modulus_constraint(
        data,
        dev["amplitudes"],
        dev["good"],
        cupy.asarray(model) if with_model else None,
        None if step is None else cupy.asarray(step),
    )
    assert out is data  # in place
    expected, ref_residual, ref_total = reference.modulus_constraint(
        spectrum, batch.amplitudes, batch.good, model if with_model else None, step
    )
    assert_close(out, expected, TOL[dtype])
    assert_close(residual, ref_residual, SUM_TOL[dtype])
    assert_close(total, ref_total, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_gpu_exit_wave_update(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    projected = make_batch(dtype, size, seed=7).psi
    dev = _device(batch)
    psi = gpu_kernels.exit_wave_update(
        dev["psi"], cupy.asarray(projected), dev["probe_views"], dev["obj_views"], BETA
    )
    assert psi is dev["psi"]
    expected = reference.exit_wave_update(
        batch.psi, projected, batch.probe_views, batch.obj_views, BETA
    )
    assert_close(psi, expected, TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
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
    ref_psi, expected = reference.update_and_object_partials(
        batch.psi,
        projected,
        batch.probe_views,
        batch.obj_views,
        BETA,
        batch.corners,
        batch.obj_shape,
    )
    assert_close(psi, ref_psi, TOL[dtype])
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_gpu_object_partials(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    partials = gpu_kernels.object_partials(
        dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape
    )
    expected = reference.object_partials(
        batch.psi, batch.probe_views, batch.corners, batch.obj_shape
    )
    assert partials.numerator.dtype == dtype
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])
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


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize("subpixel", [True, False])
def test_gpu_probe_kernels(dtype, size, subpixel):
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    dev = _device(batch)
    terms = gpu_kernels.probe_terms(dev["psi"], dev["probe_views"], dev["obj_views"])
    ref_terms = reference.probe_terms(batch.psi, batch.probe_views, batch.obj_views)
    assert_close(terms, ref_terms, TOL[dtype])
    ramps = batch.shifter.ramps
    dev_ramps = None if ramps is None else (cupy.asarray(ramps[0]), cupy.asarray(ramps[1]))
    summed = gpu_kernels.sum_over_views(cupy.asarray(ref_terms), dev_ramps)
    assert_close(summed, reference.sum_over_views(ref_terms, ramps), SUM_TOL[dtype])
    power = gpu_kernels.object_power(dev["obj_views"])
    assert_close(power, reference.object_power(batch.obj_views), SUM_TOL[dtype])
    partials = gpu_kernels.probe_partials(
        dev["psi"], dev["probe_views"], dev["obj_views"], dev_ramps
    )
    expected = reference.probe_partials(batch.psi, batch.probe_views, batch.obj_views, ramps)
    assert_close(partials.numerator, expected.numerator, SUM_TOL[dtype])
    assert_close(partials.denominator, expected.denominator, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size", GPU_SIZES)
@pytest.mark.parametrize(
    "subpixel, relaxed, fused",
    [
        (True, False, False),
        (False, True, False),
        (True, True, True),
        (False, False, True),
    ],
)
def test_gpu_dm_update_equals_reference_and_package(dtype, size, subpixel, relaxed, fused):
    """The whole kernel chain against the reference chain and the package's CuPy path."""
    import cupy

    batch = make_batch(dtype, size, subpixel=subpixel)
    noise_bound = noise_bound_between(batch) if relaxed else 0.0
    dev = _device(batch)
    where = (dev["corners"], batch.obj_shape) if fused else (None, None)
    psi, error, partials = gpu_kernels.dm_update(
        dev["psi"],
        dev["probe_views"],
        dev["obj_views"],
        dev["amplitudes"],
        dev["good"],
        BETA,
        noise_bound,
        *where,
    )
    assert psi is dev["psi"]
    ref_where = (batch.corners, batch.obj_shape) if fused else (None, None)
    ref_psi, ref_error, ref_partials = reference.dm_update(
        batch.psi,
        batch.probe_views,
        batch.obj_views,
        batch.amplitudes,
        batch.good,
        BETA,
        noise_bound,
        *ref_where,
    )
    assert_close(psi, ref_psi, TOL[dtype])
    assert_close(error.residual, ref_error.residual, SUM_TOL[dtype])
    assert_close(error.total, ref_error.total, SUM_TOL[dtype])
    if fused:
        assert partials is not None and ref_partials is not None
        assert_close(partials.numerator, ref_partials.numerator, SUM_TOL[dtype])
    # the package's generic CuPy path gives the same update
    package_psi = cupy.asarray(batch.psi)
    package_error = dm_exit_wave_update(
        package_psi,
        form_views(dev["probe_views"], dev["obj_views"]),
        dev["amplitudes"],
        dev["good"],
        BETA,
        noise_bound,
        centred=False,
    )
    assert_close(psi, package_psi, TOL[dtype])
    assert_close(error.residual, package_error.residual, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
@pytest.mark.parametrize("dtype", DTYPES)
def test_gpu_batches_beyond_one_grid_row(dtype):
    """More (view, mode) rows than grid y holds (65535): the kernels stride over grid y."""
    import cupy

    batch = make_batch(dtype, (4, 5), n_views=70_000, n_probe=1, n_obj=1, seed=3)
    dev = _device(batch)
    views, iterate = gpu_kernels.views_and_iterate(dev["probe_views"], dev["obj_views"], dev["psi"])
    ref_views, ref_iterate = reference.views_and_iterate(
        batch.probe_views, batch.obj_views, batch.psi
    )
    assert_close(views, ref_views, TOL[dtype])
    assert_close(iterate, ref_iterate, TOL[dtype])
    spectrum, model = _spectra(batch)
    out, residual, _ = gpu_kernels.modulus_constraint(
        cupy.asarray(spectrum), dev["amplitudes"], dev["good"], cupy.asarray(model)
    )
    expected, ref_residual, _ = reference.modulus_constraint(
        spectrum, batch.amplitudes, batch.good, model
    )
    assert_close(out, expected, TOL[dtype])
    assert_close(residual, ref_residual, SUM_TOL[dtype])
    partials = gpu_kernels.object_partials(
        dev["psi"], dev["probe_views"], dev["corners"], batch.obj_shape
    )
    ref_partials = reference.object_partials(
        batch.psi, batch.probe_views, batch.corners, batch.obj_shape
    )
    assert_close(partials.numerator, ref_partials.numerator, SUM_TOL[dtype])


@pytest.mark.gpu
@requires_device
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

"""CuPy wrappers of the fused CUDA kernels in ``kernels/*.cu``.

Each wrapper has the name, signature and result shapes of its NumPy reference in
:mod:`ptychograph.gpu.reference` (and is tested against it on a GPU); where the reference
returns a new array, the kernel overwrites its first argument (``modulus_constraint``,
``exit_wave_update``, ``update_and_object_partials``) and returns it.

=============================  ===================================================  ==========
wrapper                        what one launch does                                 source
=============================  ===================================================  ==========
views_and_iterate              phi = (S_j P)(E_j O) and 2 phi - psi, all modes      exit_waves
exit_wave_update               psi += beta (projected - phi), phi recomputed        exit_waves
update_and_object_partials     the update fused with the eq. 6 sums (atomics)       exit_waves
object_partials                eq. 6 numerator / denominator (atomicAdd)            exit_waves
fourier_residuals              per-view misfit sums of F(2 phi - psi) and F phi     fourier_modulus
modulus_constraint             eq. 4 over all modes: sum, ratio, mask, relax, scale,
                               error terms - one pass                               fourier_modulus
probe_terms                    per-view eq. 5 terms (elementwise)                   probe_partials
sum_over_views                 sum over views (x conj phase ramps): a reduction     probe_partials
object_power                   eq. 5 denominator sum_{j,l} |O_j^l|^2                probe_partials
=============================  ===================================================  ==========

:func:`dm_update` chains them with cuFFT into one exit-wave update of a batch (eqs. 3-4),
equal to :func:`ptychograph.fourier.dm_exit_wave_update` with ``centred=False``. With a noise
bound the constraint takes two passes over the spectrum (the per-view residual must be known
before any pixel is scaled); with ``noise_bound = 0`` it is the single fused pass.

CuPy is imported inside the functions only: importing this module needs no GPU, and
``import ptychograph`` never imports it. Sources are compiled with NVRTC through
``cupy.RawModule``, with a ``#line`` directive so compiler messages name the real file and line,
once per file and device (both precisions are in every module: ``NAME_f32`` / ``NAME_f64``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.backend import Array
from ptychograph.gpu.reference import noise_steps
from ptychograph.partials import FourierError, OverlapPartials

#: Environment variable naming a folder that holds the ``.cu`` files (overrides the search).
KERNELS_ENV = "PTYCHOGRAPH_KERNELS_DIR"
#: Kernel -> the ``kernels/`` file that defines it.
SOURCES = {
    "views_and_iterate": "exit_waves.cu",
    "exit_wave_update": "exit_waves.cu",
    "update_and_object_partials": "exit_waves.cu",
    "object_partials": "exit_waves.cu",
    "fourier_residuals": "fourier_modulus.cu",
    "modulus_constraint": "fourier_modulus.cu",
    "probe_terms": "probe_partials.cu",
    "sum_over_views": "probe_partials.cu",
    "object_power": "probe_partials.cu",
}
#: Suffix of each precision's entry point.
SUFFIXES = {np.dtype(np.complex64): "f32", np.dtype(np.complex128): "f64"}
COMPILE_OPTIONS = ("--std=c++17",)
BLOCK = 256  # threads per block; the reductions need a multiple of 32
MAX_GRID_Y = 65535  # the kernels stride over grid y, so larger batches still work


# ------------------------------------------------------------------------- loading the sources
def kernels_dir() -> Path:
    """The folder holding the ``.cu`` sources.

    ``$PTYCHOGRAPH_KERNELS_DIR`` if set; else ``ptychograph/gpu/cuda/`` (where a wheel would have
    to ship them as package data - pyproject.toml does not list them yet); else the repository's
    ``kernels/`` beside the package, which is what a source checkout or editable install uses.
    """
    here = Path(__file__).resolve().parent
    env = os.environ.get(KERNELS_ENV)
    candidates = [Path(env)] if env else [here / "cuda", here.parents[1] / "kernels"]
    for folder in candidates:
        if all((folder / name).is_file() for name in set(SOURCES.values())):
            return folder
    tried = ", ".join(str(c) for c in candidates)
    raise FileNotFoundError(
        f"CUDA kernel sources ({', '.join(sorted(set(SOURCES.values())))}) "
        f"not found in {tried}; set {KERNELS_ENV}"
    )


def kernel_source(path: Path) -> str:
    """The text of ``path`` with a ``#line`` directive, so NVRTC reports errors against it."""
    return f'#line 1 "{path.resolve().as_posix()}"\n' + path.read_text()


@functools.cache
def _module(file: str, device: int) -> Any:
    """The compiled ``cupy.RawModule`` of one source file, per device."""
    import cupy

    return cupy.RawModule(code=kernel_source(kernels_dir() / file), options=COMPILE_OPTIONS)


def get_kernel(name: str, dtype: Any) -> Any:
    """The ``cupy.RawKernel`` ``name`` for complex ``dtype`` on the current device."""
    import cupy

    suffix = SUFFIXES.get(np.dtype(dtype))
    if suffix is None:
        raise TypeError(f"kernels take complex64 or complex128 arrays, not {np.dtype(dtype)}")
    return _function(name, suffix, int(cupy.cuda.runtime.getDevice()))


@functools.cache
def _function(name: str, suffix: str, device: int) -> Any:
    return _module(SOURCES[name], device).get_function(f"{name}_{suffix}")


def _launch(name: str, dtype: Any, n_pixels: int, rows: int, args: tuple[Any, ...]) -> None:
    """Run ``name`` with grid x covering ``n_pixels`` and grid y over ``rows`` (strided)."""
    if n_pixels == 0 or rows == 0:
        return
    grid = ((n_pixels + BLOCK - 1) // BLOCK, min(rows, MAX_GRID_Y))
    get_kernel(name, dtype)(grid, (BLOCK,), args)


def _pixels(waves: Array) -> int:
    """H * W: what grid x covers."""
    return int(waves.shape[-1] * waves.shape[-2])


def _view_mode_rows(psi: Array) -> int:
    """n * M_O: the (view, object mode) rows grid y strides over in the exit-wave kernels."""
    return int(psi.shape[0] * psi.shape[2])


# ------------------------------------------------------------------------- argument handling
def _complex_input(array: Array, dtype: Any, name: str) -> Array:
    """A C-contiguous device array of complex ``dtype`` (refusing a silent precision change)."""
    import cupy

    if np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} is {array.dtype}, expected {np.dtype(dtype)}")
    return cupy.ascontiguousarray(cupy.asarray(array))


def _real_input(array: Array, dtype: Any, name: str) -> Array:
    """A C-contiguous device array of the real dtype matching complex ``dtype``."""
    real = np.empty(0, dtype=dtype).real.dtype
    if np.dtype(array.dtype) != real:
        raise TypeError(f"{name} is {array.dtype}, expected {real}")
    import cupy

    return cupy.ascontiguousarray(cupy.asarray(array))


def _in_place(array: Array, dtype: Any, name: str, shape: tuple[int, ...] | None = None) -> Array:
    """``array`` itself, checked: a C-contiguous CuPy array of ``dtype`` and ``shape`` (it is
    written to)."""
    if type(array).__module__.split(".")[0] != "cupy":
        raise TypeError(f"{name} is updated in place and must be a CuPy array")
    if np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} is {array.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(array.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(array.shape)}, expected {tuple(shape)}")
    if not array.flags.c_contiguous:
        raise ValueError(f"{name} is updated in place and must be C-contiguous")
    return array


def _mask(good: Array | None) -> tuple[Array, np.int32]:
    """(uint8 mask, has_mask) for a (H, W) bool mask or None."""
    import cupy

    if good is None:
        return cupy.zeros(1, dtype=cupy.uint8), np.int32(0)  # unread
    mask = cupy.ascontiguousarray(cupy.asarray(good, dtype=cupy.bool_))
    return mask.view(cupy.uint8), np.int32(1)


def _probe_stride(probe_views: Array) -> np.int64:
    """Elements between consecutive views' probes: 0 when one probe serves every view."""
    n, n_modes, height, width = probe_views.shape
    return np.int64(0 if n == 1 else n_modes * height * width)


def _real(dtype: Any) -> Any:
    return np.empty(0, dtype=dtype).real.dtype.type


def _check_windows(corners: Array, frame: tuple[int, int], obj_shape: tuple[int, int]) -> Array:
    """(n, 2) int64 device corners whose (H, W) windows lie inside the object, else ValueError."""
    import cupy

    corners = cupy.ascontiguousarray(cupy.asarray(corners, dtype=cupy.int64))
    if corners.shape[0] == 0:
        return corners
    low = corners.min(axis=0).get()
    high = corners.max(axis=0).get()
    if low.min() < 0 or high[0] + frame[0] > obj_shape[0] or high[1] + frame[1] > obj_shape[1]:
        raise ValueError(
            f"view windows of {frame} at corners {low}..{high} leave the object {obj_shape}"
        )
    return corners


def _partials_out(
    out: OverlapPartials | None, n_modes: int, obj_shape: tuple[int, int], dtype: Any
) -> OverlapPartials:
    import cupy

    if out is None:
        numerator = cupy.zeros((n_modes, *obj_shape), dtype=dtype)
        return OverlapPartials(numerator, cupy.zeros(obj_shape, dtype=_real(dtype)))
    _in_place(out.numerator, dtype, "out.numerator", (n_modes, *obj_shape))
    _in_place(out.denominator, _real(dtype), "out.denominator", obj_shape)
    return out


# ------------------------------------------------------------------------ kernel arguments
def _wave_sizes(psi: Array, probe: Array) -> tuple[Any, ...]:
    """(probe_stride, n_views, n_probe, n_obj, n_pixels) of a psi batch, typed as the kernels'
    ``long long, long long, int, int, int``."""
    n, n_probe, n_obj, height, width = psi.shape
    sizes = (np.int32(n_probe), np.int32(n_obj), np.int32(height * width))
    return (_probe_stride(probe), np.int64(n), *sizes)


def _window_sizes(psi: Array, probe: Array, obj_shape: tuple[int, int]) -> tuple[Any, ...]:
    """(probe_stride, n_views, n_probe, n_obj, height, width, obj_rows, obj_cols)."""
    n, n_probe, n_obj, height, width = psi.shape
    sizes = (np.int32(n_probe), np.int32(n_obj), np.int32(height), np.int32(width))
    return (_probe_stride(probe), np.int64(n), *sizes, *map(np.int64, obj_shape))


def _spectrum_sizes(spectrum: Array) -> tuple[Any, ...]:
    """(n_views, n_modes = M_P M_O, n_pixels) of an (n, M_P, M_O, H, W) spectrum."""
    n, n_probe, n_obj, height, width = spectrum.shape
    return np.int64(n), np.int32(n_probe * n_obj), np.int32(height * width)


# ------------------------------------------------------------------------------ exit waves
def views_and_iterate(
    probe_views: Array, obj_views: Array, exit_waves: Array
) -> tuple[Array, Array]:
    """phi = (S_j P)(E_j O) and 2 phi - psi; see :func:`reference.views_and_iterate`."""
    import cupy

    dtype = exit_waves.dtype
    psi = _complex_input(exit_waves, dtype, "exit_waves")
    probe = _complex_input(probe_views, dtype, "probe_views")
    obj = _complex_input(obj_views, dtype, "obj_views")
    views, iterate = cupy.empty_like(psi), cupy.empty_like(psi)
    args = (probe, obj, psi, views, iterate, *_wave_sizes(psi, probe))
    _launch("views_and_iterate", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return views, iterate


def exit_wave_update(
    exit_waves: Array, projected: Array, probe_views: Array, obj_views: Array, beta: float
) -> Array:
    """psi += beta (projected - phi), in place; see :func:`reference.exit_wave_update`."""
    dtype = exit_waves.dtype
    psi = _in_place(exit_waves, dtype, "exit_waves")
    proj = _complex_input(projected, dtype, "projected")
    probe = _complex_input(probe_views, dtype, "probe_views")
    obj = _complex_input(obj_views, dtype, "obj_views")
    args = (psi, proj, probe, obj, _real(dtype)(beta), *_wave_sizes(psi, probe))
    _launch("exit_wave_update", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return exit_waves


def update_and_object_partials(
    exit_waves: Array,
    projected: Array,
    probe_views: Array,
    obj_views: Array,
    beta: float,
    corners: Array,
    obj_shape: tuple[int, int],
    out: OverlapPartials | None = None,
) -> tuple[Array, OverlapPartials]:
    """The update of psi (in place) fused with eq. 6's partial sums of the new psi;
    see :func:`reference.update_and_object_partials`."""
    dtype = exit_waves.dtype
    psi = _in_place(exit_waves, dtype, "exit_waves")
    proj = _complex_input(projected, dtype, "projected")
    probe = _complex_input(probe_views, dtype, "probe_views")
    obj = _complex_input(obj_views, dtype, "obj_views")
    corners = _check_windows(corners, psi.shape[-2:], obj_shape)
    partials = _partials_out(out, psi.shape[2], obj_shape, dtype)
    sums = (corners, partials.numerator, partials.denominator)
    args = (psi, proj, probe, obj, _real(dtype)(beta), *sums, *_window_sizes(psi, probe, obj_shape))
    _launch("update_and_object_partials", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return exit_waves, partials


def object_partials(
    exit_waves: Array,
    probe_views: Array,
    corners: Array,
    obj_shape: tuple[int, int],
    out: OverlapPartials | None = None,
) -> OverlapPartials:
    """Eq. 6 partial sums with atomic adds; see :func:`reference.object_partials`."""
    dtype = exit_waves.dtype
    psi = _complex_input(exit_waves, dtype, "exit_waves")
    probe = _complex_input(probe_views, dtype, "probe_views")
    corners = _check_windows(corners, psi.shape[-2:], obj_shape)
    partials = _partials_out(out, psi.shape[2], obj_shape, dtype)
    sums = (corners, partials.numerator, partials.denominator)
    args = (psi, probe, *sums, *_window_sizes(psi, probe, obj_shape))
    _launch("object_partials", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return partials


# ------------------------------------------------------------------------- Fourier constraint
def fourier_residuals(
    iterate_spectrum: Array, model_spectrum: Array, amplitudes: Array, good: Array | None
) -> tuple[Array, Array, Array]:
    """Per-view (n,) float64 misfit sums; see :func:`reference.fourier_residuals`."""
    import cupy

    dtype = iterate_spectrum.dtype
    spectrum = _complex_input(iterate_spectrum, dtype, "iterate_spectrum")
    model = _complex_input(model_spectrum, dtype, "model_spectrum")
    amps = _real_input(amplitudes, dtype, "amplitudes")
    mask, has_mask = _mask(good)
    sums = cupy.zeros((3, spectrum.shape[0]), dtype=cupy.float64)
    args = (spectrum, model, amps, mask, has_mask, *sums, *_spectrum_sizes(spectrum))
    _launch("fourier_residuals", dtype, _pixels(spectrum), spectrum.shape[0], args)
    return sums[0], sums[1], sums[2]


def modulus_constraint(
    spectrum: Array,
    amplitudes: Array,
    good: Array | None,
    model_spectrum: Array | None = None,
    step: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Eq. 4 over all modes in one pass, in place on ``spectrum``, with the error terms of
    ``model_spectrum``; see :func:`reference.modulus_constraint`."""
    import cupy

    dtype = spectrum.dtype
    data = _in_place(spectrum, dtype, "spectrum")
    amps = _real_input(amplitudes, dtype, "amplitudes")
    mask, has_mask = _mask(good)
    # absent inputs: flags 0 and an unread pointer of the right type
    model = data if model_spectrum is None else _complex_input(model_spectrum, dtype, "model")
    steps = amps if step is None else cupy.ascontiguousarray(cupy.asarray(step, _real(dtype)))
    flags = (np.int32(model_spectrum is not None), has_mask, np.int32(step is not None))
    sums = cupy.zeros((2, data.shape[0]), dtype=cupy.float64)
    args = (data, model, amps, mask, steps, *flags, *sums, *_spectrum_sizes(data))
    _launch("modulus_constraint", dtype, _pixels(data), data.shape[0], args)
    return spectrum, sums[0], sums[1]


# ------------------------------------------------------------------------------ probe partials
def probe_terms(exit_waves: Array, probe_views: Array, obj_views: Array) -> Array:
    """(n, M_P, H, W) per-view eq. 5 terms; see :func:`reference.probe_terms`."""
    import cupy

    dtype = exit_waves.dtype
    psi = _complex_input(exit_waves, dtype, "exit_waves")
    probe = _complex_input(probe_views, dtype, "probe_views")
    obj = _complex_input(obj_views, dtype, "obj_views")
    n, n_probe, _, height, width = psi.shape
    terms = cupy.empty((n, n_probe, height, width), dtype=dtype)
    args = (psi, probe, obj, terms, *_wave_sizes(psi, probe))
    _launch("probe_terms", dtype, _pixels(psi), n * n_probe, args)
    return terms


def sum_over_views(
    waves: Array, ramps: tuple[Array, Array] | None = None, out: Array | None = None
) -> Array:
    """(M, H, W) sum over views, optionally weighted by conj phase ramps (a conflict-free
    reduction: one thread per output pixel); see :func:`reference.sum_over_views`."""
    import cupy

    dtype = waves.dtype
    data = _complex_input(waves, dtype, "waves")
    n, n_modes, height, width = data.shape
    total = cupy.zeros((n_modes, height, width), dtype=dtype) if out is None else out
    _in_place(total, dtype, "out", (n_modes, height, width))
    if ramps is None:
        ramp_y = ramp_x = cupy.zeros(1, dtype=dtype)  # unread
    else:
        ramp_y, ramp_x = (_complex_input(r, dtype, "ramps").reshape(n, -1) for r in ramps)
    sizes = (np.int64(n), np.int32(n_modes), np.int32(height), np.int32(width))
    args = (data, ramp_y, ramp_x, np.int32(ramps is not None), total, *sizes)
    _launch("sum_over_views", dtype, height * width, n_modes, args)
    return total


def object_power(obj_views: Array, out: Array | None = None) -> Array:
    """(H, W) sum_{j,l} |O_j^l|^2; see :func:`reference.object_power`."""
    import cupy

    dtype = obj_views.dtype
    obj = _complex_input(obj_views, dtype, "obj_views")
    n, n_obj, height, width = obj.shape
    total = cupy.zeros((height, width), dtype=_real(dtype)) if out is None else out
    _in_place(total, _real(dtype), "out", (height, width))
    args = (obj, total, np.int64(n), np.int32(n_obj), np.int32(height * width))
    _launch("object_power", dtype, height * width, 1, args)
    return total


def probe_partials(
    exit_waves: Array,
    probe_views: Array,
    obj_views: Array,
    ramps: tuple[Array, Array] | None = None,
) -> OverlapPartials:
    """Eq. 5 partial sums of a batch; see :func:`reference.probe_partials`."""
    terms = probe_terms(exit_waves, probe_views, obj_views)
    if ramps is None:
        numerator = sum_over_views(terms)
    else:
        numerator = _ifft2(sum_over_views(_fft2(terms), ramps))
    return OverlapPartials(numerator, object_power(obj_views))


# ------------------------------------------------------------------------------ the DM step
def dm_update(
    exit_waves: Array,
    probe_views: Array,
    obj_views: Array,
    amplitudes: Array,
    good: Array | None,
    beta: float,
    noise_bound: float = 0.0,
    corners: Array | None = None,
    obj_shape: tuple[int, int] | None = None,
) -> tuple[Array, FourierError, OverlapPartials | None]:
    """One exit-wave update of a batch (eqs. 3-4), psi updated in place; the kernels of
    :func:`reference.dm_update` around in-place cuFFT transforms, so the scratch is two
    psi-sized batch buffers (phi -> F phi, and 2 phi - psi -> X -> F_c X -> F^-1 F_c X).

    Given ``corners`` and ``obj_shape`` the last kernel also sums the eq. 6 partials.
    Returns psi, the Fourier error terms of phi and the partials (or None).
    """
    views, iterate = views_and_iterate(probe_views, obj_views, exit_waves)
    model = _fft2(views)
    spectrum = _fft2(iterate)
    if noise_bound > 0:
        iterate_residual, residual, total = fourier_residuals(spectrum, model, amplitudes, good)
        step = noise_steps(iterate_residual, good, noise_bound, amplitudes.shape[1:])
        modulus_constraint(spectrum, amplitudes, good, step=step)
    else:
        _, residual, total = modulus_constraint(spectrum, amplitudes, good, model)
    del model, views
    projected = _ifft2(spectrum)
    error = FourierError(float(residual.sum()), float(total.sum()))
    if corners is None or obj_shape is None:
        return exit_wave_update(exit_waves, projected, probe_views, obj_views, beta), error, None
    psi, partials = update_and_object_partials(
        exit_waves, projected, probe_views, obj_views, beta, corners, obj_shape
    )
    return psi, error, partials


def _fft2(x: Array) -> Array:
    """Unitary FFT over the last two axes, in place where cuFFT allows (x is scratch)."""
    import cupyx.scipy.fft

    return cupyx.scipy.fft.fft2(x, norm="ortho", overwrite_x=True)


def _ifft2(x: Array) -> Array:
    import cupyx.scipy.fft

    return cupyx.scipy.fft.ifft2(x, norm="ortho", overwrite_x=True)

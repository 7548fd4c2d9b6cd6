"""CuPy wrappers of the fused CUDA kernels in ``ptychograph/gpu/cuda/*.cu``.

Each wrapper launches one kernel on C-contiguous device arrays of one precision (complex64 or
complex128; a mixed call is refused, not silently cast). Where a result updates an input, the
kernel overwrites that argument (``modulus_constraint``, ``exit_wave_update``,
``update_and_object_partials``) and returns it; ``out`` partials and sums are added into.
:class:`ptychograph.gpu.ops.CupyOps` chains them with cuFFT into the batch ops of
:mod:`ptychograph.ops`, and tests/test_kernels.py checks each against the NumPy reference,
:class:`ptychograph.ops.NumpyOps` (and the package functions it is built from).

One wrapper per kernel, of the same name; kernels/README.md says what each launch does and in
which source file it lives (:data:`ptychograph.gpu.SOURCES`).

CuPy is imported inside the functions only: importing this module needs no GPU, and
``import ptychograph`` never imports it. :func:`ptychograph.gpu.launch` compiles the sources
(found by :func:`ptychograph.gpu.kernels_dir`) on first use.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ptychograph.backend import Array
from ptychograph.gpu import launch
from ptychograph.partials import OverlapPartials


def _pixels(waves: Array) -> int:
    """H * W: what grid x covers."""
    return int(waves.shape[-1] * waves.shape[-2])


def _view_mode_rows(psi: Array) -> int:
    """n * M_O: the (view, object mode) rows grid y strides over in the exit-wave kernels."""
    return int(psi.shape[0] * psi.shape[2])


# ------------------------------------------------------------------------- argument handling
def _input(array: Array, dtype: Any, name: str) -> Array:
    """A C-contiguous device array of ``dtype`` (refusing a silent precision change)."""
    import cupy

    if np.dtype(array.dtype) != np.dtype(dtype):
        raise TypeError(f"{name} is {array.dtype}, expected {np.dtype(dtype)}")
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
    """phi = (S_j P)(E_j O) (eq. 2) and the DM iterate 2 phi - psi (eq. 3), both new arrays
    (n, M_P, M_O, H, W) like ``exit_waves``."""
    import cupy

    dtype = exit_waves.dtype
    psi = _input(exit_waves, dtype, "exit_waves")
    probe = _input(probe_views, dtype, "probe_views")
    obj = _input(obj_views, dtype, "obj_views")
    views, iterate = cupy.empty_like(psi), cupy.empty_like(psi)
    args = (probe, obj, psi, views, iterate, *_wave_sizes(psi, probe))
    launch("views_and_iterate", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return views, iterate


def exit_wave_update(
    exit_waves: Array, projected: Array, probe_views: Array, obj_views: Array, beta: float
) -> Array:
    """Eq. 3's last step in place: psi += beta (projected - phi), phi = (S_j P)(E_j O)
    recomputed; projected : F^-1 F_c[2 phi - psi], (n, M_P, M_O, H, W)."""
    dtype = exit_waves.dtype
    psi = _in_place(exit_waves, dtype, "exit_waves")
    proj = _input(projected, dtype, "projected")
    probe = _input(probe_views, dtype, "probe_views")
    obj = _input(obj_views, dtype, "obj_views")
    args = (psi, proj, probe, obj, _real(dtype)(beta), *_wave_sizes(psi, probe))
    launch("exit_wave_update", dtype, _pixels(psi), _view_mode_rows(psi), args)
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
    """:func:`exit_wave_update` (in place) fused with eq. 6's partial sums of the new psi
    (:func:`object_partials`), added into ``out`` (or new sums). Returns ``(psi, partials)``."""
    dtype = exit_waves.dtype
    psi = _in_place(exit_waves, dtype, "exit_waves")
    proj = _input(projected, dtype, "projected")
    probe = _input(probe_views, dtype, "probe_views")
    obj = _input(obj_views, dtype, "obj_views")
    corners = _check_windows(corners, psi.shape[-2:], obj_shape)
    partials = _partials_out(out, psi.shape[2], obj_shape, dtype)
    sums = (corners, partials.numerator, partials.denominator)
    args = (psi, proj, probe, obj, _real(dtype)(beta), *sums, *_window_sizes(psi, probe, obj_shape))
    launch("update_and_object_partials", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return exit_waves, partials


def object_partials(
    exit_waves: Array,
    probe_views: Array,
    corners: Array,
    obj_shape: tuple[int, int],
    out: OverlapPartials | None = None,
) -> OverlapPartials:
    """Eq. 6 partial sums of a batch with atomic adds, into ``out`` (or new sums):
    numerator[l] += sum_j E_j^H sum_k conj(S_j P^(k)) psi_j^(k,l) : (M_O, Y, X) complex,
    denominator += sum_j E_j^H sum_k |S_j P^(k)|^2 : (Y, X) real. corners : (n, 2) int; every
    window must lie inside the object (checked: atomics out of bounds would corrupt memory)."""
    dtype = exit_waves.dtype
    psi = _input(exit_waves, dtype, "exit_waves")
    probe = _input(probe_views, dtype, "probe_views")
    corners = _check_windows(corners, psi.shape[-2:], obj_shape)
    partials = _partials_out(out, psi.shape[2], obj_shape, dtype)
    sums = (corners, partials.numerator, partials.denominator)
    args = (psi, probe, *sums, *_window_sizes(psi, probe, obj_shape))
    launch("object_partials", dtype, _pixels(psi), _view_mode_rows(psi), args)
    return partials


# ------------------------------------------------------------------------- Fourier constraint
def fourier_residuals(
    iterate_spectrum: Array, model_spectrum: Array, amplitudes: Array, good: Array | None
) -> tuple[Array, Array, Array]:
    """Per-view sums over good pixels, each (n,) float64: sum_q (|X| - a)^2 of the iterate
    X = F(2 phi - psi) (the noise relaxation's D_j), sum_q (a - |F phi|)^2 and sum_q a^2 (the
    Fourier error terms), with |.| the root of the sum over all modes. Returns
    ``(iterate_residual, model_residual, total)``."""
    import cupy

    dtype = iterate_spectrum.dtype
    spectrum = _input(iterate_spectrum, dtype, "iterate_spectrum")
    model = _input(model_spectrum, dtype, "model_spectrum")
    amps = _input(amplitudes, _real(dtype), "amplitudes")
    mask, has_mask = _mask(good)
    sums = cupy.zeros((3, spectrum.shape[0]), dtype=cupy.float64)
    args = (spectrum, model, amps, mask, has_mask, *sums, *_spectrum_sizes(spectrum))
    launch("fourier_residuals", dtype, _pixels(spectrum), spectrum.shape[0], args)
    return sums[0], sums[1], sums[2]


def modulus_constraint(
    spectrum: Array,
    amplitudes: Array,
    good: Array | None,
    model_spectrum: Array | None = None,
    step: Array | None = None,
) -> tuple[Array, Array, Array]:
    """Eq. 4 over all modes in one pass, in place on ``spectrum`` (n, M_P, M_O, H, W), as
    :func:`ptychograph.fourier.modulus_constraint`: X <- r X, r = a / sqrt(sum_{k,l} |X|^2)
    (the ratio-free projection where that ratio is unsafe), r = 1 at bad pixels, and given
    ``step`` (n,) real r <- 1 + step_j (r - 1) (the noise relaxation). Returns ``(spectrum,
    model_residual, total)``: the (n,) float64 error terms of ``model_spectrum`` (F phi), zeros
    when it is None."""
    import cupy

    dtype = spectrum.dtype
    data = _in_place(spectrum, dtype, "spectrum")
    amps = _input(amplitudes, _real(dtype), "amplitudes")
    mask, has_mask = _mask(good)
    # absent inputs: flags 0 and an unread pointer of the right type
    model = data if model_spectrum is None else _input(model_spectrum, dtype, "model")
    steps = amps if step is None else cupy.ascontiguousarray(cupy.asarray(step, _real(dtype)))
    flags = (np.int32(model_spectrum is not None), has_mask, np.int32(step is not None))
    sums = cupy.zeros((2, data.shape[0]), dtype=cupy.float64)
    args = (data, model, amps, mask, steps, *flags, *sums, *_spectrum_sizes(data))
    launch("modulus_constraint", dtype, _pixels(data), data.shape[0], args)
    return spectrum, sums[0], sums[1]


# ------------------------------------------------------------------------------ probe partials
def probe_terms(exit_waves: Array, probe_views: Array, obj_views: Array) -> Array:
    """Per-view eq. 5 terms before S_j^H, (n, M_P, H, W):
    t_j^(k) = sum_l conj(O_j^(l)) (psi_j^(k,l) - O_j^(l) S_j P^(k))."""
    import cupy

    dtype = exit_waves.dtype
    psi = _input(exit_waves, dtype, "exit_waves")
    probe = _input(probe_views, dtype, "probe_views")
    obj = _input(obj_views, dtype, "obj_views")
    n, n_probe, _, height, width = psi.shape
    terms = cupy.empty((n, n_probe, height, width), dtype=dtype)
    args = (psi, probe, obj, terms, *_wave_sizes(psi, probe))
    launch("probe_terms", dtype, _pixels(psi), n * n_probe, args)
    return terms


def sum_over_views(
    waves: Array, ramps: tuple[Array, Array] | None = None, out: Array | None = None
) -> Array:
    """(M, H, W) sum over views of ``waves`` (n, M, H, W), weighted by conj(ramp_y ramp_x)
    given the phase ramps ((n, H, 1), (n, 1, W), as in :func:`ptychograph.operators.
    phase_ramps`), added into ``out`` when given: a conflict-free reduction, one thread per
    output pixel, deterministic."""
    import cupy

    dtype = waves.dtype
    data = _input(waves, dtype, "waves")
    n, n_modes, height, width = data.shape
    total = cupy.zeros((n_modes, height, width), dtype=dtype) if out is None else out
    _in_place(total, dtype, "out", (n_modes, height, width))
    if ramps is None:
        ramp_y = ramp_x = cupy.zeros(1, dtype=dtype)  # unread
    else:
        ramp_y, ramp_x = (_input(r, dtype, "ramps").reshape(n, -1) for r in ramps)
    sizes = (np.int64(n), np.int32(n_modes), np.int32(height), np.int32(width))
    args = (data, ramp_y, ramp_x, np.int32(ramps is not None), total, *sizes)
    launch("sum_over_views", dtype, height * width, n_modes, args)
    return total


def object_power(obj_views: Array, out: Array | None = None) -> Array:
    """Eq. 5 denominator of a batch, sum_{j,l} |O_j^(l)|^2 : (H, W) real (added into ``out``)."""
    import cupy

    dtype = obj_views.dtype
    obj = _input(obj_views, dtype, "obj_views")
    n, n_obj, height, width = obj.shape
    total = cupy.zeros((height, width), dtype=_real(dtype)) if out is None else out
    _in_place(total, _real(dtype), "out", (height, width))
    args = (obj, total, np.int64(n), np.int32(n_obj), np.int32(height * width))
    launch("object_power", dtype, height * width, 1, args)
    return total

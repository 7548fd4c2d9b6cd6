"""Fused CPU kernels (numba) for the element-wise work between the FFTs of a DM iteration.

:class:`ptychograph.cpu_ops.CpuOps` calls these where numba is installed (the ``numba`` extra)
unless ``PTYCHOGRAPH_NUMBA=0``; :class:`ptychograph.ops.NumpyOps` stays the reference
(tests/test_cpu_fused.py). Each kernel reads and writes each frame once where the NumPy code
makes one pass per operation (docs/design.md, "One DM iteration" and "Cost on CPU"):

* :func:`fourier_step` - after F phi and F psi: the error terms of the model (docs/design.md,
  "Step 5: Errors and changes (eq. 7)"), X = 2 F phi - R F psi (R: a pending probe-mode
  rotation), its mode power, the modulus constraint F_c X ("Step 3: Fourier modulus constraint
  (eq. 4)", with the relaxation of "Noise") and beta F_c X - X; one pass per view (two: noise).
* :func:`update_object_terms` - psi <- (2 - beta) phi + F^-1[beta F_c X - X] ("Step 2: Exit-wave
  update (eq. 3)"; R F psi = 2 F phi - X) and the object terms of the new psi, added into the
  object sums ("Step 4: Overlap constraint, probe and object (eqs. 5, 6)").
* :func:`probe_terms` - the probe terms sum_l conj(O_l) (psi_kl - O_l S_j P_k) of the same
  section, added into their bin or written for the sub-pixel adjoint.

The kernels are compiled per dtype (complex64, complex128) on first use and cached on disk
(``cache=True``). They run on one thread and release the GIL: :mod:`ptychograph.views` already
spreads a chunk's batches over threads. Float32 safety is that of
:func:`ptychograph.fourier.modulus_constraint`: the plain ratio a / |X| only where its mode power
is normal and finite and the ratio below :func:`ptychograph.fourier.ratio_limit`; elsewhere the
power-of-two scaled projection; all-zero and masked pixels left as they are. The kernels do not
check bounds; the wrappers check every shape and index first.
Shapes as in :mod:`ptychograph.ops` (n views, M_P probe and M_O object modes, H x W frames).
"""

from __future__ import annotations

import math

import numba
import numpy as np

from ptychograph.backend import Array
from ptychograph.cpu_fused_pixels import constrain_extreme, ratios, residuals

#: One thread, the GIL released, compiled once per dtype and cached on disk; NumPy's error model
#: (x / 0 gives inf or NaN, as in NumPy, and no check keeps a loop from being vectorised).
_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
#: The same, free to reorder sums (vectorised reductions); NaN and inf keep their meaning.
_jit_sum = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})


def fourier_step(
    model: Array,
    spectrum: Array,
    amplitudes: Array,
    good: Array | None,
    noise_bound: float,
    rotation: Array | None = None,
    beta: float | None = None,
    source: Array | None = None,
    cache: Array | None = None,
) -> tuple[float, float]:
    """F_c X, X = 2 F phi - R F psi, into ``spectrum`` in place (given ``beta``: beta F_c X - X,
    for :func:`update_object_terms`); returns the model's error terms.

    model : (n, M_P, M_O, H, W) F phi. spectrum : the same shape, F psi (overwritten), unless
    ``source`` holds F psi (read and rotated in place; spectrum is then only written). cache :
    the same shape or None; given (with ``beta``), the new psi's spectrum (2 - beta) F phi +
    beta F_c X - X is written there: the next update needs no FFT of psi.
    amplitudes : (n, H, W) real sqrt(I). good : (H, W) bool or None. noise_bound : as
    :func:`ptychograph.fourier.modulus_constraint`. rotation : (M_P, M_P) R, the mode rotation
    psi has not had yet (F R psi = R F psi), or None. Returns (sum_good (a - |F phi|)^2,
    sum_good a^2), the terms of :func:`ptychograph.fourier.fourier_error`.
    """
    n_views = spectrum.shape[0]
    frame = spectrum.shape[-2:]
    _require(model.shape == spectrum.shape and spectrum.flags.c_contiguous, "spectra")
    source = spectrum if source is None else source
    store = cache is not None and beta is not None
    kept: Array = cache if cache is not None and store else np.zeros((1, 1, 1), spectrum.dtype)
    for other in (source, kept) if store else (source,):
        _require(other.shape == spectrum.shape and other.flags.c_contiguous, "spectra")
    _require(amplitudes.shape == (n_views, *frame), "amplitudes")
    _require(good is None or good.shape == frame, "mask")
    pixels = frame[0] * frame[1]
    flat = (n_views, -1, pixels)
    mask = _mask(good, pixels)
    bound = noise_bound * 0.25 * float(mask.sum()) if noise_bound > 0 else -1.0
    real = amplitudes.dtype.type
    info = np.finfo(amplitudes.dtype)
    limits = np.array([info.tiny, info.max, 2.0 ** (info.maxexp // 2 - 1)], amplitudes.dtype)
    sums = np.zeros(2)
    _fourier_step(
        model.reshape(flat),
        source.reshape(flat),
        spectrum.reshape(flat),
        kept.reshape(flat) if store else kept,
        store,
        amplitudes.reshape(n_views, pixels),
        mask,
        real(2),
        bound,
        limits,
        sums,
        *_rotation(rotation, spectrum, spectrum.shape[1]),
        real(1 if beta is None else beta),
        real(0 if beta is None else 1),
    )
    return float(sums[0]), float(sums[1])


def update_object_terms(
    exit_waves: Array,
    projected: Array | None,
    views: Array | None,
    beta: float,
    probe_views: Array,
    corners: Array,
    numerator: Array | None,
    denominator: Array | None,
) -> None:
    """psi <- projected + (2 - beta) views, eq. 3 with projected = F^-1[beta F_c X - X]
    (:func:`fourier_step` given beta), when ``projected`` is given; then the object terms of
    psi added in place (given ``numerator``): numerator[l, window_j] += sum_k conj(S_j P_k)
    psi_kl, denominator[window_j] += sum_k |S_j P_k|^2.

    exit_waves, projected, views : (n, M_P, M_O, H, W); probe_views : (n or 1, M_P, H, W);
    corners : (n, 2) int; numerator : (M_O, Y, X); denominator : (Y, X) real.
    """
    dtype = exit_waves.dtype
    n_views, n_probe, n_obj, height, width = exit_waves.shape
    _require(probe_views.shape[0] in (1, n_views), "probe views")
    _require(probe_views.shape[1:] == (n_probe, height, width), "probe views")
    update = projected is not None and views is not None
    if projected is None or views is None:
        projected = views = np.zeros((1,) * exit_waves.ndim, dtype)  # not read
    else:
        _require(projected.shape == exit_waves.shape == views.shape, "update arrays")
    terms = numerator is not None and denominator is not None
    if numerator is None or denominator is None:
        numerator = np.zeros((1, 1, 1), dtype)  # not written
        denominator = np.zeros((1, 1), dtype.type(0).real.dtype)
    else:
        _require(corners.shape == (n_views, 2), "corners")
        _require(numerator.shape[0] == n_obj and numerator.shape[1:] == denominator.shape, "sums")
        fits = np.all((corners >= 0) & (corners + (height, width) <= denominator.shape))
        _require(bool(fits), "corners (views outside the object)")
    real = np.empty(0, dtype).real.dtype.type
    corners = np.ascontiguousarray(corners, np.int64)
    _update_object_terms(
        exit_waves,
        projected,
        views,
        real(beta),
        probe_views,
        corners,
        numerator,
        denominator,
        update,
        terms,
    )


def probe_terms(
    exit_waves: Array,
    probe_views: Array,
    obj_views: Array,
    numerator: Array,
    rows: Array | None,
    denominator: Array,
) -> None:
    """The probe terms t_jk = sum_l conj(O_jl) (psi_jkl - O_jl S_j P_k) of the batch.

    rows : (n,) int: t_jk is added into ``numerator[rows[j], k]`` ((B, M_P, H, W)); None: t_jk
    is written to ``numerator[j, k]`` ((n, M_P, H, W), for the sub-pixel adjoint).
    denominator : (H, W) real, += sum_{j,l} |O_jl|^2.
    """
    n_views, n_probe, n_obj, height, width = exit_waves.shape
    _require(probe_views.shape[0] in (1, n_views), "probe views")
    _require(probe_views.shape[1:] == (n_probe, height, width), "probe views")
    _require(obj_views.shape == (n_views, n_obj, height, width), "object views")
    _require(numerator.shape[1:] == (n_probe, height, width), "numerator")
    _require(denominator.shape == (height, width), "denominator")
    direct = rows is not None
    if rows is None:
        _require(numerator.shape[0] == n_views, "numerator")
    else:
        _require(rows.shape == (n_views,) and bool(np.all(rows >= 0)), "rows")
        _require(n_views == 0 or int(rows.max()) < numerator.shape[0], "rows")
    index = np.ascontiguousarray(rows if direct else np.arange(exit_waves.shape[0]), np.int64)
    _probe_terms(exit_waves, probe_views, obj_views, numerator, index, denominator, direct)


def _require(condition: bool, what: str) -> None:
    """The kernels do not check bounds: every shape and index is checked here first."""
    if not condition:
        raise ValueError(f"cpu_fused: {what} do not fit the exit waves")


def _rotation(rotation: Array | None, waves: Array, n_probe: int) -> tuple:
    """(R in the waves' dtype, whether to rotate, :func:`_rotate`'s scratch: 256 px a mode)."""
    scratch = np.empty((n_probe, 256), waves.dtype)
    if rotation is None:
        return np.eye(n_probe, dtype=waves.dtype), False, scratch
    _require(rotation.shape == (n_probe, n_probe), "rotation")
    return np.ascontiguousarray(rotation, waves.dtype), True, scratch


def _mask(good: Array | None, pixels: int) -> np.ndarray:
    if good is None:
        return np.ones(pixels, np.bool_)
    return np.ascontiguousarray(good, np.bool_).reshape(pixels)


@_jit
def _fourier_step(
    model,
    source,
    spectrum,
    cache,
    store,
    amplitudes,
    good,
    two,
    bound,
    limits,
    sums,
    rotation,
    rotate,
    scratch,
    *mix,
):
    """The body of :func:`fourier_step` on (n, M, P) spectra (source may be spectrum). bound : B
    of the noise bound, or negative for none; limits : (tiny, max, ratio limit) in the real
    dtype; sums : (2,) float64, the error terms are added into it; rotation, rotate, scratch :
    :func:`_rotation`'s; mix : (b, c): b F_c X - c X written; store: (2 - b) F phi + that into
    cache."""
    n_views, n_modes, pixels = spectrum.shape
    n_probe = rotation.shape[0]
    power = np.empty(pixels, amplitudes.dtype)
    model_power = np.empty(pixels, amplitudes.dtype)
    ratio = np.empty(pixels, amplitudes.dtype)
    for j in range(n_views):
        if rotate:  # F psi -> R F psi, the view's spectrum then read again from the L2 cache
            _rotate(source[j].reshape((n_probe, n_modes // n_probe, pixels)), rotation, scratch)
        model_power[:] = 0
        power[:] = 0
        for m in range(n_modes):
            model_mode, mode, old = model[j, m], spectrum[j, m], source[j, m]
            for p in range(pixels):
                f = model_mode[p]
                x = two * f - old[p]
                mode[p] = x
                model_power[p] += f.real * f.real + f.imag * f.imag
                power[p] += x.real * x.real + x.imag * x.imag
        residual, total, iterate = residuals(model_power, power, amplitudes[j], good)
        sums[0] += residual
        sums[1] += total
        step = 1.0
        if bound > 0:
            step = 1.0 - math.sqrt(bound / max(iterate, bound))
        extreme = ratios(power, amplitudes[j], good, limits, step, bound >= 0, ratio, *mix)
        if extreme > 0:
            for p in range(pixels):
                if ratio[p] != ratio[p]:  # NaN marks the pixels of the extreme path
                    constrain_extreme(spectrum[j, :, p], amplitudes[j, p], step, *mix)
                    ratio[p] = 1
        weight = two - mix[0]
        for m in range(n_modes):
            mode = spectrum[j, m]
            for p in range(pixels):
                mode[p] *= ratio[p]
            if store:
                target, model_mode = cache[j, m], model[j, m]
                for p in range(pixels):
                    target[p] = weight * model_mode[p] + mode[p]


@_jit
def _rotate(values, rotation, scratch):
    """values[k, l] <- sum_m rotation[k, m] values[m, l] in place (values (M_P, M_O, P), scratch
    (M_P, B)), as rotate_modes sums; loops over slices from 0 (no wrap-around: vectorised)."""
    (n_probe, n_obj, pixels), block = values.shape, scratch.shape[1]
    for mode in range(n_obj):
        for start in range(0, pixels, block):
            n = min(block, pixels - start)
            for k in range(n_probe):
                out, r, source = scratch[k, :n], rotation[k, 0], values[0, mode, start : start + n]
                for p in range(n):
                    out[p] = source[p] * r
                for m in range(1, n_probe):
                    r, source = rotation[k, m], values[m, mode, start : start + n]
                    for p in range(n):
                        out[p] += source[p] * r
            for k in range(n_probe):
                target, out = values[k, mode, start : start + n], scratch[k, :n]
                for p in range(n):
                    target[p] = out[p]


@_jit
def _update_object_terms(
    psi, projected, views, beta, probe, corners, numerator, denominator, update, terms
):
    """The body of :func:`update_object_terms`: per view, the update (psi is written, not
    read), then its terms row by row (the view's psi is still in the L2 cache)."""
    n_views, n_probe, n_obj, height, width = psi.shape
    weight = 2 - beta
    for j in range(n_views):
        jp = 0 if probe.shape[0] == 1 else j
        row, col = corners[j, 0], corners[j, 1]
        if update:
            for k in range(n_probe):
                for mode in range(n_obj):
                    for y in range(height):
                        for x in range(width):
                            psi[j, k, mode, y, x] = (
                                projected[j, k, mode, y, x] + weight * views[j, k, mode, y, x]
                            )
        if not terms:
            continue
        for y in range(height):
            weights = denominator[row + y, col : col + width]  # slices: no index wrap-around
            for k in range(n_probe):
                for x in range(width):
                    p = probe[jp, k, y, x]
                    weights[x] += p.real * p.real + p.imag * p.imag
            for mode in range(n_obj):
                target = numerator[mode, row + y, col : col + width]
                for k in range(n_probe):
                    for x in range(width):
                        target[x] += np.conj(probe[jp, k, y, x]) * psi[j, k, mode, y, x]


@_jit
def _probe_terms(psi, probe, obj, numerator, rows, denominator, direct):
    """The body of :func:`probe_terms`, view by view and row by row."""
    n_views, n_probe, n_obj, height, width = psi.shape
    for j in range(n_views):
        jp, bin_ = 0 if probe.shape[0] == 1 else j, rows[j]
        for y in range(height):
            for mode in range(n_obj):
                for x in range(width):
                    o = obj[j, mode, y, x]
                    denominator[y, x] += o.real * o.real + o.imag * o.imag
            for k in range(n_probe):
                for x in range(width):
                    p = probe[jp, k, y, x]
                    o = obj[j, 0, y, x]
                    acc = np.conj(o) * (psi[j, k, 0, y, x] - o * p)
                    for mode in range(1, n_obj):
                        o = obj[j, mode, y, x]
                        acc += np.conj(o) * (psi[j, k, mode, y, x] - o * p)
                    if direct:
                        numerator[bin_, k, y, x] += acc
                    else:
                        numerator[bin_, k, y, x] = acc

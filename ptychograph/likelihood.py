"""Per-chunk terms of the Poisson maximum-likelihood refinement (docs/design.md, "ML refinement").

The negative log-likelihood of the measured counts I_j(q) given the model intensity
I~_j(q) = sum_{k,l} |F phi_j^(k,l)(q)|^2 + floor, phi_j^(k,l) = (S_j P^(k)) (E_j O^(l)), is

    L = sum_j sum_q good(q) [ I~_j(q) - I_j(q) log I~_j(q) ]          (up to a constant)

(Thibault & Guizar-Sicairos, New J. Phys. 14, 063004 (2012), eq. 11 for Poisson counts). With
w_j = good (1 - I_j / I~_j) and chi_j^(k,l) = F^H (w_j F phi_j^(k,l)), its gradients with respect
to the conjugate estimates are

    g_O^(l) = sum_j E_j^H sum_k conj(S_j P^(k)) chi_j^(k,l)       : (M_O, Y, X)
    g_P^(k) = sum_j S_j^H sum_l conj(E_j O^(l)) chi_j^(k,l)       : (M_P, H, W)

returned with the diagonal preconditioners sum_j E_j^H sum_k |S_j P^(k)|^2 and
sum_j sum_l |E_j O^(l)|^2 as :class:`~ptychograph.partials.OverlapPartials`. Along a search
direction (h_P, h_O) the model moves as phi + a B + a^2 C with B = (S_j h_P)(E_j O) + (S_j P)(E_j
h_O) and C = (S_j h_P)(E_j h_O), so the first and second derivatives of L at a = 0 are sums over
views too (:func:`line_terms`): the line search is a reduction like the gradient.

Shapes: probe (M_P, H, W), obj (M_O, Y, X) complex; a chunk's amplitudes sqrt(I) and mask are in
FFT order (:class:`~ptychograph.views.ViewChunk`). The FFTs are unitary, so F^H = F^-1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ptychograph.backend import Array, fft2, get_array_module, ifft2
from ptychograph.fourier import fourier_error
from ptychograph.operators import exit_waves, extract_views, insert_views
from ptychograph.partials import FourierError, OverlapPartials
from ptychograph.views import ViewChunk


@dataclass(frozen=True)
class Gradient:
    """Summed gradient terms of a set of views: probe and object gradients with their
    preconditioners, the negative log-likelihood and the Fourier error of the model."""

    probe: OverlapPartials
    obj: OverlapPartials
    nll: float
    error: FourierError

    def __add__(self, other: Gradient) -> Gradient:
        return Gradient(
            self.probe + other.probe,
            self.obj + other.obj,
            self.nll + other.nll,
            self.error + other.error,
        )


@dataclass(frozen=True)
class LineTerms:
    """dL/da and d^2L/da^2 at a = 0 along a search direction, summed over views."""

    slope: float
    curvature: float

    def __add__(self, other: LineTerms) -> LineTerms:
        return LineTerms(self.slope + other.slope, self.curvature + other.curvature)


def _batches(n_views: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, n_views, batch_size):
        yield slice(start, min(start + batch_size, n_views))


def _intensity(spectrum: Array) -> Array:
    """sum over modes of |spectrum|^2: (n, M_P, M_O, H, W) -> (n, H, W)."""
    xp = get_array_module(spectrum)
    return xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2))


def _weights(measured: Array, model: Array, good: Array | None) -> Array:
    """good (1 - I / I~) : (n, H, W)."""
    weights = 1 - measured / model
    return weights if good is None else weights * good[None]


def _nll(measured: Array, model: Array, good: Array | None) -> float:
    """sum good (I~ - I log I~), accumulated in double precision."""
    xp = get_array_module(model)
    terms = model - measured * xp.log(model)
    if good is not None:
        terms = terms * good[None]
    return float(xp.sum(terms, dtype=xp.float64))


def gradient(
    chunk: ViewChunk, probe: Array, obj: Array, floor: float, batch_size: int = 64
) -> Gradient:
    """The chunk's gradient terms of L at (probe, obj) (module docstring).

    floor : intensity added to the model (photons, or the data's units), keeping L finite
    where the model is dark; psi is not used.
    """
    xp = get_array_module(probe)
    obj_shape = (int(obj.shape[1]), int(obj.shape[2]))
    real = chunk.amplitudes.dtype
    grad_o = xp.zeros(obj.shape, dtype=obj.dtype)
    den_o = xp.zeros(obj_shape, dtype=real)
    grad_p = xp.zeros(probe.shape, dtype=probe.dtype)
    den_p = xp.zeros(chunk.frame_shape, dtype=real)
    nll, error = 0.0, FourierError(0.0, 0.0)
    for sl in _batches(chunk.n_views, batch_size):
        shifter = chunk.shifter(sl, probe.dtype)
        probe_views = shifter.shift(probe)  # (n or 1, M_P, H, W)
        obj_views = extract_views(obj, chunk.corners[sl], chunk.frame_shape)  # (n, M_O, H, W)
        spectrum = fft2(exit_waves(probe_views, obj_views))
        error = error + fourier_error(spectrum, chunk.amplitudes[sl], chunk.good)
        measured = chunk.amplitudes[sl] ** 2
        model = _intensity(spectrum) + floor
        nll += _nll(measured, model, chunk.good)
        spectrum *= _weights(measured, model, chunk.good)[:, None, None].astype(real)
        chi = ifft2(spectrum, overwrite=True)  # (n, M_P, M_O, H, W)
        probe_power = probe_views.real**2 + probe_views.imag**2
        if probe_views.shape[0] == 1:
            probe_power = xp.broadcast_to(probe_power, (obj_views.shape[0], *probe.shape))
        grad_o += insert_views(
            xp.sum(xp.conj(probe_views)[:, :, None] * chi, axis=1), chunk.corners[sl], obj_shape
        )
        den_o += insert_views(
            xp.sum(probe_power, axis=1, keepdims=True), chunk.corners[sl], obj_shape
        )[0]
        grad_p += shifter.sum_adjoint(xp.sum(xp.conj(obj_views)[:, None] * chi, axis=2))
        den_p += xp.sum(obj_views.real**2 + obj_views.imag**2, axis=(0, 1))
    return Gradient(OverlapPartials(grad_p, den_p), OverlapPartials(grad_o, den_o), nll, error)


def line_terms(
    chunk: ViewChunk,
    probe: Array,
    obj: Array,
    probe_step: Array,
    obj_step: Array,
    floor: float,
    batch_size: int = 64,
) -> LineTerms:
    """First and second derivatives of the chunk's L along (probe_step, obj_step) at a = 0.

    With A = F phi, B, C as in the module docstring and I~ the model intensity:
    dI/da = 2 Re sum conj(A) B, d^2I/da^2 = 2 sum |B|^2 + 4 Re sum conj(A) C,
    dL/da = sum w dI/da, d^2L/da^2 = sum [w d^2I/da^2 + good I / I~^2 (dI/da)^2].
    probe_step : (M_P, H, W), obj_step : (M_O, Y, X), like the estimates.
    """
    xp = get_array_module(probe)
    slope, curvature = 0.0, 0.0
    for sl in _batches(chunk.n_views, batch_size):
        shifter = chunk.shifter(sl, probe.dtype)
        probe_views, step_views = shifter.shift(probe), shifter.shift(probe_step)
        corners = chunk.corners[sl]
        obj_views = extract_views(obj, corners, chunk.frame_shape)
        obj_step_views = extract_views(obj_step, corners, chunk.frame_shape)
        a = fft2(exit_waves(probe_views, obj_views))
        b = exit_waves(step_views, obj_views) + exit_waves(probe_views, obj_step_views)
        b = fft2(b, overwrite=True)
        c = fft2(exit_waves(step_views, obj_step_views), overwrite=True)
        measured = chunk.amplitudes[sl] ** 2
        model = _intensity(a) + floor
        d1 = 2 * xp.sum((xp.conj(a) * b).real, axis=(1, 2))
        d2 = 2 * _intensity(b) + 4 * xp.sum((xp.conj(a) * c).real, axis=(1, 2))
        weights = _weights(measured, model, chunk.good)
        second = measured / (model * model)
        if chunk.good is not None:
            second = second * chunk.good[None]
        slope += _total(weights * d1)
        curvature += _total(weights * d2 + second * d1 * d1)
    return LineTerms(slope, curvature)


def _total(values: Any) -> float:
    xp = get_array_module(values)
    return float(xp.sum(values, dtype=xp.float64))

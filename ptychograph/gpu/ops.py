"""The batch ops of :mod:`ptychograph.ops` with the fused CUDA kernels (CuPy arrays only).

:class:`CupyOps` has the methods, arguments and results of :class:`ptychograph.ops.NumpyOps`,
the NumPy reference it is tested against (tests/test_kernels.py); it chains the kernels of
:mod:`ptychograph.gpu.kernels` with in-place cuFFT transforms. Every input is a C-contiguous
CuPy array of one precision, and the exit waves and ``out`` sums are updated in place.

CuPy is imported inside the functions only, so this module imports (and :func:`ptychograph.ops.
select_ops` returns a :class:`CupyOps`) on a machine without CuPy or a GPU.
"""

from __future__ import annotations

import numpy as np

from ptychograph.backend import Array, get_array_module
from ptychograph.gpu import kernels
from ptychograph.operators import add_binned, rotate_modes
from ptychograph.partials import FourierError, OverlapPartials


class CupyOps:
    """The fused-kernel twin of :class:`ptychograph.ops.NumpyOps`."""

    name = "cupy"

    def exit_wave_update(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        corners: Array,
        amplitudes: Array,
        good: Array | None,
        beta: float,
        noise_bound: float = 0.0,
        out: OverlapPartials | None = None,
        rotation: Array | None = None,
        spectra: tuple[Array, bool] | None = None,
    ) -> FourierError:
        """Eqs. 3-4 of a batch (:meth:`ptychograph.ops.BatchOps.exit_wave_update`):
        views_and_iterate -> F phi, F(2 phi - psi) -> [fourier_residuals, :func:`noise_steps`]
        -> modulus_constraint -> F^-1 -> exit_wave_update, or update_and_object_partials given
        ``out``. The scratch is two psi-sized batch buffers (phi -> F phi, and
        2 phi - psi -> X -> F_c X -> F^-1 F_c X). With a noise bound the constraint takes two
        passes over the spectrum (the per-view residual must be known before any pixel is
        scaled); with ``noise_bound = 0`` it is one fused pass. A ``rotation`` is applied to
        psi first (:func:`ptychograph.operators.rotate_modes`).
        """
        if rotation is not None:
            rotate_modes(exit_waves, rotation, in_place=True)
        views, iterate = kernels.views_and_iterate(probe_views, obj_views, exit_waves)
        model = _fft2(views)
        spectrum = _fft2(iterate)
        if noise_bound > 0:
            iterate_residual, residual, total = kernels.fourier_residuals(
                spectrum, model, amplitudes, good
            )
            step = noise_steps(iterate_residual, good, noise_bound, amplitudes.shape[1:])
            kernels.modulus_constraint(spectrum, amplitudes, good, step=step)
        else:
            _, residual, total = kernels.modulus_constraint(spectrum, amplitudes, good, model)
        del model, views
        projected = _ifft2(spectrum)
        error = FourierError(float(residual.sum()), float(total.sum()))
        if out is None:
            kernels.exit_wave_update(exit_waves, projected, probe_views, obj_views, beta)
        else:
            obj_shape = (int(out.denominator.shape[0]), int(out.denominator.shape[1]))
            kernels.update_and_object_partials(
                exit_waves, projected, probe_views, obj_views, beta, corners, obj_shape, out
            )
        return error

    def object_partials(
        self, exit_waves: Array, probe_views: Array, corners: Array, out: OverlapPartials
    ) -> OverlapPartials:
        """Eq. 6 terms of a batch added into ``out`` with atomic adds."""
        obj_shape = (int(out.denominator.shape[0]), int(out.denominator.shape[1]))
        return kernels.object_partials(exit_waves, probe_views, corners, obj_shape, out)

    def probe_partials(
        self,
        exit_waves: Array,
        probe_views: Array,
        obj_views: Array,
        ramps: tuple[Array, Array] | None,
        out: OverlapPartials,
        bins: Array | None = None,
    ) -> OverlapPartials:
        """Eq. 5 terms of a batch added into ``out``: probe_terms, then the sum over views
        (S_j^H as conj phase ramps in Fourier space: one inverse FFT for the batch) and
        object_power; given ``bins``, the terms are added per bin instead (S_j^H left to the
        caller, :meth:`ptychograph.ops.BatchOps.probe_partials`)."""
        terms = kernels.probe_terms(exit_waves, probe_views, obj_views)
        if bins is not None:
            add_binned(out.numerator, bins, terms)
        elif ramps is None:
            kernels.sum_over_views(terms, out=out.numerator)
        else:
            numerator = _ifft2(kernels.sum_over_views(_fft2(terms), ramps))
            get_array_module(numerator).add(out.numerator, numerator, out=out.numerator)
        kernels.object_power(obj_views, out=out.denominator)
        return out


def noise_steps(
    iterate_residual: Array, good: Array | None, noise_bound: float, frame_shape: tuple[int, int]
) -> Array:
    """Per-view relaxation of eq. 4 for noisy data, as in :func:`ptychograph.fourier.
    modulus_constraint`: step_j = 1 - sqrt(B / max(D_j, B)), B = noise_bound * 0.25 * (number
    of good pixels); 0 leaves a view that already fits within the noise, 1 is plain eq. 4, and
    so is B = 0 (no good pixel) rather than 0 / 0.

    iterate_residual : (n,) float64 D_j from :func:`ptychograph.gpu.kernels.fourier_residuals`.
    Returns (n,) float64, on the inputs' array module without a host synchronisation.
    """
    xp = get_array_module(iterate_residual)
    n_good = good.sum() if good is not None else frame_shape[0] * frame_shape[1]
    bound = noise_bound * 0.25 * n_good
    floor = np.finfo(np.float64).tiny  # B = 0 and D_j = 0: 0 / tiny, step 1
    return 1 - xp.sqrt(bound / xp.maximum(xp.maximum(iterate_residual, bound), floor))


def _fft2(x: Array) -> Array:
    """Unitary FFT over the last two axes, in place where cuFFT allows (x is scratch)."""
    import cupyx.scipy.fft

    return cupyx.scipy.fft.fft2(x, norm="ortho", overwrite_x=True)


def _ifft2(x: Array) -> Array:
    import cupyx.scipy.fft

    return cupyx.scipy.fft.ifft2(x, norm="ortho", overwrite_x=True)

"""The shared Fourier-modulus constraint and the Difference Map exit-wave update.

DESIGN.md step 2 (Dong et al. eq. 3) and step 3 (eq. 4); Thibault et al., Ultramicroscopy 109
(2009), doi:10.1016/j.ultramic.2008.12.011, for DM; Thibault & Menzel, Nature 494 (2013),
doi:10.1038/nature11806, for the incoherent sum over modes.
"""

from __future__ import annotations

from ptychograph.backend import Array, fft2, fft2c, get_array_module, ifft2, ifft2c
from ptychograph.partials import FourierError


def modulus_constraint(
    spectrum: Array, amplitudes: Array, good: Array | None, noise_bound: float = 0.0
) -> Array:
    """Eq. 4, in place: scale all modes of each view to the measured modulus.

    F_c[psi]^(k,l) = sqrt(I_j / sum_{k,l} |F psi^(k,l)|^2) F psi^(k,l).

    spectrum : (N, M_P, M_O, H, W) complex, F psi (overwritten with F_c[psi]).
    amplitudes : (N, H, W) real, sqrt(I_j).
    good : (H, W) bool, False at bad detector pixels (they keep their computed amplitude), or
    None when every pixel is good. The division is guarded where the model is zero.
    noise_bound : relaxation for noisy data (DESIGN.md, "Noise"). A view whose residual
    D_j = sum_q (sqrt(I_j) - |F psi_j|)^2 is already below B = noise_bound * 0.25 * n_good
    (0.25 per pixel is the variance of sqrt(Poisson counts)) is left unchanged; otherwise it is
    moved towards the data only until its residual is about B:
    ratio <- 1 + (1 - sqrt(B / D_j)) (ratio - 1). noise_bound = 0 is plain eq. 4.
    """
    xp = get_array_module(spectrum)
    model = xp.sqrt(xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2)))
    tiny = xp.finfo(model.dtype).tiny
    ratio = amplitudes / xp.maximum(model, tiny)
    if good is not None:
        ratio = xp.where(good[None], ratio, 1)
    if noise_bound > 0:
        diff = model - amplitudes
        if good is not None:
            diff = diff * good[None]
        n_good = float(good.sum()) if good is not None else float(model[0].size)
        bound = noise_bound * 0.25 * n_good
        residual = xp.sum(diff * diff, axis=(1, 2))
        step = 1 - xp.sqrt(bound / xp.maximum(residual, bound))
        ratio = 1 + step[:, None, None] * (ratio - 1)
    spectrum *= ratio[:, None, None].astype(model.dtype)
    return spectrum


def fourier_error(spectrum: Array, amplitudes: Array, good: Array | None) -> FourierError:
    """Step 5 error terms of a model: sum_q (sqrt(I_j) - |F phi_j|)^2 and sum_q I_j.

    spectrum : (N, M_P, M_O, H, W) complex, F phi. amplitudes : (N, H, W) sqrt(I).
    good : (H, W) bool or None; only good pixels count.
    """
    xp = get_array_module(spectrum)
    model = xp.sqrt(xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2)))
    diff = amplitudes - model
    if good is None:
        return FourierError(float(xp.sum(diff * diff)), float(xp.sum(amplitudes * amplitudes)))
    weights = good[None]
    residual = float(xp.sum((diff * diff) * weights))
    return FourierError(residual, float(xp.sum((amplitudes * amplitudes) * weights)))


def dm_exit_wave_update(
    exit_waves: Array,
    views: Array,
    amplitudes: Array,
    good: Array | None,
    beta: float,
    noise_bound: float = 0.0,
    centred: bool = True,
) -> FourierError:
    """Eq. 3, in place: psi <- psi + beta (F^-1 F_c[2 phi - psi] - phi).

    exit_waves : (N, M_P, M_O, H, W) complex, psi (updated in place).
    views : (N, M_P, M_O, H, W) complex, phi = P O from the current estimates.
    amplitudes : (N, H, W) real sqrt(I). good : (H, W) bool or None. beta : feedback.
    noise_bound : see :func:`modulus_constraint`.
    centred : amplitudes and mask have zero frequency at the frame centre (the detector
    convention, F = fftshift o fft2); False when they are already in FFT order (zero
    frequency at [0, 0]), which skips the shifts - the same update, reindexed.

    Returns the Fourier error terms of the current model phi (not of 2 phi - psi: DM's own
    iterate keeps a gap to the data even at its fixed point, so only the model's error falls
    as the reconstruction converges). By linearity F(2 phi - psi) = 2 F phi - F psi.
    """
    xp = get_array_module(exit_waves)
    model = fft2c(views) if centred else fft2(views)
    error = fourier_error(model, amplitudes, good)
    spectrum = fft2c(exit_waves) if centred else fft2(exit_waves)
    model *= 2
    spectrum = xp.subtract(model, spectrum, out=model)  # 2 F phi - F psi, in model's buffer
    spectrum = modulus_constraint(spectrum, amplitudes, good, noise_bound)
    projected = ifft2c(spectrum) if centred else ifft2(spectrum, overwrite=True)
    projected -= views
    projected *= beta
    exit_waves += projected
    return error

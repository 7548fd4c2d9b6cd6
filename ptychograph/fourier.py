"""The shared Fourier-modulus constraint and the Difference Map exit-wave update.

docs/design.md, "Step 2" (Dong et al. eq. 3) and "Step 3" (eq. 4); Thibault et al.,
Ultramicroscopy 109 (2009), doi:10.1016/j.ultramic.2008.12.011, for DM; Thibault & Menzel,
Nature 494 (2013),
doi:10.1038/nature11806, for the incoherent sum over modes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from ptychograph.backend import Array, fft2, fft2c, get_array_module, ifft2, ifft2c
from ptychograph.partials import FourierError


def modulus_constraint(
    spectrum: Array,
    amplitudes: Array,
    good: Array | None,
    noise_bound: float = 0.0,
    power: Array | None = None,
) -> Array:
    """Eq. 4, in place: scale all modes of each view to the measured modulus.

    F_c[psi]^(k,l) = sqrt(I_j) F psi^(k,l) / |F psi|, |F psi| = sqrt(sum_{k,l} |F psi^(k,l)|^2).

    spectrum : (N, M_P, M_O, H, W) complex, F psi (overwritten with F_c[psi]).
    amplitudes : (N, H, W) real, sqrt(I_j).
    good : (H, W) bool, False at bad detector pixels (they keep their computed amplitude), or
    None when every pixel is good.
    noise_bound : relaxation for noisy data (docs/design.md, "Noise"). A view whose residual
    D_j = sum_q (sqrt(I_j) - |F psi_j|)^2 is already below B = noise_bound * 0.25 * n_good
    (0.25 per pixel is the variance of sqrt(Poisson counts)) is left unchanged; otherwise it is
    moved towards the data only until its residual is about B:
    ratio <- 1 + (1 - sqrt(B / D_j)) (ratio - 1). noise_bound = 0 is plain eq. 4.

    The result is finite for any finite spectrum, in single and double precision:

    * Where the plain ratio a / |F psi| is safe (sum of squares normal and finite,
      ratio <= :func:`ratio_limit`), the modes are multiplied by it, as eq. 4 reads.
    * Elsewhere - a model negligible next to the data (below a / ratio_limit), denormal, or so
      large that its sum of squares overflows - the same projection is computed without the
      ratio (:func:`_constrain_extreme`): the modes are scaled exactly by a power of two to
      a modulus near 1, then given the measured amplitude. The model keeps its phase and mode
      split.
    * Where every mode is exactly zero the projection has no phase or mode split to keep (all
      points of modulus a are equally near), so, as at bad pixels, the pixel is left as it is
      (zero): the constraint adds nothing it cannot derive from the model.

    With no good pixel (B = 0) the step is 1 (plain eq. 4), not 0 / 0.

    power : (N, H, W) |F psi|^2 summed over the modes, if the caller has it (e.g.
    :func:`ptychograph.cpu_ops.mode_power`); computed here otherwise.
    """
    xp = get_array_module(spectrum)
    if power is None:
        with np.errstate(over="ignore"):  # an overflowed power takes the extreme path
            power = xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2))
    model = xp.sqrt(power)
    plain = _plain_ratio_safe(power, model, amplitudes)
    extreme = ~plain
    if good is not None:
        plain &= good[None]
        extreme &= good[None]
    # amplitude 1 over modulus 1 where the ratio is not used: those pixels are left alone here
    ratio = xp.where(plain, amplitudes, 1) / xp.where(plain, model, 1)
    step = None
    if noise_bound > 0:
        step = _noise_steps(model, amplitudes, good, noise_bound)
        ratio = 1 + step[:, None, None] * (ratio - 1)
    spectrum *= ratio[:, None, None].astype(model.dtype)
    _constrain_extreme(spectrum, amplitudes, extreme, step)
    return spectrum


def ratio_limit(dtype: DTypeLike) -> float:
    """Largest ratio a / |F psi| eq. 4 multiplies by: 2^63 for float32, 2^511 for float64.

    2^(maxexp / 2 - 1): times a model modulus below sqrt(max) it cannot overflow, and it is far
    beyond any ratio a real model reaches (a model 1e-19 of the data is numerically zero).
    """
    return float(2.0 ** (np.finfo(dtype).maxexp // 2 - 1))


def _plain_ratio_safe(power: Array, model: Array, amplitudes: Array) -> Array:
    """(N, H, W) bool: True where a / sqrt(power) is accurate and finite.

    power : (N, H, W) sum of squares over the modes, safe when normal and finite (no square
    lost to underflow or overflow); model : its root; amplitudes : a. The kernel in
    ptychograph/gpu/cuda/fourier_modulus.cu tests the same three conditions.
    """
    info = np.finfo(power.dtype)
    safe = (power >= info.tiny) & (power <= info.max)
    return safe & (amplitudes <= model * ratio_limit(power.dtype))


def _constrain_extreme(
    spectrum: Array, amplitudes: Array, pixels: Array, step: Array | None
) -> None:
    """Eq. 4 at ``pixels`` (N, H, W) bool without the ratio a / |X|, in place.

    X^(k,l) <- (a / |Y|) Y^(k,l), Y = 2^-e X with e the exponent of the largest component
    (frexp: max_{k,l} max(|Re X|, |Im X|) in [2^(e-1), 2^e)). The scaling is exact, |Y| lies
    in [1/2, sqrt(2 M)], so no square under- or overflows and a / |Y| <= 2 a. Relaxed as
    (1 - step_j) X + step_j X_c. Pixels whose modes are all exactly zero are left unchanged.
    """
    xp = get_array_module(spectrum)
    views, rows, cols = xp.nonzero(pixels)
    if views.size == 0:
        return
    values = spectrum[views, :, :, rows, cols]  # (K, M_P, M_O)
    largest = xp.maximum(xp.abs(values.real), xp.abs(values.imag)).max(axis=(1, 2))
    defined = largest > 0
    exponent = -xp.frexp(largest)[1][:, None, None]
    real = xp.ldexp(values.real, exponent)
    imag = xp.ldexp(values.imag, exponent)
    norm = xp.sqrt(xp.sum(real**2 + imag**2, axis=(1, 2)))
    factor = amplitudes[views, rows, cols].astype(norm.dtype) / xp.where(defined, norm, 1)
    target = xp.empty_like(values)
    target.real = real * factor[:, None, None]
    target.imag = imag * factor[:, None, None]
    if step is not None:
        relax = step[views][:, None, None].astype(norm.dtype)
        target = (1 - relax) * values + relax * target
    spectrum[views, :, :, rows, cols] = xp.where(defined[:, None, None], target, values)


def _noise_steps(model: Array, amplitudes: Array, good: Array | None, noise_bound: float) -> Array:
    """(N,) relaxation steps 1 - sqrt(B / max(D_j, B)) of :func:`modulus_constraint`, in [0, 1].

    model : (N, H, W) |F psi|; D_j sums (|F psi| - a)^2 over good pixels (inf when it
    overflows: step 1). B = 0 (no good pixel) gives step 1, not 0 / 0.
    """
    xp = get_array_module(model)
    diff = model - amplitudes
    if good is not None:
        diff = xp.where(good[None], diff, 0)  # not diff * good: inf * 0 is NaN
    n_good = float(good.sum()) if good is not None else float(model[0].size)
    bound = noise_bound * 0.25 * n_good
    with np.errstate(over="ignore"):  # D_j = inf is a full step
        residual = xp.sum(diff * diff, axis=(1, 2))
    if bound <= 0:
        return xp.ones_like(residual)
    return 1 - xp.sqrt(bound / xp.maximum(residual, bound))


def fourier_error(
    spectrum: Array, amplitudes: Array, good: Array | None, power: Array | None = None
) -> FourierError:
    """Step 5 error terms of a model: sum_q (sqrt(I_j) - |F phi_j|)^2 and sum_q I_j.

    spectrum : (N, M_P, M_O, H, W) complex, F phi. amplitudes : (N, H, W) sqrt(I).
    good : (H, W) bool or None; only good pixels count. power : (N, H, W) |F phi|^2 summed
    over the modes, if the caller has it.
    """
    xp = get_array_module(spectrum)
    if power is None:
        power = xp.sum(spectrum.real**2 + spectrum.imag**2, axis=(1, 2))
    model = xp.sqrt(power)
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

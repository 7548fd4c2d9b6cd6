"""A deliberately plain NumPy Difference Map iteration: the speed baseline and an independent check.

This is the same iteration as :mod:`ptychograph.views` (docs/design.md, "One DM iteration";
Dong et al., arXiv:1808.10375, eqs. 2-6), written the straightforward way: one Python loop over
views, ``numpy.fft`` per view with ``fftshift`` / ``ifftshift`` for the detector convention, and
object insertion by slicing. It shares no code with ``ptychograph`` so that it checks the fast path
independently. Conventions that must match ``ptychograph``:

* F = fftshift o fft2(norm="ortho"), F^-1 = ifft2(norm="ortho") o ifftshift (per view).
* View j's top-left corner ``origins[j]`` is split into ``corner = floor(origin)`` (where the
  object window is cut) and ``frac = origin - corner``; the probe is shifted by ``frac`` with
  the Fourier phase ramp exp(-2 pi i q frac), q = ``np.fft.fftfreq`` (unshifted order).
* Eq. 5's denominator is not sub-pixel shifted (as in ``ptychograph.views.probe_partials``).
* The Fourier error is that of the current model phi, before the update.
* The object division is regularised: new = (num + eps prev) / (den + eps), eps = alpha max(den)
  (``ptychograph.partials.regularised_divide``); the probe takes the residual-form step
  new = prev + num / (den + eps) (``regularised_step``, as ``ptychograph.algorithms.dm`` does).
* The noise relaxation of the modulus constraint (``noise_bound``, default 0 = plain eq. 4) is
  that of ``ptychograph.fourier.modulus_constraint`` for a detector without bad pixels.

Shapes: probe (M_P, H, W), obj (M_O, Y, X), amplitudes (N, H, W), origins (N, 2),
exit waves psi (N, M_P, M_O, H, W).
"""

from __future__ import annotations

import numpy as np


def far_field(wave: np.ndarray) -> np.ndarray:
    """F: (..., H, W) complex -> (..., H, W) complex, zero frequency at the frame centre."""
    return np.fft.fftshift(np.fft.fft2(wave, norm="ortho"), axes=(-2, -1))


def inverse_far_field(spectrum: np.ndarray) -> np.ndarray:
    """F^-1: (..., H, W) complex with zero frequency at the centre -> (..., H, W) complex."""
    return np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="ortho")


def shift_ramp(frac: np.ndarray, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    """Fourier phase ramp exp(-2 pi i (qy fy + qx fx)) that shifts a frame by ``frac`` pixels.

    frac : (2,) float (row, column). Returns (H, W) complex in ``dtype``, unshifted FFT order.
    """
    qy = np.fft.fftfreq(shape[0])
    qx = np.fft.fftfreq(shape[1])
    phase = -2 * np.pi * (frac[0] * qy[:, None] + frac[1] * qx[None, :])
    return np.exp(1j * phase).astype(dtype)


def shift_probe(probe: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """S_j P: every probe mode shifted by ``frac``: (M_P, H, W) -> (M_P, H, W)."""
    if not np.any(frac != 0):
        return probe
    ramp = shift_ramp(frac, probe.shape[1:], probe.dtype)
    return np.fft.ifft2(np.fft.fft2(probe) * ramp).astype(probe.dtype)


def unshift_wave(wave: np.ndarray, frac: np.ndarray) -> np.ndarray:
    """S_j^H: undo the shift by ``frac``: (M, H, W) -> (M, H, W)."""
    if not np.any(frac != 0):
        return wave
    ramp = shift_ramp(frac, wave.shape[1:], wave.dtype)
    return np.fft.ifft2(np.fft.fft2(wave) * np.conj(ramp)).astype(wave.dtype)


def split_origins(origins: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, 2) float origins -> integer corners (N, 2) int and fractions (N, 2) in [0, 1)."""
    corners = np.floor(origins)
    return corners.astype(np.int64), origins - corners


def windows(
    origins: np.ndarray, shape: tuple[int, int]
) -> list[tuple[tuple[slice, slice], np.ndarray]]:
    """For each view: its (rows, columns) window of the object and its fractional shift."""
    corners, fracs = split_origins(origins)
    return [
        ((slice(row, row + shape[0]), slice(col, col + shape[1])), frac)
        for (row, col), frac in zip(corners, fracs, strict=True)
    ]


def view_exit_waves(probe: np.ndarray, obj: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Eq. 2 for one view: phi^(k,l) = (S_j P^(k)) (E_j O^(l)) -> (M_P, M_O, H, W)."""
    [(window, frac)] = windows(origin[None], probe.shape[1:])
    return shift_probe(probe, frac)[:, None] * obj[:, window[0], window[1]][None, :]


def initial_exit_waves(probe: np.ndarray, obj: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """psi = phi for every view: (N, M_P, M_O, H, W) in the probe's dtype."""
    n_views = origins.shape[0]
    psi = np.empty((n_views, probe.shape[0], obj.shape[0], *probe.shape[1:]), probe.dtype)
    for j in range(n_views):
        psi[j] = view_exit_waves(probe, obj, origins[j])
    return psi


def intensities(probe: np.ndarray, obj: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """Eq. 1, the forward model: I_j = sum_{k,l} |F phi_j^(k,l)|^2 -> (N, H, W) real."""
    frames = np.empty((origins.shape[0], *probe.shape[1:]), dtype=probe.real.dtype)
    for j in range(origins.shape[0]):
        spectrum = far_field(view_exit_waves(probe, obj, origins[j]))
        frames[j] = np.sum(np.abs(spectrum) ** 2, axis=(0, 1))
    return frames


def update_exit_waves(
    psi: np.ndarray,
    amplitudes: np.ndarray,
    origins: np.ndarray,
    probe: np.ndarray,
    obj: np.ndarray,
    beta: float,
    noise_bound: float = 0.0,
) -> float:
    """Eqs. 3-4 for every view, psi updated in place. Returns the Fourier error (step 5).

    psi <- psi + beta (F^-1 F_c[2 phi - psi] - phi), with
    F_c[x] = sqrt(I_j / sum_{k,l} |F x|^2) F x.
    The error is that of the current model phi: sum (sqrt(I) - |F phi|)^2 / sum I.
    noise_bound > 0 relaxes eq. 4 (docs/design.md, "Noise"): with D_j = sum (|F x| - sqrt(I_j))^2
    and B = noise_bound * 0.25 * H * W, the scale becomes 1 + (1 - sqrt(B / max(D_j, B))) (s - 1).
    """
    residual = 0.0
    total = 0.0
    for j in range(psi.shape[0]):
        phi = view_exit_waves(probe, obj, origins[j])
        model = np.sqrt(np.sum(np.abs(far_field(phi)) ** 2, axis=(0, 1)))  # (H, W)
        residual += float(np.sum((amplitudes[j] - model) ** 2))
        total += float(np.sum(amplitudes[j] ** 2))
        spectrum = far_field(2 * phi - psi[j])
        modulus = np.sqrt(np.sum(np.abs(spectrum) ** 2, axis=(0, 1)))  # (H, W)
        ratio = amplitudes[j] / np.maximum(modulus, np.finfo(modulus.dtype).tiny)
        if noise_bound > 0:
            bound = noise_bound * 0.25 * modulus.size
            distance = float(np.sum((modulus - amplitudes[j]) ** 2))
            ratio = 1 + (1 - np.sqrt(bound / max(distance, bound))) * (ratio - 1)
        projected = inverse_far_field(spectrum * ratio)
        psi[j] += (beta * (projected - phi)).astype(psi.dtype)
    return residual / total if total > 0 else 0.0


def regularised_divide(
    numerator: np.ndarray, denominator: np.ndarray, previous: np.ndarray, alpha: float
) -> np.ndarray:
    """(numerator + eps previous) / (denominator + eps), eps = alpha max(denominator).

    numerator, previous : (modes, ...) complex; denominator : (...) real.
    """
    eps = alpha * float(np.max(denominator))
    if eps <= 0:
        eps = 1e-30
    return ((numerator + eps * previous) / (denominator + eps)).astype(previous.dtype)


def update_object(
    psi: np.ndarray, origins: np.ndarray, probe: np.ndarray, obj: np.ndarray, alpha: float
) -> np.ndarray:
    """Eq. 6: O^(l) = sum_{k,j} conj(S_j P^(k)) psi_j^(k,l) / sum_{k,j} |S_j P^(k)|^2.

    Returns the new object (M_O, Y, X).
    """
    numerator = np.zeros(obj.shape, dtype=obj.dtype)
    denominator = np.zeros(obj.shape[1:], dtype=obj.real.dtype)
    for j, (window, frac) in enumerate(windows(origins, probe.shape[1:])):
        probe_view = shift_probe(probe, frac)  # (M_P, H, W)
        numerator[:, window[0], window[1]] += np.sum(np.conj(probe_view)[:, None] * psi[j], axis=0)
        denominator[window] += np.sum(np.abs(probe_view) ** 2, axis=0)
    return regularised_divide(numerator, denominator, obj, alpha)


def regularised_step(
    numerator: np.ndarray, denominator: np.ndarray, previous: np.ndarray, alpha: float
) -> np.ndarray:
    """previous + numerator / (denominator + eps), eps = alpha max(denominator) (>= 1e-30).

    numerator, previous : (modes, ...) complex; denominator : (...) real.
    """
    eps = max(alpha * float(np.max(denominator)), 1e-30)
    return (previous + numerator / (denominator + eps)).astype(previous.dtype)


def update_probe(
    psi: np.ndarray, origins: np.ndarray, probe: np.ndarray, obj: np.ndarray, alpha: float
) -> np.ndarray:
    """Eq. 5 in residual form: P <- P + sum_{l,j} S_j^H(conj(O_j^l) r_j^(k,l)) / sum |O_j^l|^2.

    O_j^l = E_j O^(l) and r_j^(k,l) = psi_j^(k,l) - O_j^l S_j P^(k); for integer positions this
    is exactly eq. 5. Returns the new probe (M_P, H, W).
    """
    numerator = np.zeros(probe.shape, dtype=probe.dtype)
    denominator = np.zeros(probe.shape[1:], dtype=probe.real.dtype)
    for j, (window, frac) in enumerate(windows(origins, probe.shape[1:])):
        obj_view = obj[:, window[0], window[1]]  # (M_O, H, W)
        residual = psi[j] - shift_probe(probe, frac)[:, None] * obj_view[None]
        wave = np.sum(np.conj(obj_view)[None] * residual, axis=1)  # (M_P, H, W)
        numerator += unshift_wave(wave, frac)
        denominator += np.sum(np.abs(obj_view) ** 2, axis=0)
    return regularised_step(numerator, denominator, probe, alpha)


def dm_iteration(
    psi: np.ndarray,
    amplitudes: np.ndarray,
    origins: np.ndarray,
    probe: np.ndarray,
    obj: np.ndarray,
    beta: float = 0.8,
    alpha: float = 1e-3,
    overlap_passes: int = 1,
    noise_bound: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, float]:
    """One DM iteration: exit-wave update (eqs. 3-4), then alternating object/probe updates.

    psi : (N, M_P, M_O, H, W) complex, updated in place. amplitudes : (N, H, W) real sqrt(I).
    origins : (N, 2) float view corners in object pixels. probe : (M_P, H, W); obj : (M_O, Y, X).
    Returns ``(probe, obj, fourier_error)`` with the new estimates.
    """
    error = update_exit_waves(psi, amplitudes, origins, probe, obj, beta, noise_bound)
    for _ in range(overlap_passes):
        obj = update_object(psi, origins, probe, obj, alpha)
        probe = update_probe(psi, origins, probe, obj, alpha)
    return probe, obj, error

"""Quality measures against a known truth (simulations) that remove the ambiguities of
ptychography: a global complex factor (phase and scale) and a small global shift."""

from __future__ import annotations

import numpy as np

from ptychograph.operators import insert_views, phase_ramps, shift_modes, split_origins


def illumination(probe: np.ndarray, origins: np.ndarray, obj_shape: tuple[int, int]) -> np.ndarray:
    """Total probe intensity each object pixel received: (Y, X) float.

    probe : (M_P, H, W) complex; origins : (N, 2) view corners in object pixels.
    """
    corners, frac = split_origins(np.asarray(origins, dtype=np.float64))
    ramps = phase_ramps(frac, probe.shape[1:], np.complex128)
    views = shift_modes(probe.astype(np.complex128), ramps)
    power = np.sum(np.abs(views) ** 2, axis=1)
    power = np.broadcast_to(power, (corners.shape[0], *power.shape[1:]))
    return insert_views(np.ascontiguousarray(power)[:, None], corners, obj_shape)[0]


def best_shift(recon: np.ndarray, truth: np.ndarray, weight: np.ndarray) -> tuple[int, int]:
    """Integer (row, column) shift that best aligns ``recon`` to ``truth`` (cross-correlation)."""
    a = (recon - np.average(recon, weights=weight)) * weight
    b = (truth - np.average(truth, weights=weight)) * weight
    corr = np.fft.ifft2(np.fft.fft2(b) * np.conj(np.fft.fft2(a)))
    peak = np.unravel_index(int(np.argmax(np.abs(corr))), corr.shape)
    return tuple(int(p if p <= s // 2 else p - s) for p, s in zip(peak, corr.shape, strict=True))  # type: ignore[return-value]


def relative_error(
    recon: np.ndarray, truth: np.ndarray, weight: np.ndarray, align_shift: bool = True
) -> float:
    """min_c ||c T(recon) - truth||_w / ||truth||_w over a complex factor c.

    recon, truth : (Y, X) complex; weight : (Y, X) >= 0 (e.g. illuminated region);
    T shifts by the best integer offset when ``align_shift``.
    """
    if align_shift:
        dy, dx = best_shift(recon, truth, weight)
        recon = np.roll(recon, (dy, dx), axis=(0, 1))
    w = weight / weight.max()
    c = np.vdot(recon * w, truth * w) / np.vdot(recon * w, recon * w)
    return float(np.linalg.norm((c * recon - truth) * w) / np.linalg.norm(truth * w))

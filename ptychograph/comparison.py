"""A reconstruction beside a known true object (``comparison.png`` of ``ptychograph demo``).

The reconstruction is first aligned to the truth: the best whole-pixel shift, then the global
complex factor (phase and scale) that fits it best on the illuminated area. The number that
matters, the object error min_c ||c T(O) - O_true|| / ||O_true|| over the illuminated area
(:func:`ptychograph.metrics.relative_error`), and the Fourier ring correlation (FRC) with its
resolution at the fixed 1/7 threshold are drawn on the figure and returned.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.figures_common import (
    AMPLITUDE_LABEL,
    DIFFERENCE_MAP,
    OBJECT_MAP,
    PHASE_LABEL,
    PHASE_MAP,
    Panel,
    illuminated_mask,
    illumination_map,
    length_label,
    limits,
    new_figure,
    save,
    show,
)
from ptychograph.metrics import best_shift, relative_error

#: FRC threshold for the resolution estimate (a fixed 1/7 threshold).
FRC_THRESHOLD = 1 / 7
#: Rings below this index (a handful of pixels, dominated by the window) are not used.
FIRST_RING = 2


@dataclass(frozen=True)
class Comparison:
    """error : relative object error after removing phase, scale and shift (illuminated
    area); shift : (row, column) pixels applied to the reconstruction; frequency : (K,)
    ring centres in 1/m; frc : (K,) correlation; resolution : half-period in metres where
    the FRC first falls below 1/7, or None when it never does (resolution at the pixel)."""

    error: float
    shift: tuple[int, int]
    frequency: np.ndarray
    frc: np.ndarray
    resolution: float | None


def compare(
    obj: np.ndarray, truth: np.ndarray, mask: np.ndarray, pixel: tuple[float, float]
) -> tuple[Comparison, np.ndarray]:
    """Align ``obj`` (Y, X) complex to ``truth`` (Y, X) on ``mask``; returns the numbers and
    the aligned reconstruction."""
    weight = mask.astype(np.float64)
    shift = best_shift(obj, truth, weight)
    shifted = np.roll(obj, shift, axis=(0, 1))
    factor = np.vdot(shifted[mask], truth[mask]) / np.vdot(shifted[mask], shifted[mask])
    aligned = factor * shifted
    error = relative_error(obj, truth, weight)
    frequency, curve = fourier_ring_correlation(aligned, truth, mask, pixel)
    below = np.nonzero(curve[FIRST_RING:] < FRC_THRESHOLD)[0]
    resolution = 1 / (2 * frequency[FIRST_RING + below[0]]) if below.size else None
    return Comparison(error, shift, frequency, curve, resolution), aligned


def fourier_ring_correlation(
    a: np.ndarray, b: np.ndarray, mask: np.ndarray, pixel: tuple[float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """FRC of two (Y, X) images over the (softened) ``mask``: |sum Fa Fb*| / sqrt(sum |Fa|^2
    sum |Fb|^2) per ring of spatial frequency up to Nyquist. Returns (frequency 1/m, frc)."""
    from scipy.ndimage import gaussian_filter

    window = gaussian_filter(mask.astype(np.float64), 2.0)
    fa, fb = (np.fft.fft2((image - np.mean(image[mask])) * window) for image in (a, b))
    fy = np.fft.fftfreq(a.shape[0], d=pixel[0])
    fx = np.fft.fftfreq(a.shape[1], d=pixel[1])
    radius = np.hypot(fy[:, None], fx[None, :])
    step = 1 / max(a.shape[0] * pixel[0], a.shape[1] * pixel[1])
    nyquist = min(1 / (2 * pixel[0]), 1 / (2 * pixel[1]))
    rings = np.floor(radius / step).astype(np.int64)
    n = int(nyquist / step)
    inside = rings < n
    idx = rings[inside]
    cross = np.bincount(idx, weights=(fa * np.conj(fb))[inside].real, minlength=n)
    cross_i = np.bincount(idx, weights=(fa * np.conj(fb))[inside].imag, minlength=n)
    power_a = np.bincount(idx, weights=np.abs(fa[inside]) ** 2, minlength=n)
    power_b = np.bincount(idx, weights=np.abs(fb[inside]) ** 2, minlength=n)
    denom = np.sqrt(power_a * power_b)
    curve = np.divide(np.hypot(cross, cross_i), denom, out=np.zeros(n), where=denom > 0)
    return (np.arange(n) + 0.5) * step, curve


def truth_comparison(
    obj: np.ndarray,
    truth: np.ndarray,
    path: Path,
    pixel: tuple[float, float],
    probe: np.ndarray | None = None,
    origins: np.ndarray | None = None,
) -> Comparison:
    """Write the comparison PNG of the first object modes of ``obj`` and ``truth`` (M, Y, X);
    ``probe`` (M_P, H, W) and ``origins`` (N, 2) give the illuminated area (else all)."""
    fig, result = comparison_figure(obj, truth, pixel, probe, origins)
    save(fig, path)
    return result


def comparison_figure(
    obj: np.ndarray,
    truth: np.ndarray,
    pixel: tuple[float, float],
    probe: np.ndarray | None = None,
    origins: np.ndarray | None = None,
) -> tuple[Any, Comparison]:
    """The comparison Figure and its numbers (see :func:`truth_comparison`)."""
    recon, true = np.asarray(obj[0]), np.asarray(truth[0])
    shape = (min(recon.shape[0], true.shape[0]), min(recon.shape[1], true.shape[1]))
    recon, true = recon[: shape[0], : shape[1]], true[: shape[0], : shape[1]]
    mask = np.ones(shape, dtype=bool)
    if probe is not None and origins is not None:
        mask = illuminated_mask(illumination_map(probe, origins, shape))
    result, aligned = compare(recon, true, mask, pixel)
    fig = new_figure(16, 9.5)
    axes = fig.subplots(2, 3)
    _image_pairs(axes, aligned, true, mask, pixel[1])
    _frc_panel(axes[1, 2], result)
    res = "above 1/7 up to the pixel size"
    if result.resolution is not None:
        res = length_label(float(f"{result.resolution:.2g}")) + " half-period"
    fig.suptitle(
        f"object error after removing global phase, scale and shift {result.shift}: "
        f"{100 * result.error:.1f} % (illuminated area); FRC resolution (1/7): {res}",
        fontsize=12,
    )
    return fig, result


def _image_pairs(
    axes: Any, aligned: np.ndarray, true: np.ndarray, mask: np.ndarray, pixel: float
) -> None:
    """Phases, their difference and amplitudes, with common colour limits per quantity."""
    phases = (np.angle(aligned), np.angle(true))
    both = np.concatenate([p[mask] for p in phases])
    phase_panel = Panel(PHASE_MAP, PHASE_LABEL, *limits(both), mask, pixel)
    show(axes[0, 0], phases[0], "reconstructed phase (aligned)", phase_panel)
    show(axes[0, 1], phases[1], "true phase", phase_panel)
    difference = np.angle(aligned * np.conj(true))
    bound = max(abs(v) for v in limits(difference, mask)) or 1e-3
    diff_panel = Panel(DIFFERENCE_MAP, f"{PHASE_LABEL}, reconstructed - true", -bound, bound,
                       mask, pixel)  # fmt: skip
    show(axes[0, 2], difference, "phase difference", diff_panel)
    amplitudes = (np.abs(aligned), np.abs(true))
    both = np.concatenate([a[mask] for a in amplitudes])
    amp_panel = Panel(OBJECT_MAP, AMPLITUDE_LABEL, *limits(both), mask, pixel)
    show(axes[1, 0], amplitudes[0], "reconstructed amplitude (aligned)", amp_panel)
    show(axes[1, 1], amplitudes[1], "true amplitude", amp_panel)


def _frc_panel(ax: Any, result: Comparison) -> None:
    frequency = result.frequency[FIRST_RING:] * 1e-6
    ax.plot(frequency, result.frc[FIRST_RING:], label="FRC, reconstructed vs true")
    ax.axhline(FRC_THRESHOLD, color="gray", linestyle="--", label="1/7 threshold")
    if result.resolution is not None:
        label = f"half-period {length_label(float(f'{result.resolution:.2g}'))}"
        ax.axvline(1e-6 / (2 * result.resolution), color="tab:red", linestyle=":", label=label)
    ax.set_xlabel("spatial frequency (1/µm)")
    ax.set_ylabel("Fourier ring correlation")
    ax.set_ylim(0, 1.05)
    ax.set_title("resolution", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)

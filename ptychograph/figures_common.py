"""What every figure shares: the illuminated area, display-only phase handling, labelled
images with colour bars and outlined scale bars, and the check that a run made progress.

Colour maps: sequential maps for magnitudes and for phases over a data-driven range
(:data:`MAGNITUDE_MAP`, :data:`PHASE_MAP`); the cyclic :data:`CYCLIC_MAP` only for a phase
shown over exactly [-pi, pi]. Colour limits come from the illuminated area only, and the
unscanned border is dimmed, so edge noise never sets the contrast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

MAGNITUDE_MAP = "magma"
OBJECT_MAP = "gray"
PHASE_MAP = "gray"
CYCLIC_MAP = "twilight"
DIFFERENCE_MAP = "RdBu_r"
#: Object pixels receiving at least this fraction of the peak illumination count as scanned.
ILLUMINATED_FRACTION = 0.2
#: Below this spread (relative amplitude, phase in rad) an object is "uniform": no progress.
FLAT_SPREAD = 1e-4
PHASE_LABEL = "phase (rad)"
AMPLITUDE_LABEL = "amplitude |O| (transmission, 1)"
PROBE_LABEL = "|P| (√(photons / pixel))"


def new_figure(width: float, height: float) -> Any:
    """A matplotlib Figure (constrained layout) with an Agg canvas; no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Any, path: Path, dpi: int = 80) -> None:
    """Save beside, then rename; never leaves a temporary file behind."""
    tmp = path.parent / f".{path.name}.tmp.png"
    try:
        fig.savefig(tmp, dpi=dpi)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def illumination_map(
    probe: np.ndarray, origins: np.ndarray, obj_shape: tuple[int, int]
) -> np.ndarray:
    """(Y, X) float64 total probe intensity each object pixel received, views placed at their
    nearest whole-pixel corner (enough for display). probe : (M, H, W); origins : (N, 2)."""
    from scipy.signal import fftconvolve

    power = np.sum(np.abs(np.asarray(probe)) ** 2, axis=0)
    corners = np.rint(np.asarray(origins, dtype=np.float64)).astype(np.int64)
    high = np.asarray(obj_shape) - np.asarray(power.shape)
    corners = np.clip(corners, 0, np.maximum(high, 0))
    counts = np.zeros(obj_shape)
    np.add.at(counts, (corners[:, 0], corners[:, 1]), 1.0)
    total = fftconvolve(counts, power, mode="full")[: obj_shape[0], : obj_shape[1]]
    return np.maximum(total, 0.0)


def illuminated_mask(illumination: np.ndarray) -> np.ndarray:
    """(Y, X) bool: pixels lit by at least :data:`ILLUMINATED_FRACTION` of the peak
    (everything when nothing is lit)."""
    peak = float(illumination.max()) if illumination.size else 0.0
    if not np.isfinite(peak) or peak <= 0:
        return np.ones(illumination.shape, dtype=bool)
    return illumination >= ILLUMINATED_FRACTION * peak


def remove_phase_ramp(obj: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``obj`` (Y, X) complex times exp(-i (a y + b x)), with the slopes a, b the median phase
    difference of neighbouring pixels inside ``mask`` (robust to wrapping, and to the
    object's own edges, which are a minority of pixels). Display only."""
    slopes = []
    for axis in (0, 1):
        lead = [slice(None), slice(None)]
        lag = [slice(None), slice(None)]
        lead[axis], lag[axis] = slice(1, None), slice(None, -1)
        both = mask[tuple(lead)] & mask[tuple(lag)]
        product = obj[tuple(lead)] * np.conj(obj[tuple(lag)])
        slopes.append(float(np.median(np.angle(product[both]))) if both.any() else 0.0)
    rows, cols = np.indices(obj.shape)
    return obj * np.exp(-1j * (slopes[0] * rows + slopes[1] * cols))


def centred_phase(obj: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """(Y, X) phase in rad of ``obj`` with the mean phase of the illuminated area set to 0."""
    offset = np.angle(np.sum(obj[mask])) if mask.any() else 0.0
    return np.angle(obj * np.exp(-1j * offset))


def limits(image: np.ndarray, mask: np.ndarray | None = None) -> tuple[float, float]:
    """Display range: 1st to 99th percentile inside ``mask`` (robust to edges and outliers)."""
    values = image[mask] if mask is not None and mask.any() else image.ravel()
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, [1, 99]))
    if high <= low:
        pad = max(abs(low) * 1e-3, 1e-12)
        return low - pad, high + pad
    return low, high


def no_progress(obj: np.ndarray, mask: np.ndarray, iterations: int) -> str | None:
    """Why ``obj`` (Y, X) complex is not a reconstruction, or None when it looks like one:
    no iterations, non-finite values, or a uniform object inside ``mask``."""
    if iterations == 0:
        return "no iterations ran"
    lit = obj[mask] if mask.any() else obj.ravel()
    if not np.all(np.isfinite(lit)):
        return "the object holds NaN or Inf"
    amplitude = np.abs(lit)
    mean = float(amplitude.mean()) if amplitude.size else 0.0
    if mean == 0.0:
        return "the object is zero"
    phase = np.angle(lit * np.exp(-1j * np.angle(np.sum(lit))))
    amp_spread, phase_spread = float(amplitude.std()) / mean, float(phase.std())
    if amp_spread < FLAT_SPREAD and phase_spread < FLAT_SPREAD:
        return (
            f"the object is uniform (amplitude spread {amp_spread:.1e}, phase spread "
            f"{phase_spread:.1e} rad): nothing was reconstructed"
        )
    return None


@dataclass(frozen=True)
class Panel:
    """How to draw one image: colour map, colour-bar label, colour limits, the illuminated
    ``mask`` (outside is dimmed) and the object ``pixel`` (m) for a scale bar (None: none)."""

    cmap: str
    label: str
    vmin: float
    vmax: float
    mask: np.ndarray | None = None
    pixel: float | None = None


def show(ax: Any, image: np.ndarray, title: str, panel: Panel) -> Any:
    """Draw ``image`` on ``ax`` with a labelled colour bar; returns the colour bar."""
    shown = ax.imshow(image, cmap=panel.cmap, vmin=panel.vmin, vmax=panel.vmax)
    if panel.mask is not None and not panel.mask.all():
        shade = np.zeros((*image.shape, 4))
        shade[..., 3] = np.where(panel.mask, 0.0, 0.6)
        ax.imshow(shade)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
    bar = ax.figure.colorbar(shown, ax=ax, shrink=0.85)
    bar.set_label(panel.label)
    if panel.pixel is not None:
        scale_bar(ax, image.shape, panel.pixel)
    return bar


def cyclic_phase_panel(mask: np.ndarray | None = None, pixel: float | None = None) -> Panel:
    """A phase shown over exactly [-pi, pi] with the cyclic map."""
    return Panel(CYCLIC_MAP, f"{PHASE_LABEL}, full cycle", -np.pi, np.pi, mask, pixel)


def scale_bar(ax: Any, shape: tuple[int, ...], pixel: float) -> None:
    """A white, black-outlined bar of a round length near a fifth of the image width."""
    from matplotlib import patheffects

    width_m = shape[1] * pixel
    target = width_m / 5
    exponent = np.floor(np.log10(target))
    mantissa = target / 10**exponent
    step = 1.0 if mantissa < 2 else 2.0 if mantissa < 5 else 5.0
    length = float(step * 10**exponent)
    bar_px = length / pixel
    y = shape[0] * 0.92
    x0 = shape[1] * 0.05
    outline = [patheffects.withStroke(linewidth=4.5, foreground="black")]
    ax.plot([x0, x0 + bar_px], [y, y], color="white", linewidth=2.5, path_effects=outline)
    ax.text(
        x0 + bar_px / 2,
        y - shape[0] * 0.04,
        length_label(length),
        color="white",
        fontsize=9,
        ha="center",
        va="bottom",
        path_effects=[patheffects.withStroke(linewidth=3, foreground="black")],
    )


def length_label(length: float) -> str:
    """A length in metres as text with a readable unit: 2e-6 -> '2 µm'."""
    for unit, scale in (("m", 1.0), ("mm", 1e-3), ("µm", 1e-6), ("nm", 1e-9)):
        if abs(length) >= scale:
            return f"{length / scale:g} {unit}"
    return f"{length / 1e-12:g} pm"


def mark_not_a_result(fig: Any, axes: list[Any], reason: str) -> None:
    """Say on the figure, in red, that it shows no reconstruction, and why."""
    fig.suptitle(f"NOT A RECONSTRUCTION: {reason}", color="red", fontsize=13, weight="bold")
    for ax in axes:
        ax.text(
            0.5,
            0.5,
            "no progress",
            transform=ax.transAxes,
            color="red",
            fontsize=18,
            ha="center",
            va="center",
            rotation=30,
            alpha=0.8,
        )

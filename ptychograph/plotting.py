"""Figures of a result: the summary (``result.png``) and the previews written during a run.

The summary shows the object phase and amplitude (colour limits from the illuminated area,
the unscanned border dimmed, an optional display-only phase-ramp removal), the scan positions
over the object (initial and corrected when positions were refined), every probe mode with
its power share (rows without empty cells for any mode count) and the error curves. A run
that made no progress gets a figure that says so instead of auto-scaled noise
(:func:`ptychograph.figures_common.no_progress`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ptychograph.figures_common import (
    AMPLITUDE_LABEL,
    MAGNITUDE_MAP,
    OBJECT_MAP,
    PHASE_LABEL,
    PHASE_MAP,
    PROBE_LABEL,
    Panel,
    centred_phase,
    illuminated_mask,
    illumination_map,
    length_label,
    limits,
    mark_not_a_result,
    new_figure,
    no_progress,
    remove_phase_ramp,
    save,
    show,
)

#: Probe modes per row of the summary at most; more modes wrap onto balanced rows.
MODES_PER_ROW = 5
#: Up to this many probe modes share their row with the error curves.
MODES_BESIDE_ERRORS = 2
#: Legend text of each error curve of the store.
CURVES = {
    "fourier_error": "Fourier error (model vs data)",
    "probe_change": "probe change per iteration",
    "object_change": "object change per iteration",
}


def summary_figure(ds: xr.Dataset, path: Path, remove_ramp: bool = False) -> None:
    """Write the summary PNG of a result Dataset to ``path`` (beside, then renamed)."""
    save(summary(ds, remove_ramp), path)


def summary(ds: xr.Dataset, remove_ramp: bool = False) -> Any:
    """The summary Figure of a result Dataset (see the module docstring)."""
    obj = np.asarray(ds["object"].values[0])
    probe = np.asarray(ds["probe"].values)
    shares = np.asarray(ds["probe_mode_power"].values)
    mask = illuminated_mask(illumination_map(probe, ds["view_origin"].values, obj.shape))
    pixel = _pixel(ds)
    reason = no_progress(obj, mask, int(ds.sizes.get("iteration", 0)))
    n_modes = probe.shape[0]
    beside = n_modes <= MODES_BESIDE_ERRORS  # probe modes and error curves share a row
    rows = 1 if beside else math.ceil(n_modes / MODES_PER_ROW)
    heights = [5.0] + [3.6] * rows + ([] if beside else [3.2])
    fig = new_figure(15, sum(heights))
    parts = fig.subfigures(len(heights), 1, height_ratios=heights)
    object_axes = list(parts[0].subplots(1, 3))
    if remove_ramp:
        obj = remove_phase_ramp(obj, mask)
    _object_panels(object_axes[:2], obj, mask, pixel, remove_ramp, flat=reason is not None)
    positions_panel(object_axes[2], ds, np.abs(obj), mask)
    per_row = math.ceil(n_modes / rows)
    for r in range(rows):
        modes = range(r * per_row, min(n_modes, (r + 1) * per_row))
        if beside:
            ratios = [1.0] * len(modes) + [4.2 - len(modes)]
            axes = parts[1].subplots(1, len(modes) + 1, width_ratios=ratios)
            error_panel(axes[-1], ds)
        else:
            axes = np.atleast_1d(parts[1 + r].subplots(1, len(modes)))
        for ax, k in zip(axes, modes, strict=False):
            magnitude = np.abs(probe[k])
            panel = Panel(MAGNITUDE_MAP, PROBE_LABEL, 0.0, float(magnitude.max()) or 1.0)
            show(ax, magnitude, f"probe mode {k}: {100 * shares[k]:.1f} % of the power", panel)
    if not beside:
        error_panel(parts[-1].subplots(), ds)
    if reason is not None:
        mark_not_a_result(fig, object_axes[:2], reason)
    return fig


def _object_panels(
    axes: list[Any],
    obj: np.ndarray,
    mask: np.ndarray,
    pixel: float,
    ramp_removed: bool,
    flat: bool,
) -> None:
    """Object phase and amplitude; fixed, wide limits for a flat object so it looks flat."""
    phase = centred_phase(obj, mask)
    amplitude = np.abs(obj)
    if flat:
        amp_high = 2 * float(np.mean(amplitude[mask])) if np.isfinite(amplitude).all() else 1.0
        phase_range, amp_range = (-np.pi, np.pi), (0.0, amp_high or 1.0)
    else:
        phase_range, amp_range = limits(phase, mask), limits(amplitude, mask)
    ramp = ", linear phase ramp removed for display" if ramp_removed else ""
    show(
        axes[0],
        phase,
        f"object phase{ramp}",
        Panel(PHASE_MAP, PHASE_LABEL, *phase_range, mask, pixel),
    )
    show(
        axes[1],
        amplitude,
        "object amplitude (dimmed: outside the scanned area)",
        Panel(OBJECT_MAP, AMPLITUDE_LABEL, *amp_range, mask, pixel),
    )


def positions_panel(ax: Any, ds: xr.Dataset, amplitude: np.ndarray, mask: np.ndarray) -> None:
    """View centres over the object amplitude, in the frame of ``position`` (µm): the
    positions used, and the initial ones when the store holds ``position_initial``."""
    y, x = (np.asarray(ds[name].values) * 1e6 for name in ("y", "x"))
    extent = (x[0], x[-1], y[-1], y[0]) if x.size > 1 and y.size > 1 else None
    shown = np.where(mask, amplitude, np.nan)
    low, high = limits(amplitude, mask)
    ax.imshow(shown, cmap=OBJECT_MAP, vmin=low, vmax=high, extent=extent, alpha=0.6)
    centres = np.asarray(ds["view_origin"].values) + np.asarray(ds["probe"].shape[1:]) // 2
    used_y = np.interp(centres[:, 0], np.arange(y.size), y)
    used_x = np.interp(centres[:, 1], np.arange(x.size), x)
    note = ""
    if "position_initial" in ds:
        axis_y = int(ds["y"].attrs.get("position_axis", 0))
        initial = np.asarray(ds["position_initial"].values) * 1e6
        ax.plot(initial[:, 1 - axis_y], initial[:, axis_y], "o", ms=4, mfc="none",
                color="tab:blue", label="initial")  # fmt: skip
        ax.plot(used_x, used_y, ".", ms=4, color="tab:orange", label="corrected")
        ax.legend(loc="upper right", fontsize=8)
        moved = np.hypot(used_x - initial[:, 1 - axis_y], used_y - initial[:, axis_y])
        note = f"; corrections up to {length_label(float(f'{moved.max() * 1e-6:.2g}'))}"
    else:
        ax.plot(used_x, used_y, ".", ms=3, color="tab:orange")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(f"scan positions ({centres.shape[0]} views{note})", fontsize=10)


def error_panel(ax: Any, ds: xr.Dataset) -> None:
    """The error curves on a log axis, words in the legend; the probe change only from the
    iteration where probe updates start (before, it is round-off that would stretch the
    axis)."""
    iteration = np.asarray(ds["iteration"].values)
    start = int(ds.attrs.get("config", {}).get("reconstruction", {}).get("probe_update_start", 0))
    plotted = []
    for name, label in CURVES.items():
        if name not in ds:
            continue
        values = np.asarray(ds[name].values, dtype=np.float64)
        keep = values > 0
        if name == "probe_change":
            keep &= iteration > start
        if keep.any():
            ax.semilogy(iteration[keep], values[keep], label=label)
            plotted.append(values[keep])
    ax.set_xlabel("iteration")
    ax.set_ylabel("error, relative change")
    ax.grid(True, which="both", alpha=0.3)
    if plotted:
        ax.legend()
        low = min(float(np.percentile(v, 1)) for v in plotted)
        high = max(float(v.max()) for v in plotted)
        ax.set_ylim(low / 2, high * 2)
    else:
        ax.text(0.5, 0.5, "no iterations recorded", transform=ax.transAxes, ha="center")


def _pixel(ds: xr.Dataset) -> float:
    """The object pixel size along x in metres."""
    geometry = ds.attrs.get("geometry", {})
    if "object_pixel_m" in geometry:
        return float(geometry["object_pixel_m"][1])
    x = np.asarray(ds["x"].values)
    return float(abs(x[1] - x[0])) if x.size > 1 else 1.0


def preview_figure(
    probe: np.ndarray,
    obj: np.ndarray,
    iteration: int,
    path: Path,
    origins: Any = None,
    pixel: float | None = None,
) -> None:
    """Write the preview PNG (:func:`preview`) to ``path``, for ``output.preview_every``."""
    save(preview(probe, obj, iteration, origins, pixel), path)


def preview(
    probe: np.ndarray,
    obj: np.ndarray,
    iteration: int,
    origins: Any = None,
    pixel: float | None = None,
) -> Any:
    """The Figure of the current object phase and probe-mode amplitudes.

    probe : (probe_mode, py, px); obj : (obj_mode, y, x) (NumPy or CuPy); origins : (N, 2)
    view corners (object pixels) for the illuminated area, or None (no dimming); pixel :
    object pixel size (m) for scale bars, or None (none).
    """
    from ptychograph.backend import to_host
    from ptychograph.modes import orthogonalise, power_shares

    probe = to_host(probe)
    first = to_host(obj[0])
    modes, _ = orthogonalise(probe)
    shares = power_shares(modes)
    mask = np.ones(first.shape, dtype=bool)
    if origins is not None:
        mask = illuminated_mask(illumination_map(modes, np.asarray(origins), first.shape))
    fig = new_figure(4.2 * (1 + len(modes)), 4)
    axes = fig.subplots(1, 1 + len(modes), squeeze=False)[0]
    phase = centred_phase(first, mask)
    panel = Panel(PHASE_MAP, PHASE_LABEL, *limits(phase, mask), mask, pixel)
    show(axes[0], phase, f"object phase, iteration {iteration}", panel)
    for ax, mode, share in zip(axes[1:], modes, shares, strict=True):
        magnitude = np.abs(mode)
        panel = Panel(MAGNITUDE_MAP, PROBE_LABEL, 0.0, float(magnitude.max()) or 1.0, None, pixel)
        show(ax, magnitude, f"probe mode: {100 * share:.1f} % of the power", panel)
    return fig

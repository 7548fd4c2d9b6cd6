"""Figures: the summary of a result (object, probe modes, error curves)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import xarray as xr


def summary_figure(ds: xr.Dataset, path: Path) -> None:
    """PNG with object phase and amplitude (scale bar in metres), every probe mode with its
    power share, and the error curves on a log axis. Written beside-then-renamed."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    obj = np.asarray(ds["object"].values[0])
    probe = np.asarray(ds["probe"].values)
    shares = np.asarray(ds["probe_mode_power"].values)
    n_modes = probe.shape[0]
    cols = max(3, n_modes)
    fig = Figure(figsize=(4 * cols, 11), layout="constrained")
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(3, cols)
    pixel = float(ds["x"].values[1] - ds["x"].values[0]) if ds.sizes["x"] > 1 else 1.0
    weight = np.abs(obj)
    _image(
        fig.add_subplot(grid[0, : cols // 2 + cols % 2]),
        np.angle(obj * np.exp(-1j * np.angle(np.sum(obj)))),
        "object phase (rad)",
        pixel,
    )
    _image(fig.add_subplot(grid[0, cols // 2 + cols % 2 :]), weight, "object amplitude", pixel)
    for k in range(n_modes):
        ax = fig.add_subplot(grid[1, k])
        _image(ax, np.abs(probe[k]), f"probe mode {k}: {100 * shares[k]:.1f} %", pixel)
    ax = fig.add_subplot(grid[2, :])
    iteration = ds["iteration"].values
    for name in ("fourier_error", "probe_change", "object_change"):
        values = np.asarray(ds[name].values)
        if values.size and np.any(values > 0):
            ax.semilogy(iteration, np.where(values > 0, values, np.nan), label=name)
    ax.set_xlabel("iteration")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def _image(ax, image: np.ndarray, title: str, pixel: float) -> None:
    low, high = _limits(image)
    cmap = "gray" if "amplitude" in title else "twilight"
    shown = ax.imshow(image, cmap=cmap, vmin=low, vmax=high)
    ax.set_title(title)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.figure.colorbar(shown, ax=ax, shrink=0.8)
    _scale_bar(ax, image.shape, pixel)


def _scale_bar(ax, shape: tuple[int, ...], pixel: float) -> None:
    """A bar of a round length near a fifth of the image width, labelled in m/um/nm."""
    width_m = shape[1] * pixel
    target = width_m / 5
    exponent = np.floor(np.log10(target))
    length = float(np.round(target / 10**exponent) * 10**exponent)
    label = _length_label(length)
    bar_px = length / pixel
    y = shape[0] * 0.93
    x0 = shape[1] * 0.05
    ax.plot([x0, x0 + bar_px], [y, y], color="yellow", linewidth=3)
    ax.text(x0, y - shape[0] * 0.03, label, color="yellow", fontsize=9)


def _length_label(length: float) -> str:
    for unit, scale in (("mm", 1e-3), ("um", 1e-6), ("nm", 1e-9)):
        if length >= scale:
            return f"{length / scale:g} {unit}"
    return f"{length / 1e-12:g} pm"


def truth_comparison(obj: np.ndarray, truth: np.ndarray, path: Path) -> None:
    """Side-by-side phase and amplitude of a reconstruction and the true object (1st modes)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recon = np.asarray(obj[0])
    true = np.asarray(truth[0])
    recon = recon * np.exp(-1j * np.angle(np.vdot(recon, true)))
    fig = Figure(figsize=(10, 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 2)
    pairs = [
        (np.angle(recon), "reconstructed phase"),
        (np.angle(true), "true phase"),
        (np.abs(recon), "reconstructed amplitude"),
        (np.abs(true), "true amplitude"),
    ]
    for ax, (image, title) in zip(axes.ravel(), pairs, strict=True):
        low, high = _limits(image)
        ax.imshow(image, cmap="gray", vmin=low, vmax=high)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)


def _limits(image: np.ndarray) -> tuple[float, float]:
    """Display range from the 1st to the 99th percentile (robust to noisy scan edges)."""
    low, high = np.percentile(image, [1, 99])
    return float(low), float(high) if high > low else float(low) + 1e-12


def _save(fig, path: Path) -> None:
    """Save beside, then rename; never leaves a temporary file behind."""
    tmp = path.parent / f".{path.name}.tmp.png"
    try:
        fig.savefig(tmp, dpi=80)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def preview_figure(probe: np.ndarray, obj: np.ndarray, iteration: int, path: Path) -> None:
    """The current object phase and probe-mode amplitudes, for ``output.preview_every``.

    probe : (probe_mode, py, px); obj : (obj_mode, y, x) (NumPy or CuPy).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ptychograph.backend import to_host
    from ptychograph.modes import orthogonalise, power_shares

    probe = to_host(probe)
    first = to_host(obj[0])
    modes, _ = orthogonalise(probe)
    shares = power_shares(modes)
    fig = Figure(figsize=(4 * (1 + len(modes)), 4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(modes), squeeze=False)[0]
    phase = np.angle(first * np.exp(-1j * np.angle(np.sum(first))))
    low, high = _limits(phase)
    axes[0].imshow(phase, cmap="gray", vmin=low, vmax=high)
    axes[0].set_title(f"object phase, iteration {iteration}")
    for ax, mode, share in zip(axes[1:], modes, shares, strict=True):
        ax.imshow(np.abs(mode), cmap="magma")
        ax.set_title(f"probe mode: {100 * share:.1f} %")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)

"""Figures a scientist reads at a glance: colour maps, colour bars, the illuminated area,
scale bars, layout, error curves, scan positions, the truth comparison and a run without
progress (ptychograph.plotting, ptychograph.comparison, ptychograph.figures_common)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xarray as xr

from ptychograph.comparison import compare, comparison_figure, fourier_ring_correlation
from ptychograph.figures_common import (
    CYCLIC_MAP,
    centred_phase,
    illuminated_mask,
    illumination_map,
    length_label,
    remove_phase_ramp,
)
from ptychograph.plotting import CURVES, preview, preview_figure, summary

PIXEL = 50e-9
CYCLIC = {"twilight", "twilight_shifted", "hsv"}


def probe_modes(n: int, size: int = 24) -> np.ndarray:
    """(n, size, size) Gaussian-like modes with decreasing power."""
    yy, xx = np.indices((size, size)) - size // 2
    base = np.exp(-(yy**2 + xx**2) / (2 * (size / 4) ** 2))
    return np.stack([base * (yy + 1j * xx) ** k / (k + 1) ** 2 / size**k for k in range(n)])


def store(n_modes: int = 1, flat: bool = False, corrected: bool = False) -> xr.Dataset:
    """A result-store-like Dataset: a 6 x 6 grid of views over a 100 x 100 object whose
    unscanned border holds wild noise, and metrics whose probe change is round-off before
    the probe updates start (iteration 2)."""
    rng = np.random.default_rng(0)
    shape, size = (100, 100), 24
    rows, cols = np.indices(shape)
    phase = 0.5 * np.sin(rows / 6.0) * np.cos(cols / 9.0)
    obj = 0.9 * np.exp(1j * phase) * (1 + 0.1 * np.cos(rows / 4.0))
    origins = np.stack(np.meshgrid(np.arange(6) * 10 + 12.0, np.arange(6) * 10 + 12.0), -1)
    origins = origins.reshape(-1, 2)
    probe = probe_modes(n_modes, size)
    lit = illuminated_mask(illumination_map(probe, origins, shape))
    noise = 30 * rng.standard_normal(shape) * np.exp(1j * rng.uniform(-3, 3, shape))
    obj = np.where(lit, obj, noise) if not flat else np.ones(shape, dtype=complex)
    y = (np.arange(shape[0]) - 12 - size // 2) * PIXEL
    x = (np.arange(shape[1]) - 12 - size // 2) * PIXEL
    positions = np.stack([y[0] + (origins[:, 0] + size // 2) * PIXEL,
                          x[0] + (origins[:, 1] + size // 2) * PIXEL], -1)  # fmt: skip
    iterations = np.arange(1, 21)
    probe_change = np.where(iterations <= 2, 1e-9, 0.05 / iterations)
    data = {
        "object": (("obj_mode", "y", "x"), obj[None]),
        "probe": (("probe_mode", "py", "px"), probe),
        "view_origin": (("frame", "axis"), origins),
        "position": (("frame", "axis"), positions),
        "fourier_error": (("iteration",), 0.1 / iterations),
        "probe_change": (("iteration",), probe_change),
        "object_change": (("iteration",), 0.2 / iterations),
        "probe_mode_power": (("probe_mode",), np.full(n_modes, 1 / n_modes)),
    }
    if corrected:
        data["position_initial"] = (("frame", "axis"), positions + 3 * PIXEL)
    coords = {"y": y, "x": x, "iteration": iterations}
    attrs = {
        "geometry": {"object_pixel_m": [PIXEL, PIXEL]},
        "config": {"reconstruction": {"probe_update_start": 2}},
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def image_axes(fig: Any) -> list[Any]:
    """Axes of the figure (and its subfigures) that are not colour bars."""
    found = []
    for ax in fig.get_axes():
        if not hasattr(ax, "_colorbar"):
            found.append(ax)
    return found


def panels(fig: Any) -> dict[str, Any]:
    """Image axes by title."""
    return {ax.get_title(): ax for ax in image_axes(fig) if ax.get_images()}


@pytest.mark.parametrize("n_modes", [1, 2, 3, 4, 5, 6, 7, 11])
def test_summary_has_no_empty_cell_for_any_mode_count(n_modes: int) -> None:
    fig = summary(store(n_modes))
    axes = image_axes(fig)
    assert all(ax.get_images() or ax.get_lines() for ax in axes)
    probes = [ax for ax in axes if ax.get_title().startswith("probe mode")]
    assert len(probes) == n_modes
    assert len(axes) == 3 + n_modes + 1  # object phase, amplitude, positions; probes; errors


def test_colour_maps_and_labelled_colour_bars() -> None:
    fig = summary(store(3))
    for ax in image_axes(fig):
        for image in ax.get_images()[:1]:
            cmap = image.get_cmap().name
            if ax.get_title().startswith("probe mode") or "amplitude" in ax.get_title():
                assert cmap not in CYCLIC, (ax.get_title(), cmap)
            if cmap in CYCLIC:
                assert image.get_clim() == (-np.pi, np.pi)
    bars = [ax for ax in fig.get_axes() if hasattr(ax, "_colorbar")]
    assert len(bars) == 2 + 3
    labels = [bar.get_ylabel() for bar in bars]
    assert all("(" in label and ")" in label for label in labels), labels
    assert "phase (rad)" in labels and any("photons" in label for label in labels)


def test_colour_limits_come_from_the_illuminated_area() -> None:
    ds = store(1)
    fig = summary(ds)
    obj = ds["object"].values[0]
    lit = illuminated_mask(illumination_map(ds["probe"].values, ds["view_origin"].values,
                                            obj.shape))  # fmt: skip
    phase_low, phase_high = panels(fig)["object phase"].get_images()[0].get_clim()
    phase = centred_phase(obj, lit)[lit]
    assert phase.min() - 1e-9 <= phase_low and phase_high <= phase.max() + 1e-9
    amplitude = panels(fig)["object amplitude (dimmed: outside the scanned area)"]
    low, high = amplitude.get_images()[0].get_clim()
    assert high < 1.2  # the border noise (amplitude ~ 30) does not set the limit
    shade = amplitude.get_images()[1].get_array()
    assert shade[0, 0, 3] > 0 and shade[50, 50, 3] == 0  # border dimmed, centre not


def test_scale_bars_are_outlined_and_in_micrometres() -> None:
    fig = summary(store(1))
    ax = panels(fig)["object phase"]
    texts = [t for t in ax.texts if "m" in t.get_text()]
    assert texts and texts[0].get_text() == "1 µm"
    assert texts[0].get_path_effects() and ax.get_lines()[0].get_path_effects()
    assert length_label(2e-6) == "2 µm" and length_label(5e-8) == "50 nm"


def test_error_plot_words_and_range() -> None:
    fig = summary(store(1))
    [ax] = [ax for ax in image_axes(fig) if ax.get_xlabel() == "iteration"]
    assert ax.get_ylabel()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(CURVES.values())
    assert ax.get_ylim()[0] > 1e-4  # the round-off probe change before updates start is left out
    probe_line = ax.get_lines()[1]
    assert probe_line.get_xdata().min() == 3


def test_scan_positions_initial_and_corrected() -> None:
    ds = store(1, corrected=True)
    ax = panels(summary(ds))["scan positions (36 views; corrections up to 210 nm)"]
    initial, corrected = ax.get_lines()[:2]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["initial", "corrected"]
    np.testing.assert_allclose(initial.get_xdata(), ds["position_initial"].values[:, 1] * 1e6)
    # the view centres drawn from view_origin fall on ``position``: one frame for both
    np.testing.assert_allclose(corrected.get_xdata(), ds["position"].values[:, 1] * 1e6)
    np.testing.assert_allclose(corrected.get_ydata(), ds["position"].values[:, 0] * 1e6)
    assert ax.get_xlabel() == "x (µm)"


def test_a_run_without_progress_says_so() -> None:
    fig = summary(store(1, flat=True))
    assert "NOT A RECONSTRUCTION" in fig.get_suptitle()
    assert panels(fig)["object phase"].get_images()[0].get_clim() == (-np.pi, np.pi)
    assert not summary(store(1)).get_suptitle()


@pytest.mark.parametrize("slope", [(0.02, -0.01), (0.9, 1.7)])  # gentle, and wrapping often
def test_phase_ramp_removal(slope: tuple[float, float]) -> None:
    rows, cols = np.indices((80, 90))
    content = np.exp(1j * 0.3 * (np.hypot(rows - 40, cols - 45) < 15))
    obj = content * np.exp(1j * (slope[0] * rows + slope[1] * cols + 0.4))
    mask = np.ones(obj.shape, dtype=bool)
    flat = centred_phase(remove_phase_ramp(obj, mask), mask)
    expected = centred_phase(content, mask)
    assert np.max(np.abs(np.angle(np.exp(1j * (flat - expected))))) < 0.05


def test_preview_labels_and_dims(tmp_path: Path) -> None:
    ds = store(2)
    path = tmp_path / "p.png"
    preview_figure(ds["probe"].values, ds["object"].values, 7, path, ds["view_origin"].values)
    assert path.stat().st_size > 5_000
    fig = preview(ds["probe"].values, ds["object"].values, 7, ds["view_origin"].values)
    shown = panels(fig)
    phase = shown["object phase, iteration 7"]
    assert phase.get_images()[0].get_clim()[1] < 1.0  # the noisy border does not set it
    assert phase.get_images()[1].get_array()[0, 0, 3] > 0  # and it is dimmed
    bars = [ax.get_ylabel() for ax in fig.get_axes() if hasattr(ax, "_colorbar")]
    assert bars[0] == "phase (rad)" and all("photons" in label for label in bars[1:])
    modes = [ax for title, ax in shown.items() if title.startswith("probe mode")]
    assert len(modes) == 2
    assert all(ax.get_images()[0].get_cmap().name not in CYCLIC for ax in modes)
    assert not phase.texts  # no pixel size given: no scale bar
    pixel = float(ds["x"].values[1] - ds["x"].values[0])
    scaled = panels(preview(ds["probe"].values, ds["object"].values, 7, None, pixel))
    bars = [t.get_text() for t in scaled["object phase, iteration 7"].texts]
    assert bars and bars[0].endswith("m") and scaled["object phase, iteration 7"].get_lines()


def test_comparison_removes_phase_scale_and_shift() -> None:
    rng = np.random.default_rng(1)
    truth = np.exp(1j * rng.uniform(-1, 1, (64, 64))) * rng.uniform(0.5, 1, (64, 64))
    recon = 0.7 * np.exp(1j * 2.0) * np.roll(truth, (2, -3), axis=(0, 1))
    mask = np.ones(truth.shape, dtype=bool)
    result, aligned = compare(recon, truth, mask, (PIXEL, PIXEL))
    assert result.error < 1e-6 and result.shift == (-2, 3)
    np.testing.assert_allclose(aligned, truth, atol=1e-6)
    assert result.resolution is None and np.all(result.frc[2:] > 0.99)
    noisy = truth + 0.5 * rng.standard_normal(truth.shape)
    freq, frc = fourier_ring_correlation(noisy, truth + 0.5 * rng.standard_normal(truth.shape),
                                         mask, (PIXEL, PIXEL))  # fmt: skip
    assert freq[-1] <= 1 / (2 * PIXEL) and frc[-1] < 0.5


def test_comparison_figure_common_limits_and_numbers() -> None:
    ds = store(1)
    truth = ds["object"].values
    recon = truth * 1.1 * np.exp(0.5j)
    fig, result = comparison_figure(recon, truth, (PIXEL, PIXEL), ds["probe"].values,
                                    ds["view_origin"].values)  # fmt: skip
    shown = panels(fig)
    pairs = [("reconstructed phase (aligned)", "true phase"),
             ("reconstructed amplitude (aligned)", "true amplitude")]  # fmt: skip
    for a, b in pairs:
        assert shown[a].get_images()[0].get_clim() == shown[b].get_images()[0].get_clim()
    assert "object error after removing global phase, scale and shift" in fig.get_suptitle()
    assert f"{100 * result.error:.1f} %" in fig.get_suptitle() and result.error < 1e-6
    bars = [ax for ax in fig.get_axes() if hasattr(ax, "_colorbar")]
    assert len(bars) == 5 and all(bar.get_ylabel() for bar in bars)
    frc = next(ax for ax in image_axes(fig) if ax.get_ylabel() == "Fourier ring correlation")
    assert frc.get_xlabel() == "spatial frequency (1/µm)"
    assert all(panels(fig)[t].texts for t in pairs[0])  # scale bars
    assert CYCLIC_MAP not in {ax.get_images()[0].get_cmap().name for ax in shown.values()}

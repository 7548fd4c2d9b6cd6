"""Test images for the simulator: a Siemens star and rendered text, or a random texture.

The seed paper's synthetic benchmark uses two images as the object's amplitude and phase; these
are generated here (no downloads), so simulations are reproducible anywhere.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy.ndimage import gaussian_filter


def siemens_star(shape: tuple[int, int], spokes: int = 24) -> np.ndarray:
    """A Siemens star filling the centre of the image: (Y, X) float64 in [0, 1]."""
    rows, cols = np.indices(shape, dtype=np.float64)
    cy, cx = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    radius = np.hypot(rows - cy, cols - cx)
    angle = np.arctan2(rows - cy, cols - cx)
    outer = 0.45 * min(shape)
    star = (np.sin(spokes / 2 * angle) > 0) & (radius < outer) & (radius > 0.04 * outer)
    ring = np.abs(radius - outer * 1.05) < 0.02 * outer
    return gaussian_filter((star | ring).astype(np.float64), 0.7)


def text_image(shape: tuple[int, int], text: str = "PTYCHO\nGRAPH") -> np.ndarray:
    """``text`` rendered in bold, centred: (Y, X) float64 in [0, 1]."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    dpi = 100
    fig = Figure(figsize=(shape[1] / dpi, shape[0] / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    fig.patch.set_facecolor("black")
    size = 0.22 * min(shape) * 72 / dpi
    fig.text(
        0.5,
        0.5,
        text,
        color="white",
        ha="center",
        va="center",
        fontsize=size,
        fontweight="bold",
        family="DejaVu Sans",
        linespacing=1.1,
    )
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    image = rgba[: shape[0], : shape[1], 0].astype(np.float64) / 255.0
    return gaussian_filter(image, 0.5)


def random_texture(shape: tuple[int, int], seed: int, width: float = 2.0) -> np.ndarray:
    """Gaussian-filtered white noise (``width`` pixels), scaled to [0, 1]: (Y, X) float64.
    Unlike the star and the text it has structure in every direction everywhere, so every
    view's position is determined by the object."""
    field = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), width)
    return (field - field.min()) / (field.max() - field.min())


def test_object(
    shape: tuple[int, int],
    max_phase: float = 1.0,
    kind: Literal["star-text", "texture"] = "star-text",
    seed: int = 0,
) -> np.ndarray:
    """Complex object, amplitude 0.6..1 and phase 0..max_phase: a Siemens star and text
    (``kind`` "star-text"), or two independent random textures ("texture", from ``seed``).

    Returns (1, Y, X) complex128, one object mode.
    """
    if kind == "texture":
        amplitude = 1.0 - 0.4 * random_texture(shape, seed)
        phase = max_phase * random_texture(shape, seed + 1)
    else:
        amplitude = 1.0 - 0.4 * siemens_star(shape)
        phase = max_phase * text_image(shape)
    return (amplitude * np.exp(1j * phase))[None]

"""Synthetic scans: the seed paper's benchmark, with step and fly scans.

Two images give the object's amplitude and phase (:mod:`ptychograph.phantoms`); a defocused
zone-plate-like probe fits inside the frame; raster or Fermat-spiral scans of any N with a chosen
overlap; Poisson noise at a chosen photon count; and a fly-scan mode that averages the
intensity over sub-positions inside each exposure (continuous motion), which is equivalent to a
partially coherent illumination and is what extra probe modes recover (docs/design.md, "Fly scans").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ptychograph.backend import ifft2c
from ptychograph.geometry import object_shape, view_origins
from ptychograph.operators import (
    exit_waves,
    extract_views,
    far_field_intensity,
    phase_ramps,
    shift_modes,
    split_origins,
)
from ptychograph.phantoms import test_object
from ptychograph.scan import HC_EV_M, Geometry, Scan


class SimulationConfig(BaseModel):
    """Parameters of a simulated scan."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    n_frames: int = Field(400, ge=1, le=1_000_000, description="Number of exposures N.")
    frame_size: int = Field(64, ge=16, le=4096, description="Frame side H = W in pixels.")
    scan: Literal["raster", "spiral"] = Field("spiral", description="Scan pattern.")
    overlap: float = Field(0.7, ge=0.0, lt=1.0, description="Linear overlap of probe discs.")
    photons: float | None = Field(
        1e6, gt=0, description="Mean photons per frame (Poisson noise); null = no noise."
    )
    fly_blur: float = Field(
        0.0, ge=0.0, description="Motion during one exposure along x, in object pixels."
    )
    fly_steps: int = Field(8, ge=1, le=256, description="Sub-positions averaged per exposure.")
    probe_diameter: float = Field(0.4, gt=0.05, lt=0.8, description="Probe size / frame size.")
    max_phase: float = Field(1.0, ge=0.0, le=6.3, description="Object phase range (rad).")
    phantom: Literal["star-text", "texture"] = Field(
        "star-text",
        description="Object: Siemens-star amplitude and text phase, or random textures "
        "(structure in every direction everywhere).",
    )
    energy_ev: float = Field(8000.0, gt=0, description="Photon energy, eV.")
    distance_m: float = Field(2.0, gt=0, description="Sample-detector distance, m.")
    detector_pixel_m: float = Field(75e-6, gt=0, description="Detector pixel size, m.")
    jitter: float = Field(0.1, ge=0.0, le=0.5, description="Random position jitter / step.")
    seed: int = Field(0, ge=0, description="Random seed.")


@dataclass(frozen=True)
class Simulation:
    """A simulated scan and its truth.

    scan : the measurement. obj : (1, Y, X) complex true object on the reconstruction grid
    (default margin 8). probe : (1, H, W) complex true probe. origins : (N, 2) view corners.
    guess : (1, H, W) complex nominal probe (defocus off by 20 %), stored as CXI illumination.
    """

    scan: Scan
    obj: np.ndarray
    probe: np.ndarray
    origins: np.ndarray
    guess: np.ndarray


def zone_plate_probe(size: int, diameter: float, defocus_error: float = 1.0) -> np.ndarray:
    """A defocused zone-plate probe: annular pupil with a quadratic (defocus) phase.

    size : frame side. diameter : probe disc diameter / frame side. Returns (size, size)
    complex128 with unit total power; the disc fits inside the frame and is windowed to zero at
    the edges.
    """
    u = np.arange(size) - size // 2
    uy, ux = np.meshgrid(u, u, indexing="ij")
    rho = np.hypot(uy, ux)
    outer = 0.22 * size
    pupil = ((rho < outer) & (rho > 0.3 * outer)).astype(np.float64)
    # A phase pi u^2 / (size f) moves frequency u by u / f pixels: disc radius = outer / f.
    focal = outer / (diameter * size / 2) * defocus_error
    field = pupil * np.exp(1j * np.pi * rho**2 / (size * focal))
    probe = np.fft.fftshift(ifft2c(field))
    window = np.hanning(size)[:, None] * np.hanning(size)[None, :]
    probe = probe * window**0.25
    return probe / np.sqrt(np.sum(np.abs(probe) ** 2))


def scan_pixels(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """Scan positions (N, 2) (y, x) in object pixels, centred on zero."""
    step = config.probe_diameter * config.frame_size * (1.0 - config.overlap)
    step = max(step, 0.5)
    n = config.n_frames
    if config.scan == "raster":
        cols = int(np.ceil(np.sqrt(n)))
        idx = np.arange(n)
        pos = np.stack([idx // cols, idx % cols], axis=1).astype(np.float64) * step
    else:
        golden = np.pi * (3.0 - np.sqrt(5.0))
        half = np.arange(n) + 0.5
        radius = step / np.sqrt(np.pi) * np.sqrt(half) * 1.2
        pos = np.stack([radius * np.sin(half * golden), radius * np.cos(half * golden)], axis=1)
    pos = pos + rng.uniform(-config.jitter, config.jitter, pos.shape) * step
    return pos - pos.mean(axis=0)


def simulate(config: SimulationConfig) -> Simulation:
    """Simulate a scan (see module docstring)."""
    rng = np.random.default_rng(config.seed)
    size = config.frame_size
    wavelength = HC_EV_M / config.energy_ev
    geometry = Geometry(wavelength, config.distance_m, (config.detector_pixel_m,) * 2, (size, size))
    pixel = geometry.object_pixel
    pos_px = scan_pixels(config, rng)
    positions = pos_px * np.asarray(pixel)  # metres (y, x)
    origins = view_origins(positions, pixel, margin=8)
    shape = object_shape(origins, (size, size), margin=8)
    obj = test_object(shape, config.max_phase, config.phantom, config.seed)
    probe = zone_plate_probe(size, config.probe_diameter)[None]
    intensity = _fly_intensity(obj, probe, origins, config)
    scale = 1.0
    if config.photons is not None:
        scale = config.photons / float(intensity.sum(axis=(1, 2)).mean())
        frames = rng.poisson(intensity * scale).astype(np.float32)
    else:
        frames = intensity.astype(np.float32)
    probe = probe * np.sqrt(scale)
    guess = zone_plate_probe(size, config.probe_diameter, defocus_error=1.2)[None]
    guess = guess * np.sqrt(np.sum(np.abs(probe) ** 2))
    scan = Scan(frames, positions, geometry, mask=None, illumination=guess.astype(np.complex64))
    return Simulation(scan, obj, probe, origins, guess)


def _fly_intensity(
    obj: np.ndarray, probe: np.ndarray, origins: np.ndarray, config: SimulationConfig
) -> np.ndarray:
    """Mean far-field intensity over ``fly_steps`` sub-positions per exposure: (N, H, W)."""
    size = config.frame_size
    steps = config.fly_steps if config.fly_blur > 0 else 1
    offsets = (np.arange(steps) + 0.5) / steps - 0.5 if steps > 1 else np.zeros(1)
    total = np.zeros((origins.shape[0], size, size))
    for offset in offsets:
        sub = origins + np.array([0.0, offset * config.fly_blur])
        for start in range(0, sub.shape[0], 256):
            corners, frac = split_origins(sub[start : start + 256])
            ramps = phase_ramps(frac, (size, size), np.complex128)
            waves = exit_waves(shift_modes(probe, ramps), extract_views(obj, corners, (size, size)))
            total[start : start + 256] += far_field_intensity(waves)
    return total / len(offsets)

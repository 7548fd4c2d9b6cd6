"""Initial probe and object (docs/design.md, "Step 7").

Probe: from the data (the mean diffraction pattern's amplitude with a flat phase), from a file
(.npy or an earlier result), from an earlier result, or the scan file's own illumination. Extra
probe modes start as differently blurred, perturbed copies of the first, with a small share of
its power (the seed paper's recipe), and are then orthogonalised. Object: flat, random or from
an earlier result. Every random choice draws from a seeded generator.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.ndimage import gaussian_filter

from ptychograph.backend import ifft2c
from ptychograph.errors import InputError
from ptychograph.modes import orthogonalise


def probe_from_data(frames: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Probe whose far field is the mean diffraction amplitude, with a flat phase.

    frames : (N, H, W) intensities (zero frequency at the centre); mask : (H, W) bad pixels.
    Returns (H, W) complex128, centred in the frame, with total power equal to the mean counts
    per frame (so that |O| = 1 matches the data; F is unitary).
    """
    return probe_from_mean(frames.mean(axis=0, dtype=np.float64), mask)


def probe_from_mean(mean_frame: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """:func:`probe_from_data` from the mean frame (H, W) alone (what a cluster reduces)."""
    mean = np.asarray(mean_frame, dtype=np.float64)
    power = float(mean.sum())
    if mask is not None:
        mean = np.where(mask, 0.0, mean)
    probe = np.fft.fftshift(ifft2c(np.sqrt(np.maximum(mean, 0.0)).astype(np.complex128)))
    return scale_power(probe, power)


def scale_power(probe: np.ndarray, power: float) -> np.ndarray:
    """Scale a probe (any shape) to a total power sum |P|^2 = ``power``."""
    current = float(np.sum(np.abs(probe) ** 2))
    if current <= 0 or not np.isfinite(current):
        raise InputError("initial.probe", "initial probe has no power")
    return probe * np.sqrt(power / current)


def add_modes(
    probe: np.ndarray, n_modes: int, relative_power: float, rng: np.random.Generator
) -> np.ndarray:
    """Extend (M, H, W) probe modes to ``n_modes`` with blurred, perturbed copies of mode 0.

    Mode k (k >= M) is mode 0 blurred by a Gaussian of sigma k pixels, times a smooth random
    phase, with ``relative_power`` of mode 0's power. Returns (n_modes, H, W) complex128,
    orthogonalised (strongest first); extra input modes beyond ``n_modes`` are dropped.
    """
    first = probe[0]
    power = float(np.sum(np.abs(first) ** 2))
    modes = [m for m in probe[:n_modes]]
    for k in range(len(modes), n_modes):
        blurred = gaussian_filter(first.real, k) + 1j * gaussian_filter(first.imag, k)
        phase = gaussian_filter(rng.standard_normal(first.shape), 4.0)
        phase *= np.pi / max(float(np.abs(phase).max()), 1e-12)
        modes.append(scale_power(blurred * np.exp(1j * phase), relative_power * power))
    stacked = np.stack(modes).astype(np.complex128)
    if n_modes > 1:
        stacked, _ = orthogonalise(stacked)
    return stacked


def flat_object(shape: tuple[int, int], n_modes: int, rng: np.random.Generator) -> np.ndarray:
    """Object of ones: (n_modes, Y, X) complex128; extra modes are weak random copies."""
    obj = np.ones((n_modes, *shape), dtype=np.complex128)
    for mode in range(1, n_modes):
        obj[mode] = 0.1 * _random_field(shape, rng)
    return obj


def random_object(shape: tuple[int, int], n_modes: int, rng: np.random.Generator) -> np.ndarray:
    """Amplitude uniform in [0.9, 1], phase uniform in [-0.1, 0.1]: (n_modes, Y, X) complex."""
    obj = _random_field((n_modes, *shape), rng)
    obj[1:] *= 0.1
    return obj


def _random_field(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    amplitude = rng.uniform(0.9, 1.0, shape)
    phase = rng.uniform(-0.1, 0.1, shape)
    return amplitude * np.exp(1j * phase)


def load_probe_file(path: Path, frame_shape: tuple[int, int]) -> np.ndarray:
    """Probe from a .npy ((H, W) or (M, H, W)) or a result .zarr: (M, H, W) complex128."""
    if path.suffix == ".zarr" or path.is_dir():
        return load_previous(path, "probe", "initial.probe_path")
    if not path.is_file():
        raise InputError("initial.probe_path", f"{path} does not exist")
    try:
        probe = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise InputError("initial.probe_path", f"{path} is not a .npy array ({err})") from None
    probe = np.asarray(probe)
    if probe.ndim == 2:
        probe = probe[None]
    if probe.ndim != 3 or probe.shape[1:] != frame_shape:
        raise InputError(
            "initial.probe_path", f"probe shape {probe.shape} does not fit frames {frame_shape}"
        )
    if not np.all(np.isfinite(probe)):
        raise InputError("initial.probe_path", "probe holds NaN or Inf")
    return probe.astype(np.complex128)


def load_previous(path: Path, name: str, field: str) -> np.ndarray:
    """Read ``probe`` or ``object`` from an earlier result store: (M, ...) complex128.

    ``field`` names the config key in error messages.
    """
    import xarray as xr

    if not path.exists():
        raise InputError(field, f"{path} does not exist")
    try:
        with xr.open_zarr(path, consolidated=False) as ds:
            values = np.asarray(ds[name].values)
    except (OSError, KeyError, ValueError) as err:
        raise InputError(field, f"{path} is not a ptychograph result ({err})") from None
    return values.astype(np.complex128)

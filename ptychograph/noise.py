"""The intensity of one photon in the data's units, so that noise rules work on any scaling
(docs/design.md, "Noise").

Detector frames are photon counts (integers), but beamlines often store them divided by the
incident flux or a monitor count, leaving values well below 1. The Poisson variance of
sqrt(I) is 1/4 per pixel only in photons; for frames I' = I / f it is 1/(4 f). Counts divided
by a (per-frame) factor stay quantised: every value of a frame is a whole multiple of its
smallest positive value 1 / f_j. :func:`photon_unit` finds that quantum.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from scipy import stats

from ptychograph.backend import get_array_module

#: Frames looked at (evenly spread over the scan).
SAMPLE_FRAMES = 256
#: A value is a whole multiple of the quantum when within this fraction of one.
TOLERANCE = 1e-3


def photon_unit(frames: np.ndarray) -> float:
    """One photon in the units of ``frames`` ((N, H, W) real, non-negative).

    1.0 for photon counts (integer values); the median over frames of each frame's smallest
    positive value when the frames are counts divided by a factor (quantised); 0.0 when the
    values are not quantised at all (e.g. gain-corrected or background-subtracted frames): the
    photon scale is then unknown, and noise rules that need it are switched off.
    """
    frames = np.asarray(frames)
    if frames.size == 0:
        return 1.0
    step = max(1, frames.shape[0] // SAMPLE_FRAMES)
    sample = np.asarray(frames[::step][:SAMPLE_FRAMES], dtype=np.float64)
    quanta = []
    for frame in sample:
        positive = frame[frame > 0]
        if positive.size:
            quantum = float(positive.min())
            if _whole_multiples(positive, quantum):
                quanta.append(quantum)
    if len(quanta) < max(1, len(sample) // 2):
        return 0.0
    unit = float(np.median(quanta))
    return 1.0 if abs(unit - 1.0) < TOLERANCE else unit


def _whole_multiples(values: np.ndarray, quantum: float) -> bool:
    """Whether (nearly) every value is a whole multiple of ``quantum`` (allowing the rounding of
    single precision, 1e-6 of the multiple)."""
    ratio = values / quantum
    off = np.abs(ratio - np.round(ratio))
    return bool(np.mean(off < TOLERANCE + 1e-6 * ratio) > 0.999)


@cache
def _amplitude_noise_table() -> tuple[np.ndarray, np.ndarray]:
    """log10 x and E[(sqrt(n) - sqrt(x))^2] for n ~ Poisson(x), x from 1e-4 to 1e4 photons."""
    means = np.logspace(-4, 4, 161)
    values = np.empty_like(means)
    with np.errstate(under="ignore"):  # the far tails' probabilities
        for i, mean in enumerate(means):
            counts = np.arange(int(mean + 12 * np.sqrt(mean) + 30))
            weights = stats.poisson.pmf(counts, mean)
            values[i] = np.sum(weights * (np.sqrt(counts) - np.sqrt(mean)) ** 2)
    return np.log10(means), values


def amplitude_noise(power: Any, unit: float) -> Any:
    """The expected (sqrt(I) - sqrt(lambda))^2 per pixel where the data I are Poisson counts of
    mean lambda = ``power`` (frames' units; any array, NumPy or CuPy) and one photon is
    ``unit`` > 0 in those units: unit * g(lambda / unit), g rising as 2x for few photons,
    peaking near 0.45 at one photon and falling to 1/4 for many."""
    xp = get_array_module(power)
    log_means, values = _amplitude_noise_table()
    photons = xp.maximum(power / unit, 0.0)
    inside = xp.interp(
        xp.log10(xp.clip(photons, 1e-4, 1e4)), xp.asarray(log_means), xp.asarray(values)
    )
    few = photons * (values[0] / 1e-4)  # below the table: linear in x
    return unit * xp.where(photons < 1e-4, few, xp.where(photons > 1e4, 0.25, inside))

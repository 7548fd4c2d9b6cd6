"""Per-pixel helpers of :func:`ptychograph.cpu_fused.fourier_step` (numba): the error terms of
one view, eq. 4's factor per pixel and its exact path for extreme values (docs/design.md, "Step
3: Fourier modulus constraint (eq. 4)" and "Cost on CPU"). Compiled as the kernels are: one
thread, the GIL released, cached on disk, NumPy's error model.
"""

from __future__ import annotations

import math

import numba
import numpy as np

_jit = numba.njit(nogil=True, cache=True, error_model="numpy")
#: The same, free to reorder sums (vectorised reductions); NaN and inf keep their meaning.
_jit_sum = numba.njit(nogil=True, cache=True, error_model="numpy", fastmath={"reassoc"})


@_jit_sum
def residuals(model_power, power, amplitudes, good):
    """sum_good (a - |F phi|)^2, sum_good a^2 and sum_good (|X| - a)^2 of one view, the roots
    in the data's precision (as the reference), the sums in double (reassociated: vectorised)."""
    residual = 0.0
    total = 0.0
    iterate = 0.0
    for p in range(power.shape[0]):
        a = amplitudes[p]
        d = np.float64(a - np.sqrt(model_power[p]))
        e = np.float64(np.sqrt(power[p]) - a)
        a2 = np.float64(a) * np.float64(a)
        residual += d * d if good[p] else 0.0
        total += a2 if good[p] else 0.0
        iterate += e * e if good[p] else 0.0
    return residual, total, iterate


@_jit
def ratios(power, amplitudes, good, limits, step, relaxed, ratio, mix, minus):
    """Eq. 4's factor r per pixel, as mix r - minus into ``ratio``: r = a / |X| where safe
    (relaxed: 1 + step (a / |X| - 1)), 1 at masked pixels; NaN where the extreme path must
    run. Returns how many do."""
    tiny, huge, ratio_max = limits[0], limits[1], limits[2]
    one = ratio_max / ratio_max
    relax = one * step
    extreme = 0
    for p in range(power.shape[0]):
        a = amplitudes[p]
        modulus = np.sqrt(power[p])
        safe = (power[p] >= tiny) & (power[p] <= huge) & (a <= modulus * ratio_max)
        plain = a / modulus if safe & good[p] else one
        value = one + relax * (plain - one) if relaxed else plain
        unsafe = good[p] & ~safe
        ratio[p] = np.nan if unsafe else mix * value - minus
        extreme += unsafe
    return extreme


@_jit
def constrain_extreme(values, amplitude, relax, mix, minus):
    """Eq. 4 at one pixel without the ratio (:func:`ptychograph.fourier._constrain_extreme`):
    the modes scaled exactly by 2^-e to a modulus near 1, then given the amplitude; relaxed as
    (1 - relax) X + relax X_c; mix F_c X - minus X written; all-zero pixels left as they are."""
    largest = 0.0
    for m in range(values.shape[0]):
        largest = max(largest, abs(values[m].real), abs(values[m].imag))
    if not largest > 0:
        return
    shift = -math.frexp(largest)[1]
    power = 0.0
    for m in range(values.shape[0]):
        re = math.ldexp(values[m].real, shift)
        im = math.ldexp(values[m].imag, shift)
        power += re * re + im * im
    factor = amplitude / math.sqrt(power)
    for m in range(values.shape[0]):
        re = math.ldexp(values[m].real, shift) * factor
        im = math.ldexp(values[m].imag, shift) * factor
        re = (1 - relax) * values[m].real + relax * re
        im = (1 - relax) * values[m].imag + relax * im
        values[m] = complex(mix * re - minus * values[m].real, mix * im - minus * values[m].imag)

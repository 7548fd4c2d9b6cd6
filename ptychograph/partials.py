"""Partial sums of a reduction as small typed values with an associative combine.

The overlap constraint (docs/design.md, "Step 4", eqs. 5-6) and the Fourier error
(docs/design.md, "Step 5") are ratios of sums
over views. Every chunk of views yields a partial value; partials are combined with ``+`` in any
order or tree shape and divided once at the end, which is what a tree reduction across Dask
workers needs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Any

from ptychograph.backend import Array, get_array_module


@dataclass(frozen=True)
class OverlapPartials:
    """Numerator and denominator of a probe (eq. 5) or object (eq. 6) update.

    numerator : (modes, ...) complex - e.g. (M_O, Y, X) for the object.
    denominator : (...) real - shared by all modes, e.g. (Y, X).
    """

    numerator: Array
    denominator: Array

    def __add__(self, other: OverlapPartials) -> OverlapPartials:
        return OverlapPartials(
            self.numerator + other.numerator, self.denominator + other.denominator
        )


@dataclass(frozen=True)
class FourierError:
    """Terms of the Fourier error sum_j sum_q (sqrt(I) - |F psi|)^2 / sum_j sum_q I.

    Both are Python floats over the good (unmasked) detector pixels of the views seen so far.
    """

    residual: float
    total: float

    def __add__(self, other: FourierError) -> FourierError:
        return FourierError(self.residual + other.residual, self.total + other.total)

    @property
    def value(self) -> float:
        """The normalised error; 0 when no counts were seen."""
        return self.residual / self.total if self.total > 0 else 0.0


def regularised_divide(partials: OverlapPartials, previous: Array, alpha: float) -> Array:
    """Divide a summed update once, finite where nothing was illuminated.

    new = (numerator + eps * previous) / (denominator + eps),  eps = alpha * max(denominator).

    Where the denominator is large this is the plain ratio of eqs. 5-6; where it vanishes the
    estimate keeps its previous value instead of blowing up.
    numerator, previous : (modes, ...) complex; denominator : (...) real.
    """
    xp = get_array_module(partials.numerator)
    previous = xp.asarray(previous)  # the estimate joins the partials' device
    eps = alpha * float(xp.max(partials.denominator))
    if eps <= 0:
        eps = 1e-30
    den = partials.denominator + eps
    return ((partials.numerator + eps * previous) / den[None]).astype(previous.dtype)


def regularised_step(partials: OverlapPartials, previous: Array, alpha: float) -> Array:
    """A preconditioned step from residual-form partials: previous + numerator / (den + eps).

    eps = alpha * max(denominator). With numerator = b - den * previous this equals
    :func:`regularised_divide` of (b, den), i.e. eqs. 5-6 for integer positions.
    numerator, previous : (modes, ...) complex; denominator : (...) real.
    """
    xp = get_array_module(partials.numerator)
    previous = xp.asarray(previous)  # the estimate joins the partials' device
    eps = max(alpha * float(xp.max(partials.denominator)), 1e-30)
    step = partials.numerator / (partials.denominator + eps)[None]
    return (previous + step).astype(previous.dtype)


def tree_sum(parts: Sequence[Any]) -> Any:
    """Sum partials pairwise (depth log2 of their number); any order gives the same sum up to
    rounding. ``parts`` : values with an associative ``+`` (at least one)."""
    items = list(parts)
    if not items:
        raise ValueError("nothing to reduce")
    while len(items) > 1:
        pairs = [items[i] + items[i + 1] for i in range(0, len(items) - 1, 2)]
        items = pairs + ([items[-1]] if len(items) % 2 else [])
    return reduce(lambda a, b: a + b, items)

"""The Difference Map loop, independent of where the views live.

:func:`run_dm` drives the iteration (DESIGN.md steps 1-6; Thibault et al., Science 321 (2008),
doi:10.1126/science.1158573; Dong et al., arXiv:1808.10375) through an *executor* that owns the
views: :class:`LocalExecutor` keeps them in this process; the Dask executor keeps them resident
on workers. Each executor call maps over every chunk of views and reduces the small partials.

One iteration:
  1. exit-wave update on every chunk (eqs. 3-4) -> Fourier error (reduced), fused with the
     first object partials (same probe);
  2. ``overlap_passes`` alternating object (eq. 6) and probe (eq. 5) updates, each a reduction
     of partial numerators/denominators and one regularised division;
  3. orthogonalise the probe modes; the same rotation is applied to psi on the next update;
  4. eps_P, eps_O (eq. 7).
The estimates of the last ``average_last`` fraction of iterations are averaged into the result
(as the HXN tools do), since on noisy data DM wanders around the solution (DESIGN.md "Noise").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import reduce
from typing import Protocol

from ptychograph.backend import Array, to_host
from ptychograph.modes import orthogonalise
from ptychograph.partials import (
    FourierError,
    OverlapPartials,
    regularised_divide,
    regularised_step,
)
from ptychograph.state import History, State, relative_change
from ptychograph.views import (
    ViewChunk,
    object_partials,
    probe_partials,
    update_views,
)


@dataclass(frozen=True)
class Settings:
    """What the loop needs from the configuration."""

    iterations: int
    beta: float = 0.8
    overlap_passes: int = 2
    probe_update_start: int = 2
    regularisation: float = 1e-2
    orthogonalise_probe: bool = True
    noise_bound: float = 1.0
    average_last: float = 0.2


class Executor(Protocol):
    """Where the views live: maps a per-chunk function over every chunk and reduces."""

    def update_views(
        self, probe: Array, obj: Array, beta: float, rotation: Array | None, noise_bound: float
    ) -> tuple[FourierError, OverlapPartials]: ...

    def object_partials(self, probe: Array, obj_shape: tuple[int, int]) -> OverlapPartials: ...

    def probe_partials(self, obj: Array, probe: Array) -> OverlapPartials: ...


class LocalExecutor:
    """All chunks in this process; partials reduced pairwise in a tree."""

    def __init__(self, chunks: Sequence[ViewChunk], batch_size: int = 64) -> None:
        self.chunks = list(chunks)
        self.batch_size = batch_size

    def update_views(
        self, probe: Array, obj: Array, beta: float, rotation: Array | None, noise_bound: float
    ) -> tuple[FourierError, OverlapPartials]:
        parts = [
            update_views(c, probe, obj, beta, self.batch_size, rotation, noise_bound)
            for c in self.chunks
        ]
        error = tree_sum([p[0] for p in parts])
        return error, tree_sum([p[1] for p in parts])

    def object_partials(self, probe: Array, obj_shape: tuple[int, int]) -> OverlapPartials:
        return tree_sum(
            [object_partials(c, probe, obj_shape, self.batch_size) for c in self.chunks]
        )

    def probe_partials(self, obj: Array, probe: Array) -> OverlapPartials:
        return tree_sum([probe_partials(c, obj, probe, self.batch_size) for c in self.chunks])


def tree_sum(parts: Sequence):
    """Sum partials pairwise (depth log2 of their number); any order gives the same sum."""
    items = list(parts)
    if not items:
        raise ValueError("nothing to reduce")
    while len(items) > 1:
        pairs = [items[i] + items[i + 1] for i in range(0, len(items) - 1, 2)]
        items = pairs + ([items[-1]] if len(items) % 2 else [])
    return reduce(lambda a, b: a + b, items)


#: Called after each iteration with the number of completed iterations and the history.
Callback = Callable[[int, History], None]


def run_dm(
    executor: Executor,
    state: State,
    settings: Settings,
    history: History | None = None,
    callback: Callback | None = None,
) -> tuple[State, History]:
    """Iterate DM from ``state`` until ``settings.iterations`` iterations are done.

    state.probe : (M_P, H, W), state.obj : (M_O, Y, X), both complex of the working precision
    (NumPy or CuPy, as the executor expects). ``callback(iteration, history)`` runs after each
    iteration. Returns the final state and the history.
    """
    history = history if history is not None else History()
    probe, obj = state.probe, state.obj
    rotation: Array | None = None
    average_from = settings.iterations - int(round(settings.average_last * settings.iterations))
    sums: list[Array] | None = None
    for iteration in range(state.iteration, settings.iterations):
        start = time.perf_counter()
        old_probe, old_obj = probe, obj
        error, partials = executor.update_views(
            probe, obj, settings.beta, rotation, settings.noise_bound
        )
        for overlap_pass in range(settings.overlap_passes):
            if overlap_pass > 0:
                partials = executor.object_partials(probe, obj.shape[1:])
            obj = regularised_divide(partials, obj, settings.regularisation)
            if iteration >= settings.probe_update_start:
                probe = regularised_step(
                    executor.probe_partials(obj, probe), probe, settings.regularisation
                )
        rotation = None
        if settings.orthogonalise_probe and probe.shape[0] > 1:
            probe, rotation = orthogonalise(probe)
        history.append(
            error.value,
            relative_change(to_host(probe), to_host(old_probe)),
            relative_change(to_host(obj), to_host(old_obj)),
            time.perf_counter() - start,
        )
        if iteration >= average_from:
            sums = [probe.copy(), obj.copy()] if sums is None else [sums[0] + probe, sums[1] + obj]
        state = State(probe, obj, iteration + 1)
        if callback is not None:
            callback(state.iteration, history)
    if sums is not None and settings.iterations - average_from > 1:
        count = settings.iterations - max(average_from, 0)
        state = State(sums[0] / count, sums[1] / count, state.iteration)
    return state, history

"""The multi-mode Difference Map iteration, written once for every executor.

Thibault et al., Science 321 (2008), doi:10.1126/science.1158573 and Ultramicroscopy 109 (2009),
doi:10.1016/j.ultramic.2008.12.011; Thibault & Menzel, Nature 494 (2013) for the modes; Dong et
al., arXiv:1808.10375 for the distributed form. docs/design.md, "One DM iteration":

  1. exit-wave update on every chunk (eqs. 3-4) -> Fourier error, fused with the first object
     partials (same probe);
  2. ``overlap_passes`` alternating object (eq. 6) and probe (eq. 5, residual form) updates,
     each a tree reduction of partial numerators/denominators and one regularised division;
  3. orthogonalise the probe modes; the rotation reaches psi at the next exit-wave update;
  4. eps_P, eps_O (eq. 7).

The per-chunk tasks take :class:`~ptychograph.resident.ResidentViews` first; the small steps
between reductions are plain functions of the reduced values and :class:`State`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ptychograph.algorithms.base import Executor, Handle, IterationStats
from ptychograph.modes import orthogonalise
from ptychograph.partials import (
    FourierError,
    OverlapPartials,
    regularised_divide,
    regularised_step,
    tree_sum,
)
from ptychograph.positions import follow_all
from ptychograph.resident import ResidentViews
from ptychograph.state import State, relative_change
from ptychograph.views import object_partials, probe_partials, update_views


@dataclass(frozen=True)
class DMOptions:
    """Settings of the DM iteration (the ``reconstruction`` keys of the same names)."""

    beta: float = 0.8
    overlap_passes: int = 1
    probe_update_start: int = 2
    regularisation: float = 1e-2
    orthogonalise_probe: bool = True
    noise_bound: float = 1.0


@dataclass(frozen=True)
class UpdateParts:
    """What a slot's exit-wave update returns: error terms and the first object partials."""

    error: FourierError
    partials: OverlapPartials

    def __add__(self, other: UpdateParts) -> UpdateParts:
        return UpdateParts(self.error + other.error, self.partials + other.partials)


# ---------------------------------------------------------------- per-chunk tasks
def update_task(views: ResidentViews, state: State, beta: float, noise_bound: float) -> UpdateParts:
    """Eqs. 3-4 on every resident view, fused with the first object partials (eq. 6)."""
    follow_all(views.chunks, state.origins)
    probe, obj = views.device(state.probe), views.device(state.obj)
    rotation = views.device(state.rotation)
    parts = []
    for chunk in views.chunks:
        error, partials = update_views(
            chunk, probe, obj, beta, views.batch_size, rotation, noise_bound, ops=views.ops
        )
        assert partials is not None
        parts.append(UpdateParts(error, partials))
    return tree_sum(parts)


def object_partials_task(views: ResidentViews, state: State) -> OverlapPartials:
    """Eq. 6 partial sums of the resident views."""
    follow_all(views.chunks, state.origins)
    probe = views.device(state.probe)
    shape = (int(state.obj.shape[1]), int(state.obj.shape[2]))
    return tree_sum(
        [object_partials(c, probe, shape, views.batch_size, ops=views.ops) for c in views.chunks]
    )


def probe_partials_task(views: ResidentViews, state: State) -> OverlapPartials:
    """Eq. 5 partial sums (residual form) of the resident views."""
    follow_all(views.chunks, state.origins)
    probe, obj = views.device(state.probe), views.device(state.obj)
    return tree_sum(
        [probe_partials(c, obj, probe, views.batch_size, ops=views.ops) for c in views.chunks]
    )


# ---------------------------------------------------------------- steps on reduced values
def object_step(parts: UpdateParts | OverlapPartials, state: State, alpha: float) -> State:
    """Divide once: the new object (eq. 6); the probe is unchanged."""
    partials = parts.partials if isinstance(parts, UpdateParts) else parts
    return state.replace(obj=regularised_divide(partials, state.obj, alpha), rotation=None)


def probe_step(parts: OverlapPartials, state: State, alpha: float) -> State:
    """The new probe (eq. 5, residual form); the object is unchanged."""
    return state.replace(probe=regularised_step(parts, state.probe, alpha), rotation=None)


def finish_step(state: State, orthogonalise_probe: bool, iteration: int) -> State:
    """Orthogonalise the probe modes (the rotation travels to the next exit-wave update) and
    count the iteration as done."""
    if not orthogonalise_probe or state.probe.shape[0] == 1:
        return state.replace(iteration=iteration + 1, rotation=None)
    probe, rotation = orthogonalise(state.probe)
    return state.replace(probe=probe, rotation=rotation, iteration=iteration + 1)


def stats_step(parts: UpdateParts, old: State, new: State) -> IterationStats:
    """Fourier error, eps_P and eps_O of one iteration (eq. 7)."""
    return IterationStats(
        parts.error.value,
        relative_change(new.probe, old.probe),
        relative_change(new.obj, old.obj),
    )


class DifferenceMap:
    """DM as an :class:`~ptychograph.algorithms.base.Algorithm`."""

    name = "dm"
    #: The resident exit waves are this algorithm's (position correction's leave-one-out
    #: object, :mod:`ptychograph.positions`, is formed from them).
    holds_exit_waves = True

    def __init__(self, options: DMOptions) -> None:
        self.options = options

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        opts, alpha = self.options, self.options.regularisation
        tag = f"dm{iteration}"
        update = executor.map_reduce(
            update_task, state, opts.beta, opts.noise_bound, key=f"{tag}-update"
        )
        new = executor.apply(object_step, update, state, alpha, key=f"{tag}-object-0")
        for p in range(opts.overlap_passes):
            if p > 0:
                parts = executor.map_reduce(object_partials_task, new, key=f"{tag}-o{p}")
                new = executor.apply(object_step, parts, new, alpha, key=f"{tag}-object-{p}")
            if iteration >= opts.probe_update_start:
                parts = executor.map_reduce(probe_partials_task, new, key=f"{tag}-p{p}")
                new = executor.apply(probe_step, parts, new, alpha, key=f"{tag}-probe-{p}")
        new = executor.apply(
            finish_step, new, opts.orthogonalise_probe, iteration, key=f"{tag}-finish"
        )
        stats = executor.apply(stats_step, update, state, new, key=f"{tag}-stats")
        return new, stats

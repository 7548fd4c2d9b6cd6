"""Maximum-likelihood refinement: preconditioned conjugate gradients on the Poisson likelihood.

After DM has found the basin, ML descends the Poisson negative log-likelihood L of the counts
(Thibault & Guizar-Sicairos, New J. Phys. 14, 063004 (2012), doi:10.1088/1367-2630/14/6/063004;
docs/design.md, "ML refinement"). One iteration, written once for every executor:

  1. per-chunk gradient terms of L (:func:`ptychograph.likelihood.gradient`), tree-reduced;
  2. the search direction: the gradient scaled by the diagonal preconditioners (the overlap
     denominators of eqs. 5-6), combined with the previous direction by Polak-Ribiere (reset
     to steepest descent when the formula goes negative or nothing is remembered);
  3. per-chunk slope and curvature of L along the direction, tree-reduced; the step is the
     Newton step along the line, a = -L'/L'' (none when the line is not convex);
  4. P <- P + a h_P, O <- O + a h_O.

The previous gradient and direction ride with the state (:attr:`State.memory`), so they pass
through sync points and cut lineage like the estimates; a resumed run restarts the conjugate
directions from steepest descent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptychograph.algorithms.base import Executor, Handle, IterationStats
from ptychograph.backend import Array, get_array_module, to_host
from ptychograph.likelihood import Gradient, LineTerms, gradient, line_terms
from ptychograph.modes import orthogonalise
from ptychograph.partials import OverlapPartials, tree_sum
from ptychograph.positions import follow_all
from ptychograph.resident import ResidentViews
from ptychograph.state import State, relative_change


@dataclass(frozen=True)
class MLOptions:
    """Settings of the ML refinement.

    floor : intensity added to the model in the data's units (keeps L finite where the model is
    dark; :func:`ptychograph.algorithms.ml_options` sets it to 1e-3 of the mean measured
    intensity per pixel, so counts and normalised frames behave alike).
    regularisation : damping of the preconditioners, fraction of their maximum.
    stop : the run's last iteration + 1 (the probe modes are orthogonalised after it).
    """

    floor: float = 1e-3
    regularisation: float = 1e-2
    stop: int = 0


@dataclass(frozen=True)
class Direction:
    """A search direction and what the next Polak-Ribiere update needs.

    probe, obj : the direction h; grad_* : the gradient g; scaled_* : M g.
    """

    probe: Array
    obj: Array
    grad_probe: Array
    grad_obj: Array
    scaled_probe: Array
    scaled_obj: Array


_DIRECTION_FIELDS = ("probe", "obj", "grad_probe", "grad_obj", "scaled_probe", "scaled_obj")


# ---------------------------------------------------------------- per-chunk tasks
def gradient_task(views: ResidentViews, state: State, floor: float) -> Gradient:
    """Gradient terms of the resident views at ``state``."""
    follow_all(views.chunks, state.origins)
    probe, obj = views.device(state.probe), views.device(state.obj)
    return tree_sum([gradient(c, probe, obj, floor, views.batch_size) for c in views.chunks])


def line_task(views: ResidentViews, state: State, direction: Direction, floor: float) -> LineTerms:
    """Slope and curvature of L along ``direction`` over the resident views."""
    follow_all(views.chunks, state.origins)
    probe, obj = views.device(state.probe), views.device(state.obj)
    step_p, step_o = views.device(direction.probe), views.device(direction.obj)
    return tree_sum(
        [line_terms(c, probe, obj, step_p, step_o, floor, views.batch_size) for c in views.chunks]
    )


# ---------------------------------------------------------------- steps on reduced values
def _precondition(partials: OverlapPartials, alpha: float) -> Array:
    xp = get_array_module(partials.numerator)
    eps = max(alpha * float(xp.max(partials.denominator)), 1e-30)
    return partials.numerator / (partials.denominator + eps)[None]


def _dot(a: Array, b: Array) -> float:
    """Re <a, b> = Re sum conj(a) b, in double precision."""
    return float(np.vdot(to_host(a).astype(np.complex128), to_host(b).astype(np.complex128)).real)


def direction_step(grad: Gradient, state: State, alpha: float) -> Direction:
    """The preconditioned Polak-Ribiere direction from the reduced gradient."""
    scaled_p = _precondition(grad.probe, alpha).astype(state.probe.dtype)
    scaled_o = _precondition(grad.obj, alpha).astype(state.obj.dtype)
    step_p, step_o = -scaled_p, -scaled_o
    previous = state.memory if isinstance(state.memory, Direction) else None
    if previous is not None:
        xp = get_array_module(scaled_p)
        previous = Direction(*(xp.asarray(getattr(previous, f)) for f in _DIRECTION_FIELDS))
        denominator = _dot(previous.grad_probe, previous.scaled_probe) + _dot(
            previous.grad_obj, previous.scaled_obj
        )
        numerator = _dot(grad.probe.numerator, scaled_p - previous.scaled_probe) + _dot(
            grad.obj.numerator, scaled_o - previous.scaled_obj
        )
        beta = max(0.0, numerator / denominator) if denominator > 0 else 0.0
        step_p = step_p + beta * previous.probe
        step_o = step_o + beta * previous.obj
    return Direction(
        step_p.astype(state.probe.dtype),
        step_o.astype(state.obj.dtype),
        grad.probe.numerator,
        grad.obj.numerator,
        scaled_p,
        scaled_o,
    )


def move_step(
    terms: LineTerms, state: State, direction: Direction, iteration: int, stop: int
) -> State:
    """P, O moved by the Newton step along ``direction``, as iteration ``iteration`` (0-based);
    after the run's last iteration the probe modes are orthogonalised (the intensity model does
    not change)."""
    iteration += 1
    if not (terms.curvature > 0 and terms.slope < 0):
        # not a descent direction on a convex line: stay, restart from steepest descent
        return state.replace(iteration=iteration, memory=None, rotation=None)
    step = -terms.slope / terms.curvature
    xp = get_array_module(direction.probe)  # the estimates join the direction's device
    probe = (xp.asarray(state.probe) + step * direction.probe).astype(state.probe.dtype)
    obj = (xp.asarray(state.obj) + step * direction.obj).astype(state.obj.dtype)
    if iteration >= stop and probe.shape[0] > 1:
        probe, _ = orthogonalise(probe)
        return state.replace(probe=probe, obj=obj, iteration=iteration, memory=None, rotation=None)
    return state.replace(probe=probe, obj=obj, iteration=iteration, memory=direction, rotation=None)


def stats_step(grad: Gradient, old: State, new: State) -> IterationStats:
    """Fourier error of the model at the start of the iteration, eps_P and eps_O (eq. 7)."""
    return IterationStats(
        grad.error.value,
        relative_change(new.probe, old.probe),
        relative_change(new.obj, old.obj),
    )


class MaximumLikelihood:
    """ML refinement as an :class:`~ptychograph.algorithms.base.Algorithm`."""

    name = "ml"

    def __init__(self, options: MLOptions) -> None:
        self.options = options

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        opts, tag, floor = self.options, f"ml{iteration}", self.options.floor
        grad = executor.map_reduce(gradient_task, state, floor, key=f"{tag}-gradient")
        direction = executor.apply(
            direction_step, grad, state, opts.regularisation, key=f"{tag}-direction"
        )
        line = executor.map_reduce(line_task, state, direction, floor, key=f"{tag}-line")
        new = executor.apply(
            move_step, line, state, direction, iteration, opts.stop, key=f"{tag}-move"
        )
        stats = executor.apply(stats_step, grad, state, new, key=f"{tag}-stats")
        return new, stats

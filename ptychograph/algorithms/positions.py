"""Position correction beside any algorithm (docs/design.md, "Position correction").

:class:`PositionCorrection` wraps an algorithm's iteration: after it, every chunk returns the
2 x 2 least-squares system of each of its views (:func:`ptychograph.positions.shift_terms`;
the views stay where they are), the systems of all views are gathered (a few numbers per view),
and one small step on the client solves them and applies the limits:

* each view moves at most ``max_step`` pixels per iteration along each axis, and at most
  ``max_shift`` pixels from its measured position, and stays inside the object array;
* the global constraint: the part of the moves that a translation of the whole scan
  explains is removed (the data cannot fix it); the part a linear map of the measured
  positions explains (scale, rotation, shear) is removed too during DM when an ML refinement
  follows, and taken at :data:`LINEAR_GAIN` of the rate of the rest in ML (or in DM without
  ML), so the scan cannot drift and scales only slowly (:meth:`PositionOptions.linear_gain`);
* during DM the systems are formed with the object the other views make (leave-one-out,
  :mod:`ptychograph.positions`), from the illumination of all views (one more reduction
  per step);
* views whose object is featureless (a small system) barely move: the systems are damped by
  5 % of their median size;
* a view takes half of its least-squares move per iteration (:data:`GAIN`);
* positions are corrected from iteration ``start`` until ``stop``, and again through the ML
  refinement (``refine``): DM brings the views near, and ML, whose iterates converge, settles
  them where DM's fluctuating iterates leave them wandering (docs/design.md, "Position
  correction"). DM's averaging window sees fixed positions: an average over moving views
  blurs, and on measured data positions that still move at the end of DM cost fit;
* after the iterations ``searches`` (each quarter of ML but the last), the views whose
  data fit more than :data:`OUTLIER` times worse than the median view's (at most
  :data:`SEARCH_SHARE` of the views, the worst) are tried at every whole-pixel offset within
  ``radius`` (:mod:`ptychograph.position_search`, on the worker that holds them) and jump to
  the best where it cuts their error below :data:`ACCEPT` of what it was: the gradient step
  cannot bring a view home from beyond the reach of the object's structure.

The new positions travel in :attr:`State.origins`; every per-chunk task moves its views to
them first (:func:`ptychograph.positions.follow_origins`), in process or on any worker.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ptychograph.algorithms.base import Algorithm, Executor, Handle
from ptychograph.backend import to_host
from ptychograph.partials import tree_sum
from ptychograph.position_search import search_views, view_errors
from ptychograph.positions import follow_origins, illumination, shift_terms
from ptychograph.resident import ResidentViews
from ptychograph.state import State

#: Damping of the per-view systems, as a fraction of their median trace / 2.
DAMPING = 0.05
#: Fraction of the least-squares move taken per iteration. The full move is noisy while the
#: object still changes: on a simulated scan with 2 px RMS errors (200 views, 1e6 photons,
#: 200 DM iterations) the corrected positions ended 1.7 px RMS from the truth with the full
#: move, 0.38 px with half of it (0.34 px with 0.3, but converging half as fast).
GAIN = 0.5
#: Rate of the moves' linear part (scale, rotation, shear) relative to the rest, during ML
#: (during DM it is 0 when ML follows). Random position errors have a linear part too
#: (0.1-0.4 px RMS of 2 px RMS errors on 200 views), but the data barely fix the scan's scale
#: where the probe's curvature can take it up: started from the true positions of a simulated
#: scan with a textured object, DM's correction shrank the scan by 0.7 % (0.40 px RMS, 0.11 px
#: without the linear part); with the linear part left to ML the views moved 0.12 px RMS.
#: Correcting through DM alone, removing it entirely left it in the result, the full rate let
#: edge views drag the scan: over three draws of 2 px RMS errors on a simulated scan (200
#: views, leave-one-out terms, an experiment's patch) the corrected positions ended 0.40-0.56
#: px RMS from the truth with 0, 0.44-0.59 with 1 and 0.33-0.49 with 0.3 (benchmarks/
#: RESULTS.md: five draws with the code as it is).
LINEAR_GAIN = 0.3
#: A view is searched (and named at the end) when its model error against the Poisson noise
#: (:func:`ptychograph.position_search.relative_errors`) is above this multiple of the
#: median's. Measured at the end of runs: views within 1 px of their place at most 1.54x the
#: median on the simulated textured scans, 1.35x on the measured Siemens star, but up to 1.95x
#: on short runs of small simulated scans from the true positions (30-60 views of 32^2); a
#: view stuck 4.9 px off 2.6x, the views stuck 8-10 px off 6-13x (divided by their counts).
OUTLIER = 3.0
#: ... and jumps when the best whole-pixel offset cuts its error below this fraction (the
#: stuck views measured: 0.19-0.81, the worst a view stuck beside another stuck view).
ACCEPT = 0.85
#: At most this share of the views (the worst) is searched per search.
SEARCH_SHARE = 0.05


@dataclass(frozen=True)
class PositionOptions:
    """start : first iteration (0-based, over the run) after which positions are corrected;
    stop : first iteration after which they stay fixed (None: never); refine : first iteration
    from which they are corrected again to the end (the ML refinement; None: none).
    max_step, max_shift : pixels (module docstring). initial : (N, 2) measured view corners.
    searches : iterations after which the whole-pixel search runs; radius : its reach (px).
    photon_unit : one photon in the frames' units (0: unknown), for the views' errors.
    """

    start: int
    max_step: float
    max_shift: float
    initial: np.ndarray
    stop: int | None = None
    refine: int | None = None
    searches: tuple[int, ...] = ()
    radius: int = 0
    photon_unit: float = 0.0

    def bounds(
        self, index: np.ndarray, obj_shape: tuple[int, ...], frame: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest origin (n, 2) each of the views ``index`` may take: within
        ``max_shift`` of the measured corner and inside the object array."""
        upper = np.asarray(obj_shape[-2:], dtype=np.float64) - np.asarray(frame[-2:]) - 1
        lower = np.maximum(self.initial[index] - self.max_shift, 0.0)
        return lower, np.minimum(self.initial[index] + self.max_shift, upper)

    def moved(self, first: int) -> PositionOptions:
        """These options with every iteration number moved by ``first`` (a plan that starts at
        iteration ``first``)."""
        return replace(
            self,
            start=self.start + first,
            stop=None if self.stop is None else self.stop + first,
            refine=None if self.refine is None else self.refine + first,
            searches=tuple(n + first for n in self.searches),
        )

    def linear_gain(self, iteration: int) -> float:
        """Rate of the moves' linear part after ``iteration``: with an ML refinement 0 before
        it (``refine``) and :data:`LINEAR_GAIN` in it; without, :data:`LINEAR_GAIN` (module
        docstring)."""
        return 0.0 if self.refine is not None and iteration < self.refine else LINEAR_GAIN

    def active(self, iteration: int) -> bool:
        """Whether positions are corrected after ``iteration``."""
        if self.refine is not None and iteration >= self.refine:
            return True
        return iteration >= self.start and (self.stop is None or iteration < self.stop)


@dataclass(frozen=True)
class ViewSystems:
    """Per-view systems of some views: index (n,) int64 into the scan, system (n, 3) holding
    A[0, 0], A[0, 1], A[1, 1], rhs (n, 2). ``+`` gathers two sets (any order)."""

    index: np.ndarray
    system: np.ndarray
    rhs: np.ndarray

    def __add__(self, other: ViewSystems) -> ViewSystems:
        return ViewSystems(
            np.concatenate([self.index, other.index]),
            np.concatenate([self.system, other.system]),
            np.concatenate([self.rhs, other.rhs]),
        )


def position_task(views: ResidentViews, state: State, lit: np.ndarray | None) -> ViewSystems:
    """The systems of the resident views at ``state``; ``lit``: the illumination of all views
    (:func:`lit_task`) for leave-one-out terms from the exit waves, or None."""
    probe, obj = views.device(state.probe), views.device(state.obj)
    device_lit = None if lit is None else views.device(lit)
    rotation = views.device(state.rotation)
    parts = []
    for chunk in views.chunks:
        follow_origins(chunk, state.origins)
        system, rhs = shift_terms(chunk, probe, obj, views.batch_size, device_lit, rotation)
        index = np.arange(chunk.first, chunk.first + chunk.n_views, dtype=np.int64)
        parts.append(ViewSystems(index, system, rhs))
    if not parts:
        return ViewSystems(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 2)))
    return tree_sum(parts)


def lit_task(views: ResidentViews, state: State) -> np.ndarray:
    """The illumination W of the resident views at ``state`` (summed over all views by the
    reduction): (Y, X) real, in the precision of the run."""
    probe, rotation = views.device(state.probe), views.device(state.rotation)
    shape = (int(state.obj.shape[1]), int(state.obj.shape[2]))
    total = np.zeros(shape, dtype=np.asarray(state.probe).real.dtype)
    for chunk in views.chunks:
        follow_origins(chunk, state.origins)
        total += to_host(illumination(chunk, probe, shape, views.batch_size, rotation))
    return total


def solve_moves(systems: ViewSystems, n_views: int) -> np.ndarray:
    """(N, 2) least-squares moves of every view from the gathered systems (damped)."""
    system = np.zeros((n_views, 3))
    rhs = np.zeros((n_views, 2))
    system[systems.index] = systems.system
    rhs[systems.index] = systems.rhs
    trace = system[:, 0] + system[:, 2]
    damping = DAMPING * float(np.median(trace)) / 2 + 1e-300
    a, b, c = system[:, 0] + damping, system[:, 1], system[:, 2] + damping
    det = a * c - b * b
    moves = np.empty((n_views, 2))
    moves[:, 0] = (c * rhs[:, 0] - b * rhs[:, 1]) / det
    moves[:, 1] = (a * rhs[:, 1] - b * rhs[:, 0]) / det
    return moves


def remove_affine(moves: np.ndarray, origins: np.ndarray) -> np.ndarray:
    """``moves`` less their least-squares fit by c + L (origins - mean): (N, 2)."""
    centred = origins - origins.mean(axis=0)
    basis = np.column_stack([np.ones(len(origins)), centred])  # (N, 3)
    if len(origins) < 4:
        return moves - moves.mean(axis=0)
    coefficients, *_ = np.linalg.lstsq(basis, moves, rcond=None)
    return moves - basis @ coefficients


def constrain(moves: np.ndarray, origins: np.ndarray, gain: float = LINEAR_GAIN) -> np.ndarray:
    """``moves`` (N, 2) without their mean and with their linear part in ``origins`` (N, 2)
    scaled by ``gain`` (module docstring)."""
    rest = remove_affine(moves, origins)
    linear = moves - rest
    return rest + gain * (linear - linear.mean(axis=0))


def position_step(
    systems: ViewSystems, state: State, options: PositionOptions, linear_gain: float = LINEAR_GAIN
) -> State:
    """The state with corrected origins (module docstring), the moves' linear part taken at
    ``linear_gain``; estimates unchanged."""
    assert state.origins is not None
    origins = np.asarray(state.origins, dtype=np.float64)
    moves = solve_moves(systems, len(origins))
    moves = GAIN * constrain(moves, options.initial, linear_gain)
    moves = np.clip(moves, -options.max_step, options.max_step)
    lower, upper = options.bounds(np.arange(len(origins)), state.obj.shape, state.probe.shape)
    return state.replace(origins=np.clip(origins + moves, lower, upper))


@dataclass(frozen=True)
class ViewRows:
    """Per-view values of some views: index (n,) int64 into the scan, values (n, k) float64.
    ``+`` gathers two sets (any order)."""

    index: np.ndarray
    values: np.ndarray

    def __add__(self, other: ViewRows) -> ViewRows:
        return ViewRows(
            np.concatenate([self.index, other.index]), np.concatenate([self.values, other.values])
        )


def error_task(views: ResidentViews, state: State, unit: float = 0.0) -> ViewRows:
    """The relative model error of each resident view at ``state`` (against the Poisson
    noise when one photon is ``unit`` > 0 in the frames' units): values (n, 1)."""
    probe, obj = views.device(state.probe), views.device(state.obj)
    parts = [ViewRows(np.zeros(0, np.int64), np.zeros((0, 1)))]
    for chunk in views.chunks:
        follow_origins(chunk, state.origins)
        errors = view_errors(chunk, probe, obj, views.batch_size, unit)
        index = np.arange(chunk.first, chunk.first + chunk.n_views, dtype=np.int64)
        parts.append(ViewRows(index, errors[:, None]))
    return tree_sum(parts)


def stuck_views(errors: ViewRows) -> np.ndarray:
    """Scan indices of every view whose error is above :data:`OUTLIER` times the median,
    the worst first; views without counts (error NaN) are never among them."""
    values = errors.values[:, 0]
    known = values[np.isfinite(values)]
    if known.size == 0:
        return np.zeros(0, np.int64)
    stuck = np.flatnonzero(values > OUTLIER * float(np.median(known)))  # NaN: never
    return errors.index[stuck[np.argsort(values[stuck])[::-1]]]


def pick_outliers(errors: ViewRows) -> np.ndarray:
    """Scan indices (sorted) of the views to search: :func:`stuck_views`, at most
    :data:`SEARCH_SHARE` of the views, the worst."""
    stuck = stuck_views(errors)
    return np.sort(stuck[: max(1, int(SEARCH_SHARE * len(errors.index)))])


def search_task(
    views: ResidentViews, state: State, picks: np.ndarray, options: PositionOptions
) -> ViewRows:
    """The whole-pixel search of the resident views among ``picks`` (scan indices): values
    (n, 4) holding the best offset (row, column), its error and the error where the view is."""
    probe, obj = views.device(state.probe), views.device(state.obj)
    rotation = views.device(state.rotation)
    parts = [ViewRows(np.zeros(0, np.int64), np.zeros((0, 4)))]
    for chunk in views.chunks:
        mine = picks[(picks >= chunk.first) & (picks < chunk.first + chunk.n_views)]
        if mine.size == 0:
            continue
        follow_origins(chunk, state.origins)
        lower, upper = options.bounds(mine, state.obj.shape, state.probe.shape)
        assert state.origins is not None
        best, error, here = search_views(
            chunk, probe, obj, mine - chunk.first, options.radius, lower, upper,
            views.batch_size, rotation, np.asarray(state.origins)[mine],
        )  # fmt: skip
        parts.append(ViewRows(mine, np.column_stack([best, error, here])))
    return tree_sum(parts)


def jump_step(found: ViewRows, state: State) -> State:
    """The state with the searched views whose best offset cuts their error below
    :data:`ACCEPT` moved there (and ML's search direction dropped: the model changed)."""
    jump = found.values[:, 2] < ACCEPT * found.values[:, 3]
    if not jump.any():
        return state
    assert state.origins is not None
    origins = np.array(state.origins, dtype=np.float64)
    origins[found.index[jump]] += found.values[jump, :2]
    return state.replace(origins=origins, memory=None)


class PositionCorrection:
    """``inner``'s iteration followed by a position-correction step (module docstring)."""

    def __init__(self, inner: Algorithm, options: PositionOptions) -> None:
        self.inner = inner
        self.options = options
        self.name = f"{inner.name}+positions"

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        new, stats = self.inner.iterate(executor, state, iteration)
        if self.options.active(iteration):
            tag = f"pos{iteration}"
            lit = None
            if getattr(self.inner, "holds_exit_waves", False):
                lit = executor.map_reduce(lit_task, new, key=f"{tag}-lit")
            systems = executor.map_reduce(position_task, new, lit, key=f"{tag}-systems")
            gain = self.options.linear_gain(iteration)
            new = executor.apply(position_step, systems, new, self.options, gain, key=f"{tag}-step")
        if iteration in self.options.searches:
            tag = f"search{iteration}"
            unit = self.options.photon_unit
            errors = executor.map_reduce(error_task, new, unit, key=f"{tag}-errors")
            picks = executor.apply(pick_outliers, errors, key=f"{tag}-picks")
            found = executor.map_reduce(search_task, new, picks, self.options, key=f"{tag}-try")
            new = executor.apply(jump_step, found, new, key=f"{tag}-jump")
        return new, stats

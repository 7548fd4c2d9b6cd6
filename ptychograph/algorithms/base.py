"""What an algorithm sees of where the views live, and what a driver sees of an algorithm.

An algorithm writes one iteration once (docs/design.md, "Seams") against :class:`Executor`:

* ``map_reduce(task, *args)`` runs ``task(views, *args)`` on every slot of resident views
  (:class:`~ptychograph.resident.ResidentViews`) and sums the results in a tree; the results
  must be small values with an associative ``+`` (e.g.
  :class:`~ptychograph.partials.OverlapPartials`);
* ``apply(fn, *args)`` runs a small function on reduced values and estimates.

Arguments and results are *handles*: plain values for the in-process executor, futures for the
Dask executor, so the same algorithm code runs eagerly or as a task graph. An algorithm never
waits for a handle; the driver fetches what it needs (metrics, sync points).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from ptychograph.backend import to_host

T = TypeVar("T")

#: A value or a future of one, depending on the executor.
Handle = Any


def on_host(value: T) -> T:
    """``value`` with every array in it (fields of dataclasses, recursively) in host memory.

    Per-chunk tasks return their partial sums through this: the reduction and the steps on
    reduced values run with the estimates of :class:`~ptychograph.state.State`, which live in
    host memory, so a GPU worker's partials must come back from the device (CuPy refuses to
    mix the two; docs/design.md, "Seams")."""
    if is_dataclass(value) and not isinstance(value, type):
        moved = {f.name: on_host(getattr(value, f.name)) for f in fields(value) if f.init}
        return replace(value, **moved)
    if type(value) is np.ndarray or not (hasattr(value, "shape") and hasattr(value, "dtype")):
        return value
    return to_host(value)  # type: ignore[return-value]


class Executor(Protocol):
    """Where the views live; see the module docstring."""

    def map_reduce(self, task: Callable[..., Any], *args: Handle, key: str) -> Handle: ...

    def apply(self, fn: Callable[..., Any], *args: Handle, key: str) -> Handle: ...


@dataclass(frozen=True)
class IterationStats:
    """Metrics of one iteration: Fourier error (docs/design.md, "Errors and changes"), relative
    probe and object changes (eq. 7; 0 for an estimate the algorithm does not update). Any NaN
    or Inf here stops the run as diverged."""

    error: float
    probe_change: float
    object_change: float


class Algorithm(Protocol):
    """One iterative algorithm (DM, later ML refinement) as a driver runs it."""

    #: Short name for logs and the result's attributes.
    name: str

    def iterate(self, executor: Executor, state: Handle, iteration: int) -> tuple[Handle, Handle]:
        """Submit iteration ``iteration`` (0-based, counted over the whole run) from ``state``
        (a handle of :class:`~ptychograph.state.State`); returns handles of the new state and
        of its :class:`IterationStats`."""
        ...


@dataclass(frozen=True)
class Stage:
    """Iterations [start, stop) of a run are done by ``algorithm``."""

    algorithm: Algorithm
    start: int
    stop: int


def stage_of(plan: list[Stage], iteration: int) -> Stage:
    """The stage that runs ``iteration``."""
    for stage in plan:
        if stage.start <= iteration < stage.stop:
            return stage
    raise ValueError(f"no stage runs iteration {iteration}")

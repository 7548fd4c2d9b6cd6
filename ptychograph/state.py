"""The evolving reconstruction state and its history, kept apart from the frozen configuration.

:class:`State` is the one container of the estimates (probe, object, view positions, iteration
count) that the algorithms, executors, driver, checkpoints and result writer pass around.
:class:`SyncPoint` is a state held on the client together with the averaging window and the
history (docs/design.md, "Sync points").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ptychograph.backend import Array, get_array_module, to_host
from ptychograph.modes import align_modes


@dataclass(frozen=True)
class State:
    """Current estimates after ``iteration`` completed iterations.

    probe : (probe_mode, py, px) complex. obj : (obj_mode, y, x) complex.
    origins : (N, 2) float64 top-left (row, column) of every view in object pixels, or None
    where the positions are held elsewhere (they are refined when position correction runs).
    rotation : (probe_mode, probe_mode) unitary rotation applied to the probe modes since the
    exit waves were last updated (mode orthogonalisation), or None.
    memory : what an algorithm carries from one iteration to the next besides the estimates
    (e.g. ML's previous search direction), or None; not averaged and not checkpointed.
    """

    probe: Array
    obj: Array
    iteration: int = 0
    origins: np.ndarray | None = None
    rotation: Array | None = None
    memory: object | None = None

    def replace(self, **changes: object) -> State:
        """A copy with ``changes`` (dataclasses.replace)."""
        return replace(self, **changes)  # type: ignore[arg-type]

    def nonfinite(self) -> str | None:
        """The name of the first estimate holding NaN or Inf, or None when all are finite."""
        for name, value in (("probe", self.probe), ("object", self.obj)):
            if not bool(np.isfinite(to_host(value)).all()):
                return name
        return None


@dataclass
class History:
    """Per-iteration metrics (docs/design.md, "Errors and changes"): one entry per iteration."""

    fourier_error: list[float] = field(default_factory=list)
    probe_change: list[float] = field(default_factory=list)
    object_change: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    def append(self, error: float, probe_change: float, object_change: float, dt: float) -> None:
        self.fourier_error.append(error)
        self.probe_change.append(probe_change)
        self.object_change.append(object_change)
        self.seconds.append(dt)

    def __len__(self) -> int:
        return len(self.fourier_error)

    def copy(self) -> History:
        """An independent copy."""
        return History(
            list(self.fourier_error),
            list(self.probe_change),
            list(self.object_change),
            list(self.seconds),
        )


def relative_change(new: Array, old: Array) -> float:
    """Eq. 7 of Dong et al.: ||new - old|| / ||new|| (0 when new is zero, NaN when new holds
    NaN or Inf, so that the driver sees the divergence)."""
    new, old = to_host(new), to_host(old)
    norm = float(np.linalg.norm(new))
    if not np.isfinite(norm):
        return float("nan")
    return float(np.linalg.norm(new - old)) / norm if norm > 0 else 0.0


def no_progress(start: State, final: State, history: History) -> str | None:
    """Why a run looks like it did nothing, or None: the estimates it returns are (to 1e-6)
    the ones it started from, or its Fourier error never changed."""
    if (
        relative_change(final.obj, start.obj) < 1e-6
        and relative_change(final.probe, start.probe) < 1e-6
    ):
        return "the returned probe and object are the starting ones"
    errors = np.asarray(history.fourier_error)
    if len(errors) > 2 and np.ptp(errors) <= 1e-6 * max(float(np.abs(errors).max()), 1e-300):
        return f"the Fourier error stayed at {errors[0]:.4g} in every iteration"
    return None


# ---------------------------------------------------------------- averaging window
def window_start(iterations: int, average_last: float) -> int:
    """First iteration index whose estimates enter the average of the last ``average_last``
    fraction of ``iterations`` (docs/design.md, "Averaging")."""
    return iterations - int(round(average_last * iterations))


def accumulate(total: State | None, state: State) -> State:
    """Running sum of the estimates over the averaging window (origins and rotation dropped).

    Each iterate is first aligned to the sum so far by the mixing of its probe modes and of its
    object modes (each including a global phase) that brings it closest
    (:func:`ptychograph.modes.align_modes`): the re-orthogonalised modes and a drifting global
    phase then add up instead of cancelling (docs/design.md, "Averaging")."""
    if total is None:
        return State(state.probe.copy(), state.obj.copy(), state.iteration)
    if total.probe.shape != state.probe.shape or total.obj.shape != state.obj.shape:
        raise ValueError("the averaging window holds iterates of different shapes")
    probe = align_modes(state.probe, total.probe)
    obj = align_modes(state.obj, total.obj)
    xp_p, xp_o = get_array_module(probe), get_array_module(obj)
    return State(xp_p.asarray(total.probe) + probe, xp_o.asarray(total.obj) + obj, state.iteration)


@dataclass(frozen=True)
class SyncPoint:
    """A state held on the client: where hooks run and where a run restarts.

    average : running sum of the last ``average_count`` iterates of the averaging window, or
    None. history : the metrics of the ``state.iteration`` iterations so far.
    """

    state: State
    average: State | None = None
    average_count: int = 0
    history: History = field(default_factory=History)

    @property
    def iteration(self) -> int:
        return self.state.iteration

    def averaged(self) -> State | None:
        """The mean of the window's iterates (with this state's origins), or None when the
        window holds fewer than two iterates."""
        if self.average is None or self.average_count < 2:
            return None
        count = self.average_count
        return self.state.replace(
            probe=self.average.probe / count,
            obj=self.average.obj / count,
            rotation=None,
            memory=None,
        )

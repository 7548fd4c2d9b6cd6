"""The evolving reconstruction state and its history, kept apart from the frozen configuration.

:class:`State` is the one container of the estimates (probe, object, view positions, iteration
count) that the algorithms, executors, driver, checkpoints and result writer pass around.
:class:`SyncPoint` is a state held on the client together with the averaging window and the
history (docs/design.md, "Sync points").
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ptychograph.backend import Array, to_host


@dataclass(frozen=True)
class State:
    """Current estimates after ``iteration`` completed iterations.

    probe : (probe_mode, py, px) complex. obj : (obj_mode, y, x) complex.
    origins : (N, 2) float64 top-left (row, column) of every view in object pixels, or None
    where the positions are held elsewhere (they are refined when position correction runs).
    rotation : (probe_mode, probe_mode) unitary rotation applied to the probe modes since the
    exit waves were last updated (mode orthogonalisation), or None.
    """

    probe: Array
    obj: Array
    iteration: int = 0
    origins: np.ndarray | None = None
    rotation: Array | None = None

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


# ---------------------------------------------------------------- averaging window
def window_start(iterations: int, average_last: float) -> int:
    """First iteration index whose estimates enter the average of the last ``average_last``
    fraction of ``iterations`` (docs/design.md, "Averaging")."""
    return iterations - int(round(average_last * iterations))


def accumulate(total: State | None, state: State) -> State:
    """Running sum of the estimates over the averaging window (origins and rotation dropped)."""
    if total is None:
        return State(state.probe.copy(), state.obj.copy(), state.iteration)
    return State(total.probe + state.probe, total.obj + state.obj, state.iteration)


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
            probe=self.average.probe / count, obj=self.average.obj / count, rotation=None
        )

"""Reconstruction state and history, kept apart from the (frozen) configuration."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class State:
    """Current estimates.

    probe : (probe_mode, py, px) complex. obj : (obj_mode, y, x) complex.
    iteration : number of completed DM iterations.
    """

    probe: np.ndarray
    obj: np.ndarray
    iteration: int = 0


@dataclass
class History:
    """Per-iteration metrics (DESIGN.md step 5): one entry per completed iteration."""

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


def relative_change(new: np.ndarray, old: np.ndarray) -> float:
    """Eq. 7: ||new - old|| / ||new|| (0 when new is zero)."""
    norm = float(np.linalg.norm(new))
    return float(np.linalg.norm(new - old)) / norm if norm > 0 else 0.0

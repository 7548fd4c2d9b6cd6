"""The in-process executor: every slot of views in this process, every call evaluated at once.

It is the reference the Dask executor is tested against: the same algorithm code, the same
per-chunk tasks and the same pairwise reduction (docs/design.md, "Seams").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ptychograph.backend import Array
from ptychograph.partials import tree_sum
from ptychograph.resident import ResidentViews, reset_views
from ptychograph.state import State, SyncPoint


class LocalExecutor:
    """Slots of resident views held in this process (like workers); every call runs at once."""

    def __init__(self, slots: list[ResidentViews]) -> None:
        self.slots = slots

    @classmethod
    def from_frames(
        cls,
        amplitudes: Array,
        origins: np.ndarray,
        good: np.ndarray | None,
        batch_size: int = 64,
        subpixel: str = "fourier",
        n_slots: int = 1,
        backend: str = "numpy",
    ) -> LocalExecutor:
        """Views cut into ``n_slots`` contiguous slots; they become chunks at the first
        :meth:`reset`. amplitudes : (N, H, W) real sqrt(I), centred; origins : (N, 2) view
        corners in object pixels; good : (H, W) bool or None."""
        bounds = np.linspace(0, amplitudes.shape[0], n_slots + 1).astype(int)
        slots: list[ResidentViews] = []
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            if b <= a:
                continue
            views = ResidentViews(backend, batch_size, subpixel)
            views.good = views.device(good)
            views.pending.append((views.device(amplitudes[a:b]), views.device(origins[a:b]), a))
            slots.append(views)
        return cls(slots)

    def map_reduce(self, task: Callable[..., Any], *args: Any, key: str = "") -> Any:
        return tree_sum([task(views, *args) for views in self.slots])

    def apply(self, fn: Callable[..., Any], *args: Any, key: str = "") -> Any:
        return fn(*args)

    def publish(self, value: Any) -> Any:
        return value

    def fetch(self, handle: Any) -> Any:
        return handle

    def reset(self, state: State) -> State:
        """psi = P O everywhere; the state without a pending mode rotation (psi is made from
        the probe as it is: rotating it again would turn it twice)."""
        for views in self.slots:
            reset_views(views, state)
        return state.replace(rotation=None)

    def recover(self, sync: SyncPoint, lost: str) -> State:  # pragma: no cover - never lost
        raise RuntimeError("an in-process run has no workers to lose")

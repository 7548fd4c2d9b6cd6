"""Executors: where the views live and how an algorithm's calls are evaluated.

* :mod:`ptychograph.executors.local` - in this process, eagerly (the reference);
* :mod:`ptychograph.executors.dask` - on Dask workers, as pinned futures with a reduction tree
  (worker side in :mod:`ptychograph.executors.worker`, placement and memory planning in
  :mod:`ptychograph.executors.placement`).

Both implement :class:`ptychograph.algorithms.base.Executor` for the algorithms and
:class:`RunExecutor` for the driver.
"""

from __future__ import annotations

from typing import Any, Protocol

from ptychograph.algorithms.base import Executor, Handle
from ptychograph.state import State, SyncPoint


class WorkerLost(RuntimeError):
    """A worker holding views left the cluster."""


class RunExecutor(Executor, Protocol):
    """What the driver needs beyond :class:`~ptychograph.algorithms.base.Executor`."""

    def publish(self, value: Any) -> Handle:
        """Make a client-side value available to tasks (a fresh handle without lineage)."""
        ...

    def fetch(self, handle: Handle) -> Any:
        """The value of a handle; raises :class:`WorkerLost` when a view holder is gone."""
        ...

    def reset(self, state: State) -> Handle:
        """psi = P O from ``state`` on every view; returns a handle of ``state``."""
        ...

    def recover(self, sync: SyncPoint, lost: str) -> Handle:
        """Re-home the views of lost workers and restart from ``sync``; returns its handle."""
        ...


__all__ = ["RunExecutor", "WorkerLost"]

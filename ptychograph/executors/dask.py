"""The Dask executor: an algorithm's calls as pinned futures with a reduction tree.

``map_reduce(task, ...)`` submits ``task`` to every worker holding views (through
:func:`~ptychograph.executors.worker.on_views`, pinned to that worker) and sums the results in
a tree of :func:`~ptychograph.executors.worker.combine` tasks; ``apply(fn, ...)`` is one
``client.submit``. Handles are futures, so the driver can stay ``lookahead`` iterations ahead.
At sync points :meth:`DaskExecutor.publish` scatters fetched values again as fresh data, which
forgets the futures' lineage (docs/design.md, "Data flow on a cluster").

A lost worker's frames are re-read from the Zarr store by surviving (or replacement) workers,
every exit wave is rebuilt from the sync point's state (psi = P O) and the iterations since are
redone (:meth:`DaskExecutor.recover`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.config import Config
from ptychograph.executors import WorkerLost
from ptychograph.executors.placement import (
    Placement,
    assign_ranges,
    n_views,
    plan_memory,
    reassign,
    select_workers,
)
from ptychograph.executors.worker import (
    FrameStats,
    LoadSpec,
    ViewHolder,
    combine,
    load_task,
    on_views,
)
from ptychograph.memory import estimate
from ptychograph.resident import reset_views
from ptychograph.state import State, SyncPoint

log = logging.getLogger("ptychograph")


class DaskExecutor:
    """One run's views on a cluster: a worker plugin, the frames' placement and the tasks.

    Build it with :meth:`open`, which places and loads the frames; :meth:`close` drops the
    views from every worker.
    """

    def __init__(
        self,
        client: Any,
        store: Path,
        origins: np.ndarray,
        placement: Placement,
        spec: LoadSpec,
        sizes: tuple[tuple[int, int], tuple[int, int]],
        config: Config,
    ) -> None:
        self.client = client
        self.store = store
        self.origins = origins
        self.placement = placement
        self.spec = spec
        self.sizes = sizes
        self.config = config
        self.name = f"ptychograph-{uuid.uuid4().hex[:12]}"
        client.register_plugin(ViewHolder(), name=self.name)

    @classmethod
    def open(
        cls,
        client: Any,
        store: Path,
        origins: np.ndarray,
        frame_shape: tuple[int, int],
        obj_shape: tuple[int, int],
        good: np.ndarray | None,
        config: Config,
        workers: list[str] | None = None,
        chunk_frames: int = 1,
    ) -> tuple[DaskExecutor, FrameStats]:
        """Place the frames on the workers, plan memory and load; returns the executor and the
        reduced frame sums."""
        rec, cluster = config.reconstruction, config.cluster
        chosen = select_workers(client, cluster.n_workers, workers)
        ranges = assign_ranges(len(origins), chunk_frames, len(chosen))
        log.info(
            "%d frames on %d workers: %s",
            len(origins),
            len(chosen),
            ", ".join(str(n_views(r)) for r in ranges),
        )
        placement = dict(zip(chosen, ranges, strict=True))
        batch = plan_memory(client, placement, frame_shape, obj_shape, config)
        spec = LoadSpec(cluster.backend, rec.precision, batch, rec.subpixel, good)
        executor = cls(client, store, origins, placement, spec, (frame_shape, obj_shape), config)
        try:
            stats = executor.load(placement)
        except BaseException:
            executor.close()
            raise
        return executor, stats

    @property
    def workers(self) -> list[str]:
        return list(self.placement)

    def close(self) -> None:
        """Drop the views from every worker."""
        try:
            self.client.unregister_worker_plugin(self.name)
        except Exception as err:  # noqa: BLE001 - best effort while tearing down
            log.warning("could not remove worker state %s: %s", self.name, err)

    # ------------------------------------------------------------ the algorithms' interface
    def map_reduce(self, task: Callable[..., Any], *args: Any, key: str) -> Any:
        tag = f"{key}-{uuid.uuid4().hex[:6]}"
        parts = [
            self._on(w, on_views, self.name, task, *args, key=f"{tag}-{i}")
            for i, w in enumerate(self.workers)
        ]
        return self._reduce(parts, f"{tag}-sum")

    def apply(self, fn: Callable[..., Any], *args: Any, key: str) -> Any:
        return self.client.submit(fn, *args, key=f"{key}-{uuid.uuid4().hex[:6]}-{self.name}")

    # ------------------------------------------------------------ the driver's interface
    def publish(self, value: Any) -> Any:
        [future] = self.client.scatter([value], workers=self.workers, hash=False)
        return future

    def fetch(self, handle: Any) -> Any:
        """The future's result, raising :class:`WorkerLost` as soon as a view holder is gone."""
        # Poll done() rather than result(timeout=...): on this distributed version a result()
        # that times out cancels the future, and the next call fails.
        next_check = time.monotonic() + 0.5
        while not handle.done():
            time.sleep(0.01)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + 0.5
            alive = set(self.client.scheduler_info()["workers"])
            gone = [w for w in self.workers if w not in alive]
            if gone:
                raise WorkerLost(", ".join(gone))
        if handle.status == "cancelled":
            # the client lost contact with the scheduler for a moment (busy or restarted
            # machine): its futures are cancelled, but the workers still hold their views
            raise WorkerLost("none (the client's futures were cancelled)")
        return handle.result()

    def reset(self, state: State) -> Any:
        """Scatter ``state`` and set psi = P O on every worker; returns the state's future."""
        handle = self.publish(state)
        tag = uuid.uuid4().hex[:6]
        counts = [
            self._on(w, on_views, self.name, reset_views, handle, key=f"reset-{tag}-{i}")
            for i, w in enumerate(self.workers)
        ]
        self.client.gather(counts)
        return handle

    def recover(self, sync: SyncPoint, lost: str) -> Any:
        """Move lost workers' frames to live workers and restart from ``sync``."""
        alive = sorted(self.client.scheduler_info()["workers"])
        self.placement, moved = reassign(self.placement, alive, self.config.cluster.n_workers)
        for worker, ranges in moved.items():
            log.warning(
                "%d frames of lost worker(s) %s are re-read by %s", n_views(ranges), lost, worker
            )
        if moved:
            self.load(moved)
        log.warning(
            "restarting from iteration %d with exit waves rebuilt from P and O", sync.iteration
        )
        return self.reset(sync.state)

    # ------------------------------------------------------------ helpers
    def load(self, ranges: Placement) -> FrameStats:
        """Each named worker reads its ranges from the store; returns the reduced frame sums."""
        rec = self.config.reconstruction
        frame_shape, obj_shape = self.sizes
        futures = []
        for worker, mine in ranges.items():
            rows = np.concatenate([np.arange(a, b) for a, b in mine])
            need = estimate(
                len(rows),
                frame_shape,
                obj_shape,
                rec.start_probe_modes,
                rec.object_modes,
                rec.precision,
                self.spec.batch_size,
            ).total
            args = (self.name, str(self.store), mine, self.origins[rows], self.spec, need)
            futures.append(self._on(worker, load_task, *args, key=f"load-{uuid.uuid4().hex[:6]}"))
        stats: FrameStats = self._reduce(futures, f"frame-sum-{uuid.uuid4().hex[:6]}").result()
        return stats

    def _on(self, worker: str, func: Any, *args: Any, key: str) -> Any:
        return self.client.submit(
            func,
            *args,
            key=f"{key}-{self.name}",
            workers=[worker],
            allow_other_workers=False,
            pure=False,
        )

    def _reduce(self, futures: list[Any], key: str) -> Any:
        level = 0
        while len(futures) > 1:
            futures = [
                self.client.submit(
                    combine, *futures[i : i + 2], key=f"{key}-{level}-{i}-{self.name}"
                )
                for i in range(0, len(futures), 2)
            ]
            level += 1
        return futures[0]

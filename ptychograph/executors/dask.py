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

import dataclasses
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
    fit_growth,
    n_views,
    plan_memory,
    reassign,
    rebalance,
    select_workers,
    spread,
)
from ptychograph.executors.worker import (
    FrameStats,
    LoadSpec,
    ViewHolder,
    combine,
    load_task,
    on_views,
    set_batch_size,
)
from ptychograph.growth import drop_task
from ptychograph.memory import estimate, worker_limits
from ptychograph.partials import tree_sum
from ptychograph.resident import reset_views
from ptychograph.state import State, SyncPoint

log = logging.getLogger("ptychograph")

#: Attempts to place a lost worker's frames on others before the run gives up.
MAX_LOAD_ATTEMPTS = 5


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
        self.given: list[str] | None = None  # the workers a run was restricted to
        for attempt in range(MAX_LOAD_ATTEMPTS):
            try:  # a worker dying now fails the broadcast; the others are asked again
                client.register_plugin(ViewHolder(), name=self.name)
                break
            except OSError as err:
                if attempt == MAX_LOAD_ATTEMPTS - 1:
                    raise WorkerLost(f"while starting the run ({type(err).__name__})") from None
                time.sleep(1.0)

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
        if len(chosen) > len(origins):
            log.warning("%d frames: using %d of the %d workers", *(len(origins),) * 2, len(chosen))
            chosen = chosen[: len(origins)]
        ranges = assign_ranges(len(origins), chunk_frames, len(chosen))
        log.info(
            "%d frame%s on %d worker%s: %s",
            len(origins),
            "" if len(origins) == 1 else "s",
            len(chosen),
            "" if len(chosen) == 1 else "s",
            ", ".join(str(n_views(r)) for r in ranges),
        )
        placement = dict(zip(chosen, ranges, strict=True))
        batch = plan_memory(client, placement, frame_shape, obj_shape, config)
        data = config.data
        spec = LoadSpec(
            cluster.backend, rec.precision, batch, rec.subpixel, good, data.nonfinite, data.negative
        )
        executor = cls(client, store, origins, placement, spec, (frame_shape, obj_shape), config)
        executor.given = workers
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
        try:
            [future] = self.client.scatter([value], workers=self.workers, hash=False)
        except (OSError, TimeoutError) as err:  # a worker gone or frozen while receiving
            raise WorkerLost(f"a receiver of the estimates ({type(err).__name__})") from None
        return future

    def fetch(self, handle: Any, watch: list[str] | None = None) -> Any:
        """The future's result, raising :class:`WorkerLost` as soon as a view holder (or one
        of ``watch``) is gone, or has sent no heartbeat for ``cluster.worker_timeout`` s."""
        # Poll done() rather than result(timeout=...): on this distributed version a result()
        # that times out cancels the future, and the next call fails.
        watched = self.workers if watch is None else watch
        next_check = time.monotonic() + 0.5
        while not handle.done():
            time.sleep(0.01)
            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + 0.5
            self._check_alive(watched)
        if handle.status == "cancelled":
            # the client lost contact with the scheduler for a moment (busy or restarted
            # machine): its futures are cancelled, but the workers still hold their views
            raise WorkerLost("none (the client's futures were cancelled)")
        return handle.result()

    def _check_alive(self, watched: list[str]) -> None:
        """Raise WorkerLost for workers that left, or that stopped answering (then they are
        removed from the scheduler, so that nothing waits on them any more)."""
        silence = self._silences()
        gone = [w for w in watched if w not in silence]
        if gone:
            raise WorkerLost(", ".join(gone))
        limit = self.config.cluster.worker_timeout
        frozen = [w for w in watched if silence[w] > limit]
        if frozen:
            log.warning(
                "worker(s) %s sent no heartbeat for more than %g s (cluster.worker_timeout); "
                "treating them as lost",
                ", ".join(frozen),
                limit,
            )
            self._drop(frozen)
            raise WorkerLost(", ".join(frozen))

    def _silences(self) -> dict[str, float]:
        """Seconds since each worker's last heartbeat, measured by the scheduler's clock."""

        def silences(dask_scheduler: Any) -> dict[str, float]:
            from time import time as now

            return {a: now() - ws.last_seen for a, ws in dask_scheduler.workers.items()}

        result: dict[str, float] = self.client.run_on_scheduler(silences)
        return result

    def _drop(self, addresses: list[str]) -> None:
        """Remove unresponsive workers from the scheduler (their tasks are released)."""

        async def remove(addresses: list[str], dask_scheduler: Any = None) -> None:
            for address in addresses:
                await dask_scheduler.remove_worker(
                    address=address, stimulus_id="ptychograph-unresponsive", close=True
                )

        self.client.run_on_scheduler(remove, addresses)

    def reset(self, state: State) -> Any:
        """Scatter ``state``, psi = P O everywhere; its future, without a pending rotation."""
        handle = self.publish(state.replace(rotation=None))
        tag = uuid.uuid4().hex[:6]
        counts = [
            self._on(w, on_views, self.name, reset_views, handle, key=f"reset-{tag}-{i}")
            for i, w in enumerate(self.workers)
        ]
        for count in counts:
            self.fetch(count)
        return handle

    def recover(self, sync: SyncPoint, lost: str) -> Any:
        """Move lost workers' frames to live workers and restart from ``sync`` (retried when
        another worker is lost meanwhile, at most :data:`MAX_LOAD_ATTEMPTS` times)."""
        for _ in range(MAX_LOAD_ATTEMPTS):
            try:
                moved = self._rehome(lost)
                if moved:
                    self.load(moved)
                log.warning(
                    "restarting from iteration %d with exit waves rebuilt from P and O",
                    sync.iteration,
                )
                return self.reset(sync.state)
            except WorkerLost as again:
                lost = str(again)
        raise WorkerLost(lost)

    def _rehome(self, lost: str) -> Placement:
        """Give the frames of workers no longer in the cluster to live ones; returns what
        each receiving worker must load."""
        alive = sorted(self._silences())
        self.placement, moved = reassign(self.placement, alive, self.config.cluster.n_workers)
        for worker, ranges in moved.items():
            log.warning(
                "%d frames of lost worker(s) %s are re-read by %s", n_views(ranges), lost, worker
            )
        return moved

    def extend(
        self, origins: np.ndarray, ranges: list[tuple[int, int]], obj_shape: tuple[int, int]
    ) -> FrameStats | None:
        """New frame ``ranges`` of a growing scan go to the least loaded workers, and workers
        that joined the cluster take views from the busiest (docs/design.md, "Live
        reconstruction"); each reads its new views as pending views, which
        :func:`~ptychograph.growth.adopt_task` then takes. origins : (N, 2) of every frame
        placed so far; obj_shape : the (grown) object's (Y, X). The memory check is redone
        first (:func:`~ptychograph.executors.placement.fit_growth`). Returns the sum of the new
        frames (None when there are none)."""
        self.origins = origins
        limit = self.config.cluster.n_workers
        everyone = self.given or sorted(self.client.scheduler_info()["workers"])
        room = len(everyone) if limit is None else limit - len(self.placement)
        newcomers = [w for w in everyone if w not in self.placement][: max(room, 0)]
        placement, new = spread(self.placement, [*self.placement, *newcomers], ranges)
        moves = rebalance(placement, newcomers) if newcomers else []
        self._fit_memory(placement, obj_shape)
        self.placement = placement
        for worker in newcomers:
            log.info("worker %s joined the run", worker)
        moved: dict[str, list[tuple[int, int]]] = {}
        for source, target, rng in moves:
            log.info("frames %d:%d move from %s to %s, which joined", *rng, source, target)
            if rng in new.get(source, []):  # not loaded yet: load it there instead
                new[source].remove(rng)
                new.setdefault(target, []).append(rng)
                continue
            future = self._on(source, on_views, self.name, drop_task, [rng[0]], key="drop")
            self.fetch(future, watch=[source])
            moved.setdefault(target, []).append(rng)
        new = {w: r for w, r in new.items() if r}
        stats = self.load(new) if new else None
        if moved:
            self.load(moved)
        return stats

    def _fit_memory(self, placement: Placement, obj_shape: tuple[int, int]) -> None:
        """Redo the memory check for ``placement`` and the grown object before loading;
        a lowered batch size reaches the workers holding views now and those that join."""
        frame_shape = self.sizes[0]
        self.sizes = (frame_shape, obj_shape)
        limits = worker_limits(self.client, list(placement))
        batch = self.spec.batch_size
        fitted = fit_growth(limits, placement, frame_shape, obj_shape, self.config, batch)
        if fitted == batch:
            return
        log.warning("batch size lowered from %d to %d views to fit in memory", batch, fitted)
        self.spec = dataclasses.replace(self.spec, batch_size=fitted)
        tag = uuid.uuid4().hex[:6]
        for i, worker in enumerate(self.workers):
            task = (on_views, self.name, set_batch_size, fitted)
            self.fetch(self._on(worker, *task, key=f"batch-{tag}-{i}"), watch=[worker])

    # ------------------------------------------------------------ helpers
    def load(self, ranges: Placement) -> FrameStats:
        """Each named worker reads its ranges from the store; returns the sum of the frames
        loaded. A worker lost while loading has its ranges re-read by others."""
        stats: dict[str, FrameStats] = {}
        for _ in range(MAX_LOAD_ATTEMPTS):
            futures = {w: self._load_on(w, mine) for w, mine in ranges.items()}
            lost = []
            for worker, future in futures.items():
                try:
                    done = self.fetch(future, watch=[worker])
                except WorkerLost:
                    lost.append(worker)
                    continue
                stats[worker] = stats[worker] + done if worker in stats else done
            if not lost:
                kept = [stats[w] for w in self.placement if w in stats]
                total: FrameStats = tree_sum(kept)
                return total
            ranges = self._rehome(", ".join(lost))
        raise WorkerLost(f"{MAX_LOAD_ATTEMPTS} attempts to load the frames failed")

    def _load_on(self, worker: str, mine: list[tuple[int, int]]) -> Any:
        rec = self.config.reconstruction
        frame_shape, obj_shape = self.sizes
        rows = np.concatenate([np.arange(a, b) for a, b in mine])
        sizes = (frame_shape, obj_shape, rec.start_probe_modes, rec.object_modes, rec.precision)
        more = estimate(len(rows), *sizes, self.spec.batch_size)
        held = n_views(self.placement.get(worker, [])) > len(rows)
        # a worker that already holds views has its scratch and sums allocated: the new views
        # need room for their exit waves and frames only
        need = more.exit_waves + more.frames if held else more.total
        args = (self.name, str(self.store.absolute()), mine, self.origins[rows], self.spec, need)
        return self._on(worker, load_task, *args, key=f"load-{uuid.uuid4().hex[:6]}")

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

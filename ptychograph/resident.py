"""The views one executor slot keeps between iterations, and the tasks every algorithm needs.

A :class:`ResidentViews` is what a per-chunk task of an algorithm receives: the view chunks of
one worker (or of one in-process slot), the array module and the batch ops chosen once for it,
and the batch size. The local executor keeps a few of them in this process; the Dask executor
keeps one per worker in a worker plugin (:mod:`ptychograph.executors.worker`). Tasks return only
small reducible values, never the exit waves (docs/design.md, "Data flow on a cluster").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptychograph.backend import Array
from ptychograph.ops import select_ops
from ptychograph.positions import follow_all
from ptychograph.shifted_probe import ShiftTable
from ptychograph.state import State
from ptychograph.views import ViewChunk, make_chunk, reset_exit_waves


@dataclass
class ResidentViews:
    """Views held by one executor slot.

    chunks : the resident :class:`~ptychograph.views.ViewChunk` s. pending : (amplitudes (n, H, W)
    real, origins (n, 2), index of the first view in the scan) loaded but not yet turned into
    chunks (done by the next :func:`reset_views`, which knows the estimates).
    good : (H, W) bool detector mask or None.
    backend : "numpy" or "cupy"; ``ops`` are its batch ops.
    shift_table : the shifted probes S_s P shared by the chunks (:mod:`ptychograph.shifted_probe`).
    """

    backend: str = "numpy"
    batch_size: int = 64
    subpixel: str = "fourier"
    good: Array | None = None
    chunks: list[ViewChunk] = field(default_factory=list)
    pending: list[tuple[Array, Array, int]] = field(default_factory=list)
    shift_table: ShiftTable = field(default_factory=ShiftTable, repr=False)

    def __post_init__(self) -> None:
        self.ops = select_ops(self.backend)

    @property
    def xp(self) -> Any:
        """The array module of the views (numpy or cupy)."""
        if self.backend == "cupy":
            import cupy

            return cupy
        return np

    def device(self, array: Array | None) -> Array | None:
        """``array`` on this slot's device (None stays None)."""
        return None if array is None else self.xp.asarray(array)


def reset_views(views: ResidentViews, state: State) -> int:
    """psi = P O from ``state`` for every resident view, including views loaded since the last
    reset (start of a run, resume, recovery, or a changed number of modes). The views are
    first moved to ``state.origins`` when the state has them (corrected positions).

    Returns the number of views held.
    """
    xp = views.xp
    probe, obj = xp.asarray(state.probe), xp.asarray(state.obj)
    follow_all(views.chunks, state.origins)
    if state.origins is not None:
        views.pending = [
            (amplitudes, xp.asarray(state.origins[first : first + len(amplitudes)]), first)
            for amplitudes, _, first in views.pending
        ]
    for chunk in views.chunks:
        shape = (chunk.n_views, probe.shape[0], obj.shape[0], *chunk.frame_shape)
        if chunk.exit_waves.shape != shape:  # the number of modes changed
            chunk.exit_waves = xp.empty(shape, dtype=probe.dtype)
        reset_exit_waves(chunk, probe, obj, views.batch_size)
    views.chunks.extend(
        make_chunk(
            amplitudes,
            views.good,
            origins,
            probe,
            obj,
            views.batch_size,
            views.subpixel,
            first,
            views.shift_table,
        )
        for amplitudes, origins, first in views.pending
    )
    views.pending = []
    return sum(c.n_views for c in views.chunks)

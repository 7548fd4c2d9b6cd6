"""A scan that grows while it is reconstructed: its views' origins, its object, its new views
(docs/design.md, "Live reconstruction").

:class:`ScanFrame` maps positions to view origins for a scan whose extent is not known yet. It
starts as the batch layout of the first frames (:func:`ptychograph.problem.layout`: the lowest
position at ``object_margin``); when new positions leave the object, the object is padded by
whole pixels and every origin moves by the same whole pixels (:meth:`ScanFrame.extend`), so the
estimates, the exit waves and the views stay consistent. Once the scan is complete,
:meth:`ScanFrame.settle` moves the object by the remaining fraction of a pixel (a Fourier
shift) so that the origins and the object size are exactly those of a batch run over the same
frames, and the result is written as one.

:func:`adopt_task` is the per-slot task that takes newly loaded views in between iterations:
their exit waves start from the current probe and object (psi = P O), while the resident
views keep theirs; :func:`drop_task` lets a slot hand views to another worker.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptychograph.backend import to_host
from ptychograph.config import DataConfig, ReconstructionConfig
from ptychograph.geometry import object_shape, view_origins
from ptychograph.positions import follow_all
from ptychograph.resident import ResidentViews, reset_views
from ptychograph.scan import Geometry
from ptychograph.state import State
from ptychograph.views import rotate_modes

#: Object pixels below which two relative positions count as equal (round-off).
TOLERANCE = 1e-6


@dataclass
class ScanFrame:
    """Positions -> view origins of a growing scan.

    anchor : (2,) the first frame's position (y, x) metres; ``relative`` positions are object
    pixels from it, after the data orientation options. ref : (2,) the relative position that
    sits at object pixel ``margin``. rounded : origins rounded to whole pixels (``subpixel:
    off``).
    """

    geometry: Geometry
    data: DataConfig
    margin: int
    rounded: bool
    anchor: np.ndarray
    ref: np.ndarray

    @classmethod
    def start(
        cls, positions: np.ndarray, geometry: Geometry, rec: ReconstructionConfig, data: DataConfig
    ) -> ScanFrame:
        """The frame of the first ``positions`` (N, 2): the batch layout of those frames."""
        rounded, anchor = rec.subpixel == "off", np.asarray(positions[0], dtype=np.float64)
        frame = cls(geometry, data, rec.object_margin, rounded, anchor, np.zeros(2))
        frame.ref = frame.relative(positions).min(axis=0)
        return frame

    @classmethod
    def resumed(
        cls,
        positions: np.ndarray,
        origins: np.ndarray,
        geometry: Geometry,
        rec: ReconstructionConfig,
        data: DataConfig,
    ) -> ScanFrame:
        """The frame in which ``origins`` (N, 2) (a checkpoint's) place ``positions``."""
        frame = cls.start(positions, geometry, rec, data)
        frame.ref = np.mean(frame.relative(positions) - origins, axis=0) + frame.margin
        return frame

    def relative(self, positions: np.ndarray) -> np.ndarray:
        """(N, 2) object pixels from the anchor, oriented as :func:`view_origins` does."""
        both = np.concatenate([self.anchor[None], np.asarray(positions, dtype=np.float64)])
        flips = {"swap_xy": self.data.swap_xy, "flip_x": self.data.flip_x}
        oriented = view_origins(
            both, self.geometry.object_pixel, 0, flip_y=self.data.flip_y, **flips
        )
        return oriented[1:] - oriented[0]

    def origins(self, positions: np.ndarray) -> np.ndarray:
        """(N, 2) view origins of ``positions`` in the current object."""
        origins = self.relative(positions) - self.ref + self.margin
        return np.round(origins) if self.rounded else origins

    def extend(self, state: State, positions: np.ndarray) -> State:
        """``state`` with views for every one of ``positions`` (N_new >= N, the first N those
        of ``state.origins``): the object padded where the new views leave it (with the mean of
        its outermost pixels, as unlit object), every origin moved with it."""
        assert state.origins is not None
        known = len(state.origins)
        low = self.relative(positions[known:]).min(axis=0) if len(positions) > known else self.ref
        before = np.maximum(0, np.ceil(self.ref - low - TOLERANCE)).astype(int)
        self.ref = self.ref - before
        origins = np.concatenate([state.origins + before, self.origins(positions[known:])])
        frame_shape = self.geometry.frame_shape
        need = np.asarray(object_shape(origins, frame_shape, self.margin))
        have = np.asarray(state.obj.shape[1:]) + before
        after = np.maximum(0, need - have)
        return state.replace(obj=pad_object(state.obj, before, after), origins=origins)

    def settle(self, state: State, positions: np.ndarray) -> State:
        """``state`` in the batch layout of ``positions`` (all the scan's): the object moved by
        the fraction of a pixel between this frame and the batch one and cut (or padded) to the
        batch size, the origins those of :func:`ptychograph.problem.layout`."""
        assert state.origins is not None
        relative = self.relative(positions)
        shift = relative.min(axis=0) - self.ref  # in [0, 1) after extend
        shift[np.abs(shift) < TOLERANCE] = 0.0
        batch = relative - relative.min(axis=0) + self.margin
        origins = np.round(batch) if self.rounded else batch
        moved = state.origins - self.origins(positions)  # corrections, kept
        shape = object_shape(origins, self.geometry.frame_shape, self.margin)
        obj = to_host(state.obj)
        if np.any(shift != 0):
            obj = fourier_shift(obj, -shift)
        grow = np.maximum(0, np.asarray(shape) - np.asarray(obj.shape[1:]))
        obj = pad_object(obj, np.zeros(2, dtype=int), grow)[:, : shape[0], : shape[1]]
        self.ref = relative.min(axis=0)
        return state.replace(obj=obj.astype(state.obj.dtype), origins=origins + moved)


def pad_object(obj: np.ndarray, before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """obj (M_O, Y, X) padded by ``before`` / ``after`` (2,) pixels on each axis, with the
    mean of its outermost pixels per mode (unlit object keeps its starting value)."""
    obj = to_host(obj)
    if not (np.any(before) or np.any(after)):
        return obj
    ring = np.concatenate([obj[:, 0, :], obj[:, -1, :], obj[:, :, 0], obj[:, :, -1]], axis=1)
    fill = ring.mean(axis=1)
    widths = ((0, 0), (int(before[0]), int(after[0])), (int(before[1]), int(after[1])))
    padded = np.pad(obj, widths)
    mask = np.ones(padded.shape[1:], dtype=bool)
    mask[before[0] : before[0] + obj.shape[1], before[1] : before[1] + obj.shape[2]] = False
    padded[:, mask] = fill[:, None]
    return padded


def fourier_shift(obj: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """obj (M_O, Y, X) moved by ``shift`` (2,) pixels (band-limited, periodic): the result at
    pixel i is obj at i - shift."""
    ky = np.fft.fftfreq(obj.shape[1])[:, None]
    kx = np.fft.fftfreq(obj.shape[2])[None, :]
    ramp = np.exp(-2j * np.pi * (ky * shift[0] + kx * shift[1]))
    return np.fft.ifft2(np.fft.fft2(obj, axes=(-2, -1)) * ramp, axes=(-2, -1))


def adopt_task(views: ResidentViews, state: State) -> int:
    """Take the views loaded since the last iteration: the resident views' exit waves get the
    probe-mode rotation still pending in ``state`` (which the caller then drops), every view
    moves to ``state.origins`` (the object may have grown), and the new views start at
    psi = P O. Returns the number of views held."""
    follow_all(views.chunks, state.origins)
    if state.rotation is not None:
        rotation = views.xp.asarray(state.rotation)
        for chunk in views.chunks:
            chunk.exit_waves = rotate_modes(chunk.exit_waves, rotation)
    resident, views.chunks = views.chunks, []
    reset_views(views, state)  # the pending views only: psi = P O, as at a run's start
    views.chunks = [*resident, *views.chunks]
    return sum(c.n_views for c in views.chunks)


def drop_task(views: ResidentViews, firsts: list[int]) -> int:
    """Forget the views whose chunks start at ``firsts`` (they moved to another worker);
    returns the number of views held."""
    views.chunks = [c for c in views.chunks if c.first not in firsts]
    views.pending = [p for p in views.pending if p[2] not in firsts]
    return sum(c.n_views for c in views.chunks)

"""A frames store that grows while a scan is measured, and a simulated detector that fills one.

:class:`FrameWriter` writes the same chunked Zarr frames store that ``ptychograph convert``
writes (:mod:`ptychograph.io.zarr_store`, ``format_version`` 1), extended frame by frame from
acquisition code: a Bluesky callback or any Python loop::

    with FrameWriter("scan.zarr", geometry, (256, 256), expected_frames=1000) as writer:
        for frame, position in detector:  # frame (H, W), position (y, x) metres
            writer.append(frame, position)  # or blocks: (n, H, W) and (n, 2)

Live store format (mark ``format_version`` 1):

* the arrays and root attributes of a converted store; ``frames`` (N, H, W) float32 in chunks of
  (chunk_frames, H, W) and ``positions`` (N, 2) float64 in chunks of (chunk_frames, 2), where N
  (the arrays' shape) only grows;
* ``live.json`` at the root: ``{"format": "ptychograph-live", "format_version": 1, "frames": n,
  "expected_frames": E or null, "complete": false|true}`` (:mod:`ptychograph.io.live_mark`).

Frames are buffered and written a whole chunk at a time; for each chunk the writer grows the
arrays' shape, writes the frames chunk and its positions, and only then replaces ``live.json``
(``os.replace``) with the new count ``n``. Readers (:func:`~ptychograph.io.read_store_info`,
``read_frames``, ``ptychograph info``) read ``live.json`` *before* the arrays and use only its
first ``n`` frames, so they never see a chunk that is not fully written (every Zarr chunk file
is itself replaced atomically, too). :meth:`FrameWriter.close` writes the last, partial chunk
and the completion mark (``complete: true``); the store then reads exactly like a converted one
and ``ptychograph run`` takes it unchanged. Without the mark the store is still growing
(``StoreInfo.live.growing``; ``live.describe()`` says frames seen / expected).

``ptychograph simulate OUT.zarr --live --rate F`` (:func:`simulate_live`) stands in for a
detector: it writes a simulated scan through a FrameWriter at F frames per second.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import zarr

from ptychograph.errors import InputError
from ptychograph.io.live_mark import LiveMark, write_mark
from ptychograph.io.validate import validate_mask
from ptychograph.io.zarr_store import (
    _root_attrs,
    _swap_into_place,
    check_target,
    chunk_codecs,
    default_chunk_frames,
)
from ptychograph.paths import check_replaceable, remove
from ptychograph.scan import Geometry
from ptychograph.simulate import SimulationConfig, simulate

log = logging.getLogger("ptychograph")


class FrameWriter:
    """Write a frames store at ``path`` (ending in ``.zarr``) while a scan is measured.

    geometry : the detector geometry; frame_shape : (H, W), equal to ``geometry.frame_shape``.
    chunk_frames : frames per chunk (default: about 32 MiB, as ``convert``); smaller chunks
    reach readers sooner. expected_frames : the scan's frame count when known (readers report
    frames seen / expected; more frames are refused). mask : (H, W) bool, True = bad pixel.
    illumination : (M, H, W) or (H, W) complex initial probe. overwrite : replace a frames store
    ptychograph wrote at ``path``. The store exists, with no frames, once this returns.

    Bad input of any kind is one InputError naming the argument; a refused :meth:`append`
    leaves the writer as it was. Safe to call from several threads (calls are serialised).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        geometry: Geometry,
        frame_shape: tuple[int, int],
        chunk_frames: int | None = None,
        expected_frames: int | None = None,
        mask: np.ndarray | None = None,
        illumination: np.ndarray | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.frame_shape = _checked_shape(geometry, frame_shape)
        if chunk_frames is None:
            chunk_frames = default_chunk_frames(self.frame_shape)
        self.chunk_frames = _count(chunk_frames, "chunk_frames", 1)
        self.expected_frames = (
            None if expected_frames is None else _count(expected_frames, "expected_frames", 1)
        )
        if self.path.suffix.lower() != ".zarr":
            raise InputError("path", f"a frames store must end in .zarr, got {self.path.name!r}")
        check_target(self.path, overwrite)
        extras = _extras(mask, illumination, self.frame_shape)
        self._create(geometry, extras)
        self._frames = zarr.open_array(self.path, path="frames", mode="r+")
        self._positions = zarr.open_array(self.path, path="positions", mode="r+")
        self._buffer: list[tuple[np.ndarray, np.ndarray]] = []
        self._buffered = 0
        self._published = 0
        self._seen: set[tuple[float, float]] = set()
        self._lock = threading.Lock()
        self.closed = False

    @property
    def frames_appended(self) -> int:
        """Frames accepted so far (published or still buffered)."""
        return self._published + self._buffered

    @property
    def frames_published(self) -> int:
        """Frames readers can see (whole chunks written, and all frames after close)."""
        return self._published

    def append(self, frames: Any, positions: Any) -> None:
        """Add ``frames`` (n, H, W) or one (H, W) frame of counts (finite, >= 0) with their
        ``positions`` (n, 2) or (2,) (y, x) metres; every whole chunk is written at once."""
        with self._lock:
            if self.closed:
                raise InputError("append", f"{self.path} is closed; no frames can be added")
            block, where = self._checked(frames, positions)
            self._seen.update((y, x) for y, x in where.tolist())
            self._buffer.append((block, where))
            self._buffered += block.shape[0]
            while self._buffered >= self.chunk_frames:
                self._write(self.chunk_frames)

    def close(self) -> None:
        """Write the last, partial chunk and the completion mark; closing twice is a no-op.
        With no frames at all, the store is removed and InputError raised."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
            if self.frames_appended == 0:
                remove(self.path)
                raise InputError("frames", f"none were appended; {self.path} removed")
            if self._buffered:
                self._write(self._buffered)
            write_mark(self.path, LiveMark(self._published, self.expected_frames, True))

    def abort(self) -> None:
        """Publish the buffered frames but write no completion mark (the scan broke off):
        readers see a store that stopped growing."""
        with self._lock:
            if not self.closed and self._buffered:
                self._write(self._buffered)
            self.closed = True

    def __enter__(self) -> FrameWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.close()
            return
        try:
            self.abort()
        except Exception as err:  # keep the error that ended the scan
            log.warning("could not publish the last frames of %s (%s)", self.path, err)

    def _create(self, geometry: Geometry, extras: dict[str, np.ndarray]) -> None:
        """The empty store with its mark (0 frames), built beside ``path`` and renamed in."""
        height, width = self.frame_shape
        tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
        try:
            group = zarr.open_group(tmp, mode="w-", zarr_format=3)
            group.create_array(
                "frames",
                shape=(0, height, width),
                chunks=(self.chunk_frames, height, width),
                dtype="float32",
                compressors=chunk_codecs(),
                dimension_names=("frame", "py", "px"),
                fill_value=np.nan,  # as convert's: a missing chunk reads as NaN, refused
            )
            group.create_array(
                "positions",
                shape=(0, 2),
                chunks=(self.chunk_frames, 2),
                dtype="float64",
                compressors=chunk_codecs(),
                dimension_names=("frame", "axis"),
            )
            dims = {"mask": ("py", "px"), "illumination": ("probe_mode", "py", "px")}
            for name, data in extras.items():
                group.create_array(
                    name, data=data, compressors=chunk_codecs(), dimension_names=dims[name]
                )
            group.attrs.update(_root_attrs(geometry))
            write_mark(tmp, LiveMark(0, self.expected_frames, False))
            _swap_into_place(tmp, self.path)
        finally:
            if tmp.exists():
                remove(tmp)

    def _checked(self, frames: Any, positions: Any) -> tuple[np.ndarray, np.ndarray]:
        """(frames (n, H, W) float32, positions (n, 2) float64), or InputError."""
        block = np.asarray(frames)
        block = block[None] if block.ndim == 2 else block
        if block.dtype.kind not in "iuf":
            raise InputError("frames", f"have dtype {block.dtype}, expected real numbers")
        if block.ndim != 3 or block.shape[1:] != self.frame_shape or block.shape[0] == 0:
            expected = f"(n >= 1, {self.frame_shape[0]}, {self.frame_shape[1]}) or one frame"
            raise InputError("frames", f"have shape {block.shape}, expected {expected}")
        first = self.frames_appended
        bad = np.flatnonzero(~np.isfinite(block).all(axis=(1, 2)))
        if bad.size:
            raise InputError("frames", f"frame {first + int(bad[0])} contains NaN or Inf")
        bad = np.flatnonzero((block < 0).any(axis=(1, 2)))
        if bad.size:
            raise InputError("frames", f"frame {first + int(bad[0])} has negative counts")
        where = np.asarray(positions)
        where = where[None] if where.ndim == 1 else where
        count = block.shape[0]
        if where.dtype.kind not in "iuf" or where.shape != (count, 2):
            problem = f"have shape {where.shape} ({where.dtype}), expected ({count}, 2) (y, x)"
            raise InputError("positions", f"{problem} metres, one row per frame")
        where = where.astype(np.float64)
        if not np.isfinite(where).all():
            raise InputError("positions", "contain NaN or Inf")
        seen: set[tuple[float, ...]] = set()
        for index, row in enumerate(map(tuple, where.tolist())):
            if row in self._seen or row in seen:
                problem = f"the position of frame {first + index} repeats an earlier one"
                raise InputError("positions", problem)
            seen.add(row)
        if self.expected_frames is not None and first + count > self.expected_frames:
            problem = f"{first + count} frames would exceed expected_frames={self.expected_frames}"
            raise InputError("frames", problem)
        return block.astype(np.float32), where

    def _write(self, count: int) -> None:
        """Write the first ``count`` buffered frames as the next chunk, then publish them."""
        blocks = np.concatenate([frames for frames, _ in self._buffer])
        wheres = np.concatenate([where for _, where in self._buffer])
        start, stop = self._published, self._published + count
        self._frames.resize((stop, *self.frame_shape))  # shape first: readers go by the mark
        self._positions.resize((stop, 2))
        self._frames[start:stop] = blocks[:count]
        self._positions[start:stop] = wheres[:count]
        rest = [(blocks[count:], wheres[count:])] if blocks.shape[0] > count else []
        self._buffer, self._buffered, self._published = rest, self._buffered - count, stop
        write_mark(self.path, LiveMark(stop, self.expected_frames, False))


def _checked_shape(geometry: Any, frame_shape: Any) -> tuple[int, int]:
    if not isinstance(geometry, Geometry):
        raise InputError("geometry", f"must be a ptychograph Geometry, got {type(geometry)}")
    try:
        shape = (int(frame_shape[0]), int(frame_shape[1]))
    except (TypeError, ValueError, IndexError):
        raise InputError("frame_shape", f"must be (H, W), got {frame_shape!r}") from None
    if len(frame_shape) != 2 or shape != tuple(geometry.frame_shape) or min(shape) < 1:
        problem = f"{frame_shape!r} differs from geometry.frame_shape {geometry.frame_shape}"
        raise InputError("frame_shape", problem)
    return shape


def _count(value: Any, name: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < least:
        raise InputError(name, f"must be a whole number >= {least}, got {value!r}")
    return int(value)


def _extras(mask: Any, illumination: Any, frame_shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """The optional mask (H, W) bool and illumination (M, H, W) complex64, checked."""
    extras: dict[str, np.ndarray] = {}
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != frame_shape or mask.dtype.kind not in "biu":
            problem = f"has shape {mask.shape} ({mask.dtype}), expected {frame_shape} bool"
            raise InputError("mask", problem)
        extras["mask"] = mask != 0
        validate_mask(extras["mask"])
    if illumination is not None:
        probe = np.asarray(illumination)
        probe = probe[None] if probe.ndim == 2 else probe
        if probe.ndim != 3 or probe.shape[1:] != frame_shape or probe.dtype.kind not in "iufc":
            problem = f"has shape {probe.shape}, expected (M, H, W) with (H, W) = {frame_shape}"
            raise InputError("illumination", problem)
        if not np.isfinite(probe).all():
            raise InputError("illumination", "contains NaN or Inf")
        extras["illumination"] = probe.astype(np.complex64)
    return extras


def simulate_live(
    config: SimulationConfig,
    output: Path,
    rate: float | None,
    chunk_frames: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Simulate ``config``'s scan and write it to the frames store ``output`` through a
    :class:`FrameWriter` at ``rate`` frames per second (frame i is appended once (i + 1) / rate
    seconds have passed), plus ``<stem>-truth.npz``; returns the truth's path."""
    if rate is None:
        raise InputError("--rate", "is needed with --live: the frames per second to write")
    if not (isinstance(rate, int | float) and math.isfinite(rate) and rate > 0):
        raise InputError("--rate", f"must be a positive number of frames per second, got {rate}")
    if chunk_frames is not None and (not isinstance(chunk_frames, int) or chunk_frames < 1):
        raise InputError("--chunk-frames", f"must be a whole number >= 1, got {chunk_frames}")
    if output.suffix.lower() != ".zarr":
        raise InputError("output", f"with --live a frames store ending in .zarr, got {output.name}")
    truth_path = output.with_name(output.stem + "-truth.npz")
    check_replaceable(truth_path, "truth", overwrite, "output")
    sim = simulate(config)
    scan = sim.scan
    writer = FrameWriter(
        output,
        scan.geometry,
        scan.geometry.frame_shape,
        chunk_frames=chunk_frames,
        expected_frames=scan.n_frames,
        mask=scan.mask,
        illumination=scan.illumination,
        overwrite=overwrite,
    )
    tmp = truth_path.with_name("." + truth_path.name + ".tmp.npz")
    np.savez(tmp, object=sim.obj, probe=sim.probe, view_origin=sim.origins)
    tmp.replace(truth_path)
    log.info("writing %s live: %d frames at %g frames/s", output, scan.n_frames, rate)
    start = time.monotonic()
    try:
        with writer:
            done = 0
            while done < scan.n_frames:
                due = min(scan.n_frames, int((time.monotonic() - start) * rate))
                if due > done:
                    writer.append(scan.frames[done:due], scan.positions[done:due])
                    done = due
                else:
                    time.sleep(max(0.0, min(0.5, (done + 1) / rate - (time.monotonic() - start))))
    except KeyboardInterrupt:  # as a detector stopped mid-scan: what it measured stays
        log.info("%s keeps %d frames, without a completion mark", output, writer.frames_published)
        raise
    log.info("wrote %s (%d frames in %.1f s)", output, scan.n_frames, time.monotonic() - start)
    return truth_path

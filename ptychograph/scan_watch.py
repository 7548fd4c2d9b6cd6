"""Watching a frames store that is still being written (docs/design.md, "Live reconstruction").

:class:`ScanWatch` reads the live mark (:mod:`ptychograph.io.live_mark`) between iterations of a
followed run: frames published, frames expected, the completion mark, and how long the count
has not changed (``follow.idle_timeout``). :func:`wait_for_store` holds ``run --follow`` until
the start rule of the ``follow`` section holds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from ptychograph.config import Config
from ptychograph.errors import InputError
from ptychograph.io.live_mark import LiveMark, read_mark
from ptychograph.io.zarr_store import is_frames_store, read_store_info

log = logging.getLogger("ptychograph")


class ScanWatch:
    """What a followed store has published, looked at between iterations. A store with no
    live mark (one ``convert`` wrote) is complete."""

    def __init__(self, store: Path, config: Config, clock: Callable[[], float] = time.monotonic):
        self.store = store
        self.follow = config.follow
        self.clock = clock
        self.mark = LiveMark(0, None, False)
        self.since = clock()  # when the frame count last changed

    def look(self) -> LiveMark:
        """Read the mark again; returns it (no frames while the store does not exist)."""
        if not self.store.exists():
            return self.mark
        mark = read_mark(self.store)
        if mark is None:
            info = read_store_info(self.store)
            mark = LiveMark(info.n_frames, info.n_frames, True)
        if mark.frames != self.mark.frames:
            self.since = self.clock()
        self.mark = mark
        return mark

    @property
    def idle(self) -> bool:
        """No new frame for ``follow.idle_timeout`` seconds, and no completion mark."""
        return not self.mark.complete and self.clock() - self.since > self.follow.idle_timeout

    @property
    def ended(self) -> bool:
        return self.mark.complete or self.idle

    def describe(self) -> str:
        """``120 of 400 frames`` (``of ?`` when the scan does not say)."""
        expected = self.mark.expected_frames
        return f"{self.mark.frames} of {'?' if expected is None else expected} frames"

    def wait_to_start(self) -> LiveMark:
        """Block until the start rule holds, the scan is complete, or it stopped growing
        (then start with what there is, or refuse a store with no frames)."""
        said = False
        while True:
            mark = self.look()
            need = self.follow.frames_to_start(mark.expected_frames)
            if mark.complete or mark.frames >= need:
                return mark
            if not said:  # say what it waits for: a silent wait looks like a hang
                log.info(
                    "waiting for %s: %s%s, starting at %d (follow.start_frames / start_fraction;"
                    " gives up after follow.idle_timeout = %g s without a new frame)",
                    self.store,
                    self.describe(),
                    "" if self.store.exists() else " (the store does not exist yet)",
                    need,
                    self.follow.idle_timeout,
                )
                said = True
            if self.idle:
                if mark.frames == 0:
                    missing = "does not exist" if not self.store.exists() else "exists"
                    raise InputError(
                        "data.path",
                        f"{self.store} {missing}: no frames published in "
                        f"{self.follow.idle_timeout:g} s (follow.idle_timeout)",
                    )
                log.warning(
                    "the scan stopped at %s before the %d to start with: starting anyway",
                    self.describe(),
                    need,
                )
                return mark
            time.sleep(self.follow.poll_interval)


def wait_for_store(config: Config) -> Path:
    """The followed frames store (``data.path``), once the start rule holds."""
    path = config.data.path
    if path.exists() and not is_frames_store(path):
        raise InputError(
            "data.follow",
            f"{path} is not a frames store; a followed scan is a .zarr store written live "
            "(ptychograph.live.FrameWriter)",
        )
    if config.reconstruction.probe_modes == "auto":
        raise InputError("reconstruction.probe_modes", "'auto' is not supported with data.follow")
    if config.data.nonfinite == "drop":
        raise InputError(
            "data.nonfinite",
            "'drop' is not supported with data.follow (frames arrive during the run); use "
            "'error', or reconstruct the finished scan without --follow",
        )
    watch = ScanWatch(path, config)
    mark = watch.wait_to_start()
    if not is_frames_store(path):
        raise InputError("data.follow", f"{path} is not a frames store")
    log.info("following %s: starting with %s", path, watch.describe())
    if not mark.complete:
        rule = config.follow.frames_to_start(mark.expected_frames)
        log.info("(start rule: %d frames, follow.start_frames / start_fraction)", rule)
    return path

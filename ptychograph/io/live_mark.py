"""The mark of a frames store written live: how many of its frames readers may use.

:class:`ptychograph.live.FrameWriter` keeps ``live.json`` at the root of the store it grows
(its format is described in :mod:`ptychograph.live`) and replaces it atomically
(``os.replace``) only after the chunks it counts are written, so a reader that reads the mark
*before* the arrays' metadata never sees a frame that is not fully written. A store without
the mark (one ``convert`` wrote) has all its frames.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from ptychograph.errors import InputError

MARK_NAME = "live.json"
MARK_FORMAT = "ptychograph-live"
MARK_VERSION = 1


@dataclass(frozen=True)
class LiveMark:
    """How far a store written live has got.

    frames : complete frames published (readers use only these). expected_frames : the
    frames the scan will have, when known (else None). complete : the writer closed: no more
    frames will come.
    """

    frames: int
    expected_frames: int | None
    complete: bool

    @property
    def growing(self) -> bool:
        """Whether more frames may still come (no completion mark yet)."""
        return not self.complete

    def describe(self) -> str:
        """``complete, 400 frames`` or ``live, 120 of 400 frames so far`` (``of ?`` unknown)."""
        if self.complete:
            return f"complete, {self.frames} frames"
        expected = "?" if self.expected_frames is None else self.expected_frames
        return f"live, {self.frames} of {expected} frames so far (no completion mark yet)"


def write_mark(store: Path, mark: LiveMark) -> None:
    """Replace ``store/live.json`` with ``mark`` atomically (a hidden temporary file beside it,
    flushed to disk, then ``os.replace``)."""
    text = json.dumps(
        {
            "format": MARK_FORMAT,
            "format_version": MARK_VERSION,
            "frames": mark.frames,
            "expected_frames": mark.expected_frames,
            "complete": mark.complete,
        }
    )
    tmp = store / f".{MARK_NAME}.{uuid.uuid4().hex}.tmp"
    try:
        with tmp.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, store / MARK_NAME)
    finally:
        tmp.unlink(missing_ok=True)


def read_mark(store: Path) -> LiveMark | None:
    """The mark of ``store``, or None when it has none (a store ``convert`` wrote).

    Raises InputError("data.path", ...) for a mark that is unreadable, of another format, of a
    newer version or with impossible counts.
    """
    path = store / MARK_NAME
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise _mark_error(store, f"cannot be read ({type(err).__name__}: {err})") from None
    if not isinstance(raw, dict) or raw.get("format") != MARK_FORMAT:
        raise _mark_error(store, f"is not a ptychograph live mark (format {MARK_FORMAT!r})")
    version = raw.get("format_version")
    if not _whole(version, 1) or version > MARK_VERSION:
        problem = f"has format_version {version!r}; this ptychograph reads 1 to {MARK_VERSION}"
        raise _mark_error(store, f"{problem} (upgrade ptychograph)")
    frames, expected, complete = (raw.get(key) for key in ("frames", "expected_frames", "complete"))
    if not _whole(frames, 0) or not isinstance(complete, bool):
        raise _mark_error(store, f"frames {frames!r} / complete {complete!r} are not valid")
    if expected is not None and not (_whole(expected, 1) and expected >= frames):
        raise _mark_error(store, f"expected_frames {expected!r} is not a count >= {frames}")
    return LiveMark(frames, expected, complete)


def usable_frames(store: Path, mark: LiveMark | None, stored: int) -> int:
    """The frames readers may use: all ``stored`` without a mark, else those the mark counts
    (refused when the arrays hold fewer, or when none are published yet)."""
    if mark is None:
        return stored
    if mark.frames > stored:
        raise _mark_error(store, f"counts {mark.frames} frames but the store holds {stored}")
    if mark.frames == 0:
        raise InputError("data.path", f"{store}: no frames published yet (a live store)")
    return mark.frames


def _whole(value: object, least: int) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _mark_error(store: Path, problem: str) -> InputError:
    return InputError("data.path", f"{store}: {MARK_NAME} {problem}")

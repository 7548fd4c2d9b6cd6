"""Progress of a run for people: a one-line bar on a terminal, plain log lines otherwise.

The time per iteration is measured only after :data:`WARM_UP` iterations of this process
(the first ones include loading, compilation and the cluster's start), so the first estimate
of the remaining time is not several times off; until then the estimate reads "estimating".
A resumed run is measured from the iteration it continues at.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import TextIO

from ptychograph.state import History

log = logging.getLogger("ptychograph")

#: Iterations reported before the time per iteration is measured.
WARM_UP = 3


class ProgressReporter:
    """A callback ``report(iteration, history)`` for a run of ``total`` iterations (None: not
    known yet, as while a followed scan grows). ``note`` (e.g. ``120 of 400 frames``) is shown
    on the line when set."""

    def __init__(
        self,
        total: int | None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.perf_counter,
        every: int | None = None,
    ) -> None:
        self.total = total
        self.note = ""
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        self.every = every if every is not None else max(1, (total or 100) // 20)
        self.tty = self.stream.isatty()
        self.marks: dict[str, float] = {}

    def __call__(self, it: int, history: History) -> None:
        now, marks, total = self.clock(), self.marks, self.total
        marks.setdefault("first", it)
        if it - marks["first"] == WARM_UP - 1:
            marks["since"], marks["at"] = it, now
        per_it = None
        if "since" in marks and it > marks["since"]:
            per_it = (now - marks["at"]) / (it - marks["since"])
        if total is None:  # a followed scan still growing: no end to count down to
            eta = "once the scan ends"
        else:
            eta = "estimating" if per_it is None else f"{per_it * (total - it):.0f} s"
        eta = "0 s" if total is not None and it >= total else eta
        rate = "" if per_it is None else f"  {per_it:.3f} s/it"
        error = history.fourier_error[-1]
        note = f"  {self.note}" if self.note else ""
        of = "" if total is None else f"/{total}"
        if self.tty:
            done = 0 if total is None else int(30 * it / total)
            bar = "#" * done + "." * (30 - done)
            text = f"\r[{bar}] {it}{of}  error {error:.3e}{rate}{note}  ETA {eta}   "
            self.stream.write(text)
            if it == total:
                self.stream.write("\n")
            self.stream.flush()
        elif it == marks["first"] or it % self.every == 0 or it == total:
            log.info(
                "iteration %d%s  fourier error %.3e%s%s  ETA %s", it, of, error, rate, note, eta
            )


def progress_reporter(
    total: int | None,
    stream: TextIO | None = None,
    clock: Callable[[], float] = time.perf_counter,
) -> ProgressReporter:
    """A :class:`ProgressReporter` for a run of ``total`` iterations."""
    return ProgressReporter(total, stream, clock)


def plural(count: int, noun: str) -> str:
    """``1 worker``, ``2 workers``: a count with its noun in the right number."""
    return f"{count} {noun}{'' if count == 1 else 's'}"

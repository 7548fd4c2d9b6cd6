"""Ctrl-C during a command-line run: one line for the user, no teardown noise.

A terminal's Ctrl-C reaches every process of the foreground group: the ``ptychograph``
process and the Dask worker processes of the local cluster it started. Left alone, each worker
prints a ``KeyboardInterrupt`` traceback and a warning per cancelled task, and the client's
Dask loggers report the closed connections. :func:`quiet_interrupt` makes the command the only
process that acts on Ctrl-C: it asks local workers to ignore SIGINT and to keep cancelled
tasks to themselves (as a Dask worker preload, :func:`dask_setup`), and on the first Ctrl-C it
silences the client's Dask loggers before the interrupt unwinds the run.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import warnings
from collections.abc import Iterator
from types import FrameType
from typing import Any

#: Client-side loggers that report the cancelled tasks and closed connections of a teardown.
NOISY_ON_INTERRUPT = ("distributed", "dask", "tornado", "asyncio")
#: Worker-side logger that warns once per task cancelled by a teardown.
CANCELLED_TASKS_LOGGER = "distributed.worker.state_machine"
#: The Dask config key naming the modules a worker preloads.
PRELOAD_KEY = "distributed.worker.preload"


def dask_setup(worker: Any) -> None:
    """Worker preload: ignore SIGINT (the client stops the run) and log cancelled tasks only
    at ERROR and above."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.getLogger(CANCELLED_TASKS_LOGGER).setLevel(logging.ERROR)


@contextlib.contextmanager
def quiet_interrupt() -> Iterator[None]:
    """Within: local Dask workers started here preload :func:`dask_setup`, and Ctrl-C
    silences the Dask loggers before raising KeyboardInterrupt. The previous SIGINT handler
    and Dask config are restored on the way out (loggers silenced by a Ctrl-C stay so)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    import dask

    def interrupted(signum: int, frame: FrameType | None) -> None:
        for name in NOISY_ON_INTERRUPT:
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        warnings.simplefilter("ignore")
        raise KeyboardInterrupt

    # Only the one key is set and restored: ``with dask.config.set(...)`` would, on leaving,
    # delete the whole ``distributed`` section if it did not exist on entering, and so the
    # defaults that ``import distributed`` adds meanwhile (a later cluster fails on them).
    preload = list(dask.config.get(PRELOAD_KEY, []) or [])
    previous = signal.signal(signal.SIGINT, interrupted)
    dask.config.set({PRELOAD_KEY: [*preload, __name__]})
    try:
        yield
    finally:
        dask.config.set({PRELOAD_KEY: preload})
        signal.signal(signal.SIGINT, previous)

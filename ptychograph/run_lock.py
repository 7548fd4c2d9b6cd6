"""The lock a run holds on its outputs (docs/reliability.md, "Never destroy what the user did
not name"): a second run writing the same result or checkpoint at the same time would take the
first run's half-written store for a leftover of a killed run and remove it
(:func:`ptychograph.paths.clean_leftovers`); it is refused with one line instead.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path

from ptychograph.errors import InputError
from ptychograph.paths import real

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("ptychograph")


def lock_path(target: Path) -> Path:
    """The lock file of a run writing ``target``: ``.NAME.lock`` beside it."""
    return target.parent / f".{target.name}.lock"


@contextlib.contextmanager
def run_lock(targets: Mapping[Path, str]) -> Iterator[None]:
    """Hold an exclusive lock (``flock``) on each target's lock file (``targets``: path ->
    config field) for the duration of a run, so that a second run writing the same result or
    checkpoint is refused with one line instead of removing the first run's half-written
    store as a leftover. The kernel releases the lock of a killed run; our lock file (it holds
    :data:`LOCK_MARK`) is removed on release, anything else of that name is left alone. Not
    locked, with the run going on: a target whose folder is missing or cannot take the file
    (the run's own folder checks refuse it with the reason), a file system without ``flock``
    (a warning says so). On NFS ``flock`` is emulated with record locks: runs on different
    hosts exclude each other only where the mount supports them."""
    with contextlib.ExitStack() as stack:
        seen: set[Path] = set()
        for target, field in targets.items():
            path = lock_path(target)
            if fcntl is None or not target.parent.is_dir() or real(path) in seen:
                continue
            seen.add(real(path))
            stack.enter_context(_locked(path, target, field))
        yield


def _open_lock(path: Path, field: str) -> int | None:
    """A descriptor of the lock file (created if missing; read-only when another user's), or
    None where the folder cannot take it. Refuses a link, folder or FIFO of that name."""
    flags = os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        try:
            fd = os.open(path, os.O_RDWR | flags, 0o666)
        except PermissionError:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as err:
        if err.errno in (errno.ELOOP, errno.EISDIR, errno.ENXIO):
            raise InputError(field, f"{path} is in the way of the run's lock file") from None
        return None  # the folder's checks say why
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise InputError(field, f"{path} is in the way of the run's lock file")
    return fd


@contextlib.contextmanager
def _locked(path: Path, target: Path, field: str) -> Iterator[None]:
    assert fcntl is not None
    while True:
        existed = os.path.lexists(path)
        fd = _open_lock(path, field)
        if fd is None:
            break
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise InputError(
                field,
                f"another run is writing {target} (it holds {path}); wait for it to end or "
                "choose another path",
            ) from None
        except OSError as err:  # no flock here (NFS without lockd, Lustre noflock)
            os.close(fd)
            if not existed:
                path.unlink(missing_ok=True)
            log.warning("%s: cannot lock %s (%s); the run is not locked", field, path, err)
            fd = None
            break
        try:  # the holder before us may have removed the file between our open and lock
            same = os.fstat(fd).st_ino == os.lstat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if fd is None:
        yield
        return
    try:
        if os.fstat(fd).st_size == 0:  # never write into a file of the user's
            with contextlib.suppress(OSError):
                os.write(fd, LOCK_MARK.encode())
        yield
    finally:
        with contextlib.suppress(OSError):
            ours = os.fstat(fd).st_ino == os.lstat(path).st_ino
            if ours and os.pread(fd, len(LOCK_MARK), 0) == LOCK_MARK.encode():
                path.unlink()
        os.close(fd)


#: The content of a run's lock file; only a file that starts with it is removed.
LOCK_MARK = "ptychograph run lock\n"

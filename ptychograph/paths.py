"""What a run or a conversion may write, checked in one place before anything is read or written.

The rule (docs/reliability.md, "Never destroy what the user did not name"): ``--overwrite``
replaces only something ptychograph wrote - a result store, a checkpoint, a frames store, a
figure - never an input of the same run, never a file or folder it did not create. Paths that
overlap (equal, or one inside the other) are refused up front with one line. Leftovers of a
killed run (hidden ``.NAME.<32 hex>.tmp`` / ``.old`` stores beside a target, a ``.NAME.work``
folder) are removed by the next run that writes the same target, and only those.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from ptychograph.errors import InputError

Kind = Literal["result", "checkpoint", "frames", "figure", "scan", "export", "truth", "config"]
#: Format attribute of a frames store (:mod:`ptychograph.io.zarr_store`).
FRAMES_FORMAT = "ptychograph-frames"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The text chunk matplotlib writes right after a PNG's header (the figures' only writer),
#: looked for in the first PNG_HEAD bytes.
PNG_SOFTWARE = b"tEXtSoftware\x00Matplotlib"
PNG_HEAD = 256
HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
#: First words of a config file ptychograph writes (``ptychograph demo``).
CONFIG_MARK = b"# Written by `ptychograph"
#: Root attribute ``creator`` of the HDF5 files ptychograph writes starts with this.
CREATOR = "ptychograph"
#: Arrays of a simulation's ``-truth.npz`` (:mod:`ptychograph.demo`).
TRUTH_ARRAYS = frozenset({"object.npy", "probe.npy", "view_origin.npy"})
#: How "pass --overwrite" is said for the command line and for the Python API at once.
OVERWRITE_HINT = "pass --overwrite (overwrite=True in Python) to replace it"
#: Longest file name and path (bytes) Linux file systems take.
NAME_MAX, PATH_MAX = 255, 4095
#: Bytes an output's name leaves for what is named after it (``.NAME.<32 hex>.tmp``,
#: ``NAME.checkpoint.zarr``, ``.NAME.tmp.png``).
OUTPUT_ROOM = 64
#: Folders no result may be written into (kernel and device file systems).
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")


def absolute(path: Path, base: Path | None = None, field: str | None = None) -> Path:
    """``path`` made absolute against ``base`` (default: the current directory), ``~`` expanded;
    ``..`` and symlinks are kept as given (see :func:`real`). With ``field``, a path no file
    system can hold (a NUL byte, a name or whole path too long) is refused as that field."""
    if field is not None:
        check_path_text(str(path), field)
    path = path.expanduser()
    if path.is_absolute():
        return path
    return Path(os.path.abspath((base or Path.cwd()) / path))


def check_path_text(text: str, field: str) -> None:
    """Refuse a path with a NUL byte, a name longer than NAME_MAX or a path longer than
    PATH_MAX bytes, less OUTPUT_ROOM for an output (the OS would refuse it later)."""
    if "\0" in text:
        raise InputError(field, "a path cannot hold a NUL byte")
    encoded = os.fsencode(text)
    longest = max((len(part) for part in encoded.split(b"/")), default=0)
    room = OUTPUT_ROOM if field.startswith("output") else 0
    for what, size, limit in (("name", longest, NAME_MAX), ("path", len(encoded), PATH_MAX)):
        if size > limit - room:
            short = f"{text[:60]}..."
            raise InputError(field, f"{what} of {size} bytes, at most {limit - room}: {short}")


def real(path: Path) -> Path:
    """The canonical path (symlinks followed) used to compare paths."""
    return Path(os.path.realpath(path))


def overlap(a: Path, b: Path) -> bool:
    """Whether ``a`` and ``b`` are the same path or one lies inside the other."""
    ra, rb = real(a), real(b)
    return ra == rb or ra in rb.parents or rb in ra.parents


def zarr_attrs(path: Path) -> dict[str, Any] | None:
    """The root attributes of a Zarr store (v3 ``zarr.json`` or v2 ``.zattrs``), or None when
    ``path`` is not a directory holding one."""
    if not path.is_dir():
        return None
    for name, key in (("zarr.json", "attributes"), (".zattrs", None)):
        meta = path / name
        if not meta.is_file():
            continue
        try:
            raw = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        attrs = raw.get(key, {}) if key and isinstance(raw, dict) else raw
        return attrs if isinstance(attrs, dict) else None
    return None


def written_kind(path: Path) -> Kind | None:
    """What ptychograph wrote at ``path``, recognised from its content; None if not ours."""
    if path.is_symlink():
        return None
    if path.is_file():
        return _file_kind(path)
    attrs = zarr_attrs(path)
    if attrs is None:
        return None
    if attrs.get("format") == FRAMES_FORMAT:
        return "frames"
    if "ptychograph_version" in attrs and "rng_state" in attrs and "iteration" in attrs:
        return "checkpoint"
    if "ptychograph_version" in attrs and "config" in attrs:
        return "result"
    return None


def _file_kind(path: Path) -> Kind | None:
    """A figure (a PNG matplotlib drew), an export (CXI whose ``creator`` is ptychograph,
    holding a reconstructed image) or a simulated scan (the same with frames and no image), a
    simulation's truth (.npz of exactly its arrays) or a config that ptychograph wrote; None
    for anything else."""
    try:
        with path.open("rb") as handle:
            start = handle.read(PNG_HEAD)
        if start.startswith(PNG_MAGIC):  # drawn by matplotlib: its Software text comes first
            return "figure" if PNG_SOFTWARE in start else None
        if start.startswith(CONFIG_MARK):
            return "config"
        if start.startswith(ZIP_MAGIC):
            with zipfile.ZipFile(path) as archive:
                return "truth" if set(archive.namelist()) == TRUTH_ARRAYS else None
        if start.startswith(HDF5_MAGIC):
            import h5py

            with h5py.File(path, "r") as file:
                if not str(file.attrs.get("creator", "")).startswith(CREATOR):
                    return None
                if "entry_1/image_1/data" in file:
                    return "export"  # a reconstruction (ptychograph.export)
                return "scan" if "entry_1/instrument_1/detector_1/data" in file else None
    except (OSError, ValueError, zipfile.BadZipFile):
        return None
    return None


def check_replaceable(path: Path, kind: Kind, overwrite: bool, field: str) -> None:
    """Refuse when ``path`` exists and either ``overwrite`` is not set or it is not a ``kind``
    ptychograph wrote (a folder or file of the user's is never replaced)."""
    if not (path.exists() or path.is_symlink()):
        return
    if not overwrite:
        raise InputError(field, f"{path} exists; {OVERWRITE_HINT}")
    found = written_kind(path)
    if found is None:
        raise InputError(
            field, f"{path} exists but was not written by ptychograph; not replacing it"
        )
    if found != kind:
        article = "an" if kind[0] in "aeiou" else "a"
        raise InputError(field, f"{path} is a {found}, not {article} {kind}; not replacing it")


def check_folder(path: Path, field: str) -> None:
    """Refuse when the folder that ``path`` goes into is missing, not a folder, not writable
    or a system folder (/proc, /sys, /dev)."""
    folder = path.parent
    text = str(real(folder))
    if any(text == top or text.startswith(top + "/") for top in SYSTEM_FOLDERS):
        raise InputError(field, f"{folder} is a system folder; write the result elsewhere")
    if not folder.exists():
        raise InputError(field, f"folder {folder} does not exist")
    if not folder.is_dir():
        raise InputError(field, f"{folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(field, f"folder {folder} is not writable")


def check_disjoint(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path | None]) -> None:
    """Refuse any output that overlaps an input or another output (equal or nested)."""
    ins = [(name, p) for name, p in inputs.items() if p is not None]
    outs = [(name, p) for name, p in outputs.items() if p is not None]
    for i, (name, path) in enumerate(outs):
        for other, source in ins:
            if overlap(path, source):
                raise InputError(
                    name, f"{path} overlaps the input {other} ({source}); choose another path"
                )
        for other, target in outs[i + 1 :]:
            if overlap(path, target):
                raise InputError(name, f"{path} overlaps {other} ({target}); use separate paths")


#: A hidden store or figure draft beside NAME (plotting adds ``.tmp.png`` while it saves).
_LEFTOVER = r"^\.\.?{name}\.[0-9a-f]{{32}}\.(tmp|old)(\.tmp\.png)?$"


def leftovers(target: Path) -> list[Path]:
    """Hidden stores a killed write of ``target`` left beside it (``.NAME.<uuid>.tmp/.old``)."""
    folder = target.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(_LEFTOVER.format(name=re.escape(target.name)))
    found = [folder / name for name in os.listdir(folder) if pattern.match(name)]
    figure_tmp = folder / f".{target.name}.tmp.png"  # plotting's temporary figure
    return found + ([figure_tmp] if figure_tmp.is_file() else [])


def clean_leftovers(
    targets: Iterable[Path], kind_of: Mapping[Path, Kind], field: str = "output.path"
) -> list[Path]:
    """Remove the leftovers of ``targets`` that ptychograph wrote (a half-written store may
    lack its attributes, so a ``.tmp`` Zarr folder or an empty folder counts too); returns
    what was removed. Anything else of that name is left alone. A write killed between its
    two renames leaves the target missing and the earlier store in ``.NAME.<uuid>.old``: that
    is refused with one line (the user's only copy), never removed."""
    removed = []
    for target in targets:
        kind = kind_of.get(target)
        found = leftovers(target)
        if not (target.exists() or target.is_symlink()):
            moved = [p for p in found if p.name.endswith(".old") and written_kind(p) == kind]
            if moved:
                raise InputError(
                    field,
                    f"{moved[0]} holds the earlier {kind}, moved aside by an interrupted write; "
                    f"rename it to {target.name} (or delete it) first",
                )
        for path in found:
            ours = written_kind(path) in (kind, "figure") or _half_written(path)
            if ours:
                remove(path)
                removed.append(path)
    return removed


def _half_written(path: Path) -> bool:
    """A Zarr folder without its attributes yet, an empty folder, or an empty or partial PNG
    or HDF5 file (never a symlink)."""
    if path.is_symlink():
        return False
    if path.is_file():
        with path.open("rb") as handle:
            start = handle.read(8)
        return PNG_MAGIC.startswith(start) or HDF5_MAGIC.startswith(start)
    return path.is_dir() and (zarr_attrs(path) is not None or not any(path.iterdir()))


def clean_work_dir(folder: Path) -> bool:
    """Remove a run's work folder left by a killed run when it holds only a frames store
    ptychograph wrote (or leftovers of one); True if removed. Refuses a folder of the user's."""
    if not folder.exists():
        return False
    if folder.is_symlink() or not folder.is_dir():
        raise InputError("output.path", f"{folder} is in the way of the run's work folder")
    target = folder / "frames.zarr"
    extra = set(os.listdir(folder)) - {"frames.zarr"} - {p.name for p in leftovers(target)}
    if extra or (target.exists() and written_kind(target) != "frames"):
        raise InputError(
            "output.path", f"{folder} exists and was not written by ptychograph; not using it"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return True


def remove_owned(path: Path, kind: Kind) -> None:
    """Delete ``path`` if it is a ``kind`` ptychograph wrote; leave anything else alone."""
    if written_kind(path) == kind:
        remove(path)


def remove(path: Path) -> None:
    """Delete a file, link or folder tree."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def check_regular_files(folder: Path, field: str) -> None:
    """Refuse a store holding anything but regular files and folders below ``folder``: a
    FIFO would block a read forever, a link to /dev/zero fill the memory."""
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                if not os.path.lexists(path):
                    continue  # renamed meanwhile: a live writer's temporary file (ptychograph.live)
                raise InputError(field, f"{path} is a broken link; refusing to read it") from None
            except OSError as err:
                raise InputError(field, f"{path} cannot be read ({err.strerror})") from None
            if not stat.S_ISREG(mode):
                raise InputError(field, f"{path} is not a regular file; refusing to read it")

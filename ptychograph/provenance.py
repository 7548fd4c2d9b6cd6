"""Where a result came from: library versions, a fingerprint of the input, how the run ran.

The result store's attrs carry these (:mod:`ptychograph.results`) so that a store found on
disk months later says which code, which input and which machine made it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: Libraries whose versions change results or the store's format.
LIBRARIES = ("numpy", "scipy", "dask", "distributed", "zarr", "xarray", "h5py")
#: Bytes hashed from the start and from the end of an input file.
FINGERPRINT_BYTES = 1 << 20
#: What :func:`fingerprint` hashes, stored beside it.
FINGERPRINT_DEFINITION = (
    "sha256 of the file size and its first and last MiB; for a folder (Zarr store) of every "
    "file's relative path and size and the content of its zarr.json/.zarray/.zattrs files"
)


@dataclass(frozen=True)
class RunInfo:
    """How a run ran: the array ``backend`` of its workers ("numpy", "cupy" or a mix),
    the number of ``workers`` and the ``wall_seconds`` from start to result."""

    backend: str
    workers: int
    wall_seconds: float

    def as_attrs(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "workers": self.workers,
            "wall_seconds": round(self.wall_seconds, 3),
        }


def library_versions(backend: str = "numpy") -> dict[str, str]:
    """Installed versions of :data:`LIBRARIES`, and of CuPy when ``backend`` uses it."""
    names = LIBRARIES + (("cupy",) if "cupy" in backend else ())
    found = {}
    for name in names:
        found[name] = _version(name)
    if "cupy" in backend and found["cupy"] == "not installed":
        found["cupy"] = _version("cupy-cuda12x")
    return found


def _version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def fingerprint(path: str | os.PathLike[str]) -> str:
    """``sha256:HEX`` of an input file or folder (:data:`FINGERPRINT_DEFINITION`); cheap for
    any size, and it changes when the file is replaced, resized or rewritten at its ends."""
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = item.relative_to(path).as_posix()
            digest.update(f"{relative}:{item.stat().st_size}\n".encode())
            if item.name in ("zarr.json", ".zarray", ".zattrs", ".zgroup"):
                digest.update(item.read_bytes())
    else:
        size = path.stat().st_size
        digest.update(f"size:{size}\n".encode())
        with path.open("rb") as file:
            digest.update(file.read(FINGERPRINT_BYTES))
            if size > FINGERPRINT_BYTES:
                file.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
                digest.update(file.read(FINGERPRINT_BYTES))
    return f"sha256:{digest.hexdigest()}"


def run_info(
    client: Any, backend: str, n_workers: int | None, given: Any, seconds: float
) -> RunInfo:
    """The workers a run on ``client`` used (as the Dask executor picks them: ``given``, else
    the client's, at most ``n_workers``) and the backend each resolved ``backend`` to."""
    from ptychograph.cluster import resolve_backend
    from ptychograph.executors.placement import select_workers

    chosen = select_workers(client, n_workers, given)
    try:
        answers = client.run(resolve_backend, backend, workers=chosen)
        resolved = "+".join(sorted(set(answers.values())))
    except Exception:  # noqa: BLE001 - provenance must never fail a finished run
        resolved = f"unknown ({backend} requested)"
    return RunInfo(resolved, len(chosen), seconds)

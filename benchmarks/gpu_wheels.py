"""Fill .whl/ with the wheels benchmarks/gpu_check.sh installs on the bare GPU machine.

The GPU machine (Python 3.12, x86-64, CuPy for CUDA 13, no network) lacks dask, distributed,
dask-cuda, zarr and pydantic; they travel as wheels in the git-ignored ``.whl/``, which the
device tool's ``carry`` sends with the working tree (at most 64 MiB together). This script runs
here, where pip reaches the registry:

* downloads the pinned wheels of :data:`CORE` (and of :data:`UCX` with ``--ucx``) for CPython
  3.12 on manylinux x86-64, without their dependencies (those are on the machine already:
  numpy, pandas, click, cloudpickle, msgpack, psutil, nvidia-ml-py, cuda-core, ...);
* trims the UCX stack, whose wheels are mostly static libraries, headers, benchmark programs
  and copies of each shared library under three names (about 53 MB -> 24 MB): a trimmed wheel
  keeps its name and its RECORD lists what it still holds;
* prints the size of what a ``run`` call would carry (tracked and untracked-not-ignored files
  plus ``.whl/``) against the 64 MiB limit, and exits 1 when it does not fit.

Pins: the versions of the development venv where it has them (zarr 3.1.6 with numcodecs 0.16.6;
a newer zarr needs msgspec, which the machine lacks), dask/distributed 2026.7.1 because
dask-cuda 26.10 pins them, and libucx < 1.22 because libucxx 0.52 asks for it.

Usage (from the repository root; ``benchmarks/gpu_check.sh --fetch-wheels [--ucx]`` calls it)::

    python3 benchmarks/gpu_wheels.py [--ucx] [--dest .whl]
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 64 * 2**20  # the device tool's limit on what one call carries
CORE = [
    "dask==2026.7.1",
    "distributed==2026.7.1",
    "dask-cuda==26.10.0",
    "rapids-dask-dependency==26.10.0",
    "zarr==3.1.6",
    "numcodecs==0.16.6",
    "google-crc32c==1.9.0",
    "donfig==0.8.1.post1",
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
    "tornado==6.6.1",
    "partd==1.4.2",
    "locket==1.0.0",
    "tblib==3.2.2",
    "zict==3.0.0",
]
UCX = [
    "distributed-ucxx-cu13==0.52.0",
    "ucxx-cu13==0.52.0",
    "libucxx-cu13==0.52.0",
    "libucx-cu13==1.21.0",
    "rmm-cu13==26.10.0",
    "librmm-cu13==26.10.0",
    "rapids-logger==0.3.0",
]
PLATFORMS = [
    "manylinux_2_34_x86_64",
    "manylinux_2_31_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
]
#: Members dropped from a wheel (by the wheel's name prefix): nothing a Python import loads.
TRIM = {
    "libucx_cu13": [
        "libucx/bin/*",
        "libucx/include/*",
        "libucx/share/*",
        "*.a",
        "*.la",
        "*perftest*",
        "*.so.0.0.0",
        "libucx/lib/cmake/*",
        "libucx/lib/pkgconfig/*",
    ],
    "libucxx_cu13": ["libucxx/include/*", "libucxx/lib64/cmake/*", "*.a"],
    "librmm_cu13": ["librmm/include/*", "librmm/lib64/cmake/*", "*.a"],
}


def download(requirements: list[str], dest: Path) -> None:
    """pip download, no dependencies, binary wheels for CPython 3.12 on x86-64 Linux."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    command = [
        sys.executable,
        *("-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"),
        *("--python-version", "3.12", "--implementation", "cp", *platforms),
        *("-d", str(dest), *requirements),
    ]
    subprocess.run(command, check=True)


def trim(wheel: Path, patterns: list[str]) -> int:
    """Rewrite ``wheel`` without the members matching ``patterns`` (and their RECORD rows).
    Returns the bytes saved (0 when nothing matched: the file is left as it is)."""
    with zipfile.ZipFile(wheel) as source:
        members = source.infolist()
        dropped = {m.filename for m in members if _matches(m.filename, patterns)}
        if not dropped:
            return 0
        before = wheel.stat().st_size
        rebuilt = wheel.with_suffix(".tmp")
        with zipfile.ZipFile(rebuilt, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target:
            for member in members:
                if member.filename in dropped:
                    continue
                data = source.read(member)
                if member.filename.endswith(".dist-info/RECORD"):
                    data = _record_without(data, dropped)
                target.writestr(member, data, compress_type=zipfile.ZIP_DEFLATED)
    rebuilt.replace(wheel)
    return before - wheel.stat().st_size


def _matches(name: str, patterns: list[str]) -> bool:
    return not name.endswith("/") and any(fnmatch.fnmatch(name, p) for p in patterns)


def _record_without(record: bytes, dropped: set[str]) -> bytes:
    rows = [
        row for row in csv.reader(io.StringIO(record.decode())) if row and row[0] not in dropped
    ]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(rows)
    return text.getvalue().encode()


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the files a ``run`` call sends without ``carry``: tracked and untracked files
    that git does not ignore."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
    ).stdout.decode()
    return sum(
        (root / name).stat().st_size for name in listing.split("\0") if (root / name).is_file()
    )


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ucx", action="store_true", help="also the UCX stack (trimmed)")
    parser.add_argument("--dest", type=Path, default=ROOT / ".whl", help="wheel folder")
    args = parser.parse_args(argv)
    args.dest.mkdir(parents=True, exist_ok=True)
    for old in args.dest.glob("*.whl"):  # one version of each: two stop the whole install
        old.unlink()
    download(CORE + (UCX if args.ucx else []), args.dest)
    for wheel in sorted(args.dest.glob("*.whl")):
        for prefix, patterns in TRIM.items():
            if wheel.name.startswith(prefix + "-"):
                saved = trim(wheel, patterns)
                print(f"trimmed {wheel.name}: -{saved / 2**20:.1f} MiB")
    wheels, tree = folder_bytes(args.dest), tree_bytes()
    total = wheels + tree
    print(f"{len(list(args.dest.glob('*.whl')))} wheels in {args.dest}: {wheels / 2**20:.1f} MiB")
    print(f"working tree: {tree / 2**20:.1f} MiB; carried in all: {total / 2**20:.1f} MiB of 64")
    return 0 if total <= LIMIT else 1


if __name__ == "__main__":
    sys.exit(main())

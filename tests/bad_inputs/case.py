"""What a bad-input case is, the good scan every case starts from, and the run config it uses.

A case writes one broken input into an empty folder (a copy of the good scan corrupted on
purpose, or a broken config) and returns the config file to run. The run's output goes to
``out/result.zarr`` in that folder; the test puts an existing result there first.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from ptychograph.scan import Scan

Kind = Literal["cxi", "zarr", "yaml"]
KINDS: tuple[Kind, ...] = ("cxi", "zarr", "yaml")
#: File names of the data in a case folder, and of its config.
CXI_NAME = "scan.cxi"
STORE_NAME = "frames.zarr"
CONFIG_NAME = "run.yaml"
OUTPUT = "out/result.zarr"
#: The good scan the cases are written for (tests/conftest.py SCAN_CONFIG); error lines quote
#: these numbers, and the test checks that the good scan has them.
N_FRAMES = 30
FRAME_SIDE = 32


@dataclass(frozen=True)
class GoodScan:
    """The valid scan every case starts from: its CXI file and its content in memory.

    scan.frames : (N, H, W) float32; scan.positions : (N, 2) (y, x) metres.
    """

    cxi: Path
    scan: Scan

    @property
    def n_frames(self) -> int:
        return self.scan.n_frames


#: Writes a case's bad input into a folder (created, empty but for ``out/``); returns the config.
Make = Callable[[Path, GoodScan], Path]


@dataclass(frozen=True)
class Case:
    """One bad input.

    id : test id (``kind-what``). make : writes it (see :data:`Make`). fields : substrings the
    ``error:`` line must hold: the field, and a word of the problem. args : extra arguments to
    ``ptychograph run``. recover : ``--set`` overrides that make the input usable, with
    ``recovered`` the substrings of the log notes that say how much was changed and
    ``frames_kept`` the frames left in the result. bug : a known
    product bug that makes this case fail (the test is then a strict xfail).
    """

    id: str
    kind: Kind
    make: Make
    fields: tuple[str, ...]
    args: tuple[str, ...] = ()
    recover: tuple[str, ...] = ()
    recovered: tuple[str, ...] = ()
    frames_kept: int = N_FRAMES
    bug: str | None = None


def base_config(data_path: str = CXI_NAME) -> dict[str, Any]:
    """A valid tiny run of ``data_path``: 2 iterations, one worker, output in out/."""
    return {
        "data": {"path": data_path},
        "reconstruction": {"iterations": 2},
        "output": {"path": OUTPUT},
        "cluster": {"n_workers": 1},
    }


def write_config(folder: Path, content: dict[str, Any] | str | bytes) -> Path:
    """Write ``folder/run.yaml``: a mapping as YAML, text or bytes verbatim; return its path."""
    path = folder / CONFIG_NAME
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        path.write_text(content)
    else:
        path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path


def config_with(**sections: dict[str, Any]) -> dict[str, Any]:
    """:func:`base_config` (reading scan.cxi) with ``sections`` merged in key by key."""
    content = base_config()
    for name, values in sections.items():
        content.setdefault(name, {}).update(values)
    return content


def free_port() -> int:
    """A TCP port on 127.0.0.1 where nothing listens (it was just free)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

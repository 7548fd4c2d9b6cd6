"""Shared fixtures: one tiny simulated scan per session, a scratch workspace, the CLI in-process.

The scan (30 frames of 32 x 32, seed 1) is simulated once; each test copies the CXI file into
its own ``tmp_path`` so it can corrupt it with h5py. Runs are kept to 2 iterations (~1 s).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import pytest
import yaml

from ptychograph.cli import main, write_simulation
from ptychograph.simulate import SimulationConfig

#: The simulated scan every CLI test starts from.
SCAN_CONFIG = SimulationConfig(n_frames=30, frame_size=32, photons=1e5, seed=1)
N_FRAMES = SCAN_CONFIG.n_frames
FRAME_SHAPE = (SCAN_CONFIG.frame_size, SCAN_CONFIG.frame_size)


@pytest.fixture(scope="session")
def simulated_scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid CXI file (written once per session); copy it before changing it."""
    path = tmp_path_factory.mktemp("simulated") / "scan.cxi"
    write_simulation(SCAN_CONFIG, path)
    return path


def write_yaml(path: Path, content: dict[str, Any] | str) -> Path:
    """Write ``content`` (a mapping dumped as YAML, or raw text) to ``path``; return it."""
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text)
    return path


def tree(folder: Path) -> set[str]:
    """Every file and folder below ``folder`` (hidden ones included), relative, '/'-separated."""
    entries: set[str] = set()
    for root, dirs, files in os.walk(folder):
        rel = Path(root).relative_to(folder)
        entries.update((rel / name).as_posix() for name in [*dirs, *files])
    return entries


def file_bytes(folder: Path) -> dict[str, bytes]:
    """Relative path -> content of every file below ``folder``."""
    return {
        name: (folder / name).read_bytes() for name in tree(folder) if (folder / name).is_file()
    }


@dataclass
class Workspace:
    """A scratch run: ``scan.cxi`` and ``run.yaml`` in ``root``, results in ``root/out``."""

    root: Path

    @property
    def scan(self) -> Path:
        return self.root / "scan.cxi"

    @property
    def config_path(self) -> Path:
        return self.root / "run.yaml"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def store(self) -> Path:
        return self.out / "result.zarr"

    def base_config(self) -> dict[str, Any]:
        """A valid tiny run: relative paths, 2 iterations, output in out/."""
        return {
            "data": {"path": "scan.cxi"},
            "reconstruction": {"iterations": 2},
            "output": {"path": "out/result.zarr"},
        }

    def write_config(
        self, content: dict[str, Any] | str | None = None, **sections: dict[str, Any]
    ) -> Path:
        """Write run.yaml: ``content`` verbatim, or the base config updated per section."""
        if content is None:
            content = self.base_config()
            for name, values in sections.items():
                content.setdefault(name, {}).update(values)
        return write_yaml(self.config_path, content)

    @contextmanager
    def edit_scan(self) -> Iterator[h5py.File]:
        """Open the workspace's copy of the CXI file for writing."""
        with h5py.File(self.scan, "r+") as file:
            yield file


@pytest.fixture
def workspace(tmp_path: Path, simulated_scan: Path) -> Workspace:
    """A fresh workspace holding a copy of the simulated scan, a base config and out/."""
    ws = Workspace(tmp_path)
    shutil.copyfile(simulated_scan, ws.scan)
    ws.out.mkdir()
    ws.write_config()
    return ws


@dataclass(frozen=True)
class CliResult:
    """Exit code and captured streams of one in-process ``ptychograph`` call."""

    code: int
    stdout: str
    stderr: str

    def assert_input_error(self, *needles: str) -> str:
        """Exit 2, exactly one stderr line ``error: ...`` holding every needle; return it."""
        assert self.code == 2, f"exit code {self.code}, stderr:\n{self.stderr}"
        assert "Traceback" not in self.stderr
        lines = self.stderr.splitlines()
        assert len(lines) == 1, f"expected one stderr line, got:\n{self.stderr}"
        line = lines[0]
        assert line.startswith("error: "), line
        for needle in needles:
            assert needle in line, f"{needle!r} not in {line!r}"
        return line


def console_script() -> str:
    """The installed ``ptychograph`` console script (beside this Python, else on PATH)."""
    beside = Path(sys.executable).with_name("ptychograph")
    found = str(beside) if beside.exists() else shutil.which("ptychograph")
    if found is None:
        pytest.skip("the ptychograph console script is not installed")
    return found


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[..., CliResult]:
    """Run ``ptychograph ARGS...`` in this process; return its CliResult."""

    def run(*args: str | os.PathLike[str]) -> CliResult:
        capsys.readouterr()  # drop anything printed before
        code = main([os.fspath(arg) for arg in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run

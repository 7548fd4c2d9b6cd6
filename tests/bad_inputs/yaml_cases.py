"""Broken run configs and ``--set`` overrides, beside a good copy of the scan.

The error names the key as a dotted path (``reconstruction.beta``), ``config`` for the file as
a whole, or ``--set`` for a malformed override.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from ptychograph.io.zarr_store import write_frames_store

from .case import (
    CONFIG_NAME,
    CXI_NAME,
    OUTPUT,
    Case,
    GoodScan,
    Make,
    base_config,
    config_with,
    free_port,
    write_config,
)


def config(content: dict[str, Any] | str | bytes) -> Make:
    """The good scan as scan.cxi and ``content`` as run.yaml."""

    def make(folder: Path, good: GoodScan) -> Path:
        shutil.copyfile(good.cxi, folder / CXI_NAME)
        return write_config(folder, content)

    return make


def sections(**values: dict[str, Any]) -> Make:
    """The base config with ``values`` merged into its sections."""
    return config(config_with(**values))


def base_text(extra: str = "") -> str:
    """The base config as YAML text, followed by ``extra``."""
    return yaml.safe_dump(base_config(), sort_keys=False) + extra


def missing_config(folder: Path, good: GoodScan) -> Path:
    shutil.copyfile(good.cxi, folder / CXI_NAME)
    return folder / "nope.yaml"


def config_is_folder(folder: Path, good: GoodScan) -> Path:
    (folder / CONFIG_NAME).mkdir()
    return folder / CONFIG_NAME


def data_is_plain_folder(folder: Path, good: GoodScan) -> Path:
    (folder / "scans").mkdir()
    return write_config(folder, base_config("scans"))


def silent_scheduler(folder: Path, good: GoodScan) -> Path:
    """cluster.address on a local port where nothing listens, with a 2 s connect timeout."""
    shutil.copyfile(good.cxi, folder / CXI_NAME)
    address = f"tcp://127.0.0.1:{free_port()}"
    return write_config(folder, config_with(cluster={"address": address, "connect_timeout": 2}))


def with_folder(name: str, content: dict[str, Any]) -> Make:
    """The good scan, a folder ``name`` of the user's (holding thesis.txt) and ``content``."""

    def make(folder: Path, good: GoodScan) -> Path:
        shutil.copyfile(good.cxi, folder / CXI_NAME)
        (folder / name).mkdir()
        (folder / name / "thesis.txt").write_text("years of work")
        return write_config(folder, content)

    return make


def with_frames_store(content: dict[str, Any]) -> Make:
    """The good scan converted to frames.zarr, and ``content`` as run.yaml."""

    def make(folder: Path, good: GoodScan) -> Path:
        write_frames_store(good.scan, folder / "frames.zarr", chunk_frames=8)
        return write_config(folder, content)

    return make


def bad_pem(folder: Path, good: GoodScan) -> Path:
    """A tls:// scheduler address with certificate files that are not PEM."""
    shutil.copyfile(good.cxi, folder / CXI_NAME)
    for name in ("ca.pem", "cert.pem"):
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n")
    address = f"tls://127.0.0.1:{free_port()}"
    security = {"ca_file": "ca.pem", "cert_file": "cert.pem"}
    cluster = {"address": address, "connect_timeout": 2, "security": security}
    return write_config(folder, config_with(cluster=cluster))


def alias_bomb(levels: int = 8) -> str:
    """``data.path`` as a list whose aliases expand to 9**levels strings (~400 bytes)."""
    items = ["&a0 [" + ", ".join(["lol"] * 9) + "]"]
    for level in range(1, levels + 1):
        items.append(f"&a{level} [" + ", ".join([f"*a{level - 1}"] * 9) + "]")
    return f"data:\n  path: [{', '.join(items)}]\n"


STORE = "frames.zarr"
#: ``reconstruction`` twice: the second silently replaces the first (iterations kept at 2 so
#: that the run, which should not happen, stays short).
DUPLICATE_SECTION = base_text("reconstruction:\n  iterations: 2\n  beta: 0.5\n")

CASES = [
    # the file
    Case("yaml-missing-config", "yaml", missing_config, ("config", "nope.yaml", "does not exist")),
    Case("yaml-config-is-folder", "yaml", config_is_folder, ("config", "not a file")),
    Case("yaml-not-utf8", "yaml", config(b"\xff\xfe\x00d\x00a\x00t\x00a"), ("config", "UTF-8")),
    Case(
        "yaml-invalid-syntax",
        "yaml",
        config("data:\n  path: scan.cxi\nreconstruction:\n  iterations: [2\n"),
        ("config", "YAML", "line"),
    ),
    Case("yaml-list", "yaml", config("- data\n- output\n"), ("config", "mapping")),
    Case("yaml-scalar", "yaml", config("just some words\n"), ("config", "mapping")),
    Case("yaml-empty", "yaml", config(""), ("data", "required")),
    Case(
        "yaml-duplicate-section",
        "yaml",
        config(DUPLICATE_SECTION),
        ("reconstruction", "duplicate"),
    ),
    # unknown and misspelt keys
    Case(
        "yaml-unknown-section",
        "yaml",
        sections(extras={"colour": "red"}),
        ("extras", "unknown key"),
    ),
    Case(
        "yaml-misspelt-section",
        "yaml",
        sections(reconstrution={"beta": 0.5}),
        ("reconstrution", "unknown key"),
    ),
    Case(
        "yaml-misspelt-key",
        "yaml",
        sections(reconstruction={"iteratons": 5}),
        ("reconstruction.iteratons", "unknown key"),
    ),
    Case(
        "yaml-misspelt-data-key",
        "yaml",
        sections(data={"nonfinte": "drop"}),
        ("data.nonfinte", "unknown key"),
    ),
    Case("yaml-section-not-mapping", "yaml", config({**base_config(), "cluster": 4}), ("cluster",)),
    Case(
        "yaml-missing-data-path",
        "yaml",
        config({**base_config(), "data": {}}),
        ("data.path", "required"),
    ),
    # out of range
    Case(
        "yaml-zero-iterations",
        "yaml",
        sections(reconstruction={"iterations": 0}),
        ("reconstruction.iterations", "0"),
    ),
    Case(
        "yaml-beta-above-one",
        "yaml",
        sections(reconstruction={"beta": 1.5}),
        ("reconstruction.beta", "1.5"),
    ),
    Case(
        "yaml-nan-beta",
        "yaml",
        sections(reconstruction={"beta": float("nan")}),
        ("reconstruction.beta", "nan"),
    ),
    Case(
        "yaml-too-many-probe-modes",
        "yaml",
        sections(reconstruction={"probe_modes": 99}),
        ("reconstruction.probe_modes", "99"),
    ),
    Case(
        "yaml-negative-seed",
        "yaml",
        sections(reconstruction={"seed": -1}),
        ("reconstruction.seed", "-1"),
    ),
    Case(
        "yaml-negative-position-search",
        "yaml",
        sections(reconstruction={"position_correction": True, "position_search": -3}),
        ("reconstruction.position_search", "-3"),
    ),
    Case(
        "yaml-zero-workers", "yaml", sections(cluster={"n_workers": 0}), ("cluster.n_workers", "0")
    ),
    Case(
        "yaml-zero-connect-timeout",
        "yaml",
        sections(cluster={"connect_timeout": 0}),
        ("cluster.connect_timeout", "0"),
    ),
    # wrong types and choices
    Case(
        "yaml-text-for-number",
        "yaml",
        sections(reconstruction={"iterations": "many"}),
        ("reconstruction.iterations", "many"),
    ),
    Case(
        "yaml-bool-for-number",
        "yaml",
        sections(reconstruction={"iterations": True}),
        ("reconstruction.iterations", "True"),
    ),
    Case(
        "yaml-fraction-for-count",
        "yaml",
        sections(reconstruction={"iterations": 2.5}),
        ("reconstruction.iterations", "2.5"),
    ),
    Case(
        "yaml-unknown-choice",
        "yaml",
        sections(reconstruction={"precision": "quad"}),
        ("reconstruction.precision", "quad"),
    ),
    Case(
        "yaml-nonfinite-choice",
        "yaml",
        sections(data={"nonfinite": "clip"}),
        ("data.nonfinite", "clip"),
    ),
    # paths
    Case(
        "yaml-data-file-missing",
        "yaml",
        sections(data={"path": "gone.cxi"}),
        ("data.path", "gone.cxi", "does not exist"),
    ),
    Case("yaml-data-is-plain-folder", "yaml", data_is_plain_folder, ("data.path", "not a file")),
    Case(
        "yaml-output-not-zarr",
        "yaml",
        sections(output={"path": "out/result.png"}),
        ("output.path", "png"),
    ),
    Case(
        "yaml-output-folder-missing",
        "yaml",
        sections(output={"path": "out/missing/result.zarr"}),
        ("output.path", "does not exist"),
    ),
    Case(
        "yaml-probe-file-without-path",
        "yaml",
        sections(initial={"probe": "file"}),
        ("initial", "probe_path"),
    ),
    Case(
        "yaml-probe-file-missing",
        "yaml",
        sections(initial={"probe": "file", "probe_path": "probe.npy"}),
        ("initial.probe_path", "does not exist"),
    ),
    Case(
        "yaml-previous-missing",
        "yaml",
        sections(initial={"probe": "previous", "previous": "old.zarr"}),
        ("initial.previous", "does not exist"),
    ),
    # the cluster
    Case(
        "yaml-address-without-scheme",
        "yaml",
        sections(cluster={"address": "localhost:8786"}),
        ("cluster.address", "tcp://"),
    ),
    Case(
        "yaml-scheduler-not-answering", "yaml", silent_scheduler, ("cluster.address", "127.0.0.1")
    ),
    # --set overrides
    Case(
        "yaml-set-without-value",
        "yaml",
        sections(),
        ("--set", "reconstruction.iterations"),
        args=("--set", "reconstruction.iterations"),
    ),
    Case("yaml-set-without-key", "yaml", sections(), ("--set", "=3"), args=("--set", "=3")),
    Case(
        "yaml-set-empty-section",
        "yaml",
        sections(),
        ("--set", ".beta"),
        args=("--set", ".beta=0.5"),
    ),
    Case(
        "yaml-set-value-not-yaml",
        "yaml",
        sections(),
        ("reconstruction.beta", "YAML"),
        args=("--set", "reconstruction.beta=["),
    ),
    Case(
        "yaml-set-out-of-range",
        "yaml",
        sections(),
        ("reconstruction.probe_modes",),
        args=("--set", "reconstruction.probe_modes=0"),
    ),
    Case(
        "yaml-set-into-a-value",
        "yaml",
        sections(),
        ("data.path.x", "not a section"),
        args=("--set", "data.path.x=1"),
    ),
    # keys and sizes no config has (issue 11, item 13)
    Case(
        "yaml-key-is-list",
        "yaml",
        config(base_text("? [a, b]\n: 1\n")),
        ("config", "plain value", "line"),
    ),
    Case(
        "yaml-key-is-mapping",
        "yaml",
        config(base_text("? {a: 1}\n: 2\n")),
        ("config", "plain value"),
    ),
    Case(
        "yaml-nested-5000-deep",
        "yaml",
        config(base_text("extra: " + "[" * 5000 + "]" * 5000 + "\n")),
        ("config", "nested"),
    ),
    Case(
        "yaml-nested-40-deep",
        "yaml",
        config(base_text("extra: " + "[" * 40 + "]" * 40 + "\n")),
        ("config", "nested more than"),
    ),
    Case("yaml-alias-bomb", "yaml", config(alias_bomb()), ("config", "expands to more than")),
    Case(
        "yaml-set-alias-bomb",
        "yaml",
        sections(),
        ("config", "expands"),
        args=("--set", alias_bomb().replace("data:\n  path: ", "data.path=").strip()),
    ),
    Case(
        "yaml-long-value-echo-is-cut",
        "yaml",
        sections(reconstruction={"precision": "x" * 100_000}),
        ("reconstruction.precision", "xxx..."),
    ),
    # what overwrite may replace, overlapping paths (issue 11, items 1-4)
    Case(
        "yaml-checkpoint-is-user-folder",
        "yaml",
        with_folder("precious", config_with(output={"checkpoint": "precious"})),
        ("output.checkpoint", "precious", "not written by ptychograph"),
    ),
    Case(
        "yaml-checkpoint-equals-output",
        "yaml",
        sections(output={"checkpoint": OUTPUT, "checkpoint_every": 1}),
        ("output.path", "overlaps output.checkpoint"),
    ),
    Case(
        "yaml-checkpoint-inside-output",
        "yaml",
        sections(output={"checkpoint": OUTPUT + "/ckpt.zarr"}),
        ("output.path", "overlaps output.checkpoint"),
    ),
    Case(
        "yaml-data-equals-output",
        "yaml",
        with_frames_store({**base_config(STORE), "output": {"path": STORE}}),
        ("output.path", "overlaps the input data.path"),
    ),
    Case(
        "yaml-output-inside-data",
        "yaml",
        with_frames_store({**base_config(STORE), "output": {"path": STORE + "/result.zarr"}}),
        ("output.path", "overlaps the input data.path"),
    ),
    Case(
        "yaml-output-is-user-folder",
        "yaml",
        with_folder("other.zarr", config_with(output={"path": "other.zarr"})),
        ("output.path", "other.zarr", "not written by ptychograph"),
    ),
    Case(
        "yaml-output-is-previous",
        "yaml",
        sections(initial={"object": "previous", "previous": OUTPUT}),
        ("output.path", "overlaps the input initial.previous"),
    ),
    Case(
        "yaml-output-is-frames-store",
        "yaml",
        with_frames_store({**base_config(), "output": {"path": STORE}}),
        ("output.path", "frames, not a result"),
    ),
    # output folders that cannot take a result (item 12)
    Case(
        "yaml-output-parent-is-file",
        "yaml",
        sections(output={"path": CONFIG_NAME + "/result.zarr"}),
        ("output.path", "not a folder"),
    ),
    Case(
        "yaml-output-under-proc",
        "yaml",
        sections(output={"path": "/proc/result.zarr"}),
        ("output.path", "system folder"),
    ),
    # paths no file system holds (found in the issue 11 audit: each was an OSError or a
    # ValueError traceback)
    Case(
        "yaml-path-with-nul-byte",
        "yaml",
        sections(data={"path": "scan.cxi\0.zarr"}),
        ("data.path", "NUL byte"),
    ),
    Case(
        "yaml-set-path-name-too-long",
        "yaml",
        sections(),
        ("data.path", "name of 100004 bytes", "at most 255"),
        args=("--set", "data.path=" + "a" * 100_000 + ".cxi"),
    ),
    Case(
        "yaml-output-name-too-long",
        "yaml",
        sections(output={"path": "b" * 240 + ".zarr"}),
        ("output.path", "name of 245 bytes", "at most 191"),
    ),
    # the cluster (items 10, 16)
    Case(
        "yaml-thousand-local-workers",
        "yaml",
        sections(cluster={"n_workers": 1000}),
        ("cluster.n_workers", "1000", "at most"),
    ),
    Case(
        "yaml-zero-worker-timeout",
        "yaml",
        sections(cluster={"worker_timeout": 0}),
        ("cluster.worker_timeout",),
    ),
    Case(  # before: every live worker was taken for a frozen one and the run gave up
        "yaml-worker-timeout-below-heartbeats",
        "yaml",
        sections(cluster={"worker_timeout": 0.001}),
        ("cluster.worker_timeout", "greater than or equal to 5"),
    ),
    Case("yaml-tls-bad-pem", "yaml", bad_pem, ("cluster.security.ca_file", "PEM")),
]

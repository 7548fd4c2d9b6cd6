"""benchmarks/gpu_check.sh, the one script a session with a GPU runs (issue 14), dry-run here.

The dry run is the same script and the same Python steps on NumPy at tiny sizes: it must write
every file and every field the GPU run writes, so that only the GPU's answers are unknown when
the device minutes come. Its parity step compares the NumPy path with itself, so every
difference must be exactly zero. The pieces that decide things on the GPU machine (memory
scaling, cut-short records, pytest counts without a JUnit file, trimming the UCX wheels) are
checked directly.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import gpu_check  # noqa: E402
import gpu_record  # noqa: E402
import gpu_runs  # noqa: E402
import gpu_standin  # noqa: E402
import gpu_wheels  # noqa: E402

STEPS = ["env", "pytest", "pytest-counts", "parity", "simulate", "seed-single", "seed-double"]
STEPS += ["dask-tcp", "dask-ucx", "seed-single-b512"]
FILES = {"results.jsonl", "summary.md", "env.txt", "log.txt", "pytest.txt", "pytest-junit.xml"}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    """One dry run of the whole script: (OUT, its records)."""
    root = tmp_path_factory.mktemp("gpu-check")
    env = {**os.environ, "OUT": str(root / "out"), "GPU_CHECK_WORK": str(root / "work")}
    env["PYTHON"] = sys.executable
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    out = root / "out"
    log = (out / "log.txt").read_text() if (out / "log.txt").exists() else ""
    assert done.returncode == 0, done.stdout + done.stderr + log
    return out, gpu_record.load(out)


@pytest.mark.slow
def test_dry_run_writes_files_the_device_tool_returns(dry_run: tuple[Path, Any]) -> None:
    out, _ = dry_run
    names = {p.name for p in out.iterdir()}
    assert names == FILES
    assert len(names) <= 8  # the device tool returns at most 8 files
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", name) for name in names)
    assert all(p.is_file() and p.stat().st_size > 0 for p in out.iterdir())


@pytest.mark.slow
def test_dry_run_records_every_step(dry_run: tuple[Path, Any]) -> None:
    _, records = dry_run
    status = {r["name"]: r for r in records if r["step"] == "status"}
    assert list(status) == STEPS
    assert all(r["rc"] == 0 for r in status.values()), status
    assert all(r["seconds"] <= r["limit"] for n, r in status.items() if n != "simulate")
    env = next(r for r in records if r["step"] == "env")
    assert env["dry_run"] is True
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["numpy"] and env["dask"] and env["zarr"]
    assert env["bandwidth_gbs"] > 0 and env["free_bytes"] > 0 and env["host_object_step_s"] > 0
    tests = next(r for r in records if r["step"] == "pytest")
    assert tests["source"] == "JUnit XML"
    # without a GPU every gpu-marked test skips: none passes, none fails
    assert (tests["passed"], tests["failed"], tests["errors"]) == (0, 0, 0)
    assert tests["skipped"] > 100


@pytest.mark.slow
def test_dry_run_parity_compares_numpy_with_itself_exactly(dry_run: tuple[Path, Any]) -> None:
    _, records = dry_run
    parity = {r["precision"]: r for r in records if r["step"] == "parity"}
    assert sorted(parity) == ["double", "single"]
    for r in parity.values():
        assert r["probe_rel"] == r["object_rel"] == r["error_rel"] == 0.0
        assert r["within"] is True
        assert r["errors_device"] == r["errors_numpy"]
        assert len(r["errors_device"]) == gpu_check.SIZES["dry"]["parity"]["iterations"]


@pytest.mark.slow
def test_dry_run_seed_and_dask_figures(dry_run: tuple[Path, Any]) -> None:
    _, records = dry_run
    sizes = gpu_check.SIZES["dry"]["seed"]
    n, size, modes = sizes["frames"], sizes["size"], sizes["modes"]
    plan = next(r for r in records if r["step"] == "seed" and r["case"] == "store")
    assert plan["frames"] == n and plan["note"].startswith("Not scaled")
    for step, case, itemsize in [
        ("seed", "single", 8),
        ("seed", "double", 16),
        ("dask", "tcp single", 8),
        ("seed", "single batch 512", 8),
    ]:
        mine = [r for r in records if r["step"] == step and r.get("case") == case]
        its = [r for r in mine if r["event"] == "iteration"]
        assert [r["n"] for r in its] == list(range(1, sizes["iterations"] + 1))
        result = next(r for r in mine if r["event"] == "result")
        assert result["psi_bytes"] == n * modes * size * size * itemsize
        assert result["frames_bytes"] == n * size * size * itemsize // 2
        assert result["total_s"] >= result["loop_s"] > 0
        assert result["floor_s"] > 0 and result["final_error"] == its[-1]["error"]
        assert result["pool_bytes"] is None  # no CuPy pool in a dry run
        if step == "seed":  # what the chunks hold: psi, amplitudes, positions, cached S_j P
            assert result["resident_bytes"] >= result["psi_bytes"] + result["frames_bytes"]
            assert result["shifted_bytes"] in (0, result["psi_bytes"])  # M_O = 1
    ucx = [r for r in records if r["step"] == "dask" and r.get("case") == "ucx single"]
    skipped = [r for r in ucx if r["event"] == "skip"]
    assert skipped or any(r["event"] == "result" for r in ucx)
    assert all(r["reason"] for r in skipped)


@pytest.mark.slow
def test_dry_run_summary_is_a_results_section(dry_run: tuple[Path, Any]) -> None:
    out, records = dry_run
    summary = (out / "summary.md").read_text()
    assert summary == gpu_record.render(records)
    assert summary.startswith("## CPU dry run of benchmarks/gpu_check.sh\n")
    assert len(re.findall(r"^## ", summary, flags=re.M)) == 1  # one RESULTS.md section
    for heading in ["Steps", "GPU tests", "CuPy reconstruction against NumPy", "Seed workload"]:
        assert f"### {heading}\n" in summary
    assert "| single | N=24, 32x32, 2 probe modes, 4 it | 0 | 0 | 0 |" in summary
    assert re.search(r"^\| seed double \| - \| - \| ", summary, flags=re.M)
    assert re.search(r"^\| tcp single \| 10 \| ", summary, flags=re.M)


def test_plan_frames_scales_down_only_when_memory_demands() -> None:
    from ptychograph.memory import USABLE_FRACTION, estimate

    frames, note = gpu_check.plan_frames(10_000, 188, 5, free_bytes=140 * 2**30)
    assert frames == 10_000 and note.startswith("Not scaled")
    frames, note = gpu_check.plan_frames(10_000, 188, 5, free_bytes=16 * 2**30)
    assert frames == 2_500 and "Scaled down" in note and "10000 to 2500" in note
    need = gpu_check.need_bytes(frames, 188, 5, "double")
    assert need == estimate(frames, (188, 188), (188, 188), 5, 1, "double", 64).total
    assert need <= USABLE_FRACTION * 16 * 2**30 < gpu_check.need_bytes(2 * frames, 188, 5, "double")


def test_records_of_a_cut_short_run(tmp_path: Path) -> None:
    """A torn last line is skipped; a case without its result renders as cut short."""
    gpu_record.put(tmp_path, "seed", event="plan", case="single", frames=8, size=16, modes=1,
                   iterations=50)  # fmt: skip
    for n in (1, 2, 3, 4):
        gpu_record.put(tmp_path, "seed", event="iteration", case="single", n=n, seconds=0.5,
                       error=0.1 / n, pool_used=None)  # fmt: skip
    with open(tmp_path / gpu_record.RESULTS, "a") as file:
        file.write('{"step": "seed", "event": "resu')
    records = gpu_record.load(tmp_path)
    assert len(records) == 5
    summary = gpu_record.render(records)
    assert "| single (cut short) | 4 | - | - | 0.5 | 0.5 |" in summary
    assert "No environment record" in summary
    assert json.loads((tmp_path / gpu_record.RESULTS).read_text().splitlines()[1])["n"] == 1


def test_pytest_counts_without_junit(tmp_path: Path) -> None:
    """A pytest killed at its limit leaves no JUnit file: the -v lines are counted."""
    (tmp_path / "pytest.txt").write_text(
        "tests/test_kernels.py::test_a[complex64] PASSED [ 1%]\n"
        "tests/test_kernels.py::test_b[complex128] FAILED [ 2%]\n"
        "tests/test_kernels.py::test_c SKIPPED (needs CuPy) [ 3%]\n"
        "tests/test_kernels.py::test_d ERROR [ 4%]\n"
        "FAILED tests/test_kernels.py::test_b[complex128] - AssertionError\n"
    )
    assert gpu_record.main(["pytest", str(tmp_path)]) == 0
    (record,) = [r for r in gpu_record.load(tmp_path) if r["step"] == "pytest"]
    assert (record["passed"], record["failed"], record["skipped"], record["errors"]) == (1, 1, 1, 1)
    assert record["failed_ids"] == [
        "tests/test_kernels.py::test_b[complex128]",
        "tests/test_kernels.py::test_d",
    ]
    assert record["source"].startswith("pytest -v lines")


def test_trimmed_wheel_keeps_the_rest_and_its_record(tmp_path: Path) -> None:
    wheel = tmp_path / "libucx_cu13-1.21.0-py3-none-any.whl"
    members = {
        "libucx/__init__.py": b"",
        "libucx/lib/libucp.so": b"x" * 100,
        "libucx/lib/libucp.a": b"y" * 1000,
        "libucx/bin/ucx_perftest": b"z" * 1000,
    }
    record = "".join(f"{name},sha256=abc,{len(data)}\n" for name, data in members.items())
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
        archive.writestr("libucx_cu13-1.21.0.dist-info/RECORD", record)
    assert gpu_wheels.trim(wheel, gpu_wheels.TRIM["libucx_cu13"]) > 0
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        rows = archive.read("libucx_cu13-1.21.0.dist-info/RECORD").decode().splitlines()
    kept = {"libucx/__init__.py", "libucx/lib/libucp.so"}
    assert names == kept | {"libucx_cu13-1.21.0.dist-info/RECORD"}
    assert {row.split(",")[0] for row in rows} == kept
    assert gpu_wheels.trim(wheel, gpu_wheels.TRIM["libucx_cu13"]) == 0  # nothing left to drop


def test_standin_device_arrays_refuse_host_arrays() -> None:
    """The stand-in behaves as CuPy does: no implicit mixing with host arrays."""
    device = gpu_standin.DEVICE.asarray(np.ones((2, 3)))
    assert type(device) is gpu_standin.DeviceArray
    assert type(device * 2.0 + np.float32(1)) is gpu_standin.DeviceArray  # scalars are fine
    assert type(gpu_standin.DEVICE.zeros((2, 3)) + device) is gpu_standin.DeviceArray
    assert type(np.sum(device, axis=0)) is gpu_standin.DeviceArray
    for mix in (lambda: device + np.ones(3), lambda: np.ones(3) * device):
        with pytest.raises(TypeError, match="mixed with device arrays"):
            mix()
    with pytest.raises(TypeError, match="numpy.concatenate"):
        np.concatenate([device, np.ones((1, 3))])
    assert type(gpu_standin.DEVICE.fft.fft2(device)) is gpu_standin.DeviceArray


@pytest.mark.slow
def test_standin_reconstruction_keeps_host_and_device_apart(tmp_path: Path) -> None:
    """A whole in-process reconstruction, both precisions, with the views held as stand-in
    device arrays: no host array may meet a device array. (It found the reduced partials on
    the device meeting host estimates in object_step; the steps now take the estimates to the
    partials' device.)"""
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "parity", "--dry-run"]
        + ["--standin", "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    parity = [r for r in gpu_record.load(tmp_path / "out") if r["step"] == "parity"]
    assert [r["precision"] for r in parity] == ["single", "double"]
    assert all(r["within"] for r in parity)


@pytest.mark.slow
def test_dask_step_falls_back_to_a_local_cluster_without_dask_cuda(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the GPU machine a dask-cuda that does not import still leaves a run through Dask:
    one worker process of distributed.LocalCluster, recorded as such."""
    monkeypatch.setattr(gpu_runs, "_import_problem", lambda module: "ImportError: no cuda")
    args = argparse.Namespace(out=tmp_path, standin=False, protocol="tcp", mode="gpu")
    sizes = {"frames": 8, "size": 16, "modes": 1, "iterations": 2}
    with gpu_runs._cluster(args, gpu_check.Device(dry=False), "tcp single", sizes) as client:
        assert client is not None
        assert len(client.scheduler_info()["workers"]) == 1
        assert client.submit(sum, [1, 2]).result() == 3
    (plan,) = gpu_record.load(tmp_path)
    assert plan["event"] == "plan" and plan["frames"] == 8
    assert plan["note"].startswith("dask-cuda does not import (ImportError: no cuda)")

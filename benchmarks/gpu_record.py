"""The figures of benchmarks/gpu_check.sh: JSON lines written the moment they are known, and
the markdown summary rendered from them.

Every step appends records to ``OUT/results.jsonl`` (one JSON object a line, written through
at once), so a run cut short by a time limit still returns whatever it measured; a torn last
line is skipped when reading. The summary, ``OUT/summary.md``, is a RESULTS.md section rendered
from the records alone, so it can be rendered again here from a returned results.jsonl::

    python3 benchmarks/gpu_record.py summary OUT        # (re)write OUT/summary.md
    python3 benchmarks/gpu_record.py status OUT NAME RC SECONDS LIMIT   # a step's exit (shell)
    python3 benchmarks/gpu_record.py pytest OUT         # counts of the GPU tests

Record kinds (``step`` and ``event`` fields): ``env``; ``status`` (a step's exit code, seconds
and limit; rc 124 = its time limit); ``simulate``; ``parity`` (one per precision); ``seed`` and
``dask`` with events ``plan``, ``iteration`` (one per DM iteration), ``result`` and ``skip``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import statistics
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

RESULTS = "results.jsonl"
SUMMARY = "summary.md"
GIB = 2.0**30
PAPER_SECONDS = 25.69  # seed workload, 50 iterations, 4 V100, double precision
TARGET_SECONDS = 3.0  # issue 14: complex64 on one H200-class GPU
TARGET_MEMORY = 1.5  # issue 14: peak GPU memory / (exit waves + frames)
WARM_UP = 2  # iterations left out of the per-iteration median


def put(out: Path, step: str, **fields: Any) -> dict[str, Any]:
    """Append one record to ``out/results.jsonl`` (written through at once: a process killed
    later loses nothing; no fsync, which would cost each iteration a disk flush); returns it."""
    record = {"step": step, "time": _now(), **fields}
    line = json.dumps(record, default=_plain, allow_nan=True)
    with open(Path(out) / RESULTS, "a", encoding="utf-8") as file:
        file.write(line + "\n")
    return record


def load(out: Path) -> list[dict[str, Any]]:
    """Every complete record of ``out/results.jsonl`` (none when the file is missing)."""
    path = Path(out) / RESULTS
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill
            continue
    return records


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _plain(value: Any) -> Any:
    """JSON for NumPy scalars and arrays (and anything else as text)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def warm_median(seconds: list[float]) -> float:
    """Median iteration time after the warm-up iterations (all of them if too few)."""
    warm = seconds[WARM_UP:] or seconds
    return float(statistics.median(warm)) if warm else math.nan


def pytest_counts(out: Path) -> dict[str, Any]:
    """Record passed / failed / errors / skipped of the GPU tests: from OUT/pytest-junit.xml
    when pytest finished, else from its -v lines in OUT/pytest.txt (a run cut short)."""
    junit, text = Path(out) / "pytest-junit.xml", Path(out) / "pytest.txt"
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed: list[str] = []
    if junit.exists():
        source = "JUnit XML"
        for case in ElementTree.parse(junit).getroot().iter("testcase"):
            kinds = {child.tag for child in case}
            if "failure" in kinds or "error" in kinds:
                counts["failed" if "failure" in kinds else "errors"] += 1
                failed.append(f"{case.get('classname')}::{case.get('name')}")
            else:
                counts["skipped" if "skipped" in kinds else "passed"] += 1
    else:
        source = "pytest -v lines (no JUnit file: cut short)"
        lines = text.read_text(errors="replace").splitlines() if text.exists() else []
        outcome = {"PASSED": "passed", "FAILED": "failed", "SKIPPED": "skipped", "ERROR": "errors"}
        for line in lines:
            found = re.match(r"^(\S+::\S+) (PASSED|FAILED|SKIPPED|ERROR)", line)
            if found:
                counts[outcome[found.group(2)]] += 1
                if found.group(2) in ("FAILED", "ERROR"):
                    failed.append(found.group(1))
    command = os.environ.get("GPU_CHECK_PYTEST", "pytest -m gpu")
    return put(out, "pytest", **counts, failed_ids=failed[:40], source=source, command=command)


# --------------------------------------------------------------------------------- rendering
def render(records: list[dict[str, Any]]) -> str:
    """The RESULTS.md section of one gpu_check run."""
    env = next((r for r in records if r["step"] == "env"), {})
    dry = bool(env.get("dry_run"))
    title = (
        "CPU dry run of benchmarks/gpu_check.sh" if dry else "GPU check (benchmarks/gpu_check.sh)"
    )
    lines = [f"## {title}", ""]
    lines += _env_lines(env)
    lines += ["", "### Steps", "", *_status_table(records), ""]
    lines += ["### GPU tests", "", *_pytest_lines(records), ""]
    lines += ["### CuPy reconstruction against NumPy", "", *_parity_table(records), ""]
    lines += ["### Seed workload", "", *_runs_table(records, "seed"), ""]
    lines += ["### Peak GPU memory", "", *_memory_table(records), ""]
    lines += ["### Dask: one-worker cluster", "", *_runs_table(records, "dask"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _env_lines(env: dict[str, Any]) -> list[str]:
    if not env:
        return ["No environment record (the env step did not run)."]
    keys = ["python", "numpy", "scipy", "cupy", "cuda_runtime", "cuda_driver", "dask"]
    keys += ["distributed", "dask_cuda", "distributed_ucxx", "zarr", "pydantic"]
    keys += ["kernels_compile_s", "host_object_step_s"]
    shown = {k: _num(v) if isinstance(v, float) else v for k, v in env.items()}
    versions = ", ".join(f"{k} {shown[k]}" for k in keys if shown.get(k) is not None)
    return [
        f"Date: {env.get('time', '?')}  ",
        f"Device: {env.get('device', '?')}; copy bandwidth {_bandwidth(env)} GB/s  ",
        f"Versions: {versions}  ",
        f"Commit: {env.get('commit', '?')}; command: `{env.get('command', '?')}`",
    ]


def _bandwidth(env: dict[str, Any]) -> str:
    value = env.get("bandwidth_gbs")
    return _num(value) if isinstance(value, int | float) else str(value)


def _status_table(records: list[dict[str, Any]]) -> list[str]:
    rows = ["| step | exit | seconds | limit s | note |", "|---|---:|---:|---:|---|"]
    for r in (r for r in records if r["step"] == "status"):
        note = {0: "", 124: "time limit", 137: "killed at the time limit"}.get(r["rc"], "failed")
        if r.get("note"):
            note = f"{note}: {r['note']}" if note else r["note"]
        rows.append(f"| {r['name']} | {r['rc']} | {r['seconds']} | {r['limit']} | {note} |")
    return rows


def _pytest_lines(records: list[dict[str, Any]]) -> list[str]:
    tests = [r for r in records if r["step"] == "pytest"]
    if not tests:
        return ["Not run (or cut short before its counts were read)."]
    r = tests[-1]
    line = (
        f"{r['passed']} passed, {r['failed']} failed, {r['errors']} errors, "
        f"{r['skipped']} skipped ({r['source']}); command: `{r['command']}`"
    )
    failed = r.get("failed_ids") or []
    return [line, *([""] + [f"- failed: `{name}`" for name in failed] if failed else [])]


def _parity_table(records: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| precision | workload | probe max rel diff | object max rel diff | "
        "Fourier error max rel diff | tolerance | within | s CuPy / NumPy |",
        "|---|---|---:|---:|---:|---:|---|---|",
    ]
    for r in (r for r in records if r["step"] == "parity"):
        rows.append(
            f"| {r['precision']} | {_workload(r)} | {_num(r['probe_rel'])} | "
            f"{_num(r['object_rel'])} | {_num(r['error_rel'])} | {_num(r['tolerance'])} | "
            f"{'yes' if r['within'] else '**no**'} | {_num(r['seconds_device'])} / "
            f"{_num(r['seconds_numpy'])} |"
        )
    rows += [
        "",
        "Max rel diff = max |CuPy - NumPy| / max |NumPy| of the final probe and object, and of "
        "the Fourier error over the iterations; same scan, seed and initial guesses. The first "
        "CuPy time includes compiling the kernels (NVRTC) and making the cuFFT plans.",
    ]
    return rows


def _runs_table(records: list[dict[str, Any]], step: str) -> list[str]:
    rows = []
    for plan in (r for r in records if r["step"] == step and r.get("event") == "plan"):
        rows.append(f"Plan ({plan['case']}): {_workload(plan)}. {plan.get('note', '')}".rstrip())
    for skip in (r for r in records if r["step"] == step and r.get("event") == "skip"):
        rows.append(f"Skipped ({skip['case']}): {skip['reason']}")
    rows += [
        "",
        "| case | iterations done | outside loop s | total s | s / iteration (mean) | "
        "s / iteration (median, warm) | floor s / iteration | x floor | x paper | "
        "final Fourier error |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for case, its, result in _cases(records, step):
        seconds = [r["seconds"] for r in its]
        median = warm_median(seconds)
        result = result or {}
        total, floor = result.get("total_s"), result.get("floor_s")
        mean = sum(seconds) / len(seconds) if seconds else None
        cut = "" if result else " (cut short)"
        rows.append(
            f"| {case}{cut} | {len(its)} | {_num(result.get('setup_s'))} | "
            f"{_num(total)} | {_num(mean)} | {_num(median)} | {_num(floor)} | "
            f"{_num(median / floor if floor else None)} | "
            f"{_num(total / PAPER_SECONDS if total else None)} | "
            f"{_num(its[-1]['error'] if its else None)} |"
        )
    rows += [
        "",
        "Outside loop = loading the scan onto the device, initial guesses and views, and the "
        "final choice of estimates; total = the whole reconstruction; mean = the iteration "
        "loop / iterations; median over iterations after the first "
        f"{WARM_UP} (the driver reports up to lookahead iterations at once at sync points, so "
        "single times can be near 0; the median is robust to that). Floor = bytes one "
        "iteration must move / measured copy bandwidth "
        "(benchmarks/gpu_seed_workload.py, floor_bytes). x paper = total / 25.69 s (4 V100, "
        f"double precision). Target: single precision under {TARGET_SECONDS:g} s in all.",
    ]
    return rows


def _memory_table(records: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| run | pool peak GiB | pool used max GiB | exit waves + frames GiB | ratio | "
        "views held GiB | of which S_j P cache GiB | device used GiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for step in ("seed", "dask"):
        for case, _, result in _cases(records, step):
            if not result:
                continue
            pool, base = result.get("pool_bytes"), result["psi_bytes"] + result["frames_bytes"]
            used = result.get("pool_used_max")
            rows.append(
                f"| {step} {case} | {_num(pool / GIB if pool else None)} | "
                f"{_num(used / GIB if used else None)} | {_num(base / GIB)} | "
                f"{_num(pool / base if pool else None)} | {_gib(result.get('resident_bytes'))} | "
                f"{_gib(result.get('shifted_bytes'))} | "
                f"{_num(result['device_used'] / GIB if result.get('device_used') else None)} |"
            )
    rows += [
        "",
        "Pool peak = bytes held by the CuPy memory pool after the run (it keeps freed blocks, "
        "so this is its high-water mark); pool used max = the most the pool had in use at the "
        "end of an iteration (in-process runs); views held = what the chunks hold at the end "
        "(amplitudes, positions, exit waves and the cached shifted probe S_j P, "
        "ptychograph/shifted_probe.py, one more psi-sized array when M_O = 1); device used = "
        "the device's used memory after the "
        "run less before it (context, cuFFT plans). Exit waves = N M_P H W itemsize, frames = "
        f"the resident amplitudes N H W itemsize / 2. Target: ratio at most {TARGET_MEMORY:g}.",
    ]
    return rows


def _gib(value: Any) -> str:
    return "-" if value is None else _num(value / GIB)


def _cases(
    records: list[dict[str, Any]], step: str
) -> list[tuple[str, list[dict[str, Any]], dict[str, Any] | None]]:
    """(case, iteration records, result record or None) per case, in order of appearance."""
    order: list[str] = []
    for r in records:
        if r["step"] == step and r.get("event") in ("iteration", "result"):
            if r["case"] not in order:
                order.append(r["case"])
    out = []
    for case in order:
        mine = [r for r in records if r["step"] == step and r.get("case") == case]
        its = [r for r in mine if r.get("event") == "iteration"]
        result = next((r for r in mine if r.get("event") == "result"), None)
        out.append((case, its, result))
    return out


def _workload(r: dict[str, Any]) -> str:
    return (
        f"N={r['frames']}, {r['size']}x{r['size']}, {r['modes']} probe modes, {r['iterations']} it"
    )


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 0.01:
        return f"{value:.3g}"
    return f"{value:.1e}"


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "summary":
        out = Path(argv[1])
        (out / SUMMARY).write_text(render(load(out)))
        print((out / SUMMARY).read_text())
        return 0
    if len(argv) == 2 and argv[0] == "pytest":
        pytest_counts(Path(argv[1]))
        return 0
    if len(argv) >= 6 and argv[0] == "status":
        out, name, rc, seconds, limit, *note = argv[1:]
        put(
            Path(out),
            "status",
            name=name,
            rc=int(rc),
            seconds=int(seconds),
            limit=int(limit),
            note=" ".join(note),
        )
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""GPU benchmark: the seed paper's multi-mode workload on one GPU.

The workload of docs/design.md, "Reference workloads": N = 10,000 simulated frames of 188 x 188,
5 probe modes, 50 DM iterations, in complex64 and complex128. The paper reports 25.69 s on
4 V100 (49.82 s on 2 V100) in double precision; it did not fit in one 32 GB GPU.

Each precision runs through :func:`ptychograph.reconstruct` with ``cluster.backend: cupy`` on a
one-GPU ``LocalCUDACluster`` when dask-cuda is installed (else in this process, through the same
driver and DM algorithm on CuPy arrays, and the table says so). Recorded per
precision: the wall time of the reconstruction (frames loaded from the Zarr store onto the GPU,
initial guesses, iterations; not the simulation or the cluster start), the iteration loop time
and its median per iteration, a memory-bandwidth floor per iteration (bytes that must move /
measured device bandwidth, :func:`floor_bytes`), the ratio of the measured iteration to that
floor, the peak memory the CuPy pool held on the worker, and the ratio to the paper's 25.69 s.

The results replace the section ``## GPU: seed-paper workload`` of benchmarks/RESULTS.md (other
sections are left alone) - for the seed workload only, unless ``--write`` is given. Without a
GPU (or without CuPy) the script says so and exits with status 0, writing nothing.

Usage::

    .venv/bin/python benchmarks/gpu_seed_workload.py                   # the seed workload
    .venv/bin/python benchmarks/gpu_seed_workload.py --frames 500 --size 64 --iterations 5
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_md import write_section  # noqa: E402

SECTION = "## GPU: seed-paper workload"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
PAPER_SECONDS = 25.69  # 50 iterations, 4 V100, double precision (2 V100: 49.82 s)
SEED = {"frames": 10_000, "size": 188, "modes": 5, "iterations": 50}
OVERLAP_PASSES = 2  # the config default; the floor below counts them
ITEMSIZE = {"single": 8, "double": 16}


@dataclass(frozen=True)
class CaseResult:
    """One precision's run."""

    precision: str
    path: str  # "LocalCUDACluster" or "in-process"
    total_s: float
    loop_s: float
    median_iteration_s: float
    final_error: float
    pool_bytes: int
    floor_bytes: int
    bandwidth: float  # bytes / s

    @property
    def floor_s(self) -> float:
        """The floor per iteration, seconds."""
        return self.floor_bytes / self.bandwidth


def floor_bytes(
    frames: int, size: int, modes: int, precision: str, overlap_passes: int = OVERLAP_PASSES
) -> int:
    """A lower bound on the device-memory traffic of one steady-state DM iteration.

    With S = N * M_P * M_O * H * W * itemsize (the exit waves psi; M_O = 1) and A = N * H * W *
    itemsize / 2 (the amplitudes sqrt(I)):

    * exit-wave update (eqs. 3-4): psi read and written once (2 S); three psi-sized 2-D FFTs
      (F phi for the error, F(2 phi - psi), and the inverse), each reading and writing its data
      at least once (6 S); the amplitudes read once (A);
    * overlap passes (eqs. 5-6): each probe pass reads psi (P S), each object pass but the first
      (fused into the update) reads psi ((P - 1) S).

    Total S (7 + 2 P) + A. Not counted (so the floor stays a lower bound): probe and object
    views, the sub-pixel shifts of the probe, the FFTs of the probe partials, multi-pass FFTs
    (188 = 4 x 47), and the object- and probe-sized sums.
    """
    psi = frames * modes * size * size * ITEMSIZE[precision]
    amplitudes = frames * size * size * ITEMSIZE[precision] // 2
    return psi * (7 + 2 * overlap_passes) + amplitudes


def device_bandwidth(nbytes: int = 2**30, repeats: int = 20) -> float:
    """Device-memory bandwidth in bytes / s: a device-to-device copy counted as read + write."""
    import cupy

    src = cupy.ones(nbytes // 8, dtype=cupy.float64)
    dst = cupy.empty_like(src)
    cupy.copyto(dst, src)  # warm-up
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    for _ in range(repeats):
        cupy.copyto(dst, src)
    stop.record()
    stop.synchronize()
    seconds = cupy.cuda.get_elapsed_time(start, stop) / 1e3
    del src, dst
    cupy.get_default_memory_pool().free_all_blocks()
    return 2.0 * nbytes * repeats / seconds


def pool_bytes() -> int:
    """Bytes the CuPy memory pool of this process holds. The pool keeps freed blocks for
    reuse (nothing in a run calls free_all_blocks), so after a run this is its high-water mark."""
    import cupy

    return int(cupy.get_default_memory_pool().total_bytes())


def simulate_store(args: argparse.Namespace, folder: Path) -> Path:
    """Simulate the scan (spiral, 70 % overlap, 1e6 photons per frame) into a frames store."""
    from ptychograph.io.zarr_store import write_frames_store
    from ptychograph.simulate import SimulationConfig, simulate

    config = SimulationConfig(
        n_frames=args.frames, frame_size=args.size, photons=1e6, scan="spiral", seed=0
    )
    begin = time.perf_counter()
    scan = simulate(config).scan
    store = folder / "frames.zarr"
    write_frames_store(scan, store)
    print(f"simulated {args.frames} frames of {args.size}^2 in {time.perf_counter() - begin:.0f} s")
    return store


def run_config(
    store: Path,
    args: argparse.Namespace,
    precision: str,
    folder: Path,
    backend: str = "cupy",
    protocol: str = "tcp",
    batch_size: int = 64,
) -> Any:
    """The seed workload's config for the store (args: iterations, modes); ``backend`` and
    ``protocol`` of the one-worker cluster (benchmarks/gpu_check.py dry-runs it on NumPy);
    ``batch_size`` views per batch (64 is the config default)."""
    from ptychograph.config import parse_config

    return parse_config(
        {
            "data": {"path": str(store)},
            "reconstruction": {
                "iterations": args.iterations,
                "probe_modes": args.modes,
                "precision": precision,
                "overlap_passes": OVERLAP_PASSES,
                "seed": 0,
                "batch_size": batch_size,
            },
            "output": {
                "path": str(folder / f"result-{precision}.zarr"),
                "figure": False,
                "checkpoint_every": 0,
            },
            "cluster": {"backend": backend, "n_workers": 1, "protocol": protocol},
        }
    )


def run_on_cluster(
    config: Any, progress: Any = None, client: Any = None
) -> tuple[float, Any, int | None]:
    """reconstruct() on a one-worker local cluster (LocalCUDACluster for ``cluster.backend:
    cupy``), or on ``client``: (seconds, history, the largest CuPy pool of the workers, None
    where they have no CuPy). ``progress`` : the driver's callback (iteration number, history).
    """
    from ptychograph import reconstruct
    from ptychograph.cluster import open_client

    def worker_pool() -> int | None:  # local, so cloudpickle sends it by value
        try:
            import cupy
        except ImportError:
            return None
        return int(cupy.get_default_memory_pool().total_bytes())

    with open_client(config.cluster, client) as client:
        begin = time.perf_counter()
        result = reconstruct(config, client=client, write=False, progress=progress)
        seconds = time.perf_counter() - begin
        pools = [b for b in client.run(worker_pool).values() if b is not None]
    return seconds, result.history, max(pools) if pools else None


def run_in_process(
    config: Any, backend: str = "cupy", progress: Any = None
) -> tuple[float, Any, int | None]:
    """The same driver and DM algorithm in this process, on one slot of views: CuPy views
    (whose batch ops are the fused kernels, :class:`ptychograph.gpu.ops.CupyOps`) for machines
    without dask-cuda, or NumPy views (the reference). Returns (seconds, history, the CuPy
    pool's bytes, None on NumPy); the result itself is dropped, see :func:`run_local`."""
    seconds, result = run_local(config, backend, progress)
    return seconds, result.history, pool_bytes() if backend == "cupy" else None


def run_local(
    config: Any, backend: str, progress: Any = None, held: dict[str, int] | None = None
) -> tuple[float, Any]:
    """(seconds, Result) of the in-process run of :func:`run_in_process`; the seconds count
    loading the scan, the initial guesses, the iterations and the final choice. ``held``, if
    given, receives the bytes the views held at the end: ``resident`` (every chunk's
    amplitudes, positions, exit waves and cached S_j P) and ``shifted`` (the cached S_j P)."""
    from ptychograph.backend import complex_dtype, real_dtype
    from ptychograph.engine import drive, load_validated
    from ptychograph.executors.local import LocalExecutor
    from ptychograph.problem import prepare

    rec = config.reconstruction
    if backend == "cupy":
        import cupy

        cupy.get_default_memory_pool().free_all_blocks()
    begin = time.perf_counter()
    scan, _ = load_validated(config)
    problem = prepare(scan, config)
    amplitudes = np.sqrt(scan.frames).astype(real_dtype(complex_dtype(rec.precision)))
    del scan
    executor = LocalExecutor.from_frames(
        amplitudes,
        problem.origins,
        problem.summary.good,
        rec.batch_size,
        rec.subpixel,
        backend=backend,
    )
    del amplitudes
    result = drive(executor, problem, config, progress)
    if backend == "cupy":
        import cupy

        cupy.cuda.Device().synchronize()
    seconds = time.perf_counter() - begin
    if held is not None:
        chunks = [chunk for views in executor.slots for chunk in views.chunks]
        held["resident"] = sum(chunk.nbytes for chunk in chunks)
        cached = [getattr(getattr(c, "shifted", None), "views", None) for c in chunks]
        held["shifted"] = sum(int(v.nbytes) for v in cached if v is not None)
    return seconds, result


def run_case(store: Path, args: argparse.Namespace, precision: str, bandwidth: float) -> CaseResult:
    import importlib.util

    folder = store.parent
    config = run_config(store, args, precision, folder)
    on_cluster = importlib.util.find_spec("dask_cuda") is not None
    runner = run_on_cluster if on_cluster else run_in_process
    total, history, held = runner(config)
    seconds = list(history.seconds)
    result = CaseResult(
        precision=precision,
        path="LocalCUDACluster" if on_cluster else "in-process (no dask-cuda)",
        total_s=total,
        loop_s=float(sum(seconds)),
        median_iteration_s=float(np.median(seconds)) if seconds else float("nan"),
        final_error=float(history.fourier_error[-1]) if len(history) else float("nan"),
        pool_bytes=held or 0,
        floor_bytes=floor_bytes(args.frames, args.size, args.modes, precision),
        bandwidth=bandwidth,
    )
    print(
        f"{precision}: {result.total_s:.1f} s total, {result.median_iteration_s:.3f} s/iteration "
        f"(floor {result.floor_s:.3f} s), pool {result.pool_bytes / 2**30:.1f} GiB",
        flush=True,
    )
    return result


def device_name() -> str:
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    return f"{name}, {props['totalGlobalMem'] / 2**30:.0f} GiB"


def versions() -> str:
    import cupy

    parts = [f"Python {platform.python_version()}", f"numpy {np.__version__}"]
    parts.append(f"cupy {cupy.__version__}, CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}")
    try:
        import dask_cuda

        parts.append(f"dask-cuda {dask_cuda.__version__}")
    except ImportError:
        parts.append("dask-cuda not installed")
    return ", ".join(parts)


def command_line() -> str:
    python = os.path.relpath(sys.executable)
    return shlex.join([python if not python.startswith("..") else sys.executable, *sys.argv])


def render_section(results: list[CaseResult], args: argparse.Namespace, bandwidth: float) -> str:
    """The markdown of this script's RESULTS.md section, header included."""
    rows = [
        "| precision | run | total s | loop s | s / iteration | floor s / iteration | "
        "x floor | pool peak GiB | total / paper | final Fourier error |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        iteration = r.median_iteration_s
        rows.append(
            f"| {r.precision} | {r.path} | {r.total_s:.1f} | {r.loop_s:.1f} | "
            f"{iteration:.3f} | {r.floor_s:.4f} | {iteration / r.floor_s:.1f} | "
            f"{r.pool_bytes / 2**30:.1f} | {r.total_s / PAPER_SECONDS:.2f} | "
            f"{r.final_error:.2e} |"
        )
    workload = (
        f"N = {args.frames} frames of {args.size} x {args.size}, {args.modes} probe modes, "
        f"1 object mode, {args.iterations} iterations"
    )
    is_seed = _is_seed(args)
    lines = [
        SECTION,
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"Device: {device_name()}; measured copy bandwidth {bandwidth / 1e9:.0f} GB/s  ",
        f"Versions: {versions()}",
        "",
        f"Workload: {workload}"
        + ("" if is_seed else " (**not** the seed workload: overrides given)")
        + f"; simulated spiral scan, 1e6 photons per frame; config defaults otherwise "
        f"(beta 0.8, {OVERLAP_PASSES} overlap passes, noise bound 1, batch 64, Fourier "
        "sub-pixel shifts). One GPU, one worker.",
        "",
        *rows,
        "",
        "Total = wall time of the reconstruction (frames read from the Zarr store onto the GPU, "
        "initial guesses, all iterations); loop = the iterations alone (history); s / iteration "
        "= median iteration. Floor = bytes that must move per iteration / measured bandwidth, "
        "with S = N M_P H W itemsize (psi) and A = N H W itemsize / 2: S (7 + 2 P) + A for P "
        "overlap passes (psi read and written by the update, three psi-sized FFTs read and "
        "written once each, psi read by every probe pass and every object pass but the fused "
        "first); probe/object views, probe shifts and multi-pass FFTs are left out, so it is a "
        "lower bound. Pool peak = bytes held by the worker's CuPy memory pool after the run (its "
        f"high-water mark). Paper: {PAPER_SECONDS} s on 4 V100 in double precision "
        "(49.82 s on 2 V100).",
        "",
    ]
    return "\n".join(lines)


def _is_seed(args: argparse.Namespace) -> bool:
    return all(getattr(args, key) == value for key, value in SEED.items())


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=SEED["frames"], help="number of frames N")
    parser.add_argument("--size", type=int, default=SEED["size"], help="frame side in pixels")
    parser.add_argument("--modes", type=int, default=SEED["modes"], help="probe modes")
    parser.add_argument("--iterations", type=int, default=SEED["iterations"], help="DM iterations")
    parser.add_argument(
        "--precision",
        choices=["single", "double"],
        action="append",
        help="repeatable; default: both",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temporary one)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write results for any workload")
    group.add_argument("--no-write", action="store_true", help="only print")
    args = parser.parse_args(argv)
    args.precision = args.precision or ["single", "double"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from ptychograph.backend import gpu_count

    if gpu_count() == 0:
        print("gpu_seed_workload: no CUDA device (or CuPy is not installed); nothing to benchmark")
        return 0
    bandwidth = device_bandwidth()
    print(f"device copy bandwidth: {bandwidth / 1e9:.0f} GB/s")
    with tempfile.TemporaryDirectory(dir=args.workdir) as scratch:
        store = simulate_store(args, Path(scratch))
        results = [run_case(store, args, precision, bandwidth) for precision in args.precision]
    section = render_section(results, args, bandwidth)
    print(section)
    if args.no_write:
        return 0
    if not (args.write or _is_seed(args)):
        print("RESULTS.md not updated: not the seed workload (pass --write to record it anyway)")
        return 0
    write_section(args.results, SECTION, section)
    print(f"wrote the section to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

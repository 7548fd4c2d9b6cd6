"""The Python steps of benchmarks/gpu_check.sh (issue 14), one subcommand each.

Each step appends its figures to ``OUT/results.jsonl`` as soon as it has them
(:mod:`gpu_record`), so a step killed at its time limit leaves what it measured:

* ``env`` - versions (Python, NumPy, CuPy, CUDA runtime and driver, dask, ...), the device and
  its measured copy bandwidth;
* ``simulate`` - the seed workload's scan (spiral, 1e6 photons a frame) into a frames store in
  the work folder; the number of frames is halved until both precisions fit in the device's
  free memory (:func:`plan_frames`; the plan record says when it was scaled down, and why);
* ``parity`` - a small whole reconstruction on the device against the NumPy one, same scan,
  seed and initial guesses, both precisions: max relative difference of the final probe and
  object and of the Fourier error curve;
* ``seed`` (benchmarks/gpu_runs.py) - the seed workload in one precision, in this process
  (no Dask): one record per iteration, then the totals, the bandwidth floor and the CuPy pool's
  peak against exit waves + frames (``--batch``: another batch size than the default 64, a case
  of its own);
* ``dask`` (benchmarks/gpu_runs.py) - the same through ``reconstruct`` on a one-worker local
  cluster (LocalCUDACluster) over ``tcp`` or ``ucx``; UCX is skipped, with the reason, when
  distributed-ucxx does not import;

``--dry-run`` runs every step on NumPy at tiny sizes on a machine without a GPU (the device is
the host, no CuPy pool, a ``distributed.LocalCluster``), so that only the GPU's answers are left
unknown. With ``--standin`` as well, the views are held as stand-in device arrays that refuse to
mix with host arrays as CuPy's do (:mod:`gpu_standin`; the Dask step then uses an in-process
cluster), which checks the GPU path's host/device handling on the CPU.

Usage: ``python3 benchmarks/gpu_check.py STEP --out OUT --work WORK [--dry-run [--standin]]``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gpu_record  # noqa: E402
import gpu_seed_workload as seed_workload  # noqa: E402

#: Workloads: the GPU's, and the dry run's (tiny, NumPy, a few seconds each).
SIZES = {
    "gpu": {
        "parity": {"frames": 256, "size": 64, "modes": 3, "iterations": 10},
        "seed": dict(seed_workload.SEED),
    },
    "dry": {
        "parity": {"frames": 24, "size": 32, "modes": 2, "iterations": 4},
        "seed": {"frames": 40, "size": 32, "modes": 2, "iterations": 10},  # averaging window
    },
}
#: Object (Y, X) of the seed workload's simulated scan (spiral, 10,000 frames of 188^2), and a
#: small one for dry runs: the size of the host-side object step timed by the env step.
OBJECT = {"gpu": (3255, 3251), "dry": (256, 256)}
#: Parity tolerances on max rel diff (indicative: atomics sum in another order than NumPy).
PARITY_TOL = {"single": 1e-3, "double": 1e-9}
PRECISIONS = ("single", "double")
BATCH = 64  # the config default


class Device:
    """The CUDA device through CuPy, or the host in a dry run (NumPy views, no pool)."""

    def __init__(self, dry: bool) -> None:
        self.dry = dry
        self.backend = "numpy" if dry else "cupy"

    def name(self) -> str:
        if self.dry:
            return f"host CPU, {os.cpu_count()} cores (dry run: NumPy, no GPU)"
        return seed_workload.device_name()

    def bandwidth(self) -> float:
        """Copy bandwidth in bytes / s (read + write)."""
        if not self.dry:
            return seed_workload.device_bandwidth()
        src = np.ones(2**23)
        dst = np.empty_like(src)
        begin = time.perf_counter()
        for _ in range(5):
            np.copyto(dst, src)
        return 2.0 * src.nbytes * 5 / (time.perf_counter() - begin)

    def free_bytes(self) -> int:
        if self.dry:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        import cupy

        return int(cupy.cuda.runtime.memGetInfo()[0])

    def used_bytes(self) -> int | None:
        """Device memory in use (all processes), None on the host."""
        if self.dry:
            return None
        import cupy

        free, total = cupy.cuda.runtime.memGetInfo()
        return int(total - free)

    def pool_bytes(self) -> int | None:
        return None if self.dry else seed_workload.pool_bytes()

    def pool_used(self) -> int | None:
        if self.dry:
            return None
        import cupy

        return int(cupy.get_default_memory_pool().used_bytes())

    def release(self) -> None:
        if not self.dry:
            import cupy

            cupy.get_default_memory_pool().free_all_blocks()


# ------------------------------------------------------------------------------------ steps
def env_step(args: argparse.Namespace, device: Device) -> None:
    """Versions, device and bandwidth: one ``env`` record (and the lines of OUT/env.txt)."""
    fields: dict[str, Any] = {"dry_run": device.dry, "python": platform.python_version()}
    for name in ("numpy", "scipy", "cupy", "dask", "distributed", "dask_cuda", "zarr"):
        fields[name] = _version(name)
    fields["pydantic"] = _version("pydantic")
    fields["distributed_ucxx"] = _version("distributed_ucxx")
    queries = {"device": device.name, "bandwidth_gbs": lambda: device.bandwidth() / 1e9}
    queries["free_bytes"] = device.free_bytes  # the memory plan reads it: see simulate_step
    if not device.dry:
        queries["cuda_runtime"] = lambda: _cupy().cuda.runtime.runtimeGetVersion()
        queries["cuda_driver"] = lambda: _cupy().cuda.runtime.driverGetVersion()
        queries["kernels_compile_s"] = _compile_kernels
    queries["host_object_step_s"] = lambda: _host_object_step(OBJECT[args.mode])
    for key, query in queries.items():  # a broken CUDA setup still leaves the versions
        try:
            fields[key] = query()
        except Exception as err:  # noqa: BLE001 - recorded, the check goes on
            fields[key] = f"fails: {type(err).__name__}: {err}"[:600]
    fields["commit"] = _commit()
    fields["command"] = os.environ.get("GPU_CHECK_COMMAND", "benchmarks/gpu_check.sh")
    record = gpu_record.put(args.out, "env", **fields)
    with open(args.out / "env.txt", "a", encoding="utf-8") as file:
        file.writelines(f"{key}: {value}\n" for key, value in record.items())


def _host_object_step(shape: tuple[int, int]) -> float:
    """Seconds of one object step (:func:`ptychograph.partials.regularised_divide`) in host
    memory on an object of ``shape``, complex64: what each DM iteration pays on the CPU (twice,
    with two overlap passes) while the reduced partials and the estimates live on the host."""
    from ptychograph.partials import OverlapPartials, regularised_divide

    rng = np.random.default_rng(0)
    obj = (rng.random((1, *shape)) + 1j * rng.random((1, *shape))).astype(np.complex64)
    partials = OverlapPartials(obj * 2, rng.random(shape).astype(np.float32))
    regularised_divide(partials, obj, 1e-2)
    begin = time.perf_counter()
    for _ in range(3):
        regularised_divide(partials, obj, 1e-2)
    return (time.perf_counter() - begin) / 3


def _compile_kernels() -> float:
    """Seconds to compile every ``ptychograph/gpu/cuda/*.cu`` with NVRTC (an error's message
    is recorded instead, before any test or run needs the kernels)."""
    from ptychograph import gpu

    begin = time.perf_counter()
    for source in sorted(set(gpu.SOURCES.values())):
        gpu._module(source, int(_cupy().cuda.runtime.getDevice())).get_function(
            next(f"{name}_f32" for name, file in gpu.SOURCES.items() if file == source)
        )
    return time.perf_counter() - begin


def _cupy() -> Any:
    import cupy

    return cupy


def _version(module: str) -> str | None:
    """The module's version, "not installed", or the import error's first line."""
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except Exception as err:  # noqa: BLE001 - recorded, the check goes on
        return f"import fails: {type(err).__name__}: {str(err).splitlines()[0][:120]}"


def _commit() -> str:
    """``GPU_CHECK_COMMIT`` (the device machine gets no .git), else git's short HEAD."""
    if os.environ.get("GPU_CHECK_COMMIT"):
        return os.environ["GPU_CHECK_COMMIT"]
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return done.stdout.strip() or "unknown (no git checkout; set GPU_CHECK_COMMIT)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def plan_frames(
    frames: int, size: int, modes: int, free_bytes: int, batch: int = BATCH
) -> tuple[int, str]:
    """The most frames, from ``frames`` halving, whose run fits in ``free_bytes`` in both
    precisions (:func:`need_bytes`), and a note saying whether and why it was scaled down."""
    from ptychograph.memory import USABLE_FRACTION

    def need(n: int) -> int:
        return max(need_bytes(n, size, modes, p, batch) for p in PRECISIONS)

    n = frames
    while n > 1 and need(n) > USABLE_FRACTION * free_bytes:
        n //= 2
    if n == frames:
        return n, f"Not scaled: {need(n) / 2**30:.1f} GiB needed, {free_bytes / 2**30:.1f} free."
    return n, (
        f"**Scaled down** from {frames} to {n} frames by memory: {need(frames) / 2**30:.1f} GiB "
        f"needed (double precision), {free_bytes / 2**30:.1f} GiB free."
    )


def need_bytes(frames: int, size: int, modes: int, precision: str, batch: int = BATCH) -> int:
    """Device bytes of a run: the estimate of :mod:`ptychograph.memory` (the object sums,
    small next to psi, counted for a frame-sized object). A GPU worker keeps no cached S_j P
    (:func:`ptychograph.views.shifted_probe` is None on CuPy); the memory figures of the
    results show what the views did hold."""
    from ptychograph.memory import estimate

    return estimate(frames, (size, size), (size, size), modes, 1, precision, batch).total


def simulate_step(args: argparse.Namespace, device: Device) -> None:
    """The seed workload's store in WORK/frames.zarr (sized by :func:`plan_frames`). The free
    device memory is the env step's: this step runs beside the GPU tests and opens no CUDA
    context of its own (a GPU in exclusive-process mode would refuse a second one)."""
    sizes = SIZES[args.mode]["seed"]
    free = _env_value(args.out, "free_bytes")
    free = int(free) if isinstance(free, int | float) else device.free_bytes()
    frames, note = plan_frames(sizes["frames"], sizes["size"], sizes["modes"], free)
    plan = {**sizes, "frames": frames}
    gpu_record.put(args.out, "seed", event="plan", case="store", note=note, **plan)
    begin = time.perf_counter()
    store = _simulate(args.work / "frames.zarr", frames, sizes["size"])
    gpu_record.put(
        args.out, "simulate", frames=frames, seconds=time.perf_counter() - begin, store=str(store)
    )


def _simulate(store: Path, frames: int, size: int) -> Path:
    """Simulate a spiral scan of ``frames`` frames (1e6 photons, seed 0) into ``store``."""
    from ptychograph.io.zarr_store import write_frames_store
    from ptychograph.simulate import SimulationConfig, simulate

    config = SimulationConfig(n_frames=frames, frame_size=size, photons=1e6, scan="spiral", seed=0)
    write_frames_store(simulate(config).scan, store, overwrite=True)
    return store


def parity_step(args: argparse.Namespace, device: Device) -> None:
    """A small reconstruction on the device against NumPy, per precision."""
    from ptychograph.backend import to_host

    sizes = SIZES[args.mode]["parity"]
    store = _simulate(args.work / "parity.zarr", sizes["frames"], sizes["size"])
    workload = argparse.Namespace(**sizes)
    for precision in PRECISIONS:
        config = seed_workload.run_config(store, workload, precision, args.work, device.backend)
        seconds_device, on_device = seed_workload.run_local(config, device.backend)
        seconds_numpy, reference = seed_workload.run_local(config, "numpy")
        probe_rel = _rel(to_host(on_device.state.probe), to_host(reference.state.probe))
        object_rel = _rel(to_host(on_device.state.obj), to_host(reference.state.obj))
        errors_device = list(on_device.history.fourier_error)
        errors_numpy = list(reference.history.fourier_error)
        error_rel = _rel(np.asarray(errors_device), np.asarray(errors_numpy))
        worst = max(probe_rel, object_rel, error_rel)
        gpu_record.put(
            args.out,
            "parity",
            precision=precision,
            **sizes,
            probe_rel=probe_rel,
            object_rel=object_rel,
            error_rel=error_rel,
            tolerance=PARITY_TOL[precision],
            within=bool(worst <= PARITY_TOL[precision]),
            seconds_device=seconds_device,
            seconds_numpy=seconds_numpy,
            errors_device=errors_device,
            errors_numpy=errors_numpy,
        )
        device.release()


def _rel(actual: np.ndarray, expected: np.ndarray) -> float:
    """max |actual - expected| / max |expected| (inf for a shape mismatch, e.g. a run that
    stopped early)."""
    if actual.shape != expected.shape:
        return float("inf")
    scale = float(np.max(np.abs(expected))) if expected.size else 0.0
    return float(np.max(np.abs(actual - expected))) / scale if scale > 0 else 0.0


def _env_value(out: Path, key: str) -> Any:
    """A field of the env step's record (None when missing)."""
    env = [r for r in gpu_record.load(out) if r["step"] == "env"]
    return env[-1].get(key) if env else None


STEPS = {
    "env": env_step,
    "simulate": simulate_step,
    "parity": parity_step,
    "seed": lambda args, device: _runs().run_step(args, device),
    "dask": lambda args, device: _runs().run_step(args, device),
}


def _runs() -> Any:
    """benchmarks/gpu_runs.py (it imports this module: imported when a run step starts)."""
    import gpu_runs

    return gpu_runs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=sorted(STEPS))
    parser.add_argument("--out", type=Path, required=True, help="folder of the figures")
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-check-work"))
    parser.add_argument("--dry-run", action="store_true", help="NumPy, tiny sizes, no GPU")
    parser.add_argument(
        "--standin",
        action="store_true",
        help="with --dry-run: views held as stand-in device arrays (gpu_standin.py)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default="single")
    parser.add_argument("--protocol", choices=["tcp", "ucx"], default="tcp")
    parser.add_argument("--batch", type=int, default=BATCH, help="views per batch")
    args = parser.parse_args(argv)
    args.mode = "dry" if args.dry_run else "gpu"
    if args.standin:
        if not args.dry_run:
            parser.error("--standin is for dry runs (--dry-run)")
        import gpu_standin

        gpu_standin.install()
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    STEPS[args.step](args, Device(args.dry_run))
    return 0


if __name__ == "__main__":
    sys.exit(main())

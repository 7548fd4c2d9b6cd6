"""Where the time of one DM iteration goes, per phase, on CPU.

The DM algorithm (:mod:`ptychograph.algorithms.dm`, default options, probe updates from the
first iteration) runs on the in-process executor over the scene of :mod:`bench_iteration`;
the functions of each phase are wrapped with timers that charge every call its own
(exclusive) time, so the phases add up to the iteration. FFTs are charged to the phase that
called them ("FFT in ..."). Run with one thread (``PTYCHOGRAPH_FFT_WORKERS=1``, the default of
this script) so that the phase times are not interleaved between threads; the two-thread total
is timed at the end without the wrappers. ``PTYCHOGRAPH_NUMBA=0`` profiles the NumPy code of
:class:`ptychograph.cpu_ops.CpuOps` instead of the fused numba kernels.

``--ab PAIRS`` instead times whole iterations (no wrappers, ``backend.fft_workers()`` threads)
with the numba kernels and with the NumPy code alternately, PAIRS times, and the FFT pair
(forward + inverse of (N M_P M_O, H, W) in one call, scipy.fft and ptychograph's FFT, the same
threads) between them, so that the ratios come from one run on one machine load.

Usage::

    .venv/bin/python benchmarks/profile_iteration.py [--config 512:128:3:1:single]
        [--iterations 3] [--no-write] [--ab PAIRS]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("PTYCHOGRAPH_FFT_WORKERS", "1")

import bench_iteration as bench  # noqa: E402
from results_md import write_section  # noqa: E402

from ptychograph import backend, fourier, operators, ops, views  # noqa: E402
from ptychograph.algorithms import dm  # noqa: E402
from ptychograph.executors.local import LocalExecutor  # noqa: E402
from ptychograph.state import State  # noqa: E402

try:  # the cache of shifted probes and the CPU ops (issue 15); absent in older versions
    from ptychograph import cpu_ops, shifted_probe  # noqa: E402
except ImportError:  # pragma: no cover
    cpu_ops = shifted_probe = None  # type: ignore[assignment]
try:  # the fused numba kernels (issue 15); absent in older versions or without numba
    from ptychograph import cpu_fused  # noqa: E402
except ImportError:  # pragma: no cover
    cpu_fused = None  # type: ignore[assignment]
NEW_MODULES = [m for m in (shifted_probe, cpu_ops) if m is not None]
CPU_OPS = getattr(cpu_ops, "CpuOps", None)

SECTION = "## CPU: one DM iteration per phase (issue 15)"

#: (module or class, attribute, phase label); attributes missing in this version are skipped.
PHASES: list[tuple[Any, str, str]] = [
    (views, "update_views", "exit-wave sweep: batching, slicing"),
    (views, "object_partials", "object pass: batching"),
    (views, "probe_partials", "probe pass: batching"),
    (views, "rotate_modes", "probe-mode rotation of psi"),
    (views, "extract_views", "object views E_j O"),
    (views, "shifted_probe", "sub-pixel shift S_j P (element-wise, cache)"),
    (operators, "shift_modes", "sub-pixel shift S_j P (element-wise, cache)"),
    (shifted_probe, "shift_all", "sub-pixel shift S_j P (element-wise, cache)"),
    (shifted_probe, "_rotate_in_place", "probe-mode rotation of cached S_j P"),
    (shifted_probe, "gather_rows", "sub-pixel shift S_j P (element-wise, cache)"),
    (
        getattr(shifted_probe, "ShiftTable", None),
        "sum_adjoint",
        "probe adjoint S_j^H sum (element-wise)",
    ),
    (operators, "add_binned", "probe adjoint S_j^H sum (element-wise)"),
    (operators, "phase_ramps", "sub-pixel shift S_j P (element-wise, cache)"),
    (ops, "form_views", "exit-wave products phi = (S_j P)(E_j O)"),
    (fourier, "dm_exit_wave_update", "exit-wave update, element-wise"),
    (fourier, "modulus_constraint", "modulus constraint (eq. 4)"),
    (fourier, "fourier_error", "Fourier error terms"),
    (ops.NumpyOps, "object_partials", "object partial terms"),
    (ops, "insert_views", "overlap insertion E_j^H"),
    (ops.NumpyOps, "probe_partials", "probe partial terms"),
    (ops, "sum_unshifted", "probe adjoint S_j^H sum (element-wise)"),
    (CPU_OPS, "exit_wave_update", "exit-wave update, element-wise"),
    (CPU_OPS, "object_partials", "object partial terms"),
    (CPU_OPS, "probe_partials", "probe partial terms"),
    (cpu_ops, "mode_power", "mode powers sum_k |x_k|^2"),
    (cpu_ops, "_mode_sum", "object partial terms"),
    (cpu_ops, "_sum_unshifted", "probe adjoint S_j^H sum (element-wise)"),
    (cpu_fused, "fourier_step", "fused: error terms, 2 F phi - F psi, modulus constraint"),
    (cpu_fused, "update_object_terms", "fused: exit-wave update and object terms"),
    (cpu_fused, "probe_terms", "fused: probe partial terms"),
    (views, "_zero_partials", "reduction (zeroing, adding partials)"),
    (views, "_sum_parts", "reduction (zeroing, adding partials)"),
    (ops, "_add_into", "reduction (zeroing, adding partials)"),
    (dm, "tree_sum", "reduction (zeroing, adding partials)"),
    (dm, "object_step", "object division (eq. 6)"),
    (dm, "probe_step", "probe step (eq. 5)"),
    (dm, "finish_step", "orthogonalise probe"),
]
FFT_MODULES = [operators, fourier, views, ops, *NEW_MODULES]
MODULES = [operators, fourier, views, ops, dm, *NEW_MODULES]


class PhaseTimer:
    """Exclusive seconds per phase label: a call's time minus that of wrapped calls inside."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list[Any]] = []
        self.floor = 0.0  # seconds of the FFT pair floor, measured beside the iterations
        self.scipy_floor = 0.0  # the same with scipy.fft

    def wrap(self, func: Callable[..., Any], label: str | None) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            name = label
            if name is None:  # an FFT: charged to the phase that called it
                parent = self.stack[-1][0] if self.stack else "outside"
                name = f"FFT in: {parent}"
            frame = [name, 0.0]
            self.stack.append(frame)
            begin = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - begin
                self.stack.pop()
                self.seconds[name] += elapsed - frame[1]
                self.calls[name] += 1
                if self.stack:
                    self.stack[-1][1] += elapsed

        return timed

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        saved: list[tuple[Any, str, Any]] = []
        targets = [(owner, attr, label) for owner, attr, label in PHASES]
        targets += [(m, name, None) for m in FFT_MODULES for name in ("fft2", "ifft2")]
        wrapped: dict[int, Callable[..., Any]] = {}
        for owner, attr, label in targets:
            if owner is None or attr not in vars(owner):
                continue
            original = vars(owner)[attr]
            if any(original is w for w in wrapped.values()):
                continue  # already wrapped where it was first found
            if id(original) not in wrapped:
                wrapped[id(original)] = self.wrap(original, label)
            # wherever the function was imported by name too
            for holder in (owner, *MODULES):
                for name, value in list(vars(holder).items()):
                    if value is original:
                        saved.append((holder, name, original))
                        setattr(holder, name, wrapped[id(original)])
        try:
            yield
        finally:
            for owner, attr, original in reversed(saved):
                setattr(owner, attr, original)


def iterate(executor: LocalExecutor, state: State, iteration: int) -> State:
    options = dm.DMOptions(probe_update_start=0)
    new, _ = dm.DifferenceMap(options).iterate(executor, state, iteration)
    return new


def profile(config: bench.BenchConfig, iterations: int, batch: int) -> tuple[PhaseTimer, float]:
    """Phase times summed over ``iterations`` and the wall time of those iterations."""
    scene = bench.make_scene(config, 0.7, 0)
    executor = LocalExecutor.from_frames(scene.amplitudes, scene.origins, None, batch, "fourier")
    state = executor.reset(State(scene.probe, scene.obj))
    state = iterate(executor, state, 0)  # warm-up
    timer = PhaseTimer()
    wall = 0.0
    for it in range(1, iterations + 1):
        fft_pair(config, batch, timer)  # the floor, measured between the iterations
        begin = time.perf_counter()
        with timer.installed():
            state = iterate(executor, state, it)
        wall += time.perf_counter() - begin
    return timer, wall


def fft_pair(config: bench.BenchConfig, batch: int, timer: PhaseTimer) -> None:
    """Forward + inverse FFT of (N M_P M_O, H, W) in batches of ``batch`` views, one worker:
    the work every iteration needs at least (added to ``timer.floor``)."""
    shape = (batch, config.probe_modes * config.object_modes, config.size, config.size)
    waves = np.ones(shape, config.dtype)
    begin = time.perf_counter()
    for _ in range(0, config.n_frames, batch):
        backend.ifft2(backend.fft2(waves), overwrite=True)
    timer.floor += time.perf_counter() - begin
    begin = time.perf_counter()
    for _ in range(0, config.n_frames, batch):
        scipy.fft.ifft2(scipy.fft.fft2(waves, norm="ortho", workers=1), norm="ortho", workers=1)
    timer.scipy_floor += time.perf_counter() - begin


def threaded_seconds(config: bench.BenchConfig, iterations: int, batch: int) -> float:
    """Median s/iteration with ``backend.fft_workers()`` threads from the machine, no timers."""
    os.environ.pop("PTYCHOGRAPH_FFT_WORKERS", None)
    scene = bench.make_scene(config, 0.7, 0)
    executor = LocalExecutor.from_frames(scene.amplitudes, scene.origins, None, batch, "fourier")
    state = executor.reset(State(scene.probe, scene.obj))
    state = iterate(executor, state, 0)
    times = []
    for it in range(1, iterations + 1):
        begin = time.perf_counter()
        state = iterate(executor, state, it)
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def numba_ab(config: bench.BenchConfig, iterations: int, batch: int, pairs: int) -> str:
    """Median s / iteration with the numba kernels and with CpuOps' NumPy code, alternately,
    and the FFT pair between them: a Markdown table."""
    os.environ.pop("PTYCHOGRAPH_FFT_WORKERS", None)
    workers = backend.fft_workers()
    shape = (config.n_frames * config.probe_modes * config.object_modes, config.size, config.size)
    waves = np.ones(shape, config.dtype)
    rows = [
        "| pair | numba s / it | NumPy s / it | numba / NumPy | scipy.fft pair (s) | "
        "ptychograph's FFT pair (s) | numba / scipy pair | NumPy / scipy pair | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    saved = os.environ.get("PTYCHOGRAPH_NUMBA")
    ratios = []
    for pair in range(1, pairs + 1):
        seconds = {}
        for path in ("1", "0") if pair % 2 else ("0", "1"):  # alternate which runs first
            os.environ["PTYCHOGRAPH_NUMBA"] = path
            cpu_ops.fused_kernels.cache_clear()
            seconds[path] = threaded_seconds(config, iterations, batch)
        scipy_pair, own_pair = (
            float(np.median(t)) for t in zip(*_pairs(waves, workers), strict=True)
        )
        fused, plain = seconds["1"], seconds["0"]
        ratios.append((fused / plain, fused / scipy_pair))
        rows.append(
            f"| {pair} | {fused:.3f} | {plain:.3f} | {fused / plain:.2f} | "
            f"{scipy_pair:.3f} | {own_pair:.3f} | {fused / scipy_pair:.2f}x | "
            f"{plain / scipy_pair:.2f}x | {os.getloadavg()[0]:.1f} |"
        )
    if saved is None:
        os.environ.pop("PTYCHOGRAPH_NUMBA", None)
    else:
        os.environ["PTYCHOGRAPH_NUMBA"] = saved
    cpu_ops.fused_kernels.cache_clear()
    speed, floor = (float(np.median(r)) for r in zip(*ratios, strict=True))
    return "\n".join(
        [
            f"Command: `{bench.command_line()}`  ",
            f"Machine: nproc = {len(os.sched_getaffinity(0))}, CPU = {bench.cpu_model()}; "
            f"{workers} thread(s); ptychograph's FFT: {fft_name()}",
            "",
            f"{config.label}, batch {batch}, default DM options, probe updated every iteration; "
            f"per path: one warm-up, then the median of {iterations} iterations; the paths "
            "alternate which runs first; FFT pairs: median of 3, after each pair's iterations.",
            "",
            *rows,
            "",
            f"Median over the pairs: numba / NumPy = {speed:.2f}; numba path / scipy.fft pair = "
            f"{floor:.2f}x.",
            "",
        ]
    )


def _pairs(waves: np.ndarray, workers: int) -> list[tuple[float, float]]:
    """Three timings of the FFT pair of ``waves`` with scipy.fft and with ptychograph's FFT."""
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        spectrum = scipy.fft.fft2(waves, norm="ortho", workers=workers)
        scipy.fft.ifft2(spectrum, norm="ortho", workers=workers, overwrite_x=True)
        middle = time.perf_counter()
        backend.ifft2(backend.fft2(waves), overwrite=True)
        times.append((middle - begin, time.perf_counter() - middle))
    return times


def fft_name() -> str:
    """The FFT library of ptychograph's NumPy path."""
    fftw = getattr(backend, "fftw_library", lambda: None)()
    return f"FFTW via pyFFTW {fftw.__version__}" if fftw is not None else "scipy.fft"


def render(timer: PhaseTimer, wall: float, threaded: float, args: argparse.Namespace) -> str:
    total = sum(timer.seconds.values())
    n, cfg = args.iterations, args.config
    rows = ["| phase | s / iteration | share | calls / iteration |", "|---|---:|---:|---:|"]
    for name, seconds in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        rows.append(
            f"| {name} | {seconds / n:.3f} | {seconds / total:.1%} | {timer.calls[name] / n:g} |"
        )
    fft = sum(s for k, s in timer.seconds.items() if k.startswith("FFT"))
    rows.append(f"| **all FFTs** | {fft / n:.3f} | {fft / total:.1%} | |")
    untimed = wall - total
    rows.append(f"| not in a wrapped function (driver, Python) | {untimed / n:.3f} | | |")
    return "\n".join(
        [
            args.section,
            "",
            f"Command: `{bench.command_line()}`  ",
            f"Machine: nproc = {len(os.sched_getaffinity(0))}, CPU = {bench.cpu_model()}, "
            f"1-minute load {os.getloadavg()[0]:.1f} at the end",
            "",
            f"{args.config.label}, batch {args.batch}, default DM options "
            f"({dm.DMOptions().overlap_passes} overlap pass(es), "
            f"noise bound 1, orthogonalised probe), probe updated every iteration; "
            f"{n} iterations after one warm-up, one thread (PTYCHOGRAPH_FFT_WORKERS=1). "
            "Exclusive time per phase; FFTs charged to the phase that called them.",
            "",
            *rows,
            "",
            f"FFT pair floor (forward + inverse of ({cfg.n_frames * cfg.probe_modes}, "
            f"{cfg.size}, {cfg.size}) {cfg.dtype.name}, batches of "
            f"{args.batch} views, one thread, measured between the iterations): "
            f"{timer.floor / n:.3f} s with ptychograph's FFT ({fft_name()}), "
            f"{timer.scipy_floor / n:.3f} s with scipy.fft; the iteration is "
            f"**{wall / timer.floor:.2f}x** the first, **{wall / timer.scipy_floor:.2f}x** the "
            "second.  ",
            f"One thread: {wall / n:.3f} s / iteration with the timers. Without timers, "
            f"{backend.fft_workers()} thread(s): {threaded:.3f} s / iteration (median).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=bench.BenchConfig.parse, default=bench.TARGET)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--section", default=SECTION, help="RESULTS.md section header")
    parser.add_argument(
        "--ab",
        type=int,
        default=0,
        metavar="PAIRS",
        help="time numba against NumPy CpuOps, PAIRS alternating pairs",
    )
    args = parser.parse_args(argv)
    if args.ab:
        print(numba_ab(args.config, args.iterations, args.batch, args.ab))
        return 0
    timer, wall = profile(args.config, args.iterations, args.batch)
    threaded = threaded_seconds(args.config, args.iterations, args.batch)
    text = render(timer, wall, threaded, args)
    print(text)
    if not args.no_write:
        write_section(bench.RESULTS, args.section, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Time one DM iteration: the plain NumPy baseline (:mod:`plain_dm`) against ptychograph.

Both implementations run side by side in the same process, start from the same state, and must
give the same probe and object after the iteration. The results go to ``benchmarks/RESULTS.md``
under a section of their own (other sections of that file are left as they are).

Usage::

    .venv/bin/python benchmarks/bench_iteration.py                 # default grid
    .venv/bin/python benchmarks/bench_iteration.py --config 512:128:3:1:single --repeats 5

A configuration is ``N:SIZE:PROBE_MODES:OBJECT_MODES:PRECISION[:BATCH]`` (frames, frame side in
pixels, modes, ``single`` or ``double``, and optionally ptychograph's views per batch, which
overrides ``--batch``). Scan: a square raster whose step gives ``--overlap`` linear
overlap of the probe footprint (a disc of diameter SIZE / 2), each position jittered by a random
sub-pixel amount, so every view takes the Fourier-shift path.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plain_dm  # noqa: E402
from results_md import write_section  # noqa: E402

from ptychograph.algorithms.dm import DifferenceMap, DMOptions  # noqa: E402
from ptychograph.backend import fft_workers  # noqa: E402
from ptychograph.executors.local import LocalExecutor  # noqa: E402
from ptychograph.state import State  # noqa: E402

SECTION = "## CPU: one DM iteration, plain NumPy vs ptychograph"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
TARGET = "512:128:3:1:single"
DEFAULT_CONFIGS = [
    TARGET,
    "512:128:3:1:double",
    "512:128:1:1:single",
    "512:64:5:1:single",
    "128:256:3:1:single",
    f"{TARGET}:16",
]
#: Speed-up over the plain baseline that ptychograph should reach at the TARGET configuration.
TARGET_SPEEDUP = 2.0
#: Largest accepted max relative difference of probe / object between the implementations.
TOLERANCE = {"single": 1e-3, "double": 1e-8}


@dataclass(frozen=True)
class BenchConfig:
    """One benchmark case."""

    n_frames: int
    size: int
    probe_modes: int
    object_modes: int
    precision: str
    batch_size: int | None = None

    @classmethod
    def parse(cls, text: str) -> BenchConfig:
        """From ``N:SIZE:PROBE_MODES:OBJECT_MODES:PRECISION[:BATCH]``."""
        parts = text.split(":")
        if len(parts) not in (5, 6) or parts[4] not in TOLERANCE:
            raise argparse.ArgumentTypeError(
                f"expected N:SIZE:PROBE_MODES:OBJECT_MODES:single|double[:BATCH], got {text!r}"
            )
        batch = int(parts[5]) if len(parts) == 6 else None
        return cls(int(parts[0]), int(parts[1]), int(parts[2]), int(parts[3]), parts[4], batch)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.complex64 if self.precision == "single" else np.complex128)

    @property
    def label(self) -> str:
        size = f"{self.size}x{self.size}"
        modes = f"{self.probe_modes}P/{self.object_modes}O"
        batch = f", batch {self.batch_size}" if self.batch_size is not None else ""
        return f"N={self.n_frames}, {size}, {modes}, {self.dtype.name}{batch}"


@dataclass(frozen=True)
class Scene:
    """A simulated scan and the starting estimates of one iteration.

    amplitudes : (N, H, W) real sqrt(I); origins : (N, 2) float64 view corners (object pixels);
    probe : (M_P, H, W) complex; obj : (M_O, Y, X) complex.
    """

    amplitudes: np.ndarray
    origins: np.ndarray
    probe: np.ndarray
    obj: np.ndarray


@dataclass(frozen=True)
class Timing:
    """Median seconds per iteration of both implementations and their disagreement.

    speedup : median over the repeats of plain / ptychograph, each pair timed back to back
    (robust to the machine's load changing during the run).
    """

    config: BenchConfig
    plain_s: float
    fast_s: float
    speedup: float
    probe_diff: float
    object_diff: float

    @property
    def max_diff(self) -> float:
        return max(self.probe_diff, self.object_diff)

    @property
    def agrees(self) -> bool:
        return self.max_diff < TOLERANCE[self.config.precision]


def raster_origins(
    n_frames: int, step: float, jitter: float, margin: int, rng: np.random.Generator
) -> np.ndarray:
    """(N, 2) float64 view corners on a square raster with uniform random jitter (pixels)."""
    columns = int(np.ceil(np.sqrt(n_frames)))
    index = np.arange(n_frames)
    grid = np.stack([index // columns, index % columns], axis=1) * step
    positions = grid + rng.uniform(-jitter, jitter, size=grid.shape)
    return positions - positions.min(axis=0) + margin


def make_probe(size: int, modes: int, dtype: np.dtype, counts: float = 1e6) -> np.ndarray:
    """(M_P, H, W): a soft disc of diameter size / 2 with a curved phase; weaker extra modes.

    Scaled so that the probe carries ``counts`` photons in all (a realistic frame total).
    """
    yy, xx = (np.mgrid[:size, :size] - size / 2) / (size / 4)
    radius = np.hypot(yy, xx)
    disc = 0.5 * (1 - np.tanh((radius - 1) * 8)) * np.exp(1j * 2.0 * radius**2)
    patterns = [np.ones_like(xx), xx, yy, xx * yy, xx**2 - yy**2, yy**2]
    probe = np.asarray([disc * patterns[k % len(patterns)] * 0.5**k for k in range(modes)])
    return (probe * np.sqrt(counts / np.sum(np.abs(probe) ** 2))).astype(dtype)


def smooth_noise(shape: tuple[int, ...], width: float, rng: np.random.Generator) -> np.ndarray:
    """Real Gaussian noise low-passed to features of about ``width`` pixels, unit max."""
    spectrum = np.fft.fft2(rng.standard_normal(shape))
    qy = np.fft.fftfreq(shape[-2])[:, None]
    qx = np.fft.fftfreq(shape[-1])[None, :]
    field = np.fft.ifft2(spectrum * np.exp(-((qy**2 + qx**2) * width**2))).real
    return field / np.abs(field).max()


def make_scene(config: BenchConfig, overlap: float, seed: int) -> Scene:
    """Simulate a scan with the plain forward model and perturbed starting estimates."""
    rng = np.random.default_rng(seed)
    size, dtype = config.size, config.dtype
    step = (1 - overlap) * size / 2
    margin = 8
    origins = raster_origins(config.n_frames, step, 0.1 * step, margin, rng)
    side = int(np.ceil(origins.max())) + size + margin + 1
    obj_shape = (config.object_modes, side, side)
    obj_true = (1 - 0.3 * np.abs(smooth_noise(obj_shape, 3, rng))) * np.exp(
        1j * smooth_noise(obj_shape, 3, rng)
    )
    probe_true = make_probe(size, config.probe_modes, dtype)
    intensities = plain_dm.intensities(probe_true, obj_true.astype(dtype), origins)
    real = np.dtype(np.float32 if config.precision == "single" else np.float64)
    noise = rng.standard_normal(probe_true.shape) + 1j * rng.standard_normal(probe_true.shape)
    probe = probe_true + 0.1 * np.abs(probe_true).max() * noise * (np.abs(probe_true) > 0.01)
    obj = np.ones(obj_shape, dtype=dtype)
    return Scene(np.sqrt(intensities).astype(real), origins, probe.astype(dtype), obj)


@dataclass(frozen=True)
class IterationSettings:
    """The parameters of one DM iteration shared by both implementations."""

    beta: float
    alpha: float
    overlap_passes: int
    noise_bound: float
    batch_size: int

    @classmethod
    def from_args(cls, args: argparse.Namespace, batch_size: int | None) -> IterationSettings:
        """From the command line; ``batch_size`` (a configuration's own) overrides --batch."""
        batch = args.batch if batch_size is None else batch_size
        return cls(args.beta, args.alpha, args.overlap_passes, args.noise_bound, batch)


def fast_iteration(
    executor: LocalExecutor, probe: np.ndarray, obj: np.ndarray, settings: IterationSettings
) -> tuple[np.ndarray, np.ndarray, float]:
    """One ptychograph DM iteration, the algorithm itself (:mod:`ptychograph.algorithms.dm`)
    on the in-process executor; probe updates from the first iteration, no mode rotation.

    psi is updated in place; probe (M_P, H, W) and obj (M_O, Y, X) are not.
    Returns (probe, obj, Fourier error).
    """
    s = settings
    options = DMOptions(s.beta, s.overlap_passes, 0, s.alpha, False, s.noise_bound)
    new, stats = DifferenceMap(options).iterate(executor, State(probe, obj), 0)
    return new.probe, new.obj, stats.error


def plain_iteration(
    psi: np.ndarray, scene: Scene, settings: IterationSettings
) -> tuple[np.ndarray, np.ndarray, float]:
    """One plain-NumPy DM iteration (psi in place). Returns (probe, obj, Fourier error)."""
    s = settings
    return plain_dm.dm_iteration(
        psi,
        scene.amplitudes,
        scene.origins,
        scene.probe,
        scene.obj,
        s.beta,
        s.alpha,
        s.overlap_passes,
        s.noise_bound,
    )


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| / max |reference|."""
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def run_config(config: BenchConfig, args: argparse.Namespace) -> Timing:
    """Warm up both implementations once, then time ``args.repeats`` interleaved iterations."""
    scene = make_scene(config, args.overlap, args.seed)
    settings = IterationSettings.from_args(args, config.batch_size)
    start_psi = plain_dm.initial_exit_waves(scene.probe, scene.obj, scene.origins)
    executor = LocalExecutor.from_frames(
        scene.amplitudes, scene.origins, None, settings.batch_size, "fourier"
    )
    executor.reset(State(scene.probe, scene.obj))
    [chunk] = executor.slots[0].chunks
    psi = start_psi.copy()

    def plain() -> tuple[np.ndarray, np.ndarray, float]:
        return plain_iteration(psi, scene, settings)

    def fast() -> tuple[np.ndarray, np.ndarray, float]:
        return fast_iteration(executor, scene.probe, scene.obj, settings)

    plain_result = plain()
    fast_result = fast()
    plain_times, fast_times = [], []
    for _ in range(args.repeats):
        psi[...] = start_psi
        begin = time.perf_counter()
        plain()
        plain_times.append(time.perf_counter() - begin)
        chunk.exit_waves[...] = start_psi
        begin = time.perf_counter()
        fast()
        fast_times.append(time.perf_counter() - begin)
    return Timing(
        config,
        float(np.median(plain_times)),
        float(np.median(fast_times)),
        float(np.median(np.asarray(plain_times) / np.asarray(fast_times))),
        relative_difference(fast_result[0], plain_result[0]),
        relative_difference(fast_result[1], plain_result[1]),
    )


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or the platform's processor string)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line() -> str:
    """The command that ran this script, with the interpreter relative to the working dir."""
    python = os.path.relpath(sys.executable)
    if python.startswith(".."):
        python = sys.executable
    return shlex.join([python, *sys.argv])


def render_section(
    timings: list[Timing], args: argparse.Namespace, wall_s: float, load: tuple[float, float]
) -> str:
    """The markdown of this script's RESULTS.md section, header included."""
    rows = [
        "| config | plain s/iter | ptychograph s/iter | speed-up | max rel diff (probe / obj) |",
        "|---|---:|---:|---:|---|",
    ]
    for t in timings:
        flag = "" if t.agrees else " **MISMATCH**"
        rows.append(
            f"| {t.config.label} | {t.plain_s:.3f} | {t.fast_s:.3f} | "
            f"{t.speedup:.2f}x | {t.probe_diff:.1e} / {t.object_diff:.1e}{flag} |"
        )
    target = BenchConfig.parse(TARGET)
    for t in timings:
        if t.config == target:
            verdict = "met" if t.speedup >= TARGET_SPEEDUP else "NOT met"
            rows += [
                "",
                f"Target ({target.label}, default batch): ptychograph at least "
                f"{TARGET_SPEEDUP:g}x faster than plain - {verdict} in this run "
                f"({t.speedup:.2f}x).",
            ]
    cores = len(os.sched_getaffinity(0))
    lines = [
        SECTION,
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"Machine: nproc = {cores}, CPU = {cpu_model()}  ",
        f"Versions: Python {platform.python_version()}, numpy {np.__version__}, "
        f"scipy {scipy.__version__}; ptychograph FFT workers = {fft_workers()}  ",
        f"Whole benchmark: {wall_s:.0f} s wall; 1-minute load average {load[0]:.1f} before, "
        f"{load[1]:.1f} after (other jobs on the machine slow both, and steal ptychograph's "
        "second FFT thread)",
        "",
        f"One iteration = exit-wave update (eqs. 3-4) + {args.overlap_passes} overlap pass(es) "
        "(eqs. 5-6; object by regularised_divide, probe by the residual-form regularised_step, "
        "the DM algorithm of ptychograph.algorithms.dm); "
        f"beta = {args.beta}, alpha = {args.alpha}, "
        f"noise_bound = {args.noise_bound}, batch size {args.batch} unless the row says "
        "otherwise, first object partials fused into the exit-wave sweep. "
        f"Median of {args.repeats} repeats after one warm-up, plain and ptychograph interleaved; "
        "speed-up = median of the per-repeat ratios plain / ptychograph. "
        f"Scan: square raster, {args.overlap:.0%} linear overlap of a probe disc of diameter "
        "H/2, random sub-pixel jitter of +-10 % of the step; object modes start flat, probe "
        "perturbed from the simulated one.",
        "",
        *rows,
        "",
        "Max rel diff = max |ptychograph - plain| / max |plain| of the probe and object after the "
        f"iteration (tolerance {TOLERANCE['single']:g} single, {TOLERANCE['double']:g} double). "
        "Plain NumPy FFTs are single-threaded; ptychograph's use scipy.fft workers.",
        "",
        "Absolute CPU times on this shared machine are noisy; compare only the ratios within "
        "one run.",
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config",
        action="append",
        type=BenchConfig.parse,
        help="N:SIZE:PROBE_MODES:OBJECT_MODES:single|double[:BATCH] (repeatable; default: a grid "
        f"including {TARGET})",
    )
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per case")
    parser.add_argument("--overlap-passes", type=int, default=1, help="eqs. 5-6 passes")
    parser.add_argument("--beta", type=float, default=0.8, help="DM feedback")
    parser.add_argument("--alpha", type=float, default=1e-3, help="overlap regularisation")
    parser.add_argument(
        "--noise-bound", type=float, default=0.0, help="Fourier relaxation (0 = plain eq. 4)"
    )
    parser.add_argument("--batch", type=int, default=64, help="ptychograph views per batch")
    parser.add_argument("--overlap", type=float, default=0.7, help="linear probe overlap")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the scene")
    parser.add_argument("--results", type=Path, default=RESULTS, help="markdown file to update")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    args = parser.parse_args(argv)
    if args.config is None:
        args.config = [BenchConfig.parse(text) for text in DEFAULT_CONFIGS]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    load_before = os.getloadavg()[0]
    begin = time.perf_counter()
    timings = []
    for config in args.config:
        timing = run_config(config, args)
        timings.append(timing)
        print(
            f"{config.label}: plain {timing.plain_s:.3f} s, ptychograph {timing.fast_s:.3f} s, "
            f"x{timing.speedup:.2f}, max rel diff {timing.max_diff:.1e}",
            flush=True,
        )
    wall_s = time.perf_counter() - begin
    section = render_section(timings, args, wall_s, (load_before, os.getloadavg()[0]))
    print("\n" + section)
    if not args.no_write:
        write_section(args.results, SECTION, section)
        print(f"updated {args.results}")
    return 0 if all(t.agrees for t in timings) else 1


if __name__ == "__main__":
    sys.exit(main())

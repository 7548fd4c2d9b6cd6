"""ptychograph beside its peers on one simulated scan, in one run: s / iteration, time to error.

For each probe-mode count the same scan (ptychograph's simulated fly scan, written as CXI) is
reconstructed by

* ptychograph in-process (``reconstruct_in_process``: the driver, the DM algorithm and the
  in-process executor) and through Dask with one local worker (``reconstruct``, frames loaded
  by the worker from the Zarr store), default settings but for the modes and iterations;
* the plain NumPy DM of :mod:`plain_dm` (a loop over views, NumPy FFTs), with the same
  starting estimates, view origins, beta, regularisation, noise bound and overlap passes;
* Pty-Chi's DM (the ``ptychi`` package in a throwaway environment, run by
  ``ptychi_dm_runner.py``; skipped with a note when ``--ptychi-python`` does not exist), with the
  same frames, starting estimates and positions (patch centres), sub-pixel Fourier shifts, on
  the CPU. Pty-Chi's DM does one probe and one object update per iteration.

Recorded per program: mean s / iteration after iteration 10 (ptychograph's first sync point:
start-up is left out, and every iteration's time is counted on both of its paths), the
time to error (summed iteration times until the model's Fourier error is within 10 % of the
program's final one) and the final error. Every program's error is the model's
sum (sqrt(I) - |F phi|)^2 / sum I of the estimates before the iteration (Pty-Chi's computed by
the runner with Pty-Chi's own forward model, outside its timing). The FFT pair floor, forward +
inverse of (N M_P, H, W) complex64, is timed with scipy.fft (all cores) and with
ptychograph's FFT, before and after the programs.

Usage::

    .venv/bin/python benchmarks/bench_peers.py [--modes 1 3 5] [--iterations 20]
        [--frames 512] [--size 128] [--ptychi-python /tmp/ptychi/bin/python] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.fft

sys.path.insert(0, str(Path(__file__).resolve().parent))

import plain_dm  # noqa: E402
from bench_iteration import command_line, cpu_model  # noqa: E402
from results_md import write_section  # noqa: E402

from ptychograph import backend  # noqa: E402
from ptychograph.config import ReconstructionConfig, parse_config  # noqa: E402
from ptychograph.config_cluster import ClusterConfig  # noqa: E402
from ptychograph.engine import reconstruct, reconstruct_in_process  # noqa: E402
from ptychograph.io.cxi import write_cxi  # noqa: E402
from ptychograph.problem import prepare  # noqa: E402
from ptychograph.simulate import SimulationConfig, simulate  # noqa: E402

SECTION = "## CPU: ptychograph beside Pty-Chi and the plain NumPy DM (issue 15)"
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
RUNNER = Path(__file__).resolve().parent / "ptychi_dm_runner.py"
#: The driver's first sync point with default settings (``cluster.sync_every``).
SYNC = ClusterConfig().sync_every


@dataclass(frozen=True)
class Run:
    """One program's run: seconds and model error per iteration."""

    program: str
    seconds: list[float]
    errors: list[float]

    @property
    def per_iteration(self) -> float:
        """Mean s / iteration after the driver's first sync point (iteration ``SYNC``; from the
        third when the run is shorter than ``SYNC`` + 3).

        ptychograph's driver reports iterations in bursts: it stays ``lookahead`` (2)
        iterations ahead of the one it reports, so in-process, where each iteration is
        computed as it is submitted, a report carries the time of an iteration two later,
        and at a sync point the last reports carry none. A mean from the third iteration on
        then leaves out two iterations' time in-process (about 11 % of 20 iterations) but not
        through Dask, whose tasks run behind the reports. Between two sync points (and the
        end, also one) every iteration's time is reported, on either path."""
        start = SYNC if len(self.seconds) >= SYNC + 3 else 2
        return float(np.mean(self.seconds[start:] if len(self.seconds) > 4 else self.seconds))

    @property
    def final_error(self) -> float:
        return self.errors[-1]

    @property
    def time_to_error(self) -> float:
        """Summed seconds until the error is within 10 % of the final one."""
        return self.time_to(1.1 * self.final_error)

    def time_to(self, goal: float) -> float:
        """Summed seconds until the error is at most ``goal`` (inf if never)."""
        reached = next((i for i, e in enumerate(self.errors) if e <= goal), None)
        return float("inf") if reached is None else float(np.sum(self.seconds[: reached + 1]))


def scene(args: argparse.Namespace, modes: int, folder: Path) -> tuple[dict, object]:
    """Simulate the scan (a fly scan, so that several probe modes have something to fit),
    write it as CXI and return the config of ptychograph's runs and the simulation."""
    sim = simulate(
        SimulationConfig(
            n_frames=args.frames, frame_size=args.size, fly_blur=2.0, photons=1e6, seed=0
        )
    )
    cxi = folder / "scan.cxi"
    write_cxi(cxi, sim.scan)
    config = {
        "data": {"path": str(cxi)},
        "reconstruction": {
            "iterations": args.iterations,
            "probe_modes": modes,
            "precision": "single",
        },
        "cluster": {"n_workers": 1},
        "output": {"path": str(folder / f"result-{modes}.zarr")},
    }
    return config, sim


def run_ptychograph(config: dict, cluster: bool, passes: int | None = None) -> Run:
    """ptychograph's run of ``config`` (``passes``: another ``overlap_passes``)."""
    name = "ptychograph, Dask (1 local worker)" if cluster else "ptychograph, in-process"
    if passes is not None:
        config = {**config, "reconstruction": {**config["reconstruction"]}}
        config["reconstruction"]["overlap_passes"] = passes
        name += f", overlap_passes {passes}"
    parsed = parse_config(config)
    if cluster:
        result = reconstruct(parsed, write=False)
    else:
        result = reconstruct_in_process(parsed)
    return Run(name, list(result.history.seconds), list(result.history.fourier_error))


def starting_point(config: dict, sim: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ptychograph's view origins and starting probe and object for this config."""
    problem = prepare(sim.scan, parse_config(config))  # type: ignore[attr-defined]
    state = problem.state
    return np.asarray(state.origins), np.asarray(state.probe), np.asarray(state.obj)


def run_plain(config: dict, sim: object, iterations: int) -> Run:
    """The plain NumPy DM with ptychograph's default DM parameters and starting point."""
    rec = parse_config(config).reconstruction
    origins, probe, obj = starting_point(config, sim)
    frames = sim.scan.frames  # type: ignore[attr-defined]
    amplitudes = np.sqrt(frames).astype(np.float32)
    psi = plain_dm.initial_exit_waves(probe, obj, origins)
    seconds, errors = [], []
    for _ in range(iterations):
        begin = time.perf_counter()
        probe, obj, error = plain_dm.dm_iteration(
            psi, amplitudes, origins, probe, obj, rec.beta, rec.regularisation,
            rec.overlap_passes, rec.noise_bound,
        )  # fmt: skip
        seconds.append(time.perf_counter() - begin)
        errors.append(float(error))
    return Run("plain NumPy DM", seconds, errors)


def run_ptychi(config: dict, sim: object, args: argparse.Namespace, folder: Path) -> Run | str:
    """Pty-Chi's DM in its own environment; a note instead when it cannot run."""
    python = Path(args.ptychi_python)
    if not python.exists():
        return f"Pty-Chi not run: {python} does not exist (pip install ptychi into a venv)"
    origins, probe, obj = starting_point(config, sim)
    scene_path, out = folder / "ptychi-scene.npz", folder / "ptychi.json"
    np.savez(
        scene_path,
        intensities=sim.scan.frames,  # type: ignore[attr-defined]
        origins=origins,
        probe=probe,
        obj=obj,
        iterations=args.iterations,
        threads=len(os.sched_getaffinity(0)),
        chunk=args.ptychi_chunk,
    )
    done = subprocess.run(
        [str(python), str(RUNNER), str(scene_path), str(out)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        return f"Pty-Chi failed: {done.stderr.strip().splitlines()[-1:]}"
    data = json.loads(out.read_text())
    return Run(f"Pty-Chi {data['version']} DM", data["seconds"], data["errors"])


def fft_floor(frames: int, modes: int, size: int, library: str) -> float:
    """Median of 3 timings of forward + inverse of (frames * modes, size, size) complex64."""
    waves = np.ones((frames * modes, size, size), np.complex64)
    times = []
    for _ in range(3):
        begin = time.perf_counter()
        if library == "scipy":
            workers = backend.fft_workers()
            spectrum = scipy.fft.fft2(waves, norm="ortho", workers=workers)
            scipy.fft.ifft2(spectrum, norm="ortho", workers=workers, overwrite_x=True)
        else:
            backend.ifft2(backend.fft2(waves), overwrite=True)
        times.append(time.perf_counter() - begin)
    return float(np.median(times))


def fft_library() -> str:
    fftw = backend.fftw_library()
    return f"FFTW (pyFFTW {fftw.__version__})" if fftw is not None else "scipy.fft"


def render(rows: list[str], notes: list[str], args: argparse.Namespace, wall: float) -> str:
    header = [
        SECTION,
        "",
        f"Command: `{command_line()}`  ",
        f"Date: {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}  ",
        f"Machine: nproc = {len(os.sched_getaffinity(0))}, CPU = {cpu_model()}; "
        f"1-minute load {os.getloadavg()[0]:.1f} at the end; whole run {wall:.0f} s  ",
        f"ptychograph's FFT: {fft_library()}, {backend.fft_workers()} thread(s)",
        "",
        f"Scan: ptychograph's simulated fly scan, {args.frames} frames of {args.size}^2, 1e6 "
        f"photons a frame, complex64, {args.iterations} iterations each. ptychograph: default "
        f"settings ({ReconstructionConfig().overlap_passes} overlap pass(es), batch 64, Fourier "
        "sub-pixel shifts on the 1/8 px grid, noise bound 1, probe "
        "updates from iteration 2, orthogonalised modes); the plain DM: the same parameters "
        "and starting point, probe updates from the first iteration; Pty-Chi: its DM (one "
        f"probe and object update per iteration, chunk length {args.ptychi_chunk}) from the "
        "same starting point. s / it: mean of iterations 11 on (after ptychograph's first sync "
        "point, where its bursts of reports have drained); time to error: summed "
        "iteration times until the Fourier error is within 10 % of that program's final one; "
        "time to common error: until 1.1 x the largest final error of that mode count (a "
        "level every program reaches); ratio: the program's s / it over ptychograph "
        "in-process's, in the same run; FFT pair floor ratio: ptychograph in-process's s / it "
        "over the floor.",
        "",
        "| modes | program | s / it | ratio | time to error (s) | time to common error (s) "
        "| final error |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    return "\n".join([*header, *rows, "", *notes, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=int, nargs="+", default=[1, 3, 5])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--ptychi-python", default="/tmp/ptychi/bin/python")
    parser.add_argument("--ptychi-chunk", type=int, default=64)
    parser.add_argument(
        "--passes", type=int, nargs="*", default=[], help="also ptychograph with these passes"
    )
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    begin = time.perf_counter()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for modes in args.modes:
            folder = Path(tmp) / f"modes-{modes}"
            folder.mkdir()
            config, sim = scene(args, modes, folder)
            floors = [fft_floor(args.frames, modes, args.size, lib) for lib in ("scipy", "own")]
            runs: list[Run | str] = [
                run_ptychograph(config, cluster=False),
                run_ptychograph(config, cluster=True),
                run_plain(config, sim, args.iterations),
                run_ptychi(config, sim, args, folder),
            ]
            runs += [run_ptychograph(config, False, passes) for passes in args.passes]
            after = [fft_floor(args.frames, modes, args.size, lib) for lib in ("scipy", "own")]
            floors = [float(np.median([a, b])) for a, b in zip(floors, after, strict=True)]
            base = next(r for r in runs if isinstance(r, Run)).per_iteration
            common = 1.1 * max(r.final_error for r in runs if isinstance(r, Run))
            for run in runs:
                if isinstance(run, str):
                    notes.append(f"{modes} mode(s): {run}")
                    continue
                rows.append(
                    f"| {modes} | {run.program} | {run.per_iteration:.3f} | "
                    f"{run.per_iteration / base:.2f} | {run.time_to_error:.1f} | "
                    f"{run.time_to(common):.1f} | {run.final_error:.2e} |"
                )
                print(rows[-1], flush=True)
            rows.append(
                f"| {modes} | FFT pair floor: scipy.fft / ptychograph's FFT | "
                f"{floors[0]:.3f} / {floors[1]:.3f} | {base / floors[0]:.2f}x / "
                f"{base / floors[1]:.2f}x | | | |"
            )
            print(rows[-1], flush=True)
    section = render(rows, notes, args, time.perf_counter() - begin)
    print(section)
    if not args.no_write:
        write_section(RESULTS, SECTION, section)
    return 0


if __name__ == "__main__":
    sys.exit(main())

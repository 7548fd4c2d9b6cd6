"""What the Dask path costs over the in-process one, per DM iteration (issue 15).

The same simulated scan as :mod:`bench_peers` is reconstructed with default settings by
``reconstruct_in_process`` and by ``reconstruct`` on a local cluster of one worker (frames
loaded by the worker from the Zarr store), alternately, ``--pairs`` times. Each run's s / it is
the mean of its iterations after the driver's first sync point (:attr:`bench_peers.Run.
per_iteration`, which says why); the overhead of a pair
is Dask's over in-process's, so that the machine's load, which drifts over minutes, weighs on
both alike.

Usage::

    .venv/bin/python benchmarks/speed_dask.py [--modes 3] [--iterations 20] [--pairs 3]
        [--no-write]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_iteration import command_line, cpu_model  # noqa: E402
from bench_peers import RESULTS, run_ptychograph, scene  # noqa: E402
from results_md import write_section  # noqa: E402

from ptychograph import backend  # noqa: E402

SECTION = "## CPU: the Dask path (1 local worker) against in-process, per iteration (issue 15)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", type=int, default=3)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--frames", type=int, default=512)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    begin = time.perf_counter()
    rows, ratios = [], []
    with tempfile.TemporaryDirectory() as tmp:
        config, _ = scene(args, args.modes, Path(tmp))
        for pair in range(1, args.pairs + 1):
            local = run_ptychograph(config, cluster=False).per_iteration
            dask = run_ptychograph(config, cluster=True).per_iteration
            ratios.append(dask / local)
            load = os.getloadavg()[0]
            rows.append(f"| {pair} | {local:.3f} | {dask:.3f} | {dask / local:.3f} | {load:.1f} |")
            print(rows[-1], flush=True)
    text = "\n".join(
        [
            SECTION,
            "",
            f"Command: `{command_line()}`  ",
            f"Machine: nproc = {len(os.sched_getaffinity(0))}, CPU = {cpu_model()}; whole run "
            f"{time.perf_counter() - begin:.0f} s; ptychograph's FFT: "
            f"{'FFTW' if backend.fftw_library() is not None else 'scipy.fft'}",
            "",
            f"{args.frames} frames of {args.size}^2, {args.modes} probe mode(s), complex64, "
            f"{args.iterations} iterations, default settings; in-process and Dask alternately. "
            "s / it: mean of the iterations after the first sync point (11 on).",
            "",
            "| pair | in-process s / it | Dask s / it | Dask / in-process | 1-min load after |",
            "|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"Median overhead of the Dask path: {100 * (float(np.median(ratios)) - 1):+.1f} % "
            f"(pairs: {', '.join(f'{100 * (r - 1):+.1f} %' for r in ratios)}).",
            "",
        ]
    )
    print(text)
    if not args.no_write:
        write_section(RESULTS, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

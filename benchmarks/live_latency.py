"""Latency of ``run --follow`` beside a simulated detector, and its error against an offline run.

A detector (:func:`ptychograph.live.simulate_live`) writes a simulated scan at ``--rate`` frames
per second while ``reconstruct`` follows it on a local cluster. Measured: when the first preview
appears (and how much of the scan was published then), the latency from the last frame (the
completion mark) to the written result, in seconds and in iterations, and the final Fourier
error against an offline run over the same frames with as many iterations after completion
(``follow.final_iterations`` DM + ``ml_iterations`` ML), started when the scan ended - the batch
way of working, whose latency is its whole run time. Results go to ``benchmarks/RESULTS.md``
under a section of their own.

Usage::

    .venv/bin/python benchmarks/live_latency.py            # 300 frames of 64 x 64 at 30 / s
    .venv/bin/python benchmarks/live_latency.py --frames 200 --rate 40 --final 20
"""

from __future__ import annotations

import argparse
import logging
import re
import shlex
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from distributed import Client, LocalCluster

sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_md import write_section  # noqa: E402

from ptychograph.config import parse_config  # noqa: E402
from ptychograph.engine import reconstruct  # noqa: E402
from ptychograph.io.live_mark import read_mark  # noqa: E402
from ptychograph.live import simulate_live  # noqa: E402
from ptychograph.simulate import SimulationConfig  # noqa: E402

HEADER = "## Live reconstruction: latency of run --follow (issue 13)"


class Watch(threading.Thread):
    """The time of the first preview and of the completion mark, and frames seen at the first."""

    def __init__(self, preview: Path, store: Path) -> None:
        super().__init__(daemon=True)
        self.preview, self.store = preview, store
        self.first_preview: tuple[float, int] | None = None
        self.complete: float | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            mark = read_mark(self.store) if self.store.exists() else None
            if self.first_preview is None and self.preview.exists():
                self.first_preview = (time.monotonic(), 0 if mark is None else mark.frames)
            if self.complete is None and mark is not None and mark.complete:
                self.complete = time.monotonic()
            time.sleep(0.01)


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def config(store: Path, out: Path, follow: bool, args: argparse.Namespace) -> Any:
    return parse_config(
        {
            "data": {"path": str(store), "follow": follow},
            "reconstruction": {"iterations": args.final, "ml_iterations": args.ml, "seed": 1},
            "output": {"path": str(out), "preview_every": args.check, "checkpoint_every": 0},
            "follow": {"final_iterations": args.final, "check_every": args.check},
            "cluster": {"n_workers": args.workers},
        }
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rate", type=float, default=30.0, help="frames per second")
    parser.add_argument("--chunk", type=int, default=20, help="frames per chunk")
    parser.add_argument("--final", type=int, default=30, help="DM iterations after the mark")
    parser.add_argument("--ml", type=int, default=10, help="ML iterations after those")
    parser.add_argument("--check", type=int, default=3, help="follow.check_every")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print, do not touch RESULTS.md")
    args = parser.parse_args()
    scan = SimulationConfig(n_frames=args.frames, frame_size=args.size, photons=1e6, seed=3)
    lines = Lines()
    logging.getLogger("ptychograph").addHandler(lines)
    logging.getLogger("ptychograph").setLevel(logging.INFO)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        folder = Path(tmp)
        store = folder / "live.zarr"
        watch = Watch(folder / "follow.preview.png", store)
        detector = threading.Thread(target=simulate_live, args=(scan, store, args.rate, args.chunk))
        began = time.monotonic()
        detector.start()
        watch.start()
        followed = reconstruct(config(store, folder / "follow.zarr", True, args), client=client)
        written = time.monotonic()
        detector.join()
        watch.stop.set()
        watch.join()
        offline_began = time.monotonic()
        offline = reconstruct(config(store, folder / "offline.zarr", False, args), client=client)
        offline_seconds = time.monotonic() - offline_began
    found = [re.search(r"at iteration (\d+)$", line) for line in lines.lines]
    complete_at = int(next(m.group(1) for m in found if m and "complete" in m.string))
    assert watch.complete is not None and watch.first_preview is not None
    latency = written - watch.complete
    after = len(followed.history) - complete_at
    ratio = followed.history.fourier_error[-1] / offline.history.fourier_error[-1]
    preview_at, preview_frames = watch.first_preview
    command = "python benchmarks/live_latency.py " + shlex.join(sys.argv[1:])
    section = "\n".join(
        [
            HEADER,
            "",
            f"Command: `{command.strip()}`. Simulated detector (`simulate_live`) writing "
            f"{args.frames} frames of {args.size} x {args.size} at {args.rate:g} frames/s in "
            f"chunks of {args.chunk}; `reconstruct` with `data.follow: true` on a local "
            f"cluster of {args.workers} worker processes (1 thread each), "
            f"`follow.check_every: {args.check}`, `follow.final_iterations: {args.final}`, "
            f"`ml_iterations: {args.ml}`, on the shared 2-core machine.",
            "",
            "| measure | value |",
            "|---|---:|",
            f"| scan duration (start to completion mark) | {watch.complete - began:.1f} s |",
            f"| first preview | {preview_at - began:.1f} s after the scan started, "
            f"{preview_frames} of {args.frames} frames published |",
            f"| iterations while the scan ran | {complete_at} |",
            f"| latency: completion mark -> result written | {latency:.1f} s, "
            f"{after} iterations ({args.final} DM + {args.ml} ML) |",
            f"| offline run started at the completion mark (batch way) | {offline_seconds:.1f} s, "
            f"{len(offline.history)} iterations |",
            f"| Fourier error, followed / offline | {followed.history.fourier_error[-1]:.4g} / "
            f"{offline.history.fourier_error[-1]:.4g} = **{ratio:.3f}** |",
        ]
    )
    print(section)
    if not args.no_write:
        write_section(Path(__file__).with_name("RESULTS.md"), HEADER, section)


if __name__ == "__main__":
    main()

"""Command line: ``ptychograph run | convert | info | simulate | plot | demo``.

Bad input of any kind ends with one line ``error: FIELD: PROBLEM`` on stderr and exit code 2,
without a traceback and without touching existing outputs; a run that diverges (NaN or Inf)
ends with ``error: reconstruction diverged at iteration K (...)`` and exit code 3, nothing
written and the last checkpoint kept.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

import numpy as np

from ptychograph.config import DataConfig
from ptychograph.errors import DIVERGED_EXIT, Diverged, InputError
from ptychograph.state import History

log = logging.getLogger("ptychograph")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        return int(args.func(args))
    except InputError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        return DIVERGED_EXIT
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message."""

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def _configure_logging() -> None:
    """ptychograph's own messages on stderr; Dask's start-up chatter only at WARNING, so that
    an error found after a cluster started is still the one line a user sees."""
    if not any(isinstance(h, _StderrHandler) for h in log.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    for name in ("distributed", "dask"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ptychograph", description=__doc__)
    sub = parser.add_subparsers(required=True, dest="command")
    run = sub.add_parser("run", help="reconstruct the scan described by a YAML config")
    run.add_argument("config", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="simulate a scan and write it as CXI (+ truth .npz)")
    sim.add_argument("output", type=Path, help="CXI file to write")
    sim.add_argument("--frames", type=int, default=400)
    sim.add_argument("--size", type=int, default=64, help="frame side in pixels")
    sim.add_argument("--scan", choices=["raster", "spiral"], default="spiral")
    sim.add_argument("--overlap", type=float, default=0.7)
    sim.add_argument("--photons", type=float, default=1e6, help="per frame; 0 = no noise")
    sim.add_argument("--fly-blur", type=float, default=0.0, help="motion per exposure (px)")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--overwrite", action="store_true")
    sim.set_defaults(func=cmd_simulate)

    conv = sub.add_parser("convert", help="write a scan as a chunked Zarr frames store")
    conv.add_argument("source", type=Path, help="CXI file (or a frames store to re-chunk)")
    conv.add_argument("target", type=Path, help="Zarr store to write (e.g. frames.zarr)")
    conv.add_argument("--chunk-frames", type=int, default=None, help="frames per chunk")
    conv.add_argument("--nonfinite", choices=["error", "drop"], default="error")
    conv.add_argument("--negative", choices=["error", "clip"], default="error")
    conv.add_argument("--overwrite", action="store_true")
    _geometry_options(conv)
    conv.set_defaults(func=cmd_convert)

    info = sub.add_parser("info", help="print what a scan file or frames store holds")
    info.add_argument("path", type=Path, help="CXI, HXN HDF5, .npz or frames .zarr")
    info.add_argument("--workers", type=int, default=1, help="for the memory estimate")
    info.add_argument("--probe-modes", type=int, default=1)
    info.add_argument("--object-modes", type=int, default=1)
    info.add_argument("--precision", choices=["single", "double"], default="single")
    _geometry_options(info)
    info.set_defaults(func=cmd_info)

    plot = sub.add_parser("plot", help="redraw the summary figure of a result store")
    plot.add_argument("result", type=Path, help="result .zarr")
    plot.add_argument("--out", type=Path, default=None, help="PNG (default: beside the store)")
    plot.set_defaults(func=cmd_plot)

    demo = sub.add_parser("demo", help="simulate a small fly scan and reconstruct it")
    demo.add_argument("--out", type=Path, default=Path("demo-output"))
    demo.add_argument("--iterations", type=int, default=150)
    demo.set_defaults(func=cmd_demo)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from ptychograph.config import load_config
    from ptychograph.engine import reconstruct

    config = load_config(args.config, args.set)
    start = time.perf_counter()
    result = reconstruct(
        config,
        progress=_progress(config.reconstruction.iterations),
        overwrite=args.overwrite,
        resume=args.resume,
    )
    shares = ", ".join(f"{100 * s:.1f} %" for s in _shares(result.state.probe))
    log.info(
        "done in %.1f s: fourier error %.3e, probe mode power %s; wrote %s",
        time.perf_counter() - start,
        result.history.fourier_error[-1],
        shares,
        config.output.path,
    )
    return 0


def _shares(probe: np.ndarray) -> np.ndarray:
    from ptychograph.modes import power_shares

    return power_shares(probe)


def _progress(total: int, stream: TextIO | None = None) -> Callable[[int, History], None]:
    """Progress reporting: a one-line bar on a terminal, plain log lines otherwise."""
    stream = stream if stream is not None else sys.stderr
    every = max(1, total // 20)
    start = time.perf_counter()
    tty = stream.isatty()

    def report(it: int, history: History) -> None:
        elapsed = time.perf_counter() - start
        per_it = elapsed / max(it, 1)
        eta = per_it * (total - it)
        error = history.fourier_error[-1]
        if tty:
            filled = int(30 * it / total)
            bar = "#" * filled + "." * (30 - filled)
            stream.write(
                f"\r[{bar}] {it}/{total}  error {error:.3e}  {per_it:.3f} s/it  ETA {eta:.0f} s"
            )
            if it == total:
                stream.write("\n")
            stream.flush()
        elif it == 1 or it % every == 0 or it == total:
            log.info(
                "iteration %d/%d  fourier error %.3e  %.3f s/it  ETA %.0f s",
                it,
                total,
                error,
                history.seconds[-1],
                eta,
            )

    return report


def _geometry_options(parser: argparse.ArgumentParser) -> None:
    """Geometry for NumPy inputs (or to override a file's), and the NumPy position unit."""
    parser.add_argument("--energy-ev", type=float, default=None)
    parser.add_argument("--distance-m", type=float, default=None)
    parser.add_argument("--detector-pixel-m", type=float, default=None)
    parser.add_argument("--positions-unit", choices=["m", "px"], default="m")


def _data_options(args: argparse.Namespace, path: Path) -> DataConfig:
    from ptychograph.config import parse_config

    geometry = {
        key: value
        for key in ("energy_ev", "distance_m", "detector_pixel_m")
        if (value := getattr(args, key)) is not None
    }
    raw = {"path": str(path), "geometry": geometry, "positions_unit": args.positions_unit}
    return parse_config({"data": raw}).data


def cmd_info(args: argparse.Namespace) -> int:
    from ptychograph.info import describe

    text = describe(
        args.path,
        _data_options(args, args.path),
        n_workers=args.workers,
        probe_modes=args.probe_modes,
        object_modes=args.object_modes,
        precision=args.precision,
    )
    print(text)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from ptychograph.io import convert_to_store, read_store_info

    notes = convert_to_store(
        args.source,
        args.target,
        chunk_frames=args.chunk_frames,
        overwrite=args.overwrite,
        nonfinite=args.nonfinite,
        negative=args.negative,
        data=_data_options(args, args.source),
    )
    for note in notes:
        log.warning("%s", note)
    info = read_store_info(args.target)
    log.info(
        "wrote %s: %d frames of %d x %d in chunks of %d frames",
        args.target,
        info.n_frames,
        *info.frame_shape,
        info.chunk_frames,
    )
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from ptychograph.plotting import summary_figure
    from ptychograph.results import figure_path, open_result

    if not args.result.exists():
        raise InputError("result", f"{args.result} does not exist")
    try:
        ds = open_result(args.result)
    except (OSError, ValueError, KeyError) as err:
        raise InputError("result", f"{args.result} is not a result store ({err})") from None
    missing = [v for v in ("object", "probe", "probe_mode_power", "fourier_error") if v not in ds]
    if missing:
        raise InputError("result", f"{args.result} lacks {', '.join(missing)}")
    out = args.out or figure_path(args.result)
    summary_figure(ds, out)
    log.info("wrote %s", out)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from ptychograph.simulate import SimulationConfig

    try:
        config = SimulationConfig(
            n_frames=args.frames,
            frame_size=args.size,
            scan=args.scan,
            overlap=args.overlap,
            photons=args.photons if args.photons > 0 else None,
            fly_blur=args.fly_blur,
            seed=args.seed,
        )
    except ValueError as err:
        raise InputError("simulate", str(err).splitlines()[-1].strip()) from None
    write_simulation(config, args.output, args.overwrite)
    return 0


def write_simulation(config, output: Path, overwrite: bool = False) -> Path:
    """Simulate and write ``output`` (CXI) plus ``<stem>-truth.npz``; returns the truth path."""
    from ptychograph.io.cxi import write_cxi
    from ptychograph.simulate import simulate

    truth_path = output.with_name(output.stem + "-truth.npz")
    for path in (output, truth_path):
        if path.exists() and not overwrite:
            raise InputError("output", f"{path} exists; pass --overwrite to replace it")
    sim = simulate(config)
    write_cxi(output, sim.scan)
    tmp = truth_path.with_name("." + truth_path.name + ".tmp.npz")
    np.savez(tmp, object=sim.obj, probe=sim.probe, view_origin=sim.origins)
    tmp.replace(truth_path)
    log.info(
        "wrote %s (%d frames of %d x %d) and %s",
        output,
        sim.scan.n_frames,
        config.frame_size,
        config.frame_size,
        truth_path,
    )
    return truth_path


DEMO_CONFIG = """\
# Written by `ptychograph demo`: a small simulated fly scan, three probe modes.
data:
  path: scan.cxi
reconstruction:
  iterations: {iterations}
  beta: 0.8
  probe_modes: 3
  object_modes: 1
  precision: single
  seed: 0
output:
  path: result.zarr
"""


def cmd_demo(args: argparse.Namespace) -> int:
    from ptychograph.config import load_config
    from ptychograph.engine import reconstruct
    from ptychograph.simulate import SimulationConfig

    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    sim_config = SimulationConfig(n_frames=300, frame_size=64, fly_blur=6.0, photons=1e6)
    write_simulation(sim_config, out / "scan.cxi", overwrite=True)
    config_path = out / "demo.yaml"
    config_path.write_text(DEMO_CONFIG.format(iterations=args.iterations))
    config = load_config(config_path)
    result = reconstruct(config, progress=_progress(args.iterations), overwrite=True)
    from ptychograph.plotting import truth_comparison

    truth = np.load(out / "scan-truth.npz")
    truth_comparison(result.state.obj, truth["object"], out / "comparison.png")
    log.info(
        "demo done: fourier error %.3e; see %s, %s and %s",
        result.history.fourier_error[-1],
        out / "result.zarr",
        out / "result.png",
        out / "comparison.png",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

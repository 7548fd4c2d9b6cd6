"""Command line: ``ptychograph run | convert | info | simulate | plot | export | demo``.

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
from pathlib import Path
from typing import TextIO

import numpy as np

from ptychograph.config import DataConfig
from ptychograph.demo import write_simulation
from ptychograph.errors import DIVERGED_EXIT, Diverged, InputError, as_input_error
from ptychograph.interrupts import quiet_interrupt
from ptychograph.progress import progress_reporter as _progress
from ptychograph.version import __version__

log = logging.getLogger("ptychograph")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    _configure_logging()
    try:
        with quiet_interrupt():
            return int(args.func(args))
    except (InputError, OSError) as err:  # OSError: a path the file system refuses
        print(f"error: {as_input_error(err)}", file=sys.stderr)
        return 2
    except Diverged as err:
        print(f"error: {err}", file=sys.stderr)
        return DIVERGED_EXIT
    except KeyboardInterrupt as err:
        kept = f"; {err}" if str(err) else ""  # the checkpoint a run keeps
        print(f"error: interrupted (Ctrl-C); no result written{kept}", file=sys.stderr)
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
    parser = argparse.ArgumentParser(
        prog="ptychograph",
        description=(__doc__ or "").replace("``", ""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"ptychograph {__version__}")
    sub = parser.add_subparsers(required=True, dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help="reconstruct the scan described by a YAML config")
    run.add_argument("config", type=Path, help="YAML config (see configs/ and the README)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config key, e.g. reconstruction.iterations=300 (repeatable)",
    )
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument(
        "--follow",
        action="store_true",
        help="follow a frames store still being written (data.follow: true)",
    )
    run.add_argument(
        "--resume", action="store_true", help="continue from the run's last checkpoint"
    )
    run.set_defaults(func=cmd_run)

    sim = sub.add_parser("simulate", help="simulate a scan and write it as CXI (+ truth .npz)")
    sim.add_argument("output", type=Path, help="CXI file to write (a .zarr store with --live)")
    sim.add_argument("--frames", type=int, default=400, help="number of exposures (default 400)")
    sim.add_argument("--size", type=int, default=64, help="frame side in pixels (default 64)")
    sim.add_argument(
        "--scan", choices=["raster", "spiral"], default="spiral", help="scan path (default spiral)"
    )
    sim.add_argument(
        "--overlap",
        type=float,
        default=0.7,
        help="linear overlap of neighbouring probe discs, a fraction of the probe diameter "
        "in [0, 1) (default 0.7)",
    )
    sim.add_argument(
        "--photons",
        type=float,
        default=1e6,
        help="mean photons per frame (default 1e6); 0 = no noise",
    )
    sim.add_argument(
        "--fly-blur",
        type=float,
        default=0.0,
        help="stage motion along x during one exposure, in object pixels (default 0)",
    )
    kinds = ("star-text", "texture")  # Siemens star and text, or random textures
    sim.add_argument("--phantom", choices=kinds, default=kinds[0], help="object (star-text)")
    sim.add_argument("--seed", type=int, default=0, help="random seed (same seed, same scan)")
    sim.add_argument("--overwrite", action="store_true", help="replace existing files")
    sim.add_argument("--live", action="store_true", help="write a frames store as a detector would")
    sim.add_argument("--rate", type=float, help="with --live: frames per second written")
    sim.add_argument("--chunk-frames", type=int, help="with --live: frames per chunk")
    sim.set_defaults(func=cmd_simulate)

    conv = sub.add_parser("convert", help="write a scan as a chunked Zarr frames store")
    conv.add_argument("source", type=Path, help="CXI file (or a frames store to re-chunk)")
    conv.add_argument("target", type=Path, help="Zarr store to write (e.g. frames.zarr)")
    conv.add_argument(
        "--chunk-frames", type=int, default=None, help="frames per chunk (default: ~32 MB)"
    )
    conv.add_argument(
        "--nonfinite",
        choices=["error", "drop"],
        default="error",
        help="frames with NaN/Inf: refuse (error) or drop them",
    )
    conv.add_argument(
        "--negative",
        choices=["error", "clip"],
        default="error",
        help="negative counts: refuse (error) or clip them to zero",
    )
    conv.add_argument("--overwrite", action="store_true", help="replace an existing store")
    _geometry_options(conv)
    conv.set_defaults(func=cmd_convert)

    info = sub.add_parser("info", help="print what a scan file or frames store holds")
    info.add_argument("path", type=Path, help="CXI, HXN HDF5, .npz or frames .zarr")
    info.add_argument("--workers", type=int, default=1, help="for the memory estimate")
    info.add_argument("--probe-modes", type=int, default=1, help="for the memory estimate")
    info.add_argument("--object-modes", type=int, default=1, help="for the memory estimate")
    info.add_argument(
        "--precision",
        choices=["single", "double"],
        default="single",
        help="complex64 (single) or complex128 (double), for the memory estimate",
    )
    _geometry_options(info)
    info.set_defaults(func=cmd_info)

    plot = sub.add_parser("plot", help="redraw the summary figure of a result store")
    plot.add_argument("result", type=Path, help="result .zarr")
    plot.add_argument("--out", type=Path, default=None, help="PNG (default: beside the store)")
    plot.add_argument(
        "--remove-phase-ramp",
        action="store_true",
        help="remove a linear phase ramp from the object for display (the store is unchanged)",
    )
    plot.set_defaults(func=cmd_plot)

    export = sub.add_parser("export", help="write a result store as CXI (HDF5) for other tools")
    export.add_argument("result", type=Path, help="result .zarr")
    export.add_argument("target", type=Path, help="CXI file to write, e.g. result.cxi")
    export.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export (never another file)"
    )
    export.set_defaults(func=cmd_export)

    demo = sub.add_parser("demo", help="simulate a small fly scan and reconstruct it")
    demo.add_argument(
        "--out", type=Path, default=Path("demo-output"), help="folder for every demo file"
    )
    demo.add_argument(
        "--iterations", type=int, default=150, help="DM iterations, at least 1 (default 150)"
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def cmd_run(args: argparse.Namespace) -> int:
    from ptychograph.config import load_config
    from ptychograph.engine import reconstruct

    config = load_config(args.config, [*args.set, *(["data.follow=true"] if args.follow else [])])
    start = time.perf_counter()
    total = None if config.data.follow else config.reconstruction.total_iterations
    result = reconstruct(
        config,
        progress=_progress(total),
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


def _geometry_options(parser: argparse.ArgumentParser) -> None:
    """Geometry for NumPy inputs (or to override a file's), and the NumPy position unit."""
    parser.add_argument("--energy-ev", type=float, default=None, help="photon energy in eV")
    parser.add_argument(
        "--distance-m", type=float, default=None, help="sample-detector distance in m"
    )
    parser.add_argument(
        "--detector-pixel-m", type=float, default=None, help="detector pixel size in m"
    )
    parser.add_argument(
        "--positions-unit",
        choices=["m", "px"],
        default="m",
        help="unit of a NumPy file's positions: metres or object pixels",
    )


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
    from ptychograph.paths import check_folder, check_replaceable
    from ptychograph.plotting import summary_figure
    from ptychograph.results import figure_path, open_result

    if not args.result.exists():
        raise InputError("result", f"{args.result} does not exist")
    try:
        ds = open_result(args.result)
    except (OSError, ValueError, KeyError) as err:
        raise InputError("result", f"{args.result} is not a result store ({err})") from None
    needed = ("object", "probe", "probe_mode_power", "fourier_error", "view_origin")
    missing = [v for v in needed if v not in ds]
    if missing:
        raise InputError("result", f"{args.result} lacks {', '.join(missing)}")
    out = args.out or figure_path(args.result)
    if out.suffix.lower() != ".png":
        raise InputError("--out", f"must end in .png, got {out.name!r}")
    check_folder(out, "--out")
    check_replaceable(out, "figure", True, "--out")  # redraws a figure, never another file
    try:
        summary_figure(ds, out, remove_ramp=args.remove_phase_ramp)
    except OSError as err:
        raise InputError("--out", f"could not write {out} ({err.strerror or err})") from None
    log.info("wrote %s", out)
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from ptychograph.simulate import SimulationConfig

    try:
        config = SimulationConfig(
            n_frames=args.frames,
            frame_size=args.size,
            scan=args.scan,
            overlap=args.overlap,
            photons=None if args.photons == 0 else args.photons,
            fly_blur=args.fly_blur,
            phantom=args.phantom,
            seed=args.seed,
        )
    except ValidationError as err:
        first = err.errors()[0]  # the option's name, not the model's field (n_frames...)
        name = {"n_frames": "frames", "frame_size": "size"}.get(*[str(first["loc"][0])] * 2)
        problem = f"{first['msg']} (got {first['input']})"
        raise InputError(f"--{name.replace('_', '-')}", problem) from None
    if args.live:
        from ptychograph.live import simulate_live

        simulate_live(config, args.output, args.rate, args.chunk_frames, args.overwrite)
        return 0
    for option, value in (("--rate", args.rate), ("--chunk-frames", args.chunk_frames)):
        if value is not None:
            raise InputError(option, "only with --live")
    write_simulation(config, args.output, args.overwrite)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from ptychograph.export import export_cxi

    export_cxi(args.result, args.target, overwrite=args.overwrite)
    log.info("wrote %s", args.target)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ptychograph.demo import run_demo

    total = max(args.iterations, 1) + args.iterations // 3  # DM, then a third as many ML
    run_demo(args.out, args.iterations, progress=_progress(total))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

"""Science checks of issue 10, measured and printed as Markdown for benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/science.py [--quick]

1. ML refinement: a noisy simulated scan (200 x 64^2, 1e5 photons per frame): DM alone against
   DM + ML, model error R against the truth's own R, object error against the truth (global
   phase, scale and shift removed), single and double precision, 1 and 3 probe modes.
2. Position correction, simulated: positions in the file off by 2 px RMS; corrected positions
   against the truth (a global shift removed) and R against a run from the true positions;
   then the same scan corrected from five draws of the errors and from the true positions
   (``draws``; ``draws-texture``: the same with a textured object).
3. Position correction, measured: the Siemens star (tests/data, Velociprobe at the APS) with
   its positions perturbed by 2 px RMS: R with and without correction, and from the given
   positions.
4. Flux-normalised frames: the same scan in counts and divided by a flux varying +-5 % per
   frame: final R of each.
"""

from __future__ import annotations

import argparse
import bz2
import io
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from ptychograph.config import parse_config
from ptychograph.config_reconstruction import ML_WITH_POSITIONS
from ptychograph.engine import reconstruct_in_process
from ptychograph.io.cxi import write_cxi
from ptychograph.metrics import illumination, relative_error
from ptychograph.scan import HC_EV_M, Geometry, Scan
from ptychograph.simulate import SimulationConfig, simulate
from ptychograph.views import make_chunk, model_error

STAR = Path(__file__).resolve().parents[1] / "tests" / "data" / "siemens-star-small.npz.bz2"


def run(path: Path, **rec: object):  # type: ignore[no-untyped-def]
    config = parse_config(
        {"data": {"path": str(path)}, "reconstruction": rec, "output": {"path": "unused.zarr"}}
    )
    start = time.perf_counter()
    result = reconstruct_in_process(config)
    return result, time.perf_counter() - start


def final_r(result) -> float:  # type: ignore[no-untyped-def]
    """The model error of the returned estimates (or the last iterate's)."""
    values = [v for k, v in result.model_error.items() if not k.startswith("dm_")]
    return min(values) if values else float(result.history.fourier_error[-1])


def rms(origins: np.ndarray, truth: np.ndarray) -> float:
    diff = origins - truth
    diff -= diff.mean(axis=0)
    return float(np.sqrt((diff**2).sum(axis=1).mean()))


def ml_section(folder: Path, iterations: int, ml: int) -> list[str]:
    sim = simulate(SimulationConfig(n_frames=200, frame_size=64, photons=1e5, seed=3))
    path = folder / "noisy.cxi"
    write_cxi(path, sim.scan)
    amplitudes = np.sqrt(sim.scan.frames.astype(np.float64))
    truth = make_chunk(amplitudes, None, sim.origins, sim.probe, sim.obj.astype(complex))
    truth_r = model_error(truth, sim.probe, sim.obj.astype(complex)).value
    weight = illumination(sim.probe, sim.origins, sim.obj.shape[1:])
    lit = (weight > 0.3 * weight.max()).astype(float)
    lines = [
        f"truth's own R = {truth_r:.4g}",
        "",
        "| precision, modes | run | R (last iteration) | R / truth's R | object error | s |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for precision, modes in (("single", 1), ("double", 3)):
        for n_ml in (0, ml):
            result, seconds = run(
                path,
                iterations=iterations,
                ml_iterations=n_ml,
                probe_modes=modes,
                precision=precision,
            )
            r = float(result.history.fourier_error[-1])
            err = relative_error(result.state.obj[0], sim.obj[0], lit)
            name = f"DM {iterations}" + (f" + ML {n_ml}" if n_ml else "")
            lines.append(
                f"| {precision}, {modes} | {name} | {r:.4g} | {r / truth_r:.3f} | {err:.4f} "
                f"| {seconds:.1f} |"
            )
    return lines


def perturb(scan: Scan, sigma_px: float, pixel: np.ndarray, seed: int) -> tuple[Scan, float]:
    errors = np.random.default_rng(seed).normal(0, sigma_px, scan.positions.shape)
    return replace(scan, positions=scan.positions + errors * pixel), float(np.abs(errors).max())


def positions_section(folder: Path, iterations: int, ml: int) -> list[str]:
    """True, perturbed and corrected positions; every run refines ``ml`` ML iterations after
    DM (the default with position correction), so the R compare like for like."""
    sim = simulate(SimulationConfig(n_frames=200, frame_size=64, photons=1e6, seed=3))
    pixel = np.asarray(sim.scan.geometry.object_pixel)
    bad, worst = perturb(sim.scan, 2.0, pixel, 7)
    write_cxi(folder / "good.cxi", sim.scan)
    write_cxi(folder / "bad.cxi", bad)
    true, _ = run(folder / "good.cxi", iterations=iterations, ml_iterations=ml)
    plain, _ = run(folder / "bad.cxi", iterations=iterations, ml_iterations=ml)
    fixed, seconds = run(
        folder / "bad.cxi", iterations=iterations, ml_iterations=ml, position_correction=True
    )
    return [
        f"simulated, 200 x 64^2, 1e6 photons, {iterations} DM + {ml} ML iterations; errors 2 px "
        f"RMS per axis (worst {worst:.1f} px)",
        "",
        "| run | position error (px RMS, shift removed) | R |",
        "| --- | ---: | ---: |",
        f"| true positions | 0 | {final_r(true):.4g} |",
        f"| perturbed, no correction | {rms(plain.problem.origins, sim.origins):.3f} "
        f"| {final_r(plain):.4g} |",
        f"| perturbed, corrected ({seconds:.1f} s) | {rms(fixed.state.origins, sim.origins):.3f} "
        f"| {final_r(fixed):.4g} |",
    ]


def draws_section(
    folder: Path,
    iterations: int,
    ml: int,
    seeds: tuple[int, ...] = (7, 8, 9, 10, 11),
    phantom: str = "star-text",
) -> list[str]:
    """The scan of :func:`positions_section` (or the same with a textured object) corrected
    from several draws of its errors, and from the true positions (no error: how far the
    correction moves views that need no move)."""
    sim = simulate(
        SimulationConfig(n_frames=200, frame_size=64, photons=1e6, seed=3, phantom=phantom)
    )
    pixel = np.asarray(sim.scan.geometry.object_pixel)
    rows = []
    for seed, sigma in [(seeds[0], 0.0)] + [(seed, 2.0) for seed in seeds]:
        bad, worst = perturb(sim.scan, sigma, pixel, seed)
        name = folder / f"{phantom}-{seed}-{sigma}.cxi"
        write_cxi(name, bad)
        fixed, _ = run(name, iterations=iterations, ml_iterations=ml, position_correction=True)
        diff = fixed.state.origins - sim.origins
        per_view = np.sqrt(((diff - diff.mean(axis=0)) ** 2).sum(axis=1))
        label = "none (true positions)" if sigma == 0 else str(seed)
        rows.append(
            f"| {label} | {worst:.1f} | {rms(fixed.state.origins, sim.origins):.3f} "
            f"| {np.median(per_view):.3f} | {per_view.max():.2f} | {final_r(fixed):.4g} |"
        )
    return [
        f"simulated ({phantom} object), 200 x 64^2, 1e6 photons, {iterations} DM + {ml} ML "
        "iterations; errors 2 px RMS per axis, drawn with each seed",
        "",
        "| errors' seed | worst in the file (px) | corrected: RMS (px) | median | worst | R |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
        *rows,
    ]


def star_scan() -> Scan:
    with bz2.open(STAR) as handle:
        data = np.load(io.BytesIO(handle.read()))
    frames = np.fft.fftshift(data["data"][0], axes=(-2, -1)).astype(np.float32)
    positions_px = data["scan"][0].astype(np.float64)
    probe = np.asarray(data["probe"]).reshape(-1, *frames.shape[1:]).astype(np.complex64)
    wavelength = HC_EV_M / 10_000.0
    distance = 1e-8 * frames.shape[1] * 75e-6 / wavelength
    geometry = Geometry(wavelength, distance, (75e-6, 75e-6), frames.shape[1:])
    return Scan(frames, positions_px * 1e-8, geometry, None, probe)


def star_section(folder: Path, iterations: int, ml: int) -> list[str]:
    scan = star_scan()
    bad, worst = perturb(scan, 2.0, np.asarray([1e-8, 1e-8]), 11)
    write_cxi(folder / "star.cxi", scan)
    write_cxi(folder / "star-bad.cxi", bad)
    rows = []
    for name, path, correct in (
        ("given positions", "star.cxi", False),
        ("perturbed, no correction", "star-bad.cxi", False),
        ("perturbed, corrected", "star-bad.cxi", True),
        ("given positions, corrected", "star.cxi", True),
    ):
        result, seconds = run(
            folder / path,
            iterations=iterations,
            ml_iterations=ml,
            position_correction=correct,
            probe_modes=1,
        )
        moved = rms(result.state.origins, result.problem.origins)
        rows.append(f"| {name} | {final_r(result):.4g} | {moved:.2f} | {seconds:.0f} |")
    return [
        f"Siemens star (516 x 128^2, measured), {iterations} DM + {ml} ML iterations; perturbed "
        f"by 2 px RMS per axis (worst {worst:.1f} px)",
        "",
        "| run | R | moved (px RMS) | s |",
        "| --- | ---: | ---: | ---: |",
        *rows,
    ]


def flux_section(folder: Path, iterations: int) -> list[str]:
    sim = simulate(SimulationConfig(n_frames=100, frame_size=64, photons=1e5, seed=3))
    flux = np.random.default_rng(1).uniform(0.95e4, 1.05e4, (100, 1, 1))
    write_cxi(folder / "counts.cxi", sim.scan)
    normalised = replace(sim.scan, frames=(sim.scan.frames / flux).astype(np.float32))
    write_cxi(folder / "norm.cxi", normalised)
    counts, _ = run(folder / "counts.cxi", iterations=iterations)
    norm, _ = run(folder / "norm.cxi", iterations=iterations)
    return [
        f"100 x 64^2, 1e5 photons, {iterations} DM iterations: R {final_r(counts):.4g} (counts), "
        f"{final_r(norm):.4g} (divided by a flux of 1e4 +- 5 % per frame)",
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke run)")
    parser.add_argument(
        "--only",
        choices=("ml", "positions", "draws", "draws-texture", "star", "flux"),
        help="run one section only",
    )
    args = parser.parse_args()
    scale = 0.1 if args.quick else 1.0
    ml = int(ML_WITH_POSITIONS * scale)
    sections: dict[str, tuple[str, Callable[[Path], list[str]]]] = {
        "ml": (
            "ML refinement",
            lambda f: ml_section(f, int(60 * scale) or 2, int(30 * scale) or 2),
        ),
        "positions": (
            "Position correction, simulated",
            lambda f: positions_section(f, int(200 * scale), ml),
        ),
        "draws": (
            "Position correction, five draws of the errors",
            lambda f: draws_section(f, int(200 * scale), ml),
        ),
        "draws-texture": (
            "Position correction, five draws of the errors, textured object",
            lambda f: draws_section(f, int(200 * scale), ml, phantom="texture"),
        ),
        "star": (
            "Position correction, Siemens star",
            lambda f: star_section(f, int(100 * scale), ml),
        ),
        "flux": ("Flux-normalised frames", lambda f: flux_section(f, int(40 * scale))),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for key, (title, section) in sections.items():
            if args.only not in (None, key):
                continue
            lines = section(Path(tmp))
            print(f"#### {title}\n")
            print("\n".join(lines) + "\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

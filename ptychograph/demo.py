"""``ptychograph demo``: simulate a small fly scan, reconstruct it, compare with the truth.

:func:`write_simulation` is also what ``ptychograph simulate`` and the notebooks use.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.errors import InputError
from ptychograph.paths import Kind, check_folder, check_replaceable, clean_leftovers

log = logging.getLogger("ptychograph")
#: What the demo writes into its folder, and what each must be to be replaced.
DEMO_FILES: dict[str, Kind] = {
    "scan.cxi": "scan",
    "scan-truth.npz": "truth",
    "demo.yaml": "config",
    "result.zarr": "result",
    "result.png": "figure",
    "comparison.png": "figure",
}

DEMO_CONFIG = """\
# Written by `ptychograph demo`: a small simulated fly scan, three probe modes.
data:
  path: scan.cxi
reconstruction:
  iterations: {iterations}
  ml_iterations: {ml_iterations}
  beta: 0.8
  probe_modes: 3
  object_modes: 1
  precision: single
  seed: 0
output:
  path: result.zarr
"""


def write_simulation(config: Any, output: Path, overwrite: bool = False) -> Path:
    """Simulate and write ``output`` (CXI) plus ``<stem>-truth.npz``; returns the truth path.

    config : a :class:`ptychograph.simulate.SimulationConfig`."""
    from ptychograph.io.cxi import write_cxi
    from ptychograph.simulate import simulate

    truth_path = output.with_name(output.stem + "-truth.npz")
    check_folder(output, "output")
    check_replaceable(output, "scan", overwrite, "output")  # never a measured scan or a folder
    check_replaceable(truth_path, "truth", overwrite, "output")
    clean_leftovers([output], {output: "scan"}, "output")  # of a killed simulate
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


def run_demo(out: Path, iterations: int, progress: Any = None, frames: int = 300) -> Path:
    """Simulate ``frames`` fly-scan frames into ``out``, reconstruct them with ``iterations``
    DM iterations (then a third as many ML iterations) and write result.zarr, result.png and
    comparison.png; returns the
    comparison figure's path. ``iterations`` < 1 is refused before anything is written."""
    from ptychograph.backend import to_host
    from ptychograph.comparison import truth_comparison
    from ptychograph.config import load_config
    from ptychograph.engine import reconstruct
    from ptychograph.simulate import SimulationConfig

    if iterations < 1:
        raise InputError("demo --iterations", f"must be at least 1, got {iterations}")
    if out.exists() and not out.is_dir():
        raise InputError("demo --out", f"{out} is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    for name, kind in DEMO_FILES.items():  # replaces only what an earlier demo wrote
        check_replaceable(out / name, kind, True, "demo --out")
    sim_config = SimulationConfig(n_frames=frames, frame_size=64, fly_blur=6.0, photons=1e6)
    write_simulation(sim_config, out / "scan.cxi", overwrite=True)
    config_path = out / "demo.yaml"
    config_path.write_text(DEMO_CONFIG.format(iterations=iterations, ml_iterations=iterations // 3))
    config = load_config(config_path)
    result = reconstruct(config, progress=progress, overwrite=True)
    truth = np.load(out / "scan-truth.npz")
    state = result.state
    origins = result.problem.origins if state.origins is None else state.origins
    figure = out / "comparison.png"
    pixel = result.problem.summary.geometry.object_pixel
    obj, probe = to_host(state.obj), to_host(state.probe)
    comparison = truth_comparison(obj, truth["object"], figure, pixel, probe, origins)
    log.info(
        "demo done: fourier error %.3e, object error %.1f %% after removing phase, scale "
        "and shift; see %s, %s and %s",
        result.history.fourier_error[-1],
        100 * comparison.error,
        out / "result.zarr",
        out / "result.png",
        figure,
    )
    return figure

"""Run Pty-Chi's Difference Map on a scene written by ``bench_peers.py`` (a separate process).

Pty-Chi (the ``ptychi`` package, with PyTorch) is not a dependency of ptychograph: it is run from a
throwaway environment, e.g. ``python -m venv /tmp/ptychi && /tmp/ptychi/bin/pip install ptychi``,
with this script as ``/tmp/ptychi/bin/python benchmarks/ptychi_dm_runner.py SCENE.npz OUT.json``.

The scene: ``intensities`` (N, H, W) centred detector frames, ``origins`` (N, 2) top-left view
corners in object pixels (row, column), ``probe`` (M_P, H, W) and ``obj`` (1, Y, X) starting
estimates, ``iterations``. Pty-Chi's positions are patch centres (origin + H / 2), sub-pixel
shifts by Fourier interpolation, on the CPU with ``threads`` torch threads.
Each epoch is timed alone; after it (untimed) the model's Fourier error
sum (sqrt(I) - sqrt(I_model))^2 / sum I is computed from Pty-Chi's own forward model, so that no
convention of positions or FFT shifts has to be matched between the programs.
Writes JSON: {"seconds": [...], "errors": [...], "version": ...}.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import ptychi
import ptychi.api as api
import torch
from ptychi.api.task import PtychographyTask


def model_error(task: PtychographyTask, intensities: np.ndarray, batch: int = 64) -> float:
    """Fourier error of the current estimates over every view."""
    forward = task.reconstructor.forward_model
    n_views = intensities.shape[0]
    residual = total = 0.0
    with torch.no_grad():
        for start in range(0, n_views, batch):
            idx = torch.arange(start, min(start + batch, n_views))
            predicted = forward.forward(idx).detach().cpu().numpy().astype(np.float64)
            measured = task.reconstructor.dataset.patterns[idx].cpu().numpy().astype(np.float64)
            residual += float(np.sum((np.sqrt(measured) - np.sqrt(predicted)) ** 2))
            total += float(np.sum(measured))
    return residual / total


def main(scene_path: str, out_path: str) -> int:
    scene = np.load(scene_path)
    threads = int(scene["threads"])
    torch.set_num_threads(threads)
    intensities = scene["intensities"].astype(np.float32)
    origins = scene["origins"]
    probe = scene["probe"]
    size = probe.shape[-1]
    options = api.DMOptions()
    options.data_options.data = intensities
    options.data_options.fft_shift = True
    options.object_options.initial_guess = torch.tensor(scene["obj"].astype(np.complex64))
    options.object_options.pixel_size_m = 1.0
    options.object_options.determine_position_origin_coords_by = (
        api.enums.ObjectPosOriginCoordsMethods.POSITIONS  # the scan centred in the object
    )
    options.object_options.patch_interpolation_method = api.enums.PatchInterpolationMethods.FOURIER
    options.probe_options.initial_guess = torch.tensor(probe[None].astype(np.complex64))
    options.probe_options.optimization_plan.start = 0
    options.probe_position_options.position_y_px = origins[:, 0] + size / 2
    options.probe_position_options.position_x_px = origins[:, 1] + size / 2
    options.probe_position_options.optimizable = False
    options.reconstructor_options.num_epochs = int(scene["iterations"])
    options.reconstructor_options.chunk_length = int(scene["chunk"])
    options.reconstructor_options.default_device = api.enums.Devices.CPU
    options.reconstructor_options.displayed_loss_function = None
    seconds, errors = [], []
    with PtychographyTask(options) as task:
        for _ in range(int(scene["iterations"])):
            begin = time.perf_counter()
            task.run(1)
            seconds.append(time.perf_counter() - begin)
            errors.append(model_error(task, intensities))
            print(
                f"ptychi epoch {len(seconds)}: {seconds[-1]:.3f} s, error {errors[-1]:.3e}",
                flush=True,
            )
    version = getattr(ptychi, "__version__", "unknown")
    with open(out_path, "w") as handle:
        json.dump({"seconds": seconds, "errors": errors, "version": version}, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))

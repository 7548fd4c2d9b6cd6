"""The fused CUDA kernels of the DM step: their sources, compiled and launched on demand.

* The sources, ``ptychograph/gpu/cuda/*.cu``, are package data: a wheel installs them beside
  this module, where :func:`kernels_dir` finds them (kernels/README.md describes them).
  :func:`launch` compiles a file with NVRTC through ``cupy.RawModule`` on first use, once per
  file and device (both precisions are in every file: ``NAME_f32`` / ``NAME_f64``), with a
  ``#line`` directive so compiler messages name the real file and line.
* :mod:`ptychograph.gpu.kernels` - one CuPy wrapper per kernel.
* :mod:`ptychograph.gpu.ops` - :class:`~ptychograph.gpu.ops.CupyOps`, the kernels chained into
  the methods of :class:`ptychograph.ops.NumpyOps` (their NumPy reference).

CuPy is imported inside functions only, so every module here imports without a GPU; nothing here
is imported by ``import ptychograph`` (:func:`ptychograph.ops.select_ops` imports it for
``"cupy"``).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from ptychograph.backend import device_available

__all__ = ["device_available", "kernels_dir", "launch"]

#: Environment variable naming a folder that holds the ``.cu`` files (overrides the search).
KERNELS_ENV = "PTYCHOGRAPH_KERNELS_DIR"
#: Kernel -> the source file (in :func:`kernels_dir`) that defines it.
SOURCES = {
    "views_and_iterate": "exit_waves.cu",
    "exit_wave_update": "exit_waves.cu",
    "update_and_object_partials": "exit_waves.cu",
    "object_partials": "exit_waves.cu",
    "fourier_residuals": "fourier_modulus.cu",
    "modulus_constraint": "fourier_modulus.cu",
    "probe_terms": "probe_partials.cu",
    "sum_over_views": "probe_partials.cu",
    "object_power": "probe_partials.cu",
}
#: Suffix of each precision's entry point.
SUFFIXES = {np.dtype(np.complex64): "f32", np.dtype(np.complex128): "f64"}
COMPILE_OPTIONS = ("--std=c++17",)
BLOCK = 256  # threads per block; the reductions need a multiple of 32
MAX_GRID_Y = 65535  # the kernels stride over grid y, so larger batches still work


# ------------------------------------------------------------------------- loading the sources
def kernels_dir() -> Path:
    """The folder holding the ``.cu`` sources: ``$PTYCHOGRAPH_KERNELS_DIR`` if set, else
    ``ptychograph/gpu/cuda/``, package data that a wheel installs beside this module (and
    where a source checkout or editable install finds them too)."""
    env = os.environ.get(KERNELS_ENV)
    folder = Path(env) if env else Path(__file__).resolve().parent / "cuda"
    missing = sorted(name for name in set(SOURCES.values()) if not (folder / name).is_file())
    if missing:
        raise FileNotFoundError(
            f"CUDA kernel sources {', '.join(missing)} not found in {folder}; set {KERNELS_ENV}"
        )
    return folder


def kernel_source(path: Path) -> str:
    """The text of ``path`` with a ``#line`` directive, so NVRTC reports errors against it."""
    return f'#line 1 "{path.resolve().as_posix()}"\n' + path.read_text()


@functools.cache
def _module(file: str, device: int) -> Any:
    """The compiled ``cupy.RawModule`` of one source file, per device."""
    import cupy

    return cupy.RawModule(code=kernel_source(kernels_dir() / file), options=COMPILE_OPTIONS)


def get_kernel(name: str, dtype: Any) -> Any:
    """The ``cupy.RawKernel`` ``name`` for complex ``dtype`` on the current device."""
    suffix = SUFFIXES.get(np.dtype(dtype))
    if suffix is None:
        raise TypeError(f"kernels take complex64 or complex128 arrays, not {np.dtype(dtype)}")
    import cupy

    return _function(name, suffix, int(cupy.cuda.runtime.getDevice()))


@functools.cache
def _function(name: str, suffix: str, device: int) -> Any:
    return _module(SOURCES[name], device).get_function(f"{name}_{suffix}")


def launch_grid(n_pixels: int, rows: int) -> tuple[int, int]:
    """(grid x, grid y) of a launch: x blocks of :data:`BLOCK` threads cover ``n_pixels``, y
    covers ``rows`` up to :data:`MAX_GRID_Y` (the kernels stride over further rows)."""
    return (n_pixels + BLOCK - 1) // BLOCK, min(rows, MAX_GRID_Y)


def launch(name: str, dtype: Any, n_pixels: int, rows: int, args: tuple[Any, ...]) -> None:
    """Run ``name`` with grid x covering ``n_pixels`` and grid y over ``rows`` (strided)."""
    if n_pixels == 0 or rows == 0:
        return
    get_kernel(name, dtype)(launch_grid(n_pixels, rows), (BLOCK,), args)

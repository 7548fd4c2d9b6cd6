"""Array-module selection and batched FFTs for NumPy and CuPy.

Nothing here imports CuPy at import time. The array module always comes from the inputs
(:func:`get_array_module`), so every operator runs unchanged on host or device arrays, and
:func:`gpu_count` / :func:`device_available` answer whether a CUDA device is there at all.

The far-field propagator follows the detector convention (docs/design.md, "Conventions"): frames
have zero spatial frequency at the frame centre, so ``F = fftshift o fft2(norm="ortho")`` and
``F^-1 = ifft2(norm="ortho") o ifftshift``.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import numpy as np
import scipy.fft

Array = Any  # numpy.ndarray or cupy.ndarray
T = TypeVar("T")


def get_array_module(*arrays: Any) -> ModuleType:
    """Return ``cupy`` if any input is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def gpu_count() -> int:
    """Number of CUDA devices visible through CuPy (0 without CuPy or a device)."""
    if importlib.util.find_spec("cupy") is None:
        return 0
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - any CUDA/driver failure means no usable GPU
        return 0


def device_available() -> bool:
    """True when CuPy is installed and at least one CUDA device answers (a device check, not
    an import check: CuPy installed on a machine without a GPU gives False)."""
    return gpu_count() > 0


#: Per-thread override of :func:`fft_workers` (set inside batch threads, see
#: :func:`single_fft_worker`); a thread-local, so it never leaks between threads.
_THREAD = threading.local()


def single_fft_worker(func: Callable[[Any], T], arg: Any) -> T:
    """Call ``func(arg)`` with this thread's FFTs on one worker (the batch threads of
    :func:`ptychograph.views._in_threads` already use every core)."""
    _THREAD.workers = 1
    try:
        return func(arg)
    finally:
        _THREAD.workers = None


def to_host(array: Array) -> np.ndarray:
    """A NumPy copy of a CuPy array; NumPy arrays (and array-likes) pass through."""
    return array.get() if hasattr(array, "get") else np.asarray(array)


def fft_workers() -> int:
    """Threads for scipy.fft: ``PTYCHOGRAPH_FFT_WORKERS`` or the usable cores (1 inside a
    batch thread)."""
    override = getattr(_THREAD, "workers", None)
    if override:
        return int(override)
    env = os.environ.get("PTYCHOGRAPH_FFT_WORKERS")
    if env:
        return max(1, int(env))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def fft2c(x: Array) -> Array:
    """Forward far-field propagator F over the last two axes (unitary, centred output).

    x : (..., H, W) complex -> (..., H, W) complex, zero frequency at (H // 2, W // 2).
    """
    xp = get_array_module(x)
    if xp is np:
        out = scipy.fft.fft2(x, norm="ortho", workers=fft_workers(), overwrite_x=False)
        return np.fft.fftshift(out, axes=(-2, -1))
    return xp.fft.fftshift(xp.fft.fft2(x, norm="ortho"), axes=(-2, -1))


def ifft2c(x: Array) -> Array:
    """Inverse far-field propagator F^-1 = F^H over the last two axes (adjoint of fft2c).

    x : (..., H, W) complex with zero frequency at the centre -> (..., H, W) complex.
    """
    xp = get_array_module(x)
    if xp is np:
        x = np.fft.ifftshift(x, axes=(-2, -1))
        return scipy.fft.ifft2(x, norm="ortho", workers=fft_workers(), overwrite_x=True)
    return xp.fft.ifft2(xp.fft.ifftshift(x, axes=(-2, -1)), norm="ortho")


def fft2(x: Array, overwrite: bool = False) -> Array:
    """Plain unitary FFT over the last two axes (no shift), batched, threaded on NumPy.

    overwrite : ``x`` is a temporary the transform may reuse (saves an allocation).
    """
    xp = get_array_module(x)
    if xp is np:
        return scipy.fft.fft2(x, norm="ortho", workers=fft_workers(), overwrite_x=overwrite)
    return xp.fft.fft2(x, norm="ortho")


def ifft2(x: Array, overwrite: bool = False) -> Array:
    """Plain unitary inverse FFT over the last two axes (no shift); see :func:`fft2`."""
    xp = get_array_module(x)
    if xp is np:
        return scipy.fft.ifft2(x, norm="ortho", workers=fft_workers(), overwrite_x=overwrite)
    return xp.fft.ifft2(x, norm="ortho")


def real_dtype(complex_dtype: Any) -> np.dtype:
    """float32 for complex64, float64 for complex128."""
    return np.dtype(np.empty(0, dtype=complex_dtype).real.dtype)


def complex_dtype(precision: str) -> np.dtype:
    """``"single"`` -> complex64, ``"double"`` -> complex128."""
    if precision == "single":
        return np.dtype(np.complex64)
    if precision == "double":
        return np.dtype(np.complex128)
    raise ValueError(f"precision must be 'single' or 'double', not {precision!r}")

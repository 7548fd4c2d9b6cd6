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
    On NumPy the transform is FFTW's when pyFFTW is installed (:func:`fftw_library`), else
    scipy.fft's.
    """
    xp = get_array_module(x)
    if xp is np:
        if _fftw_usable(x):
            return _fftw_transform(x, False, overwrite)
        return scipy.fft.fft2(x, norm="ortho", workers=fft_workers(), overwrite_x=overwrite)
    return xp.fft.fft2(x, norm="ortho")


def ifft2(x: Array, overwrite: bool = False) -> Array:
    """Plain unitary inverse FFT over the last two axes (no shift); see :func:`fft2`."""
    xp = get_array_module(x)
    if xp is np:
        if _fftw_usable(x):
            return _fftw_transform(x, True, overwrite)
        return scipy.fft.ifft2(x, norm="ortho", workers=fft_workers(), overwrite_x=overwrite)
    return xp.fft.ifft2(x, norm="ortho")


def fftw_library() -> ModuleType | None:
    """pyFFTW, when it is installed and ``PTYCHOGRAPH_FFT`` is not ``scipy``; else None.

    FFTW transforms the batches of (H, W) complex64 frames of an iteration 2-4x faster than
    scipy.fft's pocketfft on one core (benchmarks/RESULTS.md). pyFFTW is the optional extra
    ``ptychograph[fftw]``: FFTW is GPL-licensed, so installing it is the user's choice.
    """
    if os.environ.get("PTYCHOGRAPH_FFT", "").strip().lower() == "scipy":
        return None
    if importlib.util.find_spec("pyfftw") is None:
        return None
    import pyfftw

    return pyfftw


def empty_aligned(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """np.empty, aligned for FFTW's SIMD plans when FFTW is used: arrays that go into an FFT
    should be made with it, or the transform first copies them (NumPy aligns to 16 bytes)."""
    fftw = fftw_library()
    if fftw is None:
        return np.empty(shape, dtype=dtype)
    return fftw.empty_aligned(shape, dtype=dtype)


def _fftw_usable(x: np.ndarray) -> bool:
    return x.ndim >= 2 and x.dtype in _FFTW_DTYPES and x.size > 0 and fftw_library() is not None


_FFTW_DTYPES = (np.dtype(np.complex64), np.dtype(np.complex128))


def _fftw_transform(x: np.ndarray, inverse: bool, overwrite: bool) -> np.ndarray:
    """Unitary 2-D FFT of the last two axes with a pooled FFTW plan.

    Plans are kept per (shape, dtype, direction, in place, threads) in a pool: a thread takes a
    free one (or plans a new one) and puts it back after the transform, because an FFTW plan
    must not run in two threads at once and the batch threads are new at every sweep. Planned
    with FFTW_ESTIMATE (which does not touch the planning arrays, so they cost no memory) on
    SIMD-aligned arrays: FFTW_UNALIGNED plans run 1.5-3x slower. So the transform runs in place
    on ``x`` when ``overwrite`` and ``x`` is aligned and C-contiguous, out of place into an
    aligned new array when ``x`` is aligned, and otherwise in place on an aligned copy; after
    the transform the plan is pointed back at its planning arrays, so that it keeps no batch
    alive.
    """
    pyfftw = fftw_library()
    assert pyfftw is not None
    aligned = x.flags.c_contiguous and x.ctypes.data % pyfftw.simd_alignment == 0
    if not aligned:
        copy = pyfftw.empty_aligned(x.shape, dtype=x.dtype)
        copy[...] = x
        x, overwrite = copy, True
    in_place = overwrite and x.flags.writeable
    workers = fft_workers()
    key = (x.shape, x.dtype.str, inverse, in_place, workers)
    with _FFTW_LOCK:
        free = _FFTW_PLANS.setdefault(key, [])
        entry = free.pop() if free else None
    if entry is None:
        source = pyfftw.empty_aligned(x.shape, dtype=x.dtype)
        target = source if in_place else pyfftw.empty_aligned(x.shape, dtype=x.dtype)
        direction = "FFTW_BACKWARD" if inverse else "FFTW_FORWARD"
        plan = pyfftw.FFTW(
            source,
            target,
            axes=(-2, -1),
            direction=direction,
            flags=("FFTW_ESTIMATE",),
            threads=workers,
        )
        entry = (plan, source, target)
    plan, source, target = entry
    out = x if in_place else pyfftw.empty_aligned(x.shape, dtype=x.dtype)
    try:
        plan(input_array=x, output_array=out, normalise_idft=False, ortho=True)
    finally:
        plan.update_arrays(source, target)
        with _FFTW_LOCK:
            _FFTW_PLANS[key].append(entry)
    return out


#: Free FFTW plans by (shape, dtype, inverse, in place, threads); see :func:`_fftw_transform`.
_FFTW_PLANS: dict[tuple[Any, ...], list[tuple[Any, Any, Any]]] = {}
_FFTW_LOCK = threading.Lock()


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

"""A CPU stand-in for CuPy's device arrays, for dry runs of the GPU path's host/device handling.

CuPy refuses to mix its arrays with NumPy arrays (``cupy_array + numpy_array`` raises
``TypeError``: no implicit host-device copies), so code that forgets to move an estimate to the
device, or a partial sum back, fails only on a GPU. :func:`install` makes the in-process run
behave that way on a CPU: the views a slot holds (:class:`ptychograph.resident.ResidentViews`,
``views.device`` and ``views.xp``) become :class:`DeviceArray` s, a NumPy subclass whose
operations raise ``TypeError`` when a host ``ndarray`` (not a scalar or 0-d array) meets a
device array, and whose results stay device arrays. The batch ops are the array-module-generic
reference :class:`ptychograph.ops.NumpyOps` (the CUDA kernels themselves need a GPU), and the
one CuPy-only call on their path, ``cupyx.scatter_add``, is given a NumPy twin.

It is installed into one process (it replaces module attributes: ``get_array_module``,
``to_host`` and the FFT helpers of every loaded ``ptychograph`` module), so a Dask check with it
uses an in-process cluster. Not caught: ``numpy.asarray`` of a device array, which CuPy refuses
and NumPy does silently.

benchmarks/gpu_check.py uses it with ``--dry-run --standin``
(``GPU_CHECK_STANDIN=1 benchmarks/gpu_check.sh --dry-run``).
"""

from __future__ import annotations

import importlib
import sys
import traceback
import types
from typing import Any

import numpy as np

#: Modules whose names are replaced (imported first, so their ``from x import y`` names exist).
MODULES = [
    "ptychograph.backend",
    "ptychograph.operators",
    "ptychograph.fourier",
    "ptychograph.partials",
    "ptychograph.modes",
    "ptychograph.state",
    "ptychograph.views",
    "ptychograph.ops",
    "ptychograph.resident",
    "ptychograph.algorithms.dm",
    "ptychograph.algorithms.fit",
    "ptychograph.driver",
    "ptychograph.engine",
    "ptychograph.executors.local",
    "ptychograph.executors.worker",
    "ptychograph.executors.dask",
]


class DeviceArray(np.ndarray):
    """An array 'on the device': mixing it with a host ndarray raises TypeError, as in CuPy."""

    def __array_ufunc__(self, ufunc: Any, method: str, *inputs: Any, **kwargs: Any) -> Any:
        out = kwargs.get("out") or ()
        _refuse_mix([*inputs, *out], f"numpy.{ufunc.__name__}")
        if out:
            kwargs["out"] = tuple(_host_view(o) for o in out)
        return _to_device(getattr(ufunc, method)(*map(_host_view, inputs), **kwargs))

    def __array_function__(self, func: Any, types_: Any, args: Any, kwargs: Any) -> Any:
        _refuse_mix(_leaves((args, kwargs)), f"numpy.{func.__name__}")
        return _to_device(func(*_unwrap(args), **_unwrap(kwargs)))


def _host_view(value: Any) -> Any:
    return value.view(np.ndarray) if isinstance(value, DeviceArray) else value


def _to_device(value: Any) -> Any:
    if type(value) is np.ndarray:
        return value.view(DeviceArray)
    if isinstance(value, tuple | list):
        return type(value)(_to_device(v) for v in value)
    return value


def _unwrap(value: Any) -> Any:
    if isinstance(value, DeviceArray):
        return _host_view(value)
    if isinstance(value, tuple | list):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, tuple | list):
        return [leaf for v in value for leaf in _leaves(v)]
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def _refuse_mix(values: list[Any], where: str) -> None:
    host = [v for v in values if type(v) is np.ndarray and v.ndim > 0]
    if host and any(isinstance(v, DeviceArray) for v in values):
        caller = "".join(traceback.format_stack(limit=6)[:-2])
        shapes = [v.shape for v in host]
        raise TypeError(f"host array(s) {shapes} mixed with device arrays in {where}\n{caller}")


class DeviceModule:
    """The array module of device arrays (``views.xp``, ``get_array_module``): NumPy's
    functions, with array results on the device and ``asarray`` moving host arrays there."""

    def __init__(self, module: types.ModuleType = np) -> None:
        self._module = module

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        return np.asarray(_host_view(value), dtype=dtype).view(DeviceArray)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if isinstance(attr, types.ModuleType):
            return DeviceModule(attr)
        if callable(attr) and not isinstance(attr, type):
            return lambda *args, **kwargs: _to_device(attr(*args, **kwargs))
        return attr


DEVICE = DeviceModule()


def install() -> None:
    """Make this process's in-process runs hold their views as :class:`DeviceArray` s."""
    for name in MODULES:
        importlib.import_module(name)
    backend = sys.modules["ptychograph.backend"]
    host_module = backend.get_array_module
    host_copy = backend.to_host

    def get_array_module(*arrays: Any) -> Any:
        if any(isinstance(a, DeviceArray) for a in arrays):
            return DEVICE
        return host_module(*arrays)

    def to_host(array: Any) -> np.ndarray:
        return np.array(_host_view(array)) if isinstance(array, DeviceArray) else host_copy(array)

    replaced = {id(host_module): get_array_module, id(host_copy): to_host}
    for name in ("fft2", "ifft2", "fft2c", "ifft2c"):  # scipy.fft returns host arrays
        replaced[id(getattr(backend, name))] = _keeps_device(getattr(backend, name))
    for name, module in list(sys.modules.items()):
        if name == "ptychograph" or name.startswith("ptychograph."):
            for attr, value in list(vars(module).items()):
                if id(value) in replaced:
                    setattr(module, attr, replaced[id(value)])
    resident = sys.modules["ptychograph.resident"]
    ops = sys.modules["ptychograph.ops"]
    resident.ResidentViews.xp = property(lambda self: DEVICE)  # type: ignore[method-assign]
    resident.ResidentViews.device = lambda self, a: None if a is None else DEVICE.asarray(a)
    resident.select_ops = lambda backend: ops.NumpyOps()
    sys.modules["cupyx"] = types.SimpleNamespace(scatter_add=_scatter_add)  # type: ignore


def _keeps_device(fft: Any) -> Any:
    def transform(x: Any, *args: Any, **kwargs: Any) -> Any:
        result = fft(_host_view(x), *args, **kwargs)
        return _to_device(result) if isinstance(x, DeviceArray) else result

    return transform


def _scatter_add(target: Any, indices: Any, values: Any) -> None:
    """cupyx.scatter_add on device arrays (unbuffered: repeated indices add up)."""
    np.add.at(_host_view(target), _host_view(indices), _host_view(values))

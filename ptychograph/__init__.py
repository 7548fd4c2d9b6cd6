"""ptychograph: multi-mode Difference Map ptychography on NumPy, CuPy and Dask.

The numerical core (:mod:`ptychograph.operators`, :mod:`ptychograph.fourier`,
:mod:`ptychograph.overlap`) is generic over NumPy and CuPy: every function takes the array
module from its inputs, and CuPy is never imported at module import time.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ptychograph")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0+unknown"

from ptychograph.errors import InputError

__all__ = ["InputError", "__version__", "reconstruct"]


def reconstruct(*args, **kwargs):
    """Run a reconstruction; see :func:`ptychograph.engine.reconstruct`."""
    from ptychograph.engine import reconstruct as _reconstruct

    return _reconstruct(*args, **kwargs)

"""ptychograph: multi-mode Difference Map ptychography on NumPy, CuPy and Dask.

The numerical core (:mod:`ptychograph.operators`, :mod:`ptychograph.fourier`,
:mod:`ptychograph.partials`) is generic over NumPy and CuPy: every function takes the array
module from its inputs, and CuPy is never imported at module import time.
"""

from ptychograph.errors import Diverged, InputError
from ptychograph.version import __version__

__all__ = ["Diverged", "InputError", "__version__", "reconstruct"]


def reconstruct(*args, **kwargs):
    """Run a reconstruction; see :func:`ptychograph.engine.reconstruct`."""
    from ptychograph.engine import reconstruct as _reconstruct

    return _reconstruct(*args, **kwargs)

"""Fused CUDA kernels for the DM step and their NumPy references.

* :mod:`ptychograph.gpu.reference` - plain NumPy (array-module generic) reference of every
  kernel, tested against the package's own NumPy path on any machine.
* :mod:`ptychograph.gpu.kernels` - CuPy wrappers that compile ``kernels/*.cu`` with NVRTC on
  first use; CuPy is imported inside its functions, so importing it needs no GPU.

Nothing here is imported by ``import ptychograph``.
"""

from __future__ import annotations

from ptychograph.cluster import gpu_count

__all__ = ["device_available"]


def device_available() -> bool:
    """True when CuPy is installed and at least one CUDA device answers (a device check, not
    an import check: CuPy installed on a machine without a GPU gives False)."""
    return gpu_count() > 0

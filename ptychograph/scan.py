"""In-memory description of a measured (or simulated) scan, independent of file format.

Readers (:mod:`ptychograph.io`) produce a :class:`Scan`; the geometry turns its positions in
metres into view origins in object pixels (:mod:`ptychograph.geometry`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Planck constant times speed of light, in eV * m (CODATA 2018, exact).
HC_EV_M = 1.239841984e-6
#: One electronvolt in joules (exact).
EV_J = 1.602176634e-19


@dataclass(frozen=True)
class Geometry:
    """Far-field geometry of the detector.

    wavelength : metres. distance : sample-detector distance, metres.
    detector_pixel : (y, x) detector pixel size, metres. frame_shape : (H, W) frame pixels.
    """

    wavelength: float
    distance: float
    detector_pixel: tuple[float, float]
    frame_shape: tuple[int, int]

    @property
    def energy_ev(self) -> float:
        """Photon energy in eV."""
        return HC_EV_M / self.wavelength

    @property
    def object_pixel(self) -> tuple[float, float]:
        """(y, x) object pixel size in metres: wavelength * distance / (pixels * pixel size)."""
        return (
            self.wavelength * self.distance / (self.frame_shape[0] * self.detector_pixel[0]),
            self.wavelength * self.distance / (self.frame_shape[1] * self.detector_pixel[1]),
        )

    def as_dict(self) -> dict[str, float | list[float] | list[int]]:
        """JSON-friendly summary for result attributes."""
        return {
            "wavelength_m": self.wavelength,
            "energy_ev": self.energy_ev,
            "distance_m": self.distance,
            "detector_pixel_m": list(self.detector_pixel),
            "frame_shape": list(self.frame_shape),
            "object_pixel_m": list(self.object_pixel),
        }


@dataclass(frozen=True)
class Scan:
    """A ptychographic scan.

    frames : (N, H, W) float32 intensities, zero frequency at the frame centre.
    positions : (N, 2) float64 sample positions (y, x) in metres, as the file gives them.
    geometry : detector geometry.
    mask : (H, W) bool, True at bad detector pixels, or None.
    illumination : (M, H, W) complex initial probe guess from the file, or None.
    """

    frames: np.ndarray
    positions: np.ndarray
    geometry: Geometry
    mask: np.ndarray | None = None
    illumination: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

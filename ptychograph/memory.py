"""Memory budget of a worker, estimated before anything is allocated.

The resident state of a worker is its exit waves psi (N_w M_P M_O H W complex values) and its
amplitudes (N_w H W reals); on top come the scratch arrays of one batch of views (the views,
two spectra, the projection and the shifted probes: about :data:`SCRATCH_COPIES` psi-sized
arrays of ``batch`` views) and the object-sized partial sums. A run whose estimate does not fit
first gets a smaller batch size; if even one view per batch does not fit it is refused with the
numbers, instead of dying half way from an allocation that could have been foreseen. Not
planned here: the F psi that the CPU kernels keep per chunk, allocated only where the memory
available at the time allows (:func:`ptychograph.cpu_ops.spectra_buffer`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ptychograph.errors import InputError

#: psi-sized scratch arrays per view in a batch (phi, F phi, F psi, projection, shifted probes).
SCRATCH_COPIES = 6
#: Fraction of a worker's memory limit a run may plan to use.
USABLE_FRACTION = 0.8


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes one worker needs, by kind."""

    exit_waves: int
    frames: int
    scratch: int
    object_sums: int
    batch_size: int

    @property
    def total(self) -> int:
        return self.exit_waves + self.frames + self.scratch + self.object_sums

    def describe(self) -> str:
        """One line with the parts in GiB."""
        gib = 2.0**30
        return (
            f"{self.total / gib:.2f} GiB (exit waves {self.exit_waves / gib:.2f}, frames "
            f"{self.frames / gib:.2f}, scratch for {self.batch_size} views "
            f"{self.scratch / gib:.2f}, object/probe sums {self.object_sums / gib:.2f})"
        )


def estimate(
    n_views: int,
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    probe_modes: int,
    obj_modes: int,
    precision: str,
    batch_size: int,
) -> MemoryEstimate:
    """Bytes one worker needs for ``n_views`` views of the given sizes."""
    csize = 8 if precision == "single" else 16
    pixels = frame_shape[0] * frame_shape[1]
    per_view = probe_modes * obj_modes * pixels * csize
    in_flight = min(batch_size, n_views)
    obj_pixels = obj_shape[0] * obj_shape[1]
    sums = (4 * obj_modes * obj_pixels + 4 * probe_modes * pixels) * csize
    return MemoryEstimate(
        exit_waves=n_views * per_view,
        frames=n_views * pixels * csize // 2,
        scratch=SCRATCH_COPIES * in_flight * per_view,
        object_sums=sums,
        batch_size=batch_size,
    )


def fit_batch(
    n_views: int,
    frame_shape: tuple[int, int],
    obj_shape: tuple[int, int],
    probe_modes: int,
    obj_modes: int,
    precision: str,
    batch_size: int,
    available: float,
) -> MemoryEstimate:
    """The estimate with the largest batch size (<= ``batch_size``) that fits in
    ``USABLE_FRACTION * available`` bytes; :class:`InputError` with the numbers if none does.
    ``available`` <= 0 means unknown (no check)."""
    budget = USABLE_FRACTION * available
    batch = batch_size
    while True:
        need = estimate(n_views, frame_shape, obj_shape, probe_modes, obj_modes, precision, batch)
        if available <= 0 or need.total <= budget or batch == 1:
            break
        batch = max(1, batch // 2)
    if available > 0 and need.total > budget:
        raise InputError(
            "memory",
            f"a worker needs {need.describe()} but may use {budget / 2**30:.2f} GiB "
            f"({USABLE_FRACTION:.0%} of {available / 2**30:.2f} GiB); use more workers, fewer "
            "modes or single precision",
        )
    return need


def worker_limits(client: object, workers: list[str]) -> dict[str, float]:
    """Memory limit in bytes of each worker as the scheduler reports it (0 = none)."""
    info = client.scheduler_info()["workers"]  # type: ignore[attr-defined]
    return {w: float(info.get(w, {}).get("memory_limit") or 0) for w in workers}


__all__ = ["MemoryEstimate", "estimate", "fit_batch", "worker_limits"]

"""The F psi that the fused CPU kernels keep between exit-wave updates (issue 15).

With the spectra kept, an update reads F psi from ``chunk.spectra`` instead of transforming psi
and writes the new psi's spectrum, (2 - beta) F phi + beta F_c X - X, for the next one. Checked
here against the NumPy reference (:class:`ptychograph.ops.NumpyOps`, which transforms psi every
time) over several updates with changing estimates, a pending mode rotation, the noise bound,
a reset of psi and a psi that is replaced; and the policy of :func:`spectra_buffer`.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from ptychograph import cpu_ops, views  # noqa: E402
from ptychograph.backend import fft2  # noqa: E402
from ptychograph.cpu_ops import CpuOps, spectra_buffer  # noqa: E402
from ptychograph.ops import NumpyOps  # noqa: E402
from ptychograph.shifted_probe import ShiftTable  # noqa: E402
from ptychograph.views import make_chunk, reset_exit_waves, update_views  # noqa: E402

FRAME = (24, 20)
TOL = {np.complex64: 3e-5, np.complex128: 1e-11}
DTYPES = [np.complex64, np.complex128]


def crandom(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def close(value: np.ndarray, reference: np.ndarray, tol: float) -> None:
    assert value.shape == reference.shape
    scale = max(float(np.abs(reference).max()), 1e-300)
    assert float(np.abs(value - reference).max()) <= tol * scale


def unitary(modes: int, dtype: type, seed: int = 7) -> np.ndarray:
    q, _ = np.linalg.qr(crandom(np.random.default_rng(seed), (modes, modes), np.complex128))
    return q.astype(dtype)


def twins(dtype: type, seed: int = 0, n_views: int = 11):  # type: ignore[no-untyped-def]
    """Two equal chunks (sub-pixel positions, 2 probe and 2 object modes) and estimates."""
    rng = np.random.default_rng(seed)
    origins = rng.uniform(0, 14, (n_views, 2))
    real = np.empty(0, dtype).real.dtype
    amplitudes = (np.abs(rng.standard_normal((n_views, *FRAME))) * 3).astype(real)
    probe = crandom(rng, (2, *FRAME), dtype)
    obj = crandom(rng, (2, 40, 40), dtype)
    chunks = [
        make_chunk(amplitudes, None, origins, probe, obj, 4, table=ShiftTable()) for _ in range(2)
    ]
    return chunks, probe, obj, rng


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("noise_bound", [0.0, 0.5])
def test_kept_spectra_give_the_reference_updates(dtype, noise_bound) -> None:  # type: ignore[no-untyped-def]
    (kept, reference), probe, obj, rng = twins(dtype)
    ops = CpuOps(fused=True)
    for step in range(5):
        # estimates that change between updates, as in DM; a mode rotation at step 2
        probe = probe + 0.1 * crandom(rng, probe.shape, dtype)
        obj = obj + 0.1 * crandom(rng, obj.shape, dtype)
        rotation = unitary(2, dtype) if step == 2 else None
        if rotation is not None:
            probe = np.tensordot(rotation, probe, axes=1).astype(dtype)
        args = (probe, obj, 0.8, 4, rotation, noise_bound)
        error, sums = update_views(kept, *args, ops=ops)
        want_error, want_sums = update_views(reference, *args, ops=NumpyOps())
        assert kept.spectra is not None and kept.spectra[0] is kept.exit_waves
        assert reference.spectra is None  # the reference ops keep nothing
        close(kept.exit_waves, reference.exit_waves, TOL[dtype] * (step + 1))
        close(kept.spectra[1], fft2(kept.exit_waves), TOL[dtype] * (step + 1))
        assert error.residual == pytest.approx(want_error.residual, rel=TOL[dtype] * 10)
        assert sums is not None and want_sums is not None
        close(sums.numerator, want_sums.numerator, TOL[dtype] * (step + 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_reset_or_replaced_psi_is_transformed_again(dtype) -> None:  # type: ignore[no-untyped-def]
    (kept, reference), probe, obj, rng = twins(dtype, seed=3)
    ops = CpuOps(fused=True)
    update_views(kept, probe, obj, 0.8, 4, ops=ops)
    update_views(reference, probe, obj, 0.8, 4, ops=NumpyOps())
    # psi reset in place (start, recovery): the kept spectra are dropped
    obj = obj + 0.2 * crandom(rng, obj.shape, dtype)
    for chunk in (kept, reference):
        reset_exit_waves(chunk, probe, obj, 4)
    assert kept.spectra is None
    update_views(kept, probe, obj, 0.8, 4, ops=ops)
    update_views(reference, probe, obj, 0.8, 4, ops=NumpyOps())
    close(kept.exit_waves, reference.exit_waves, TOL[dtype] * 4)
    # psi replaced by another array (growth, a change of the mode count): stale by identity
    for chunk in (kept, reference):
        chunk.exit_waves = chunk.exit_waves * np.asarray(0.5, dtype)
    assert kept.spectra is not None and kept.spectra[0] is not kept.exit_waves
    update_views(kept, probe, obj, 0.8, 4, ops=ops)
    update_views(reference, probe, obj, 0.8, 4, ops=NumpyOps())
    close(kept.exit_waves, reference.exit_waves, TOL[dtype] * 4)
    assert kept.spectra is not None
    close(kept.spectra[1], fft2(kept.exit_waves), TOL[dtype] * 4)


def test_an_update_that_fails_leaves_no_stale_spectra(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """An update cut off half way (an error in a batch) must not leave spectra that the next
    update would take for those of psi."""
    (kept, _), probe, obj, _ = twins(np.complex64, seed=5)
    ops = CpuOps(fused=True)
    update_views(kept, probe, obj, 0.8, 4, ops=ops)
    assert kept.spectra is not None
    calls = {"n": 0}
    real = ops.exit_wave_update

    def failing(*args, **kwargs):  # type: ignore[no-untyped-def]
        calls["n"] += 1
        if calls["n"] == 2:
            raise MemoryError("batch 2")
        return real(*args, **kwargs)

    monkeypatch.setattr(ops, "exit_wave_update", failing)
    monkeypatch.setattr(views, "fft_workers", lambda: 1)  # batches in order, one thread
    with pytest.raises(MemoryError):
        update_views(kept, probe, obj, 0.8, 4, ops=ops)
    assert kept.spectra is None


def test_spectra_buffer_policy(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    psi = np.zeros((4, 2, 1, *FRAME), np.complex64)
    buffer = spectra_buffer(CpuOps(fused=True), psi)
    assert buffer is not None and buffer.shape == psi.shape and buffer.dtype == psi.dtype
    assert spectra_buffer(NumpyOps(), psi) is None
    assert spectra_buffer(CpuOps(fused=False), psi) is None
    monkeypatch.setenv("PTYCHOGRAPH_SPECTRA", "0")
    assert spectra_buffer(CpuOps(fused=True), psi) is None
    monkeypatch.delenv("PTYCHOGRAPH_SPECTRA")
    monkeypatch.setattr(cpu_ops, "SPECTRA_FRACTION", 0.0)  # no memory to spare
    assert spectra_buffer(CpuOps(fused=True), psi) is None
    # without a buffer the kernels transform psi every update and keep nothing
    (chunk, reference), probe, obj, _ = twins(np.complex128, seed=2)
    for _ in range(2):
        update_views(chunk, probe, obj, 0.8, 4, ops=CpuOps(fused=True))
        update_views(reference, probe, obj, 0.8, 4, ops=NumpyOps())
        assert chunk.spectra is None
    close(chunk.exit_waves, reference.exit_waves, 1e-11)


@pytest.mark.parametrize("limit, gib, kept", [("4GiB", 3.0, False), ("4GiB", 0.0, True)])
def test_a_dask_worker_keeps_spectra_only_within_its_memory_limit(limit, gib, kept) -> None:  # type: ignore[no-untyped-def]
    """In a worker its memory limit counts too (Dask spills at 60 % and pauses at 80 % of it):
    psi of 3 GiB gets no spectra in a worker limited to 4 GiB, a small one does; without a
    limit (and outside a worker) the room is unbounded."""
    from distributed import Client, LocalCluster

    def allocate() -> tuple[bool, float]:
        shape = (max(1, int(gib * 2**30 / (2 * 8 * FRAME[0] * FRAME[1]))), 2, 1, *FRAME)
        psi = np.broadcast_to(np.zeros(1, np.complex64), shape)  # its nbytes, no memory
        return spectra_buffer(CpuOps(fused=True), psi) is not None, cpu_ops._worker_room()

    def in_cluster(memory_limit: str | int) -> tuple[bool, float]:
        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=False,
                memory_limit=memory_limit,
                dashboard_address=None,
            ) as cluster,
            Client(cluster) as client,
        ):
            return client.submit(allocate, pure=False).result()

    got, room = in_cluster(limit)
    assert got is kept and room < 0.6 * 4 * 2**30
    assert cpu_ops._worker_room() == np.inf
    if not gib:
        assert in_cluster(0) == (True, np.inf)

"""The Dask path: equality with the in-process reference, placement, bounded state, real
scheduler and worker processes, and connection failures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from distributed import Client, LocalCluster

from ptychograph.config import parse_config
from ptychograph.engine import reconstruct, reconstruct_in_process
from ptychograph.errors import InputError
from ptychograph.executors.placement import assign_ranges, reassign
from ptychograph.io.cxi import write_cxi
from ptychograph.simulate import SimulationConfig, simulate

#: Relative agreement of distributed and in-process results after 6 iterations. Only the
#: summation order of the partials differs (tree over workers and chunks).
TOLERANCE = {"double": 1e-10, "single": 2e-4}


@pytest.fixture(scope="module")
def cluster_client():  # type: ignore[no-untyped-def]
    with (
        LocalCluster(
            n_workers=3, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def scan_path(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    sim = simulate(SimulationConfig(n_frames=50, frame_size=32, photons=1e5, seed=2))
    path = tmp_path_factory.mktemp("scan") / "scan.cxi"
    write_cxi(path, sim.scan)
    return path


def _config(path: Path, out: Path, **over):  # type: ignore[no-untyped-def]
    rec = {"iterations": 6, "probe_modes": 2, "precision": "double", "seed": 4}
    rec.update(over.pop("reconstruction", {}))
    raw = {"data": {"path": str(path)}, "reconstruction": rec, "output": {"path": str(out)}}
    raw.update(over)
    return parse_config(raw)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize(
    "n_workers,chunk_frames,precision",
    [(1, None, "double"), (2, 16, "double"), (3, 7, "double"), (2, 9, "single")],
)
def test_distributed_equals_reference(
    cluster_client, scan_path, tmp_path, n_workers, chunk_frames, precision
) -> None:  # type: ignore[no-untyped-def]
    config = _config(
        scan_path,
        tmp_path / "r.zarr",
        reconstruction={"precision": precision},
        cluster={"chunk_frames": chunk_frames},
    )
    reference = reconstruct_in_process(config)
    workers = sorted(cluster_client.scheduler_info()["workers"])[:n_workers]
    result = reconstruct(config, client=cluster_client, write=False, workers=workers)
    tol = TOLERANCE[precision]
    assert _rel(result.state.obj, reference.state.obj) < tol
    assert _rel(result.state.probe, reference.state.probe) < tol
    np.testing.assert_allclose(
        result.history.fourier_error, reference.history.fourier_error, rtol=tol
    )
    assert not (tmp_path / ".r.work").exists()  # the converted frames are cleaned up


def test_auto_modes_same_in_process_and_on_the_cluster(cluster_client, scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """probe_modes: auto prunes the modes in both paths (one driver), with the same result."""
    config = _config(
        scan_path,
        tmp_path / "r.zarr",
        reconstruction={"probe_modes": "auto", "iterations": 8, "mode_threshold": 0.2},
    )
    reference = reconstruct_in_process(config, n_chunks=2)
    result = reconstruct(config, client=cluster_client, write=False)
    assert reference.state.probe.shape[0] < config.reconstruction.max_probe_modes
    assert result.state.probe.shape == reference.state.probe.shape
    assert _rel(result.state.obj, reference.state.obj) < TOLERANCE["double"]
    assert _rel(result.state.probe, reference.state.probe) < TOLERANCE["double"]


def test_reassign_moves_lost_frames_and_keeps_no_empty_worker() -> None:
    placement = {"a": [(0, 10)], "b": [(10, 20), (20, 25)]}
    kept, moved = reassign(placement, ["a", "c", "d", "e"], None)
    # the new workers take the lost ranges first; a spare left without frames is not kept
    assert moved == {"c": [(10, 20)], "d": [(20, 25)]}
    assert kept == {"a": [(0, 10)], "c": [(10, 20)], "d": [(20, 25)]}
    with pytest.raises(InputError, match="every worker of the run was lost"):
        reassign(placement, [], None)


def test_assign_ranges_even_and_chunk_aligned() -> None:
    ranges = assign_ranges(103, 10, 4)
    frames = [f for worker in ranges for a, b in worker for f in range(a, b)]
    assert frames == list(range(103))
    loads = [sum(b - a for a, b in worker) for worker in ranges]
    assert max(loads) - min(loads) <= 1
    for worker in ranges:
        for a, b in worker:
            assert a // 10 == (b - 1) // 10  # never spans two store chunks


def test_frames_do_not_pass_through_the_client(
    cluster_client, scan_path, tmp_path, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    sent: list[int] = []

    def sizes(values) -> None:  # type: ignore[no-untyped-def]
        for value in values:
            if isinstance(value, np.ndarray):
                sent.append(value.nbytes)
            elif hasattr(value, "__dataclass_fields__"):
                sizes(vars(value).values())
            elif isinstance(value, list | tuple):
                sizes(value)

    real_submit, real_scatter = Client.submit, Client.scatter

    def spy_submit(self, func, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes(args)
        return real_submit(self, func, *args, **kwargs)

    def spy_scatter(self, data, *args, **kwargs):  # type: ignore[no-untyped-def]
        sizes(data)
        return real_scatter(self, data, *args, **kwargs)

    monkeypatch.setattr(Client, "submit", spy_submit)
    monkeypatch.setattr(Client, "scatter", spy_scatter)
    config = _config(scan_path, tmp_path / "r.zarr", cluster={"chunk_frames": 8})
    result = reconstruct(config, client=cluster_client, write=False)
    frame_bytes = 50 * 32 * 32 * 4
    obj_bytes = result.state.obj.nbytes
    assert sent, "the spy saw no task inputs"
    # what the client sent: positions, a mask, the initial estimates - never frames
    assert max(sent) <= max(obj_bytes, result.state.probe.nbytes)
    assert sum(sent) < frame_bytes


def test_scheduler_and_worker_state_stay_flat(cluster_client, scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    samples: dict[int, tuple[int, list[int], list[int]]] = {}

    def sample(iteration: int, history) -> None:  # type: ignore[no-untyped-def]
        if iteration in (10, 40, 80):
            tasks = cluster_client.run_on_scheduler(
                lambda dask_scheduler: len(dask_scheduler.tasks)
            )
            keys = cluster_client.run(lambda dask_worker: len(dask_worker.data))
            rss = cluster_client.run(lambda: __import__("psutil").Process().memory_info().rss)
            samples[iteration] = (tasks, sorted(keys.values()), sorted(rss.values()))

    config = _config(
        scan_path,
        tmp_path / "r.zarr",
        reconstruction={"iterations": 80, "precision": "single"},
        cluster={"chunk_frames": 10},
    )
    reconstruct(config, client=cluster_client, progress=sample, write=False)
    tasks10, keys10, rss10 = samples[10]
    for later in (40, 80):
        tasks, keys, rss = samples[later]
        assert tasks <= tasks10 + 5, (tasks10, tasks)
        assert max(keys) <= max(keys10) + 5, (keys10, keys)
        growth = max(b - a for a, b in zip(rss10, rss, strict=True))
        assert growth < 30 * 2**20, f"worker memory grew by {growth / 2**20:.1f} MiB"


def test_unanswered_scheduler_fails_fast(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    config = _config(
        scan_path,
        tmp_path / "r.zarr",
        cluster={"address": "tcp://127.0.0.1:9", "connect_timeout": 2},
    )
    start = time.monotonic()
    with pytest.raises(InputError, match="cluster.address"):
        reconstruct(config, write=False)
    assert time.monotonic() - start < 30
    assert not any(p.name.startswith(".r") for p in tmp_path.iterdir())


@pytest.mark.slow
def test_run_against_real_scheduler_and_workers(scan_path, tmp_path) -> None:
    bin_dir = Path(sys.executable).parent
    scheduler_file = tmp_path / "scheduler.json"
    env = {**os.environ, "PTYCHOGRAPH_FFT_WORKERS": "1"}
    common = ["--no-dashboard"]
    procs = [
        subprocess.Popen(
            [
                str(bin_dir / "dask"),
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--scheduler-file",
                str(scheduler_file),
                *common,
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        address = json.loads(scheduler_file.read_text())["address"]
        for _ in range(2):
            procs.append(
                subprocess.Popen(
                    [
                        str(bin_dir / "dask"),
                        "worker",
                        address,
                        "--nthreads",
                        "1",
                        "--host",
                        "127.0.0.1",
                        *common,
                    ],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        with Client(address, timeout=30) as client:
            client.wait_for_workers(2, timeout=60)
        out = tmp_path / "result.zarr"
        config = tmp_path / "run.yaml"
        config.write_text(
            f"data: {{path: {scan_path}}}\n"
            "reconstruction: {iterations: 5, probe_modes: 2}\n"
            f"output: {{path: {out}}}\n"
            f"cluster: {{address: '{address}', chunk_frames: 10}}\n"
        )
        done = subprocess.run(
            [str(bin_dir / "ptychograph"), "run", str(config)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert "on 2 workers" in done.stderr
        import xarray as xr

        with xr.open_zarr(out, consolidated=False) as ds:
            assert ds.sizes["iteration"] == 5
            assert np.isfinite(ds["fourier_error"].values).all()
    finally:
        for proc in procs[::-1]:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


def test_convert_cli_and_run_from_store(cluster_client, scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from ptychograph.cli import main
    from ptychograph.io import load_scan
    from ptychograph.io.zarr_store import read_store_info

    store = tmp_path / "frames.zarr"
    assert main(["convert", str(scan_path), str(store), "--chunk-frames", "12"]) == 0
    assert read_store_info(store).chunk_frames == 12
    a, b = load_scan(scan_path), load_scan(store)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.positions, b.positions)
    assert main(["convert", str(scan_path), str(store)]) == 2  # refuses to overwrite
    from_cxi = reconstruct(
        _config(scan_path, tmp_path / "a.zarr"), client=cluster_client, write=False
    )
    from_store = reconstruct(
        _config(store, tmp_path / "b.zarr"), client=cluster_client, write=False
    )
    np.testing.assert_allclose(from_store.state.obj, from_cxi.state.obj, rtol=0, atol=1e-10)


def test_cluster_options_fail_clearly_without_their_packages(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import importlib.util

    from ptychograph.cluster import gpu_count

    if importlib.util.find_spec("distributed_ucxx") is None:
        config = _config(scan_path, tmp_path / "r.zarr", cluster={"protocol": "ucx"})
        with pytest.raises(InputError, match="cluster.protocol"):
            reconstruct(config, write=False)
    if gpu_count() == 0:
        config = _config(scan_path, tmp_path / "r.zarr", cluster={"backend": "cupy"})
        with pytest.raises(InputError, match="cluster.backend"):
            reconstruct(config, write=False)
    assert not any(p.name.startswith(".r") for p in tmp_path.iterdir())


def test_tls_scheduler_with_security_settings(scan_path, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("cryptography")
    from distributed.security import Security

    security = Security.temporary()
    files = {}
    pems = (
        ("ca", security.tls_ca_file),
        ("cert", security.tls_client_cert),
        ("key", security.tls_client_key),
    )
    for name, pem in pems:
        files[name] = tmp_path / f"{name}.pem"
        files[name].write_text(pem)
    with LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        protocol="tls",
        security=security,
        dashboard_address=None,
    ) as cluster:
        raw = {
            "address": cluster.scheduler_address,
            "security": {
                "ca_file": str(files["ca"]),
                "cert_file": str(files["cert"]),
                "key_file": str(files["key"]),
            },
        }
        config = _config(scan_path, tmp_path / "r.zarr", cluster=raw)
        result = reconstruct(config, write=False)
        assert len(result.history) == 6
        plain = _config(
            scan_path,
            tmp_path / "r.zarr",
            cluster={
                "address": cluster.scheduler_address.replace("tls://", "tcp://"),
                "connect_timeout": 3,
            },
        )
        with pytest.raises(InputError, match="cluster.address"):
            reconstruct(plain, write=False)
    with pytest.raises(InputError, match="security"):
        _config(scan_path, tmp_path / "r.zarr", cluster={"address": "tls://127.0.0.1:1"})

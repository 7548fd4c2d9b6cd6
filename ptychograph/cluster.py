"""Connecting to, or starting, the Dask cluster a run uses (the ``cluster:`` section).

* ``address: null`` starts a local cluster: ``dask_cuda.LocalCUDACluster`` (one worker per GPU)
  when the backend resolves to CuPy, else ``distributed.LocalCluster`` with worker processes.
* ``address: tcp://host:8786`` (or ``ucx://``, ``tls://``) connects to a running scheduler, e.g.
  one started with ``dask scheduler`` and ``dask cuda worker``; a scheduler that does not answer
  within ``connect_timeout`` seconds is an input error, not a hang.
* ``protocol: ucx`` needs the ``distributed-ucxx`` package, imported only when asked for.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ptychograph.backend import gpu_count
from ptychograph.config import ClusterConfig
from ptychograph.errors import InputError

log = logging.getLogger("ptychograph")


def resolve_backend(choice: str) -> str:
    """``auto`` -> ``cupy`` where a GPU exists, else ``numpy``; ``cupy`` without one is an error."""
    if choice == "numpy":
        return "numpy"
    gpus = gpu_count()
    if choice == "cupy" and gpus == 0:
        raise InputError("cluster.backend", "cupy needs CuPy and a CUDA device; none found")
    return "cupy" if gpus > 0 else "numpy"


@contextmanager
def open_client(config: ClusterConfig, client: Any | None = None) -> Iterator[Any]:
    """Yield a ``distributed.Client``: the given one, a connection, or a new local cluster.

    Whatever this function starts it also closes; a given client is left open.
    """
    if client is not None:
        yield client
        return
    from distributed import Client

    if config.address is not None:
        active = _connect(config)
        try:
            yield active
        finally:
            active.close()
        return
    cluster = _local_cluster(config)
    try:
        with Client(cluster) as active:
            if "dashboard" in active.scheduler_info().get("services", {}):
                log.info("Dask dashboard: %s", active.dashboard_link)
            yield active
    finally:
        cluster.close()


def _connect(config: ClusterConfig) -> Any:
    from distributed import Client

    if config.address is not None and config.address.startswith("ucx://"):
        _require_ucx()
    security = None
    if config.security is not None:
        security = _security(config)
    try:
        _probe(config.address, config.connect_timeout, security)
        client = Client(config.address, timeout=config.connect_timeout, security=security)
    except InputError:
        raise
    except Exception as err:  # noqa: BLE001 - anything here means no usable scheduler
        raise InputError(
            "cluster.address",
            f"could not connect to a scheduler at {config.address} within "
            f"{config.connect_timeout:g} s ({type(err).__name__})",
        ) from None
    log.info("connected to %s (%d workers)", config.address, len(_workers(client)))
    if "dashboard" in client.scheduler_info().get("services", {}):
        log.info("Dask dashboard: %s", client.dashboard_link)
    return client


def _security(config: ClusterConfig) -> Any:
    from distributed.security import Security

    tls = config.security
    assert tls is not None
    for name in ("ca_file", "cert_file", "key_file"):
        path = getattr(tls, name)
        if path is not None and not path.is_file():
            raise InputError(f"cluster.security.{name}", f"{path} does not exist")
    _check_pem(tls.ca_file, tls.cert_file, tls.key_file)
    return Security(
        tls_ca_file=str(tls.ca_file),
        tls_client_cert=str(tls.cert_file),
        tls_client_key=None if tls.key_file is None else str(tls.key_file),
        require_encryption=tls.require_encryption,
    )


def _check_pem(ca_file: Path, cert_file: Path, key_file: Path | None) -> None:
    """Load the TLS files as Python's ssl module will, so that a bad PEM file is named
    (``cluster.security.*``) instead of looking like an unreachable scheduler."""
    import ssl

    try:
        context = ssl.create_default_context(cafile=str(ca_file))
    except (ssl.SSLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or type(err).__name__
        raise InputError(
            "cluster.security.ca_file", f"{ca_file} is not a PEM certificate ({reason})"
        ) from None
    try:
        context.load_cert_chain(str(cert_file), None if key_file is None else str(key_file))
    except (ssl.SSLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", None) or type(err).__name__
        field = "cert_file" if key_file is None else "cert_file/key_file"
        raise InputError(
            f"cluster.security.{field}",
            f"{cert_file} is not a PEM certificate with its private key ({reason})",
        ) from None


def _probe(address: str | None, timeout: float, security: Any) -> None:
    """Open and close one comm to ``address`` within ``timeout`` seconds, handshake included:
    a port that accepts connections but never answers like a Dask scheduler fails here
    instead of hanging the client."""
    import asyncio

    from distributed.comm import connect

    assert address is not None
    kwargs = security.get_connection_args("client") if security is not None else {}

    async def attempt() -> None:
        comm = await connect(address, timeout=timeout, **kwargs)
        await comm.close()

    try:
        asyncio.run(asyncio.wait_for(attempt(), timeout))
    except TimeoutError:
        raise InputError(
            "cluster.address",
            f"{address} did not answer like a Dask scheduler within {timeout:g} s",
        ) from None
    except OSError:
        raise  # nothing listening: "could not connect"
    except Exception as err:  # noqa: BLE001 - garbage from a non-Dask service
        raise InputError(
            "cluster.address",
            f"{address} answered, but not as a Dask scheduler ({type(err).__name__})",
        ) from None


def _workers(client: Any) -> list[str]:
    return sorted(client.scheduler_info(n_workers=-1)["workers"])


def _require_ucx() -> None:
    if importlib.util.find_spec("distributed_ucxx") is None:
        raise InputError(
            "cluster.protocol", "ucx needs the distributed-ucxx package (the gpu extra)"
        )


def _local_cluster(config: ClusterConfig) -> Any:
    import dask

    backend = resolve_backend(config.backend)
    if config.protocol == "ucx":
        _require_ucx()
    dashboard = ":0" if importlib.util.find_spec("bokeh") is not None else None
    if backend == "cupy":
        from dask_cuda import LocalCUDACluster

        kwargs: dict[str, Any] = {"protocol": config.protocol, "dashboard_address": dashboard}
        if config.n_workers is not None and config.n_workers > gpu_count():
            raise InputError(
                "cluster.n_workers",
                f"{config.n_workers} GPU workers asked for, but {gpu_count()} GPUs are visible",
            )
        if config.n_workers is not None:
            kwargs["CUDA_VISIBLE_DEVICES"] = list(range(config.n_workers))
        with dask.config.set(WORKER_ENVIRON):
            return LocalCUDACluster(**kwargs)
    from distributed import LocalCluster

    n_workers = config.n_workers or 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    check_local_workers(n_workers, cores or 1)
    threads = config.threads_per_worker or max(1, (cores or 1) // n_workers)
    with dask.config.set(WORKER_ENVIRON):
        return LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads,
            processes=True,
            protocol=config.protocol,
            dashboard_address=dashboard,
            env={"PTYCHOGRAPH_FFT_WORKERS": str(threads)},
        )


#: Dask sets MALLOC_TRIM_THRESHOLD_ in worker processes; any explicit value turns off glibc's
#: adaptive mmap threshold, so every large temporary array is mmapped and page-faulted anew.
#: Measured on the demo's iteration: 1.6-2x slower. Local clusters start without it.
WORKER_ENVIRON = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}

#: Local worker processes allowed per core, and the least memory each must have.
WORKERS_PER_CORE = 4
MEMORY_PER_WORKER = 256 * 2**20


def check_local_workers(n_workers: int, cores: int) -> None:
    """Refuse more local worker processes than this machine can hold (at most
    :data:`WORKERS_PER_CORE` per core and :data:`MEMORY_PER_WORKER` bytes each)."""
    import psutil

    memory = psutil.virtual_memory().total
    limit = max(1, min(WORKERS_PER_CORE * cores, memory // MEMORY_PER_WORKER))
    if n_workers > limit:
        raise InputError(
            "cluster.n_workers",
            f"{n_workers} local worker processes on a machine with {cores} cores and "
            f"{memory / 2**30:.0f} GiB; use at most {limit} (or cluster.address for a cluster)",
        )

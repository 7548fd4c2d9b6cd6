"""The seed and dask steps of benchmarks/gpu_check.sh: the seed workload in this process, or
through ``reconstruct`` on a one-worker local cluster, with a record per iteration and one with
the totals (see benchmarks/gpu_check.py, which runs them as ``seed`` and ``dask``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gpu_check
import gpu_record
import gpu_seed_workload as seed_workload
from gpu_check import BATCH, SIZES, Device


def run_step(args: argparse.Namespace, device: Device) -> None:
    """``seed`` (in-process) or ``dask`` (one-worker cluster) on the store, one precision."""
    from ptychograph.io.zarr_store import read_store_info

    store = args.work / "frames.zarr"
    info = read_store_info(store)
    sizes = {**SIZES[args.mode]["seed"], "frames": info.n_frames}
    step = "seed" if args.step == "seed" else "dask"
    case = args.precision if step == "seed" else f"{args.protocol} {args.precision}"
    if args.batch != BATCH:
        case += f" batch {args.batch}"
    if step == "dask" and args.protocol == "ucx":
        reason = _ucx_unavailable()
        if reason:
            gpu_record.put(args.out, "dask", event="skip", case=case, reason=reason)
            return
    workload = argparse.Namespace(**sizes)
    config = seed_workload.run_config(
        store, workload, args.precision, args.work, device.backend, args.protocol, args.batch
    )
    gpu_record.put(args.out, step, event="plan", case=case, **sizes)

    def progress(number: int, history: Any) -> None:
        gpu_record.put(
            args.out,
            step,
            event="iteration",
            case=case,
            n=number,
            seconds=history.seconds[-1],
            error=history.fourier_error[-1],
            pool_used=device.pool_used() if step == "seed" else None,
        )

    device.release()
    before = device.used_bytes()
    held: dict[str, int] = {}
    if step == "seed":
        total, result = seed_workload.run_local(config, device.backend, progress, held)
        history, pool = result.history, device.pool_bytes()
        del result
    else:
        with _cluster(args, device, case, sizes) as client:
            total, history, pool = seed_workload.run_on_cluster(config, progress, client)
    after = device.used_bytes()
    _put_result(args, device, step, case, sizes, total, history, pool, before, after, held)


def _put_result(
    args: argparse.Namespace,
    device: Device,
    step: str,
    case: str,
    sizes: dict[str, int],
    total: float,
    history: Any,
    pool: int | None,
    before: int | None,
    after: int | None,
    held: dict[str, int],
) -> None:
    n, size, modes = sizes["frames"], sizes["size"], sizes["modes"]
    itemsize = seed_workload.ITEMSIZE[args.precision]
    floor = seed_workload.floor_bytes(n, size, modes, args.precision)
    bandwidth = _bandwidth(args.out, device)
    loop = float(sum(history.seconds))
    mine = [r for r in gpu_record.load(args.out) if r["step"] == step and r.get("case") == case]
    used = [r["pool_used"] for r in mine if r.get("pool_used") is not None]
    gpu_record.put(
        args.out,
        step,
        event="result",
        case=case,
        **sizes,
        total_s=total,
        loop_s=loop,
        setup_s=total - loop,
        warm_median_s=gpu_record.warm_median(list(history.seconds)),
        mean_s=loop / len(history) if len(history) else None,
        floor_bytes=floor,
        bandwidth_gbs=bandwidth / 1e9,
        floor_s=floor / bandwidth,
        final_error=float(history.fourier_error[-1]) if len(history) else None,
        pool_bytes=pool,
        pool_used_max=max(used) if used else None,
        psi_bytes=n * modes * size * size * itemsize,
        frames_bytes=n * size * size * itemsize // 2,
        device_used=None if before is None or after is None else after - before,
        resident_bytes=held.get("resident"),
        shifted_bytes=held.get("shifted"),
    )


@contextlib.contextmanager
def _cluster(
    args: argparse.Namespace, device: Device, case: str, sizes: dict[str, int]
) -> Iterator[Any]:
    """The client of the dask step: None (``reconstruct`` starts the configured one-worker
    LocalCUDACluster, or LocalCluster on NumPy); an in-process cluster for the stand-in (it
    lives in this process); a LocalCluster of one worker process when dask-cuda does not
    import on the GPU machine (recorded), so that the run through Dask still happens."""
    from distributed import Client, LocalCluster

    if args.standin:
        with Client(processes=False, n_workers=1, dashboard_address=":0") as client:
            yield client
        return
    problem = "" if device.dry else _import_problem("dask_cuda")
    if not problem:
        yield None
        return
    note = f"dask-cuda does not import ({problem}): distributed.LocalCluster, one worker, instead"
    gpu_record.put(args.out, "dask", event="plan", case=case, note=note, **sizes)
    kwargs = {"n_workers": 1, "threads_per_worker": 1, "dashboard_address": ":0"}
    with LocalCluster(protocol=args.protocol, **kwargs) as cluster, Client(cluster) as client:
        yield client


def _import_problem(module: str) -> str:
    """ "" when ``module`` imports, else the error's first line."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - recorded
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:200]
    return ""


def _bandwidth(out: Path, device: Device) -> float:
    """The copy bandwidth the env step measured (bytes / s), else measured now."""
    value = gpu_check._env_value(out, "bandwidth_gbs")
    if isinstance(value, int | float) and value > 0:
        return float(value) * 1e9
    return device.bandwidth()


def _ucx_unavailable() -> str:
    """Why a UCX cluster cannot start here ("" when distributed-ucxx imports)."""
    if importlib.util.find_spec("distributed_ucxx") is None:
        return "distributed-ucxx is not installed (carry the UCX wheels: gpu_wheels.py --ucx)"
    problem = _import_problem("distributed_ucxx")
    return f"distributed_ucxx does not import: {problem}" if problem else ""

"""Reconstruct on a SLURM cluster's GPU nodes through dask-jobqueue: one Dask worker per GPU.

Run it where jobs can be submitted (a login node, or inside a small CPU job):

    pip install dask-jobqueue                      # beside ptychograph[gpu]
    python configs/slurm-jobqueue.py run.yaml --nodes 2 --gpus-per-node 4 \\
        --partition gpu --account my-project --walltime 02:00:00

It starts a Dask scheduler in this process, submits ``--nodes`` batch jobs that each ask for a
whole GPU node's GPUs (``--gres=gpu:N``), and runs ``dask cuda worker`` in each job, which starts
one worker process per GPU that SLURM gave the job (``CUDA_VISIBLE_DEVICES``), pinned to it.
Once the workers have joined, ``ptychograph.reconstruct`` runs ``run.yaml`` on them, and the
jobs are cancelled when it returns.

The compute nodes must see the same Python environment (``--python``, default: this one) and
the folder of ``run.yaml``'s data and output at the same paths (a shared file system): the
workers read the frames from a store beside the result.

``--print-job-script`` prints the batch script that would be submitted and exits, without
submitting anything: check it against your site's rules first.

This script was checked here only with ``--print-job-script`` (no SLURM, no GPU on the machine
it was written on); see docs/clusters.md.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="the run's YAML config (ptychograph run CONFIG)")
    parser.add_argument("--nodes", type=int, default=1, help="GPU nodes (batch jobs) to use")
    parser.add_argument("--gpus-per-node", type=int, default=4, help="GPUs per node = workers")
    parser.add_argument("--cores-per-node", type=int, default=32, help="CPU cores per job")
    parser.add_argument("--memory-per-node", default="240GB", help="host memory per job")
    parser.add_argument("--partition", default=None, help="SLURM partition (-p)")
    parser.add_argument("--account", default=None, help="SLURM account (-A)")
    parser.add_argument("--walltime", default="02:00:00", help="SLURM time limit (-t)")
    parser.add_argument(
        "--interface", default=None, help="network interface of the workers, e.g. ib0"
    )
    parser.add_argument(
        "--protocol",
        choices=["tcp", "ucx"],
        default="tcp",
        help="Dask comms; ucx (InfiniBand/NVLink) needs distributed-ucxx on every node",
    )
    parser.add_argument("--python", default=sys.executable, help="Python on the compute nodes")
    parser.add_argument(
        "--set", action="append", default=[], metavar="SECTION.KEY=VALUE", help="config override"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result")
    parser.add_argument(
        "--print-job-script", action="store_true", help="print the batch script and exit"
    )
    return parser.parse_args(argv)


def gpu_cluster(args: argparse.Namespace):
    """A SLURMCluster whose jobs each run ``dask cuda worker`` on one node's GPUs."""
    import importlib.util

    from dask_jobqueue import SLURMCluster

    if args.protocol == "ucx" and importlib.util.find_spec("distributed_ucxx") is None:
        sys.exit("error: --protocol ucx needs distributed-ucxx (pip install 'ptychograph[gpu]')")

    return SLURMCluster(
        # `python -m dask cuda worker ...`: dask-cuda's worker CLI instead of `dask worker`.
        worker_command="dask cuda worker",
        # Only for the bookkeeping of dask-jobqueue: a job holds this many workers, each given
        # cores/processes threads and memory/processes host memory. dask cuda worker itself
        # starts one process per visible GPU (no --nworkers is passed to it).
        processes=args.gpus_per_node,
        cores=args.cores_per_node,
        memory=args.memory_per_node,
        queue=args.partition,
        account=args.account,
        walltime=args.walltime,
        job_extra_directives=[
            f"--gres=gpu:{args.gpus_per_node}",  # or --gpus-per-node=N, as your site prefers
            "--nodes=1",
            # "--exclusive",                     # where whole nodes must be asked for
        ],
        job_script_prologue=[
            # Sites often need e.g. `module load cuda/12` or `source /path/to/venv/bin/activate`.
            "export PYTHONUNBUFFERED=1",
        ],
        interface=args.interface,
        protocol=args.protocol,
        python=args.python,
        local_directory="$TMPDIR",
        log_directory="dask-logs",
        death_timeout=120,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cluster = gpu_cluster(args)
    if args.print_job_script:
        print(cluster.job_script())
        cluster.close()
        return 0

    from distributed import Client

    import ptychograph
    from ptychograph.config import load_config

    config = load_config(args.config, args.set)  # fails fast, before any job is queued
    n_workers = args.nodes * args.gpus_per_node
    try:
        cluster.scale(jobs=args.nodes)
        with Client(cluster) as client:
            print(f"waiting for {n_workers} GPU workers; dashboard: {client.dashboard_link}")
            client.wait_for_workers(n_workers, timeout=3600)  # the queue may take a while
            every = max(1, config.reconstruction.iterations // 20)

            def progress(iteration: int, history) -> None:
                if iteration % every == 0 or iteration == config.reconstruction.iterations:
                    error = history.fourier_error[-1]
                    print(f"iteration {iteration}: fourier error {error:.3e}", flush=True)

            result = ptychograph.reconstruct(
                config, client=client, progress=progress, overwrite=args.overwrite
            )
        print(f"wrote {config.output.path} ({len(result.history)} iterations)")
    finally:
        cluster.close()  # cancels the jobs
    return 0


if __name__ == "__main__":
    sys.exit(main())

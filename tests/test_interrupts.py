"""ptychograph.interrupts: leaving :func:`quiet_interrupt` restores only what it set."""

from __future__ import annotations

import subprocess
import sys
import textwrap

FRESH_PROCESS = textwrap.dedent(
    """
    import sys
    import dask
    from ptychograph.interrupts import quiet_interrupt

    assert "distributed" not in sys.modules, "import distributed inside, as a first run does"
    with quiet_interrupt():
        from distributed import LocalCluster
    assert dask.config.get("distributed.worker.preload") == []
    assert dask.config.get("distributed.comm.timeouts.connect") is not None
    with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster:
        print("workers", len(cluster.workers))
    """
)


def test_distributed_imported_inside_keeps_its_config() -> None:
    """A first command that imports distributed inside quiet_interrupt (as ``run`` does) used
    to lose distributed's whole config section on leaving; a later cluster in the same
    process then failed with KeyError 'comm'."""
    done = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "workers 1" in done.stdout

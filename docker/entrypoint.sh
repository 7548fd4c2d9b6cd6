#!/bin/sh
# Entry point of the ptychograph image: one image, three roles.
#
#   run CONFIG | simulate | convert | plot | demo | --help
#   (or any word that is not a command in the image)  ->  ptychograph ...
#   dask scheduler ...                                ->  the Dask scheduler
#   dask cuda worker tcp://HOST:8786 ...              ->  one Dask worker per visible GPU
#   anything else (ptychograph ..., bash, python ...) ->  run as given
#
# With PTYCHOGRAPH_WAIT_FOR_WORKERS=N (and PTYCHOGRAPH_SCHEDULER=tcp://HOST:8786) the command
# starts only once the scheduler has N workers, waiting up to PTYCHOGRAPH_WAIT_SECONDS (600):
# a reconstruction uses the workers present when it starts.
set -eu

case "${1:-}" in
    "") set -- ptychograph --help ;;
    run | simulate | convert | plot | demo | -*) set -- ptychograph "$@" ;;
    *) command -v "$1" >/dev/null 2>&1 || set -- ptychograph "$@" ;;
esac

if [ -n "${PTYCHOGRAPH_WAIT_FOR_WORKERS:-}" ]; then
    python - <<'PY'
import os
import sys

from distributed import Client

address = os.environ.get("PTYCHOGRAPH_SCHEDULER")
if not address:
    sys.exit("error: PTYCHOGRAPH_WAIT_FOR_WORKERS needs PTYCHOGRAPH_SCHEDULER")
n = int(os.environ["PTYCHOGRAPH_WAIT_FOR_WORKERS"])
wait = float(os.environ.get("PTYCHOGRAPH_WAIT_SECONDS", "600"))
print(f"waiting for {n} worker(s) at {address}", file=sys.stderr, flush=True)
with Client(address, timeout=wait) as client:
    client.wait_for_workers(n, timeout=wait)
PY
fi

exec "$@"

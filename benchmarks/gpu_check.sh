#!/usr/bin/env bash
# The GPU check of issue 14, in one call of the device tool: install, GPU tests, CuPy against
# NumPy, the seed workload in both precisions, peak pool memory, a one-worker Dask cluster (TCP,
# and UCX when distributed-ucxx imports), and a markdown summary for benchmarks/RESULTS.md.
#
#   benchmarks/gpu_check.sh                  # on the bare GPU machine (OUT is set by the tool)
#   benchmarks/gpu_check.sh --dry-run        # here: every step on NumPy at tiny sizes
#   GPU_CHECK_STANDIN=1 benchmarks/gpu_check.sh --dry-run   # views as stand-in device arrays
#   benchmarks/gpu_check.sh --fetch-wheels [--ucx]   # here: fill .whl/ (gpu_wheels.py)
#
# Every step runs under `timeout`, bounded by its own limit and by what is left of the budget
# (GPU_CHECK_BUDGET seconds, default 450, the summary's reserve included); a step with too
# little time left is skipped and recorded so. Figures go to $OUT/results.jsonl the moment they
# are known (benchmarks/gpu_record.py), so a run cut short still returns them. $OUT holds at most
# 8 files: results.jsonl, summary.md, env.txt, log.txt, pytest.txt, pytest-junit.xml.
# The seed scan is simulated (CPU) in the background while the GPU tests run. Exit status 0
# when every step exited 0, else 1 (the summary says which).
set -uo pipefail
trap "" PIPE  # a closed stdout must not end the check
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry ;;
  --fetch-wheels) shift; exec "$PY" benchmarks/gpu_wheels.py "$@" ;;
  "") ;;
  *) echo "usage: $0 [--dry-run | --fetch-wheels [--ucx]]" >&2; exit 2 ;;
esac
if [[ $MODE == dry ]]; then
  OUT=${OUT:-/tmp/gpu-check-dry}
  WORK=${GPU_CHECK_WORK:-$(mktemp -d /tmp/gpu-check-work.XXXXXX)}
  DRY=(--dry-run)
  [[ ${GPU_CHECK_STANDIN:-0} == 1 ]] && DRY+=(--standin)  # stand-in device arrays
else
  OUT=${OUT:?OUT must name the output folder}
  WORK=${GPU_CHECK_WORK:-/tmp/gpu-check-work}
  DRY=()
fi
BUDGET=${GPU_CHECK_BUDGET:-450}
RESERVE=20  # seconds kept for the summary
START=$SECONDS
mkdir -p "$OUT" "$WORK"
LOG=$OUT/log.txt
export PYTHONUNBUFFERED=1 GPU_CHECK_COMMAND="benchmarks/gpu_check.sh${1:+ $1}"
FAILED=0

status() {  # NAME RC SECONDS LIMIT [NOTE]: one status record, one line on stdout
  echo "[$((SECONDS - START))s] $1: exit $2 after $3 s (limit $4 s) ${5:-}"
  "$PY" benchmarks/gpu_record.py status "$OUT" "$@" || echo "could not record the status of $1"
  [[ $2 == 0 ]] || FAILED=1
}

limit_for() {  # LIMIT: min(LIMIT, budget left less the summary's reserve)
  local left=$((BUDGET - (SECONDS - START) - RESERVE))
  echo $(( $1 < left ? $1 : left ))
}

step() {  # NAME LIMIT LOGFILE CMD...: run CMD under timeout, output appended to LOGFILE
  local name=$1 limit logfile=$3 t0=$SECONDS rc
  limit=$(limit_for "$2")
  shift 3
  if (( limit < 10 )); then status "$name" 0 0 "$limit" "skipped: out of time"; return; fi
  echo "=== $name (limit ${limit}s): $*" >>"$logfile"
  timeout -k 5 "$limit" "$@" >>"$logfile" 2>&1
  rc=$?
  local note=""  # a failure's last line (the exception, pytest's tally) goes to the summary
  [[ $rc == 0 ]] || note=$(grep -v '^\s*$' "$logfile" | tail -n 1 | tr '|' '/' | cut -c1-240)
  status "$name" "$rc" $((SECONDS - t0)) "$limit" "$note"
}

check() {  # NAME LIMIT SUBCOMMAND [ARGS...]: a step of benchmarks/gpu_check.py
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$LOG" "$PY" benchmarks/gpu_check.py "$@" --out "$OUT" --work "$WORK" "${DRY[@]}"
}

# 1. install the carried wheels (not in a dry run: the venv has them) and record versions
if [[ $MODE == gpu ]]; then
  SITE=/tmp/gpu-check-site
  step install 120 "$LOG" "$PY" -m pip install -q --no-index --no-deps --no-compile \
    --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  [[ -d .whl ]] || echo "no .whl/ folder: was it carried?" | tee -a "$LOG"
  export PYTHONPATH="$SITE:$PWD"
  { nvidia-smi; nvidia-smi --query-gpu=name,driver_version,memory.total,memory.free,compute_mode,clocks.max.sm \
      --format=csv; } >>"$OUT/env.txt" 2>&1
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "dry run: no nvidia-smi" >>"$OUT/env.txt"
fi
"$PY" -m pip list >>"$OUT/env.txt" 2>&1
check env 60 env

# the seed scan, simulated on the CPU while the GPU tests run
SIM_LIMIT=$(limit_for 240)
SIM_T0=$SECONDS
timeout -k 5 "$SIM_LIMIT" "$PY" benchmarks/gpu_check.py simulate --out "$OUT" --work "$WORK" \
  "${DRY[@]}" >"$WORK/simulate.log" 2>&1 &
SIM_PID=$!

# 2. the GPU tests (every file with a gpu mark)
mapfile -t GPU_TESTS < <(grep -lE 'mark\.gpu|gpu_test' tests/test_*.py)
PYTEST=(-m pytest -m gpu -v -rfE -p no:cacheprovider --timeout 120
        --continue-on-collection-errors --junitxml="$OUT/pytest-junit.xml" "${GPU_TESTS[@]}")
export GPU_CHECK_PYTEST="pytest ${PYTEST[*]:2}"
step pytest 150 "$OUT/pytest.txt" "$PY" "${PYTEST[@]}"
step pytest-counts 30 "$LOG" "$PY" benchmarks/gpu_record.py pytest "$OUT"

# 3. a whole CuPy reconstruction against NumPy
check parity 90 parity

# 4./5. the seed workload, in-process, both precisions; peak pool memory
wait "$SIM_PID"
SIM_RC=$?
{ echo "=== simulate (background, limit ${SIM_LIMIT}s)"; cat "$WORK/simulate.log"; } >>"$LOG"
SIM_NOTE="(background; wall time until waited for)"
[[ $SIM_RC == 0 ]] || SIM_NOTE=$(grep -v '^\s*$' "$WORK/simulate.log" | tail -n 1 | cut -c1-240)
status simulate "$SIM_RC" $((SECONDS - SIM_T0)) "$SIM_LIMIT" "$SIM_NOTE"
if [[ $SIM_RC == 0 ]]; then
  check seed-single 100 seed --precision single
  check seed-double 130 seed --precision double
  # 6. one worker through Dask: LocalCUDACluster over TCP, then UCX
  check dask-tcp 90 dask --protocol tcp --precision single
  check dask-ucx 70 dask --protocol ucx --precision single
  # if time is left: larger batches (fewer launches and host syncs per pass)
  check seed-single-b512 60 seed --precision single --batch 512
else
  status seed 1 0 0 "skipped: no simulated scan"
fi

# 7. the summary (rendered from results.jsonl; again here with gpu_record.py summary OUT)
timeout -k 5 "$RESERVE" "$PY" benchmarks/gpu_record.py summary "$OUT" >/dev/null 2>>"$LOG" \
  || { echo "summary failed"; FAILED=1; }
[[ $MODE == dry && -z ${GPU_CHECK_WORK:-} ]] && rm -rf "$WORK"
echo "[$((SECONDS - START))s] done; figures in $OUT (summary.md, results.jsonl)"
exit "$FAILED"

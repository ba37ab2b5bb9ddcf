# Shared start of the one-call GPU scripts (run_gpu.sh, run_gpu_speed.sh); sourced, not run.
# Before sourcing: BUDGET_S (seconds for the whole call) and RESET_FILES (the .jsonl files
# of $OUT to start empty). Sets START, DRY (1 with --dry-run), OUT, PY, LOG, PEER and
# PYTHONPATH; defines say, meta and run.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
LOG="$OUT/log.txt"
for f in $RESET_FILES; do : > "$OUT/$f"; done

say() { echo "$@" | tee -a "$LOG"; }
meta() { printf '{"key": "%s", "value": "%s"}\n' "$1" "$2" >> "$OUT/meta.jsonl"; }

# ml_collections (and any other carried wheel) only where it is missing: the GPU image has
# no ml_collections; pure-Python wheels travel in .whl/ (benchmarks/README.md).
if ! $PY -c "import ml_collections" 2>/dev/null; then
  if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH" \
      || say "WARNING: wheel install failed"
  else
    say "WARNING: ml_collections missing and no .whl/ carried"
  fi
fi
PEER=${PEER:-.gpu_data/torch_peer.py}
[ -f "$PEER" ] || PEER=../shared/bench/torch_peer.py
[ -f "$PEER" ] || say "WARNING: no torch_peer.py (carry .gpu_data/torch_peer.py)"

# run NAME MIN_S CAP_S CMD...: CMD under `timeout` (at most CAP_S and what is left of
# BUDGET_S), or skipped, and said so, when less than MIN_S is left.
run() {
  local name=$1 min_s=$2 cap_s=$3; shift 3
  local left=$(( BUDGET_S - ($(date +%s) - START) ))
  if [ $left -lt $min_s ]; then
    say "=== $name: SKIPPED (${left}s of the ${BUDGET_S}s budget left; needs ~${min_s}s)"
    meta "not measured: $name" "budget: ${left}s left"
    return
  fi
  local t=$(( left < cap_s ? left : cap_s ))
  say "=== $name (timeout ${t}s, $(( $(date +%s) - START ))s elapsed): $*"
  timeout -k 10 "$t" "$@" 2>&1 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  [ $rc = 0 ] || { say "=== $name exited with status $rc"; meta "status $name" "exit $rc"; }
}

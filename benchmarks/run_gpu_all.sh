#!/usr/bin/env bash
# All the GPU work of one session in ONE `run` call (the device budget is 15 min a session,
# 10 min a call): the end-to-end run (benchmarks/run_gpu_e2e.sh) first, then the table groups
# of benchmarks/run_gpu.sh in the time that is left, then both summaries.
#
#   run(command="bash benchmarks/run_gpu_all.sh", carry=[".whl", ".gpu_data"], timeout_s=590)
#   bash benchmarks/run_gpu_all.sh --dry-run      # this machine's CPU: tests the script
#
# Environment: TOTAL_S (default 560) for everything; E2E=0 skips the end-to-end run;
# E2E_TIMEOUT (default 230) bounds it; BENCH_GROUPS (default "prof wrn34b wrn50rm conv4b
# r18b": what issue 6 still owes after session 1, see benchmarks/RESULTS.md); OUT.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
TOTAL_S=${TOTAL_S:-560}
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
if [ "${E2E:-1}" = 1 ]; then
  E2E_TIMEOUT=${E2E_TIMEOUT:-230} bash benchmarks/run_gpu_e2e.sh "${DRY[@]}" \
    --config.checkpoint_every_epochs=25
  echo "=== end-to-end exit status $? after $(( $(date +%s) - START ))s"
fi
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
BUDGET_S=$LEFT BENCH_GROUPS=${BENCH_GROUPS:-"prof wrn34b wrn50rm conv4b r18b"} \
  bash benchmarks/run_gpu.sh "${DRY[@]}"
echo "=== all done after $(( $(date +%s) - START ))s"
[ -f "$OUT/e2e_summary.md" ] && cat "$OUT/e2e_summary.md"
exit 0

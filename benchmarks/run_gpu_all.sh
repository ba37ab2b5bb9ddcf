#!/usr/bin/env bash
# All the GPU work of one session in ONE `run` call (the device budget is 15 min a session,
# 10 min a call): the end-to-end run (benchmarks/run_gpu_e2e.sh) first, then the table groups
# of benchmarks/run_gpu.sh in the time that is left, then both summaries.
#
#   run(command="bash benchmarks/run_gpu_all.sh", carry=[".whl", ".gpu_data"], timeout_s=590)
#   bash benchmarks/run_gpu_all.sh --dry-run      # this machine's CPU: tests the script
#
# Environment: TOTAL_S (default 560) for everything; E2E=0 skips the end-to-end runs;
# E2E_RUNS (default "default"): space-separated end-to-end runs, each TAG or
# TAG:--config.a=1,--config.b=2 (overrides, comma-separated), e.g. the ResNet-18 accuracy
# checks of benchmarks/RESULTS.md in a call of their own:
#   E2E_RUNS="dense:--config.mode=dense fp32:--config.precision=float32 seed1:--config.seed=1" BENCH_GROUPS=none
# (each run's files in $OUT/e2e_<TAG>/ except "default", which writes to $OUT);
# E2E_TIMEOUT (default 230) bounds each; BENCH_GROUPS (default "prof34 conv4b r18b wrn34b
# copies digits wrn50rm conv4x r18x": what issue 6 still owes after session 3 (benchmarks/RESULTS.md):
# the wrn34_2_binact profile, the issue-6 table again (on an H100, if one is lent) with the
# GPU default mask path, dense and the peer, then the mask experiments; "none" = no table);
# OUT.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
TOTAL_S=${TOTAL_S:-560}
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
SUMMARIES=()
if [ "${E2E:-1}" = 1 ]; then
  for spec in ${E2E_RUNS:-default}; do
    tag=${spec%%:*}
    overrides=()
    [ "$spec" != "$tag" ] && IFS=',' read -r -a overrides <<< "${spec#*:}"
    out=$OUT; [ "$tag" != default ] && out=$OUT/e2e_$tag
    mkdir -p "$out"
    OUT=$out WORKDIR=/tmp/mpt_e2e_$tag E2E_TIMEOUT=${E2E_TIMEOUT:-230} \
      bash benchmarks/run_gpu_e2e.sh "${DRY[@]}" --config.checkpoint_every_epochs=25 \
      "${overrides[@]}"
    echo "=== end-to-end $tag exit status $? after $(( $(date +%s) - START ))s"
    SUMMARIES+=("$out/e2e_summary.md")
  done
fi
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
GROUPS_=${BENCH_GROUPS:-"prof34 conv4b r18b wrn34b copies digits wrn50rm conv4x r18x"}
if [ "$GROUPS_" != none ]; then
  BUDGET_S=$LEFT BENCH_GROUPS=$GROUPS_ bash benchmarks/run_gpu.sh "${DRY[@]}"
fi
echo "=== all done after $(( $(date +%s) - START ))s"
# At most 8 files come back from the GPU machine: each run's result.json goes into its
# summary (as a fenced block) instead of a file of its own.
for f in "${SUMMARIES[@]}"; do
  r=$(dirname "$f")/e2e_result.json
  [ -f "$r" ] && [ -f "$f" ] && { printf '\n```json\n'; cat "$r"; printf '\n```\n'; } >> "$f" \
    && rm -f "$r"
  [ -f "$f" ] && cat "$f"
done
exit 0

#!/usr/bin/env bash
# All the GPU work of one device loan in TWO calls of ~5.5 min (the budget is 15 device
# minutes, the machine's start included, and a call should leave time to rerun it):
# PHASE=1 (default) the open rows of the speed-target table (benchmarks/README.md), PHASE=2
# the rest. If phase 1 fails, rerun phase 1 instead of starting phase 2.
#
#   run(command="bash benchmarks/run_gpu_all.sh", carry=[".whl", ".gpu_data"], timeout_s=350)
#   run(command="PHASE=2 bash benchmarks/run_gpu_all.sh", carry=[".whl", ".gpu_data"], timeout_s=350)
#   bash benchmarks/run_gpu_all.sh --dry-run      # this machine's CPU: tests the script
#
# PHASE=1: BENCH_GROUPS "prof34 wrn34b conv4b r18b digits", no end-to-end run, TOTAL_S 320:
#   the wrn34_2_binact profile (biprop and dense), then the speed-target table rows with dense
#   and the peer (on an H100, the card the targets name, if one is lent: a call naming no
#   kind gets one first; both phases ran so on 2026-11-26, benchmarks/RESULTS.md),
#   then, if time is left, wrn34_2_binact with the 16+15-bit scatter digits and 8 histogram
#   copies (KNOB_MODELS=wrn34_2_binact DIGIT_COPIES=8; compared with wrn34b's dense row).
# PHASE=2: the end-to-end ResNet-18 run (benchmarks/run_gpu_e2e.sh, at most E2E_TIMEOUT=210
#   s), then BENCH_GROUPS "wrn50rm" (wrn50_2 with dense and the peer), TOTAL_S 320.
# Environment (overrides the phase's defaults): TOTAL_S for everything; E2E=0|1;
# E2E_RUNS (default "default"): space-separated end-to-end runs, each TAG or
# TAG:--config.a=1,--config.b=2 (overrides, comma-separated), e.g. the ResNet-18 accuracy
# checks of benchmarks/RESULTS.md in a call of their own:
#   E2E=1 E2E_RUNS="dense:--config.mode=dense fp32:--config.precision=float32" BENCH_GROUPS=none TOTAL_S=590
# (each run's files in $OUT/e2e_<TAG>/ except "default", which writes to $OUT);
# E2E_TIMEOUT bounds each; BENCH_GROUPS: benchmarks/run_gpu.sh's groups ("none" = no
# table; the knob groups copies / digits / conv4x / r18x are described there); OUT.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
DRY=()
[ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
PHASE=${PHASE:-1}
case $PHASE in
  1) E2E=${E2E:-0}; GROUPS_=${BENCH_GROUPS:-"prof34 wrn34b conv4b r18b digits"}; TOTAL_S=${TOTAL_S:-320}
     # the one knob row if time is left: wrn34_2_binact with 16+15-bit digits, 8 copies
     export KNOB_MODELS=${KNOB_MODELS:-wrn34_2_binact} DIGIT_COPIES=${DIGIT_COPIES:-8} ;;
  2) E2E=${E2E:-1}; GROUPS_=${BENCH_GROUPS:-"wrn50rm"}; TOTAL_S=${TOTAL_S:-320} ;;
  *) echo "PHASE must be 1 or 2, got $PHASE" >&2; exit 2 ;;
esac
echo "=== run_gpu_all.sh phase $PHASE: groups '$GROUPS_', end-to-end $E2E, budget ${TOTAL_S}s"
export OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
SUMMARIES=()
if [ "$E2E" = 1 ]; then
  for spec in ${E2E_RUNS:-default}; do
    tag=${spec%%:*}
    overrides=()
    [ "$spec" != "$tag" ] && IFS=',' read -r -a overrides <<< "${spec#*:}"
    out=$OUT; [ "$tag" != default ] && out=$OUT/e2e_$tag
    mkdir -p "$out"
    OUT=$out WORKDIR=/tmp/mpt_e2e_$tag E2E_TIMEOUT=${E2E_TIMEOUT:-210} \
      bash benchmarks/run_gpu_e2e.sh "${DRY[@]}" --config.checkpoint_every_epochs=25 \
      "${overrides[@]}"
    echo "=== end-to-end $tag exit status $? after $(( $(date +%s) - START ))s"
    SUMMARIES+=("$out/e2e_summary.md")
  done
fi
LEFT=$(( TOTAL_S - ($(date +%s) - START) ))
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

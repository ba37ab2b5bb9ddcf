#!/usr/bin/env bash
# One GPU window of the reproduction queue (experiments/reproduce.py), with everything that
# must come back packed into one file: the results CSV with the new rows, the shipped
# tickets, and each run's result.json, metrics.jsonl and logs.
#
#   bash experiments/gpu_window.sh                      # on the GPU machine
#   bash experiments/gpu_window.sh --dry-run            # here: one tiny CPU run of the path
#
# Environment: QUEUE_GROUPS (default table), BUDGET_MIN (5.5: start only runs whose estimates add
# up to this), PARALLEL (2 runs at once on the one GPU), HARD_S (the queue gets SIGTERM
# after this many seconds, so the running runs checkpoint and the files still come back;
# default BUDGET_MIN * 60 + 60), ONLY (a --only regex), OUT (where window.tar.gz goes),
# MEMBERS (1: run the queue's keep-fraction runs as member programs, reproduce.py --members),
# MEMBERS_BENCH (1: first benchmarks/members.py, member programs' images/s against one run,
# into $OUT/members_bench.{txt,jsonl}, cut after MEMBERS_BENCH_S seconds, default 240;
# MEMBERS_PROGRAMS picks its models, default conv4=6,resnet18_cifar=3).
# The CIFAR-10 archive must travel inside the repository: .gpu_data/cifar10_train_jpeg.tar.gz
# (git-ignored, carried), and pure-Python wheels the GPU machine lacks in .whl/
# (ml_collections, tensorboardX). MPT_COMMIT (or .gpu_data/COMMIT) names the commit for the
# rows. Back here: python experiments/import_window.py window.tar.gz.
set -u
cd "$(dirname "$0")/.."
START=$(date +%s)
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
if ! $PY -c "import ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
[ -z "${MPT_COMMIT:-}" ] && [ -f .gpu_data/COMMIT ] && export MPT_COMMIT=$(cat .gpu_data/COMMIT)
OUT=${OUT:-$PWD/window_out}
mkdir -p "$OUT"
DATA=.gpu_data/cifar10_train_jpeg.tar.gz
[ -f "$DATA" ] || DATA=$(cd .. && pwd)/shared/data/cifar10_train_jpeg.tar.gz
RUNS=${RUNS:-/tmp/reproduce}
BUDGET_MIN=${BUDGET_MIN:-5.5}
ARGS=(--groups="${QUEUE_GROUPS:-table}" --parallel="${PARALLEL:-2}" --root="$RUNS"
      --set "data_dir=$DATA" --set checkpoint_every_epochs=10)
[ -n "${ONLY:-}" ] && ARGS+=(--only="$ONLY")
[ "${MEMBERS:-0}" = "1" ] && ARGS+=(--members)
BENCH=(--programs="${MEMBERS_PROGRAMS:-conv4=6,resnet18_cifar=3}")
if [ "${1:-}" = "--dry-run" ]; then
  # The whole path on this machine's CPU: one Conv-2 run of 3 steps, results and tickets in
  # a scratch copy (the committed files are not touched).
  SCRATCH=$(mktemp -d)
  ARGS+=(--only='^cifar10_conv2,keep_fraction=0.5,' --groups=conv --results="$SCRATCH/cifar10.csv"
         --tickets="$SCRATCH/tickets" --set num_epochs=1 --set max_train_steps=3
         --set batch_size=32 --set eval_batch_size=1000 --hardware=cpu-dry-run --record_early)
  BUDGET_MIN=10000
  BENCH=(--programs=conv2=2 --width-mult=0.0625 --batch=8 --steps=2 --repeats=2 --warmup=1)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
if [ "${MEMBERS_BENCH:-0}" = "1" ]; then
  echo "=== members benchmark: ${BENCH[*]} (cut after ${MEMBERS_BENCH_S:-240}s)"
  timeout -s TERM -k 30 "${MEMBERS_BENCH_S:-240}" $PY benchmarks/members.py "${BENCH[@]}" \
    --json="$OUT/members_bench.jsonl" 2>&1 | tee "$OUT/members_bench.txt"
fi
HARD_S=${HARD_S:-$($PY -c "print(int($BUDGET_MIN * 60 + 60))")}
echo "=== gpu_window: ${ARGS[*]} --budget_minutes=$BUDGET_MIN (SIGTERM after ${HARD_S}s)"
timeout -s TERM -k 60 "$HARD_S" $PY experiments/reproduce.py "${ARGS[@]}" \
  --budget_minutes="$BUDGET_MIN" 2>&1 | tee "$OUT/window_log.txt"
RC=${PIPESTATUS[0]}
echo "=== queue exit status $RC after $(( $(date +%s) - START ))s"
# Pack what comes back (at most 8 files return from the GPU machine: one archive).
LIST=$(mktemp)
RESULTS=experiments/results/cifar10.csv; [ -n "${SCRATCH:-}" ] && RESULTS=$SCRATCH/cifar10.csv
[ -f "$RESULTS" ] && echo "$RESULTS" >> "$LIST"
for d in "$RUNS"/*/ "$RUNS"/*/members/*/; do  # single runs and the members of programs
  for f in result.json metrics.jsonl log.txt ticket_export.txt ticket.ticket members.json; do
    [ -f "$d$f" ] && echo "$d$f" >> "$LIST"
  done
done
[ -d tickets ] && find tickets -type f >> "$LIST"
[ -n "${SCRATCH:-}" ] && [ -d "$SCRATCH/tickets" ] && find "$SCRATCH/tickets" -type f >> "$LIST"
tar czf "$OUT/window.tar.gz" -T "$LIST" 2>/dev/null
ls -la "$OUT"
[ -f "$RESULTS" ] && { echo "=== $RESULTS"; cat "$RESULTS"; }
[ -n "${SCRATCH:-}" ] && rm -rf "$SCRATCH"
exit "$RC"

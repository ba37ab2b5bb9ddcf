#!/usr/bin/env bash
# The end-to-end speed target's run (benchmarks/README.md): resnet18_cifar MPT-1/32
# (configs/cifar10_resnet18.py: 100 epochs, batch 256, keep_fraction 0.2) on the
# 45,000-image training part of the shared CIFAR-10 archive, timed by the wall clock
# INCLUDING JAX start-up, archive decoding, compilation, per-epoch evaluation on the 5,000
# held-out images and checkpoints (target: < 3 min on one H100).
#
#   bash benchmarks/run_gpu_e2e.sh [--dry-run] [--config.FIELD=VALUE ...]
#
# The archive must be inside the repository tree (the GPU machine sees only the repo):
# DATA (default .gpu_data/cifar10_train_jpeg.tar.gz, ignored by git, carried with the call).
# E2E_TIMEOUT (default 560 s) bounds the run; OUT receives e2e_log.txt, e2e_result.json,
# e2e_metrics.jsonl and e2e_summary.md. --dry-run: 1 epoch of 5 steps, batch 32 (CPU test).
set -u
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
OUT=${OUT:-$PWD/bench_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
DATA=${DATA:-.gpu_data/cifar10_train_jpeg.tar.gz}
[ -f "$DATA" ] || DATA=../shared/data/cifar10_train_jpeg.tar.gz
WORKDIR=${WORKDIR:-/tmp/mpt_e2e_run}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! $PY -c "import ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
rm -rf "$WORKDIR" /tmp/mpt_e2e_cache
EXTRA=()
if [ $DRY = 1 ]; then
  EXTRA=(--config.num_epochs=1 --config.max_train_steps=5 --config.batch_size=32
         --config.eval_batch_size=500)
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
T0=$(date +%s.%N)
timeout -k 10 "${E2E_TIMEOUT:-560}" $PY -m mpt_jax.main --config=configs/cifar10_resnet18.py \
  --config.data_dir="$DATA" --config.cache_dir=/tmp/mpt_e2e_cache --workdir="$WORKDIR" \
  --config.progress_bar=False "${EXTRA[@]}" "$@" 2>&1 | tee "$OUT/e2e_log.txt"
RC=${PIPESTATUS[0]}
T1=$(date +%s.%N)
WALL=$($PY -c "print(round($T1 - $T0, 1))")
cp "$WORKDIR/result.json" "$OUT/e2e_result.json" 2>/dev/null
cp "$WORKDIR/metrics.jsonl" "$OUT/e2e_metrics.jsonl" 2>/dev/null
$PY - "$OUT" "$WALL" "$RC" "$DRY" <<'EOF' | tee "$OUT/e2e_summary.md"
import json, os, sys
out, wall, rc, dry = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
res = {}
if os.path.exists(os.path.join(out, "e2e_result.json")):
    res = json.load(open(os.path.join(out, "e2e_result.json")))
train_ips = []
path = os.path.join(out, "e2e_metrics.jsonl")
if os.path.exists(path):
    for line in open(path):
        try:
            m = json.loads(line)
        except json.JSONDecodeError:
            continue
        if m.get("split") == "train" and "images_per_s" in m:
            train_ips.append(m["images_per_s"])
steady = sorted(train_ips[len(train_ips) // 10:])  # skip the first 10 % (compilation)
median = steady[len(steady) // 2] if steady else None
try:
    import jax
    device = jax.devices()[0].device_kind
except Exception:
    device = "?"
print(f"# end-to-end resnet18_cifar MPT-1/32{' (DRY RUN)' if dry else ''}\n")
print(f"- device: {device}; exit status {rc}")
print(f"- wall time (start-up, data, compile, train, eval, checkpoints): {wall:.1f} s"
      f" = {wall / 60:.2f} min (target < 3 min)")
print(f"- epochs: {res.get('epochs_completed')}, steps: {res.get('global_step')}, "
      f"train.py's own wall_seconds: {res.get('wall_seconds')}")
print(f"- final top-1 {res.get('final_top1')} % / best {res.get('best_top1')} % on "
      f"{res.get('eval_split')}")
if median:
    print(f"- median logged training throughput after the first 10 %: {median:,.0f} images/s")
EOF
exit $RC

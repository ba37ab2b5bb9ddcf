#!/usr/bin/env bash
# The speed round's GPU check in ONE call of ~5.5 min: for conv4, resnet18_cifar, wrn50_2
# and wrn34_2_binact, the biprop step with the default mask method (radix_many) and with the
# two new ones (radix_pallas: histograms counted per program in a Pallas/Triton kernel, no
# atomics; warm: the search starts from the previous step's thresholds), the dense step,
# and ../shared/bench/torch_peer.py eager and --compile (bf16, channels-last); then the
# wrn50_2 dense step under XLA flag variants (can its convolutions reach 4,000 images/s?).
# Prints one table (biprop/dense, ours/faster peer) and writes $OUT/speed_results.md.
#
#   run(command="bash benchmarks/run_gpu_speed.sh", carry=[".whl", ".gpu_data"], timeout_s=420)
#   bash benchmarks/run_gpu_speed.sh --dry-run     # this machine's CPU: tests the script
#
# Preparation (benchmarks/README.md): .whl/ with the ml_collections wheel, and
# .gpu_data/torch_peer.py copied from ../shared/bench/ (the version with --compile).
# Groups, in priority order (SPEED_GROUPS; each runs under `timeout`, and a group that no
# longer fits in TOTAL_S, default 330 s, is skipped and listed as not measured):
#   wrn34 conv4 r18 wrn50   our rows of that model: biprop radix_many, dense, biprop
#                           radix_pallas, biprop warm (one process, batch 256, bf16)
#   peers                   torch_peer eager for conv4, resnet18_cifar, wrn50_2
#   peersc                  torch_peer --compile for the same (slow to compile)
#   hlo                     benchmarks/score_grad_hlo.py for wrn34_2_binact (compile only):
#                           the fusions holding the score gradient, $OUT/score_grad_hlo.txt
#   wrn50x                  wrn50_2 dense with each of $DENSE_FLAGS (XLA_FLAGS variants)
#   prof                    (not default) profile_step.py tables of wrn34_2_binact with
#                           radix_pallas and warm, in $OUT/profile.md
# Expected (compile times of the earlier H100 calls): wrn34, conv4, r18 and the eager peers
# in ~5 min, the rest after. If the call is cut short, rerun the missing groups, e.g.
#   SPEED_GROUPS="wrn50 peersc hlo wrn50x" bash benchmarks/run_gpu_speed.sh
TOTAL_S=${TOTAL_S:-330}
BUDGET_S=$TOTAL_S
RESET_FILES="rows.jsonl peers.jsonl meta.jsonl log.txt"
source "$(dirname "$0")/gpu_lib.sh"
if [ -f "$PEER" ] && ! grep -q -- "--compile" "$PEER"; then
  say "WARNING: $PEER has no --compile (copy it again)"
fi
command -v nvidia-smi >/dev/null && meta gpu "$(nvidia-smi \
  --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | head -1)"
meta versions "$($PY -c 'import jax, flax; print("jax", jax.__version__, "flax", flax.__version__)' 2>&1 | tail -1)"

if [ $DRY = 1 ]; then
  # CPU test of the script: tiny batches, float32, small stand-ins for the ImageNet models.
  GROUPS_=${SPEED_GROUPS:-"wrn34 conv4 peers peersc hlo wrn50x"}
  BATCH=8; PREC=float32; DEV=cpu; SIZE224=32
  STEPS="--warmup 1 --steps 1 --repeats 2"; PEER_STEPS="--steps 2 --warmup 1 --repeats 2"
  DENSE_FLAGS=${DENSE_FLAGS:-"--xla_backend_optimization_level=3"}
  BUDGET_S=${SPEED_DRY_TOTAL_S:-900}  # the CPU is slow; every group should run
  meta note "DRY RUN on $(uname -m) CPU: numbers meaningless"
else
  GROUPS_=${SPEED_GROUPS:-"wrn34 conv4 r18 peers wrn50 peersc hlo wrn50x"}
  BATCH=256; PREC=bfloat16; DEV=cuda; SIZE224=224
  STEPS="--warmup 3 --steps 10 --repeats 3"; PEER_STEPS="--steps 10 --warmup 3 --repeats 3"
  # Convolution layouts (XLA picks its own), no autotuning (how much autotuning buys), no
  # CUDA graphs. Comma-free flags, one variant per word; "a+b" = two flags in one variant.
  DENSE_FLAGS=${DENSE_FLAGS:-"--xla_gpu_force_conv_nhwc=true --xla_gpu_force_conv_nchw=true --xla_gpu_autotune_level=0"}
fi
say "=== run_gpu_speed.sh: groups '$GROUPS_', budget ${BUDGET_S}s"
# --results: the stamped raw rows come back in $OUT (benchmarks/results/ of the device's copy
# would be lost, and a dry run would write into this checkout).
BENCH="$PY benchmarks/train_step.py --json $OUT/rows.jsonl --batch $BATCH --precision $PREC \
  --results $OUT/results_train_step.jsonl"

# ours MODEL MIN_S CAP_S: the four rows of a model; the dry run stands resnet20_cifar in
# for wrn34_2_binact and conv2 for wrn50_2.
ours() {
  local m=$1
  if [ $DRY = 1 ]; then case $m in wrn34*) m=resnet20_cifar ;; wrn50*) m=conv2 ;; esac; fi
  run "ours $1" "$2" "$3" $BENCH --model $m --modes biprop,dense --select auto \
    --mask-impl batched --mask-method radix_many,radix_pallas,warm $STEPS
}

# peer MODEL [--compile]: one torch_peer.py figure, appended to peers.jsonl
peer() {
  local model=$1 extra=()
  case $model in
    conv4) name=conv4 ;; resnet18_cifar) name=cifar_resnet18 ;;
    wrn50_2) name=wrn50_2; extra=(--size $SIZE224) ;;
  esac
  [ $DRY = 1 ] && [ $name != conv4 ] && { say "(dry run: peer $name needs torchvision; skipped)"; return; }
  shift
  run "peer $model $*" 15 ${PEER_CAP:-120} bash -c "$PY $PEER --model $name --batch $BATCH \
    --device $DEV --bf16 --channels-last ${extra[*]:-} $PEER_STEPS $* | grep '^{' >> $OUT/peers.jsonl"
}

for g in $GROUPS_; do
  case $g in
    wrn34)  ours wrn34_2_binact 60 130 ;;
    conv4)  ours conv4 30 70 ;;
    r18)    ours resnet18_cifar 45 100 ;;
    wrn50)  ours wrn50_2 70 150 ;;
    peers)  for m in conv4 resnet18_cifar wrn50_2; do peer $m; done ;;
    peersc) for m in conv4 resnet18_cifar wrn50_2; do PEER_CAP=150 peer $m --compile; done ;;
    wrn50x) for f in $DENSE_FLAGS; do
              m=wrn50_2; [ $DRY = 1 ] && m=conv2
              XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }${f//+/ }" run "$m dense $f" 40 90 \
                $BENCH --model $m --modes dense $STEPS
            done ;;
    hlo)    m=wrn34_2_binact; [ $DRY = 1 ] && m=resnet20_cifar
            run "score gradient HLO $m" 30 90 $PY benchmarks/score_grad_hlo.py --model $m \
              --batch $BATCH --precision $PREC --out "$OUT/score_grad_hlo.txt" ;;
    prof)   for mm in radix_pallas warm; do
              m=wrn34_2_binact; [ $DRY = 1 ] && m=resnet20_cifar
              run "profile $m $mm" 40 100 $PY benchmarks/profile_step.py --model $m \
                --mode biprop --batch $BATCH --precision $PREC --mask-impl batched \
                --mask-method $mm --steps 5 --top 12 --markdown "$OUT/profile.md"
            done ;;
    *) say "unknown group $g" ;;
  esac
done
say "=== total $(( $(date +%s) - START ))s"
$PY benchmarks/speed_summary.py "$OUT" \
  --title "mpt_jax speed round$([ $DRY = 1 ] && echo ' (DRY RUN)')" 2>&1 | tee -a "$LOG"
# speed_results.md holds every row: drop the raw files (at most 8 files come back).
[ -s "$OUT/speed_results.md" ] && rm -f "$OUT/rows.jsonl" "$OUT/peers.jsonl" "$OUT/meta.jsonl"
exit 0

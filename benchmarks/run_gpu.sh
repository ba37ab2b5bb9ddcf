#!/usr/bin/env bash
# The speed-target GPU benchmark (benchmarks/README.md) in ONE call: select
# micro-benchmark, then the training-step table (ours in bf16, biprop and dense, sort vs
# radix, next to torch_peer.py bf16+channels-last for the same model and batch), then one
# summary table ($OUT/gpu_results.md + .json).
#
#   bash benchmarks/run_gpu.sh            # on the GPU machine (see benchmarks/README.md)
#   bash benchmarks/run_gpu.sh --dry-run  # tiny settings on this machine's CPU (tests the script)
#
# Environment:
#   BUDGET_S   total seconds for everything (default 420); groups that would not fit are
#              skipped and said so, every group also has its own `timeout`.
#   BENCH_GROUPS which groups, in order (default "r18b conv4b wrn50b r18 select conv4 wrn34
#              wrn50sort"; also: wrn34b / wrn50rm (batched radix_many for wrn34_2_binact /
#              wrn50_2; wrn50rm with dense and the peer), prof (benchmarks/profile_step.py
#              tables in $OUT/profile.md; prof34: the same for wrn34_2_binact, biprop and
#              dense), conv4x (conv4 mask experiments: compare with 4- and 6-bit digits,
#              and radix_many without XLA's command buffers; r18x: the compare digits for
#              resnet18_cifar; digits: MPT_JAX_SELECT_DIGITS plans), copies (conv4 and
#              resnet18_cifar with MPT_JAX_SELECT_COPIES in $COPIES, default "256 1024";
#              digits and copies measure the models in $KNOB_MODELS, default
#              "conv4 resnet18_cifar", e.g. KNOB_MODELS=wrn34_2_binact);
#              r18b/conv4b/wrn50b: the batched mask path (train.py mask_impl=batched,
#              mpt_jax.masks), r18b and conv4b with dense and the peer; MASK_METHODS picks
#              their methods, default "radix_many" (the GPU default); WRN50_METHOD for
#              wrn50b, default "compare")
#   OUT        results folder (default ./bench_out); PEER  torch_peer.py (default
#              .gpu_data/torch_peer.py, else ../shared/bench/torch_peer.py); PYTHON (python3)
# Results come out as they are measured (PYTHONUNBUFFERED); rows.jsonl grows row by row.
BUDGET_S=${BUDGET_S:-420}
RESET_FILES="rows.jsonl select.jsonl meta.jsonl"
source "$(dirname "$0")/gpu_lib.sh"

if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm \
    --format=csv 2>&1 | tee -a "$LOG"
  meta gpu "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)"
fi
$PY - <<'EOF' 2>&1 | tee -a "$LOG"
import jax, flax, optax
print("jax", jax.__version__, "flax", flax.__version__, "optax", optax.__version__,
      "devices", jax.devices())
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as e:
    print("torch unavailable:", e)
EOF
meta jax "$($PY -c 'import jax; print(jax.__version__)' 2>/dev/null)"
meta torch "$($PY -c 'import torch; print(torch.__version__)' 2>/dev/null)"

if [ $DRY = 1 ]; then
  # CPU test of the script: tiny batches, few steps, float32, CIFAR models only.
  BENCH_GROUPS=${BENCH_GROUPS:-"r18b conv4b select r18 conv4 wrn34"}
  B_SMALL=8; B_BIG=2; PREC=float32
  STEPS="--warmup 1 --steps 1 --repeats 2 --peer-steps 2 --peer-warmup 1"
  SEL_MODELS="--model conv4"; SEL_REPEATS=2; PROF_STEPS=2
  meta note "DRY RUN on $(uname -m) CPU: numbers meaningless"
else
  BENCH_GROUPS=${BENCH_GROUPS:-"r18b conv4b wrn50b r18 select conv4 wrn34 wrn50sort"}
  B_SMALL=256; B_BIG=256; PREC=bfloat16
  STEPS="--warmup 3 --steps 10 --repeats 5 --peer-steps 20 --peer-warmup 5"
  SEL_MODELS="--model resnet18_cifar --model wrn50_2"; SEL_REPEATS=10; PROF_STEPS=20
fi
SEL_ONLY="thr:sort,thr:radix,thr:radix copies=32,thr:radix_many copies=32,mask:sort,mask:radix,mask:radix kept_mask"
# --results: the stamped raw rows (benchmarks/results/ of the device's copy would be lost).
BENCH="$PY benchmarks/train_step.py --json $OUT/rows.jsonl --peer-path $PEER --peer-python $PY \
  --results $OUT/results_train_step.jsonl"

# model_batch MODEL: "MODEL BATCH CAP_S" for the knob groups: 224x224 models (wrn*) get
# $B_BIG and a longer cap; the dry run stands resnet20_cifar in for them.
model_batch() {
  case $1 in
    wrn*) if [ $DRY = 1 ]; then echo "resnet20_cifar $B_SMALL 60"; else echo "$1 $B_BIG 120"; fi ;;
    *)    echo "$1 $B_SMALL 60" ;;
  esac
}

MASK_METHODS=${MASK_METHODS:-radix_many}
WRN50_METHOD=${WRN50_METHOD:-compare}
for g in $BENCH_GROUPS; do
  case $g in
    # Batched masks first: rows biprop batched:<first method>, dense, the other batched
    # methods (the per-layer rows come in the r18 / conv4 groups if the budget allows).
    r18b)   run "resnet18_cifar batched" 60 150 $BENCH --model resnet18_cifar --batch $B_SMALL \
              --precision $PREC --modes biprop,dense --select auto --mask-impl batched \
              --mask-method $MASK_METHODS --torch-peer $STEPS ;;
    conv4b) run "conv4 batched" 30 80 $BENCH --model conv4 --batch $B_SMALL --precision $PREC \
              --modes biprop,dense --select auto --mask-impl batched \
              --mask-method $MASK_METHODS --torch-peer $STEPS ;;
    # conv4 experiments on its mask-search gap: 6-bit compare digits (fewer passes, so
    # fewer kernels), XLA's command buffers (CUDA graphs) switched off, and more privatised
    # histogram copies against the hot-bin contention of the first radix pass (the H200
    # profile of 2026-11-26: one 82 us pass of conv4's 208 us search); rows tagged with
    # their settings.
    conv4x) run "conv4 compare digits" 25 60 $BENCH --model conv4 --batch $B_SMALL \
              --precision $PREC --modes biprop --select auto --mask-impl batched \
              --mask-method compare,compare6 $STEPS
            XLA_FLAGS="${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_command_buffer=" \
              run "conv4 without command buffers" 25 60 $BENCH --model conv4 \
              --batch $B_SMALL --precision $PREC --modes biprop,dense --select auto \
              --mask-impl batched --mask-method radix_many $STEPS ;;
    # Wider scatter digits (fewer passes, thinner hot bins): MPT_JAX_SELECT_DIGITS plans in
    # $DIGIT_PLANS (default "16,15"), each with the histogram copies in $DIGIT_COPIES
    # (default "1 8").
    digits) for d in ${DIGIT_PLANS:-16,15}; do
              for c in ${DIGIT_COPIES:-1 8}; do
                for m in ${KNOB_MODELS:-conv4 resnet18_cifar}; do
                  set -- $(model_batch $m)
                  MPT_JAX_SELECT_DIGITS=$d MPT_JAX_SELECT_COPIES=$c run "$1 digits=$d copies=$c" \
                    25 $3 $BENCH --model $1 --batch $2 --precision $PREC --modes biprop \
                    --select auto --mask-impl batched --mask-method radix_many $STEPS
                done
              done
            done ;;
    r18x)   run "resnet18_cifar compare digits" 40 90 $BENCH --model resnet18_cifar \
              --batch $B_SMALL --precision $PREC --modes biprop --select auto \
              --mask-impl batched --mask-method compare,compare6 $STEPS ;;
    copies) for c in ${COPIES:-256 1024}; do
              for m in ${KNOB_MODELS:-conv4 resnet18_cifar}; do
                set -- $(model_batch $m)
                MPT_JAX_SELECT_COPIES=$c run "$1 copies=$c" 25 $3 $BENCH --model $1 \
                  --batch $2 --precision $PREC --modes biprop --select auto \
                  --mask-impl batched --mask-method radix_many $STEPS
              done
            done ;;
    wrn50b) run "wrn50_2 batched" 110 200 $BENCH --model wrn50_2 --batch $B_BIG --precision $PREC \
              --modes biprop,dense --select auto --mask-impl batched \
              --mask-method $WRN50_METHOD --torch-peer $STEPS ;;
    select) run select 30 90 $PY benchmarks/select_bench.py $SEL_MODELS \
              --repeats $SEL_REPEATS --json "$OUT/select.jsonl" \
              --results "$OUT/results_select_bench.jsonl" --only "$SEL_ONLY" ;;
    r18)    run resnet18_cifar 60 170 $BENCH --model resnet18_cifar --batch $B_SMALL \
              --precision $PREC --modes biprop,dense --select auto,kept_mask,sort \
              --torch-peer $STEPS ;;
    conv4)  run conv4 30 80 $BENCH --model conv4 --batch $B_SMALL --precision $PREC \
              --modes biprop,dense --select auto --torch-peer $STEPS ;;
    wrn50)  run wrn50_2 120 240 $BENCH --model wrn50_2 --batch $B_BIG --precision $PREC \
              --modes biprop,dense --select auto --mask-impl per_layer,batched \
              --mask-method $WRN50_METHOD --torch-peer $STEPS ;;
    wrn34)  if [ $DRY = 1 ]; then M=resnet20_cifar; B=$B_SMALL; else M=wrn34_2_binact; B=$B_BIG; fi
            run $M 90 150 $BENCH --model $M --batch $B --precision $PREC \
              --modes biprop,dense --select auto --torch-peer $STEPS ;;
    wrn50sort) run "wrn50_2 sort" 70 120 $BENCH --model wrn50_2 --batch $B_BIG \
              --precision $PREC --modes biprop --select sort $STEPS ;;
    # The batched default (radix_many) for the two ImageNet models.
    wrn34b) if [ $DRY = 1 ]; then M=resnet20_cifar; B=$B_SMALL; else M=wrn34_2_binact; B=$B_BIG; fi
            run "$M batched" 90 170 $BENCH --model $M --batch $B --precision $PREC \
              --modes biprop,dense --select auto --mask-impl batched \
              --mask-method radix_many $STEPS ;;
    wrn50rm) run "wrn50_2 batched radix_many" 100 200 $BENCH --model wrn50_2 --batch $B_BIG \
              --precision $PREC --modes biprop,dense --select auto --mask-impl batched \
              --mask-method radix_many --torch-peer $STEPS ;;
    # Where the time goes (benchmarks/profile_step.py): conv4 and resnet18_cifar with the
    # batched default, conv4 dense for comparison; tables appended to $OUT/profile.md.
    # wrn34_2_binact's gap (0.917 of dense on the H200) had no profile then.
    prof34) for mode in biprop dense; do
              if [ $DRY = 1 ]; then M=resnet20_cifar; B=$B_SMALL; else M=wrn34_2_binact; B=$B_BIG; fi
              run "profile $M $mode" 40 100 $PY benchmarks/profile_step.py --model $M \
                --mode $mode --batch $B --precision $PREC --mask-impl batched \
                --mask-method radix_many --steps $PROF_STEPS --top 12 \
                --markdown "$OUT/profile.md" --json "$OUT/profile.jsonl"
            done ;;
    prof)   for spec in "conv4 biprop" "conv4 dense" "resnet18_cifar biprop"; do
              set -- $spec
              run "profile $1 $2" 25 90 $PY benchmarks/profile_step.py --model $1 --mode $2 \
                --batch $B_SMALL --precision $PREC --mask-impl batched \
                --mask-method radix_many --steps $PROF_STEPS --top 12 \
                --markdown "$OUT/profile.md" --json "$OUT/profile.jsonl"
            done ;;
    *) say "unknown group $g" ;;
  esac
done

say "=== total $(( $(date +%s) - START ))s"
$PY benchmarks/summarize.py "$OUT" --title "mpt_jax training-step benchmark$([ $DRY = 1 ] && echo ' (DRY RUN)')" \
  2>&1 | tee -a "$LOG"
# gpu_results.json holds every row: drop the raw files so that a second script's files
# still fit the 8 files that come back from the GPU machine.
[ -s "$OUT/gpu_results.json" ] && rm -f "$OUT/rows.jsonl" "$OUT/select.jsonl" "$OUT/meta.jsonl"

#!/usr/bin/env bash
# The GPU benchmark session: one short, prepared run on a single CUDA device.
# Each step has its own time limit so a slow step cannot starve the others; every run writes its JSON record as soon
# as it finishes, and everything is packed into $RESULTS_OUT/results.tgz at the end.
#   RESULTS_OUT=/tmp/gpu HIMTM_DATA_DIR=/path/to/data HIMTM_GIT_COMMIT=$(git rev-parse --short HEAD) \
#     bash scripts/gpu_benchmarks.sh
# On a machine without `datasets` / `evaluate` (or without network), install them from wheels downloaded beforehand.
# Budgets, limits and the full budget's datasets can be changed through the environment; a step whose limit is 0 is
# skipped. tests/test_scripts.py smoke-runs this file on the CPU with SPEED_BUDGET=quick SPEED_DEVICE=cpu
# FULL_BUDGET=quick FULL_DATASETS=ETTh1 T_SPEED_COMPILE=0 T_FULL_VARIANT=400 FULL_VARIANT_DATASETS=ETTh1.
#
# Default order = what only a GPU can still give (docs/findings.md): the speed table of the current model, eager
# and under torch.compile + CUDA graphs at L = 512 (the missed H200 target), then the `full` budget, all three models
# per dataset, smallest datasets first, as far as its limit reaches (~2.5 min per ETTh dataset on an H200). The
# `cpu`-budget protocol, the ablation and the transfer matrix are complete on the CPU; set T_ACC, T_ABL or T_TRANSFER
# (seconds) to rerun them here as well, and T_FULL_VARIANT to add the candidate large-dataset defaults at the `full`
# budget (FULL_VARIANT, FULL_VARIANT_DATASETS choose the variant and datasets).
set -u
OUT_DIR="${RESULTS_OUT:-outputs/gpu_benchmarks}"
R="$OUT_DIR/results"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 MPLBACKEND=Agg
ACC_BUDGET="${ACC_BUDGET:-cpu}" FULL_BUDGET="${FULL_BUDGET:-full}" TRANSFER_BUDGET="${TRANSFER_BUDGET:-cpu}"
SPEED_BUDGET="${SPEED_BUDGET:-full}" SPEED_DEVICE="${SPEED_DEVICE:-cuda}"
WORK="${WORK_ROOT:-/tmp}"  # checkpoints of the runs (not packed)
read -r -a FULL_DATASETS <<< "${FULL_DATASETS:-ETTh1 ETTh2 ETTm1 ETTm2 weather}"
(nvidia-smi --query-gpu=name,memory.total --format=csv || true) > "$OUT_DIR/gpu.txt" 2>&1
step() {  # step <seconds> <log name> <command...>
  local limit=$1 name=$2; shift 2
  if [ "$limit" = 0 ]; then echo "== $name skipped (limit 0)"; return; fi  # `timeout 0` would mean no limit at all
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   exit $? at $(date +%T)"; grep -E "MSE|mse|win/s|wrote|Error" "$OUT_DIR/$name.log" | tail -40
}
step "${T_SPEED:-50}" speed python scripts/benchmark_speed.py --budget "$SPEED_BUDGET" --device "$SPEED_DEVICE" \
  --batch_size 64 --output_dir "$R/speed"
# L = 512, where eager HiMTM is launch-bound on the H200: every model under torch.compile with CUDA graphs.
step "${T_SPEED_COMPILE:-120}" speed_compiled python scripts/benchmark_speed.py --budget "$SPEED_BUDGET" \
  --device "$SPEED_DEVICE" --batch_size 64 --context_lengths 512 --warmup 3 --compile reduce-overhead \
  --output_dir "$R/speed"
# --no_baselines here and below: the closed-form baselines do not depend on the device; they are computed on a CPU
# (scripts/benchmark_baselines.py) instead of spending device minutes.
step "${T_FULL:-330}" acc_$FULL_BUDGET python scripts/benchmark_accuracy.py --budget "$FULL_BUDGET" \
  --datasets "${FULL_DATASETS[@]}" --results_dir "$R" --work_dir "$WORK/work_full" --no_baselines
# Optional: the candidate defaults for the large datasets (docs/findings.md, finding 2) at the same budget, to set
# beside the defaults' rows before they change. Off unless T_FULL_VARIANT is set: it does not fit in a 15-minute
# session together with the steps above.
if [ -n "${T_FULL_VARIANT:-}" ]; then
  read -r -a VARIANT_DATASETS <<< "${FULL_VARIANT_DATASETS:-ETTm1 ETTm2}"
  step "$T_FULL_VARIANT" acc_${FULL_BUDGET}_variant python scripts/benchmark_accuracy.py --budget "$FULL_BUDGET" \
    --datasets "${VARIANT_DATASETS[@]}" --models himtm \
    --himtm_variant "${FULL_VARIANT:-hsd_instance_norm_head_init_zeros}" --results_dir "$R" \
    --work_dir "$WORK/work_full_variant" --no_baselines
fi
# Optional reruns of what the CPU already has (off unless their limit is set).
if [ -n "${T_ACC:-}" ]; then
  step "$T_ACC" acc_$ACC_BUDGET python scripts/benchmark_accuracy.py --budget "$ACC_BUDGET" --datasets ETTh1 ETTh2 \
    --results_dir "$R" --work_dir "$WORK/work_acc" --no_baselines
fi
if [ -n "${T_ABL:-}" ]; then
  step "$T_ABL" ablation python scripts/ablate.py --budget "$ACC_BUDGET" --datasets ETTh1 --seeds 1 2 \
    --results_dir "$R" --work_dir "$WORK/work_abl" --no_baselines
fi
if [ -n "${T_TRANSFER:-}" ]; then
  step "$T_TRANSFER" transfer python scripts/transfer.py --budget "$TRANSFER_BUDGET" \
    --pairs ETTh2:ETTh1 ETTm1:ETTh1 weather:ETTh1 --protocols finetune linear_probe --fractions 0.05 0.1 1.0 \
    --results_dir "$R/transfer" --work_dir "$WORK/work_transfer"
fi
tar czf "$OUT_DIR/results.tgz" -C "$OUT_DIR" results
for f in "$OUT_DIR"/*.log; do echo "##### $f"; tail -c 300000 "$f"; done > "$OUT_DIR/all_logs.txt"
rm -f "$OUT_DIR"/*.log
ls -la "$OUT_DIR"

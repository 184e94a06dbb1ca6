#!/usr/bin/env bash
# The GPU benchmark session: one short, prepared run on a single CUDA device.
# Each step has its own time limit so a slow step cannot starve the others; every run writes its JSON record as soon
# as it finishes, and everything is packed into $RESULTS_OUT/results.tgz at the end.
#   RESULTS_OUT=/tmp/gpu HIMTM_DATA_DIR=/path/to/data HIMTM_GIT_COMMIT=$(git rev-parse --short HEAD) \
#     bash scripts/gpu_benchmarks.sh
# On a machine without `datasets` / `evaluate` (or without network), install them from wheels downloaded beforehand.
# Budgets, limits and the full budget's datasets can be changed through the environment; a step whose limit is 0 is
# skipped. tests/test_scripts.py smoke-runs this file on the CPU with SPEED_BUDGET=quick SPEED_DEVICE=cpu
# FULL_BUDGET=quick FULL_DATASETS=ETTh1 T_SPEED_COMPILE=0 T_FULL_VARIANT=400 FULL_VARIANT_DATASETS=ETTh1 BASE_STEPS=3
# and a tiny model in BASE_ARGS.
#
# Default order (issue: the paper-scale runs in one prepared <= 10-minute device command), what only a GPU can give:
#   1. himtm-base: multi-domain pre-training on every local train split (scripts/pretrain_base.py; BASE_STEPS steps,
#      limit T_BASE); its folder (weights, config, model card, corpus.json, diagnostics; not its checkpoints/) and
#      the push_to_hub dry-run folder are copied into the results as soon as it ends;
#   2. the `full` budget on FULL_DATASETS (default ETTh1 ETTh2 weather), H = 96/192/336/720, HiMTM and both
#      PatchTSTs, one seed, bf16 (`mixed_precision=auto`), smallest datasets first, as far as its limit reaches;
#   3. the speed table, eager and under torch.compile + CUDA graphs.
# Default limits add up to 580 s. The `cpu`-budget protocol, the ablation and the transfer matrix run on the CPU; set
# T_ACC, T_ABL or T_TRANSFER (seconds) to rerun them here as well, and T_FULL_VARIANT to add a candidate HiMTM
# variant at the `full` budget (FULL_VARIANT, FULL_VARIANT_DATASETS choose the variant and datasets). BASE_ARGS adds
# flags to the base pre-training (the CPU smoke run uses it for a tiny model).
set -u
OUT_DIR="${RESULTS_OUT:-outputs/gpu_benchmarks}"
R="$OUT_DIR/results"
mkdir -p "$R"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 MPLBACKEND=Agg
ACC_BUDGET="${ACC_BUDGET:-cpu}" FULL_BUDGET="${FULL_BUDGET:-full}" TRANSFER_BUDGET="${TRANSFER_BUDGET:-cpu}"
SPEED_BUDGET="${SPEED_BUDGET:-full}" SPEED_DEVICE="${SPEED_DEVICE:-cuda}"
WORK="${WORK_ROOT:-/tmp}"  # checkpoints of the runs (not packed)
read -r -a FULL_DATASETS <<< "${FULL_DATASETS:-ETTh1 ETTh2 weather}"
read -r -a BASE_ARGS <<< "${BASE_ARGS:-}"
(nvidia-smi --query-gpu=name,memory.total --format=csv || true) > "$OUT_DIR/gpu.txt" 2>&1
step() {  # step <seconds> <log name> <command...>
  local limit=$1 name=$2; shift 2
  if [ "$limit" = 0 ]; then echo "== $name skipped (limit 0)"; return; fi  # `timeout 0` would mean no limit at all
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   exit $? at $(date +%T)"; grep -E "MSE|mse|win/s|wrote|Error" "$OUT_DIR/$name.log" | tail -40
}
# 1. himtm-base. Checkpoints every 1000 steps stay in $WORK (resumable with --resume_from_checkpoint latest); the
#    finished folder, without them, goes into the results.
step "${T_BASE:-200}" himtm_base python scripts/pretrain_base.py --output_dir "$WORK/himtm-base" \
  --dry_run_dir "$WORK/himtm-base-hub" --overwrite_output_dir --max_steps "${BASE_STEPS:-3000}" --save_steps 1000 \
  --disable_tqdm "${BASE_ARGS[@]}"
if [ -f "$WORK/himtm-base/model.safetensors" ]; then
  mkdir -p "$R/himtm-base"
  find "$WORK/himtm-base" -maxdepth 1 -type f -exec cp {} "$R/himtm-base/" \;
  [ -d "$WORK/himtm-base-hub" ] && cp -r "$WORK/himtm-base-hub" "$R/himtm-base-hub"
fi
# 2. The `full` budget.
# --no_baselines here and below: the closed-form baselines do not depend on the device; they are computed on a CPU
# (scripts/benchmark_baselines.py) instead of spending device minutes.
step "${T_FULL:-280}" acc_$FULL_BUDGET python scripts/benchmark_accuracy.py --budget "$FULL_BUDGET" \
  --datasets "${FULL_DATASETS[@]}" --results_dir "$R" --work_dir "$WORK/work_full" --no_baselines
# 3. Speed.
step "${T_SPEED:-40}" speed python scripts/benchmark_speed.py --budget "$SPEED_BUDGET" --device "$SPEED_DEVICE" \
  --batch_size 64 --output_dir "$R/speed"
# L = 512, where eager HiMTM is launch-bound on the H200: every model under torch.compile with CUDA graphs.
step "${T_SPEED_COMPILE:-60}" speed_compiled python scripts/benchmark_speed.py --budget "$SPEED_BUDGET" \
  --device "$SPEED_DEVICE" --batch_size 64 --context_lengths 512 --warmup 3 --compile reduce-overhead \
  --output_dir "$R/speed"
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
    --pairs ETTh2,ETTm1,ETTm2,weather:ETTh1 ETTh1,ETTh2,ETTm1,weather:ETTm2 ETTh1,ETTh2,ETTm1,ETTm2:weather \
    --protocols finetune scratch --fractions 0.05 0.1 1.0 \
    --results_dir "$R/transfer" --work_dir "$WORK/work_transfer"
fi
tar czf "$OUT_DIR/results.tgz" -C "$OUT_DIR" results
for f in "$OUT_DIR"/*.log; do echo "##### $f"; tail -c 300000 "$f"; done > "$OUT_DIR/all_logs.txt"
rm -f "$OUT_DIR"/*.log
ls -la "$OUT_DIR"

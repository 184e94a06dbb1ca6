#!/usr/bin/env bash
# The GPU benchmark session: one short, prepared run on a single CUDA device.
# Each step has its own time limit so a slow step cannot starve the others; every run writes its JSON record as soon
# as it finishes, and everything is packed into $RESULTS_OUT/results.tgz at the end.
#   RESULTS_OUT=/tmp/gpu HIMTM_DATA_DIR=/path/to/data bash scripts/gpu_benchmarks.sh
set -u
OUT_DIR="${RESULTS_OUT:-outputs/gpu_benchmarks}"
mkdir -p "$OUT_DIR/results"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1 MPLBACKEND=Agg
R="$OUT_DIR/results"
nvidia-smi --query-gpu=name,memory.total --format=csv > "$OUT_DIR/gpu.txt" 2>&1
step() {  # step <seconds> <log name> <command...>
  local limit=$1 name=$2; shift 2
  echo "== $(date +%T) $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  echo "   exit $? at $(date +%T)"; grep -E "MSE|win/s|wrote" "$OUT_DIR/$name.log" | tail -40
}
step "${T_ACC_CPU:-150}" acc_cpu python scripts/benchmark_accuracy.py --budget cpu --datasets ETTh1 ETTh2 --results_dir "$R" --work_dir /tmp/work_acc_cpu
step "${T_ABL:-160}" ablation python scripts/ablate.py --budget cpu --datasets ETTh1 --seeds 1 2 --results_dir "$R" --work_dir /tmp/work_abl
step "${T_SPEED:-90}" speed python scripts/benchmark_speed.py --device cuda --batch_size 64 --output_dir "$R/speed"
step "${T_ACC_FULL:-150}" acc_full python scripts/benchmark_accuracy.py --budget full --datasets ETTh1 ETTh2 ETTm1 ETTm2 weather --results_dir "$R" --work_dir /tmp/work_acc_full
tar czf "$OUT_DIR/results.tgz" -C "$OUT_DIR" results
cat "$OUT_DIR"/*.log | tail -c 2000000 > "$OUT_DIR/all_logs.txt"; rm -f "$OUT_DIR"/*.log
ls -la "$OUT_DIR"

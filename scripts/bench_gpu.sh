#!/usr/bin/env bash
# One accelerator session's benchmarks: the three training steps at the configs' own
# batch sizes (SyncNet 128, emotion disc 64, EmoGen 16 clips) in float32 (with PyTorch on the same
# GPU, interleaved) and bfloat16, then generator inference. Rows go to $OUT/gpu_results.json, the
# log to $OUT/gpu_log.txt. Run from the repository root: bash scripts/bench_gpu.sh [OUTDIR]
set -u
OUT=${1:-${OUT:-bench_gpu_out}}
mkdir -p "$OUT" /tmp/bench_rows
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2 PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
LOG="$OUT/gpu_log.txt"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__, jax.devices())"
  for spec in syncnet:128 emotion_disc:64 emogen:16; do
    stage=${spec%%:*}; batch=${spec##*:}
    timeout 200 $PY scripts/bench_train.py --stages "$stage" --sizes reference --reference-batch "$batch" \
      --steps 10 --dtype float32 --compare-torch --json "/tmp/bench_rows/train_${stage}_f32.json"
  done
  timeout 120 $PY scripts/bench_infer.py --batches 16,80,256 --repeats 20 --json /tmp/bench_rows/infer_f32.json
  for spec in syncnet:128 emotion_disc:64 emogen:16; do
    stage=${spec%%:*}; batch=${spec##*:}
    timeout 150 $PY scripts/bench_train.py --stages "$stage" --sizes reference --reference-batch "$batch" \
      --steps 10 --dtype bfloat16 --json "/tmp/bench_rows/train_${stage}_bf16.json"
  done
  timeout 90 $PY scripts/bench_infer.py --batches 16,256 --repeats 20 --dtype bfloat16 --no-torch \
    --json /tmp/bench_rows/infer_bf16.json
} 2>&1 | grep -v -i "warning" | tee "$LOG"
$PY - "$OUT/gpu_results.json" <<'PYEOF'
import glob, json, sys
rows = []
for f in sorted(glob.glob("/tmp/bench_rows/*.json")):
  rows += [dict(r, source=f.rsplit("/", 1)[-1]) for r in json.load(open(f))]
json.dump(rows, open(sys.argv[1], "w"), indent=2)
print(len(rows), "rows")
PYEOF

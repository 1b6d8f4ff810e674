#!/usr/bin/env bash
# The accelerator measurements of BENCHMARKS.md (section 9 and the GPU section) in one run, for
# a session that has a CUDA GPU for a few minutes: the model's tests, the decode step at batch 1 and 64
# against the memory-bandwidth bound (with a kernel profile), eager and at fixed shapes (CUDA
# graphs), and continuous vs static vs the worker's stream at full size in bf16, eager and with
# graphs. Everything it prints also lands in $OUT (or ./accel-out).
#
#   bash bench/accelerator_check.sh            # ~6-8 minutes on one H200
#   BANDWIDTH_GBS=3350 bash bench/accelerator_check.sh   # another card's peak bandwidth
#
# It needs torch with CUDA, transformers, pillow, lxml, safetensors and regex importable by
# `python3`; it does not install the project (PYTHONPATH is the checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-accel-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
bandwidth="${BANDWIDTH_GBS:-4800}"  # H200 HBM3e peak, GB/s
python3 - <<'PY' 2>&1 | tee "$out/device.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "device", torch.cuda.get_device_name(0))
PY
# 1. The CUDA paths of the model under test (skipped without a GPU elsewhere).
timeout 180 python3 -m pytest -q -p no:cacheprovider tests/test_model_devices.py \
  tests/test_model_continuous.py tests/test_model_decode_rows.py tests/test_model_fixed_shapes.py \
  2>&1 | tee "$out/tests.txt"
# 2. Decode step at batch 1 and 64 vs the bandwidth bound (weights + KV bytes per step), eager
#    and at fixed shapes (captured as CUDA graphs), side by side.
timeout 240 python3 bench/generation.py --device cuda --dtype bfloat16 --size full \
  --batches 1,64 --new-tokens 32 --bandwidth-gbs "$bandwidth" --profile --fixed-shapes \
  --results-dir "$out" 2>&1 | tee "$out/generation.txt"
# 3. Continuous batching and the worker's stream vs static, the issue's length mix at 1/4.
timeout 300 python3 bench/continuous_batching.py --device cuda --dtype bfloat16 --size full \
  --pages 192 --max-batch 64 --length-scale 0.25 --repeats 1 --warmup 1 --fixed-shapes \
  --results-dir "$out" 2>&1 | tee "$out/continuous.txt"

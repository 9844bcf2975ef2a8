#!/usr/bin/env bash
# The CUDA checks in one go, for a lent GPU machine (no network, its own torch/triton/transformers):
#
#   bash bench/gpu.sh [OUT_DIR]
#
# 1. the Triton kernels compiled on the GPU against their PyTorch references (tests/test_kernels.py,
#    bf16 cases included), 2. the `triton` training backend against eager PEFT (the gpu-marked tests
#    of tests/test_train.py), 3. bench/train.py: eager PEFT vs triton vs unsloth vs torch.compile on
#    the student's architecture with random weights. Unsloth is not on such a machine: if `.whl/`
#    holds its wheels (see bench/README.md) they are installed into /tmp/site first.
# Each step has its own time limit, so one that hangs does not take the others' figures with it.
set -u
OUT=${1:-${OUT:-bench-gpu-out}}
mkdir -p "$OUT"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import torch, triton, transformers, peft; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
} 2>&1 | tee "$OUT/env.txt"

echo "== kernels (compiled)"; timeout 180 $PY -m pytest -q -p no:cacheprovider tests/test_kernels.py 2>&1 | tail -25 | tee "$OUT/kernels.txt"
echo "== train backends"; timeout 150 $PY -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py 2>&1 | tail -15 | tee "$OUT/train-tests.txt"
echo "== bench eager vs triton"; timeout 200 $PY bench/train.py --device cuda --random-init --runs eager,triton --timeout 90 --out "$OUT/train-cuda.json" 2>&1 | tail -30 | tee "$OUT/train-cuda.txt"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/site:$PWD
fi
echo "== bench eager vs unsloth vs compile"; timeout 330 $PY bench/train.py --device cuda --random-init --runs eager,unsloth,compile,triton+compile --timeout 150 --no-check --out "$OUT/train-cuda-2.json" 2>&1 | tail -30 | tee "$OUT/train-cuda-2.txt"
date -u

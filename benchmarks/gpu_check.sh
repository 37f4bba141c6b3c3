#!/usr/bin/env bash
# GPU check on a CUDA machine: the CUDA tests, inference and training speed against effdet, and the
# whole test suite with the GPU visible (the Trainer then trains on it). Writes logs to ${OUT:-gpu_out}.
#   bash benchmarks/gpu_check.sh            (from the repository root, package deps installed)
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
PY=${PY:-python3}
step() { echo; echo "=== $* ($(date +%T))"; }
{
step versions
nvidia-smi -L
$PY -c "import torch, torchvision, timm, onnxruntime; print('torch', torch.__version__, 'tv', torchvision.__version__, 'timm', timm.__version__, 'ort', onnxruntime.__version__, torch.cuda.get_device_name())"
step CUDA tests
timeout 240 $PY -m pytest -q -rA tests/test_cuda.py tests/engine/test_cuda_training.py 2>&1 | tail -25
step inference benchmark D0, torch backend vs effdet
timeout 150 $PY -m efficientdet benchmark efficientdet_d0 --device cuda --batch-sizes 1,16 --backends torch \
  --compare-effdet --iterations 30 --json "$OUT/bench_d0_cuda.json" --quiet
step training throughput D0 at 512, bf16 autocast
timeout 150 $PY benchmarks/train_throughput.py --device cuda --batch 16 --steps 20 --repeats 2 \
  --impls effdet,efficientdet-cl --models efficientdet_d0
step whole test suite with the GPU visible
# -n needs pytest-xdist, which no extra installs: without it pytest stopped at "unrecognized arguments: -n"
PARALLEL=""
if $PY -c "import xdist" 2>/dev/null; then PARALLEL="-n 12"; fi
OMP_NUM_THREADS=2 timeout "${SUITE_TIMEOUT:-200}" $PY -m pytest -q $PARALLEL -rf 2>&1 | tail -40
step done
} 2>&1 | tee "$OUT/gpu_check.log"

#!/usr/bin/env bash
# Every GPU check in one call (~8 minutes on an H100), for a rented machine that has PyTorch but
# not gunctl's extra packages. Prepare here first (see benchmarks/README.md, "GPU"):
#   .gpu/guns-sample   a copy of ../shared/data/guns-sample
#   .gpu/whl/          faster-coco-eval wheel(s) for the machine's Python
# then run with `carry: [".gpu"]`. Writes logs and JSON under $OUT (or /tmp/gpu-out).
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
  && export PYTHONPATH="/tmp/site:$PWD"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import sys, torch, torchvision, torchmetrics, typer; print(sys.version.split()[0], torch.__version__, torchvision.__version__, torchmetrics.__version__, typer.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

# 1. Throughput at 800 px: fp32/bf16 x batch 2/8/16 x channels_last off/on (self-contained).
timeout 170 python3 benchmarks/gpu_bench.py --data .gpu/guns-sample --max-seconds 120 \
  --json "$OUT/gpu_bench.json" 2>&1 | tee "$OUT/gpu_bench.log"

# 2. Accuracy under one budget: gunctl's defaults vs torchvision's (800 px, 2000 proposals).
timeout 300 python3 benchmarks/gpu_accuracy.py --data .gpu/guns-sample --epochs 20 \
  --max-seconds 200 --json "$OUT/accuracy.json" 2>&1 | grep -v "^warning" | tee "$OUT/accuracy.log"

# 3. torchrun with the nccl backend, then gunctl validate on its checkpoint (AMP on CUDA).
A=/tmp/ddp-art
python3 -m gunctl ingest --source .gpu/guns-sample --out $A --quiet && python3 -m gunctl split --out $A --quiet
timeout 120 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m gunctl train \
  --epochs 2 --out $A --run-name nccl --weights none --batch-size 8 --workers 4 2>&1 | tail -8 | tee "$OUT/ddp.log"
timeout 60 python3 -m gunctl validate $A/runs/nccl/last.pth --out $A 2>&1 | tail -25 | tee -a "$OUT/ddp.log"
echo "done in ${SECONDS}s" | tee -a "$OUT/machine.txt"

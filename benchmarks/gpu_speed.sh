#!/usr/bin/env bash
# Issue 16's GPU figures in one call of the device tool (~3 minutes on an H100): the profile of
# a training step at 256 px (top operators, GPU busy fraction, host-device syncs per step),
# training img/s at batch 8/16/32 and validation (detection) img/s, with gunctl's code and
# defaults. Needs only torch and torchvision on the machine. Writes under $OUT (or /tmp/gpu-out).
#   bash benchmarks/gpu_speed.sh               # on the GPU machine
#   bash benchmarks/gpu_speed.sh --cpu-smoke   # here: the same code path on the CPU
set -u
export PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-out}
export OUT
mkdir -p "$OUT"
PY=${PYTHON:-python3}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no GPU"
  uptime
} 2>&1 | tee "$OUT/machine.txt"
timeout 500 "$PY" benchmarks/gpu_speed.py "$@" 2>&1 | grep -v "^USDT\|^ERROR:.*gpuGetDeviceCount" | tee "$OUT/gpu_speed.log"
echo "done in ${SECONDS}s" | tee -a "$OUT/machine.txt"

#!/usr/bin/env bash
# Issue 15's GPU check in one call (~7 minutes on an H100): from scratch, `gunctl train
# --minutes 5` with every other option at its default (the scratch recipe; batch 8, bf16 and
# channels-last on CUDA), then `gunctl validate` (plain and --tta) on the val split, for split
# seeds 0 and 1 one after the other when --seeds says so. Prints val mAP@0.5 and training img/s.
#
# Prepare here first, as for gpu_run.sh (benchmarks/README.md, "GPU"):
#   .gpu/guns-sample   a copy of ../shared/data/guns-sample
#   .gpu/whl/          faster-coco-eval wheel(s) for the machine's Python
# then run `bash benchmarks/gpu_quality.sh` on the device with `carry: [".gpu"]`.
#
# CPU smoke mode (checks the code path here, a few minutes; the figures mean nothing):
#   bash benchmarks/gpu_quality.sh --cpu-smoke
set -u
export PYTHONUNBUFFERED=1
MINUTES=5
SEEDS="0"
DATA=.gpu/guns-sample
EXTRA=()
PY=python3
if [ "${1:-}" = "--cpu-smoke" ]; then
  # a tenth of a minute of training on 12 small images of the sample, with this checkout's venv
  MINUTES=0.1
  DATA=../shared/data/guns-sample
  EXTRA=(--subset 12 --min-size 128 --max-size 224 --device cpu --workers 0)
  PY=.venv/bin/python
  shift
fi
[ "${1:-}" = "--seeds" ] && SEEDS="$2"
OUT=${OUT:-/tmp/gpu-quality-out}
mkdir -p "$OUT"
if [ -d .gpu/whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .gpu/whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
{
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  $PY -c "import torch, torchvision; print(torch.__version__, torchvision.__version__)"
} 2>&1 | tee "$OUT/machine.txt"

for SEED in $SEEDS; do
  A=/tmp/quality-art-$SEED
  rm -rf "$A"
  $PY -m gunctl ingest --source "$DATA" --out "$A" --quiet
  $PY -m gunctl split --seed "$SEED" --out "$A" --quiet
  # from scratch: --weights none (offline, auto would also fall back to it)
  timeout $(( ${MINUTES%.*} * 120 + 900 )) $PY -m gunctl train --minutes "$MINUTES" --weights none \
    --seed "$SEED" --out "$A" --run-name q "${EXTRA[@]}" 2>&1 | tee "$OUT/train-$SEED.log" | tail -30
  $PY -m gunctl validate "$A/models/fasterrcnn.pth" --out "$A" --tta --json \
    > "$OUT/validate-$SEED.json"
  $PY - "$A/runs/q/last.pth" "$OUT/validate-$SEED.json" "$SEED" <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
import torch
ckpt = torch.load(sys.argv[1], map_location="cpu", weights_only=True)
report = json.load(open(sys.argv[2]))
history = ckpt["history"]
images = sum(r["train"]["images"] for r in history)
seconds = sum(r["train"]["seconds"] for r in history)
m, t = report["metrics"], report["tta"] or {}
print(f"seed {sys.argv[3]}: recipe {ckpt['config']['recipe']}, {ckpt['config']['model']['name']}, "
      f"{len(history)} epochs, train {images / seconds:.1f} img/s; validate best: mAP@0.5 "
      f"{m['map_50']:.3f}, mAP@0.5:0.95 {m['map']:.3f}; with flip TTA {t.get('map_50', 0):.3f}")
PY
done
echo "done in ${SECONDS}s" | tee -a "$OUT/machine.txt"

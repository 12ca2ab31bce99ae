#!/usr/bin/env bash
# Issue 15's headline on this machine: from scratch (offline, so --weights auto falls back to
# the scratch recipe), `gunctl train --minutes M` with every other option at its default, then
# `gunctl validate` (plain and --tta) on the val split; one run per split seed.
#
#   bash benchmarks/cpu_quality.sh 15 "0 1"              # seeds one after the other (the machine each)
#   PARALLEL=1 bash benchmarks/cpu_quality.sh 60 "0 1"   # at once, one thread each (slower per run)
#   TRAIN_ARGS="--mosaic 0" NAME=no-mosaic PARALLEL=1 bash benchmarks/cpu_quality.sh 15  # a variant
#
# Logs and validate reports: benchmarks/results/quality-cpu-m<M>[-par][-NAME]-seed<S>.{log,json}.
set -u
MINUTES=${1:-15}
SEEDS=${2:-"0 1"}
PY=${PY:-.venv/bin/python}
DATA=${DATA:-../shared/data/guns-sample}
RESULTS=benchmarks/results
run_seed() {
  local seed=$1 tag=m$MINUTES${PARALLEL:+-par}${NAME:+-$NAME}
  local art=/tmp/gunctl-quality-$tag-s$1 log=$RESULTS/quality-cpu-$tag-seed$1
  rm -rf "$art"
  $PY -m gunctl ingest --source "$DATA" --out "$art" --quiet
  $PY -m gunctl split --seed "$seed" --out "$art" --quiet
  { date; $PY -m gunctl train --minutes "$MINUTES" --seed "$seed" --out "$art" --run-name q \
    ${TRAIN_ARGS:-}; date; } \
    > "$log.log" 2>&1
  $PY -m gunctl validate "$art/models/fasterrcnn.pth" --out "$art" --tta --json > "$log.json"
  $PY - "$log.json" "$seed" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
m, t = report["metrics"], report.get("tta") or {}
print(f"seed {sys.argv[2]}: validate mAP@0.5 {m['map_50']:.3f}, mAP@0.5:0.95 {m['map']:.3f}; "
      f"flip TTA mAP@0.5 {t.get('map_50', float('nan')):.3f}")
PY
}
if [ -n "${PARALLEL:-}" ]; then
  export OMP_NUM_THREADS=1
  for seed in $SEEDS; do run_seed "$seed" & done
  wait
else
  for seed in $SEEDS; do run_seed "$seed"; done
fi

#!/bin/bash
# The GPU numbers of the README, in one call of at most 10 minutes on one GPU
# with JAX and no TensorFlow (one H100; see BUILD.md, "Numbers from a GPU").
#
# Prepare here:   ../shared/tools/gpu-wheels.sh --data fast-histogram==0.14
# Run there:      benchmarks/gpu_run.sh     (carry .whl and .gpu-data)
#
# 1. benchmarks/step_overhead.py at the paper's shapes (VGG-16, ResNet-18,
#    width 1, batch 128): SGD, SGSWrapper, ACB branches side by side.
# 2. benchmarks/accuracy.py: VGG-11, baseline and sgs_mi, 3 seeds each, all
#    six runs at once on the one GPU, $EPOCHS epochs (default 60: on an H100
#    on 2026-11-27 this took 341 s, after 94 s of step timing), stopped at
#    SECONDS_LIMIT (default 500 s after the start).
# 3. benchmarks/mi_refresh.py: one SGS-MI refresh on 256 images, VGG-16 and
#    ResNet-18, against the authors' estimator, stopped 570 s after the start.
#
# Tables and logs go to $OUT (benchmarks/results/gpu when unset); the runs'
# JSON files in one archive, which is written even when the study is
# stopped: each run's JSON holds its finished epochs.
# Smaller settings for a local try: EPOCHS, ACCURACY_ARGS, STEP_ARGS,
# MI_ARGS are added to the commands, DATA replaces the data file.
set -euo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu}
EPOCHS=${EPOCHS:-60}
DATA=${DATA:-.gpu-data/cifar10_jpeg.npz}
source benchmarks/gpu_setup.sh
runs=$(mktemp -d)
left() {  # seconds until $1 seconds after the start, at least 30
  local n=$(( $1 - $(date +%s) + start )); echo $(( n < 30 ? 30 : n ))
}
{
  time python3 benchmarks/step_overhead.py --models=vgg16,resnet18 --width=1 \
    --batch_size=128 --data="$DATA" --output="$OUT/step_overhead.md" ${STEP_ARGS:-}
  time timeout -k 10 "$(left ${SECONDS_LIMIT:-500})" python3 benchmarks/accuracy.py \
    --data="$DATA" --epochs="$EPOCHS" --methods=baseline,sgs_mi --seeds=0,1,2 \
    --parallel=6 --output="$runs/accuracy.md" ${ACCURACY_ARGS:-} \
    || echo "accuracy study stopped: exit $?"
  time timeout -k 10 "$(left 570)" python3 benchmarks/mi_refresh.py --data="$DATA" \
    --imagenet_map=false --applications= --output="$OUT/mi_refresh.md" ${MI_ARGS:-} \
    || echo "mi_refresh stopped: exit $?"
} 2>&1 | grep -v "^WARNING: All log messages\|cuda_timer" | tee -a "$OUT/log.txt"
cp "$runs/accuracy.md" "$OUT/accuracy.md" 2>/dev/null || echo "no accuracy table" | tee -a "$OUT/log.txt"
tar -czf "$OUT/accuracy_runs.tgz" -C "$runs" accuracy
rm -r "$runs"
cat "$OUT"/*.md

#!/bin/bash
# The CIFAR-100 table on one GPU, JAX backend, no TensorFlow, in one call of
# at most 10 minutes (see BUILD.md, "Numbers from a GPU").
#
# Prepare here:   ../shared/tools/gpu-wheels.sh --data=cifar100
# Run there:      benchmarks/gpu_run_cifar100.sh          (carry .whl and .gpu-data)
#     then:       METHODS=sgs_mi,acb,repvgg benchmarks/gpu_run_cifar100.sh
#
# benchmarks/accuracy.py --dataset=cifar100: VGG-11 at full width with the
# authors' CIFAR-100 classifier (--head=mlp) and recipe, $METHODS (default
# baseline,sgs_mi) x 3 seeds, all runs at once on the one GPU. The schedule
# must be fixed before training (cosine over all steps), so the number of
# epochs is measured, not guessed: a 2-epoch calibration of the same runs
# is timed and benchmarks/epochs_that_fit.py turns the seconds left into
# epochs (at most MAX_EPOCHS, the authors' 200), unless EPOCHS is set.
# The study is stopped at SECONDS_LIMIT (default 560 s after the start); each
# run's JSON holds its finished epochs even then.
#
# Tables and logs go to $OUT (benchmarks/results/gpu_cifar100 when unset),
# the runs' JSON files in one archive. Smaller settings for a local try:
# ACCURACY_ARGS is added to both accuracy.py commands, DATA replaces the
# data file, SEEDS the seeds.
set -euo pipefail
start=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/results/gpu_cifar100}
DATA=${DATA:-.gpu-data/cifar100_jpeg.npz}
METHODS=${METHODS:-baseline,sgs_mi}
SEEDS=${SEEDS:-0,1,2}
SECONDS_LIMIT=${SECONDS_LIMIT:-560}
source benchmarks/gpu_setup.sh
runs=$(mktemp -d)
parallel=$(( $(tr ',' '\n' <<< "$METHODS" | wc -l) * $(tr ',' '\n' <<< "$SEEDS" | wc -l) ))
# accuracy.py on CIFAR-100 with the study's settings
study=(python3 benchmarks/accuracy.py --dataset=cifar100 --data="$DATA"
  --methods="$METHODS" --seeds="$SEEDS" --parallel="$parallel" ${ACCURACY_ARGS:-})
{
  epochs=${EPOCHS:-}
  if [ -z "$epochs" ]; then
    t0=$(date +%s)
    "${study[@]}" --epochs=2 --output="$runs/calibration.md"
    left=$(( SECONDS_LIMIT - $(date +%s) + start ))
    epochs=$(python3 benchmarks/epochs_that_fit.py --runs="$runs/calibration" \
      --calibration_seconds=$(( $(date +%s) - t0 )) --seconds="$left" \
      --max_epochs="${MAX_EPOCHS:-200}")
    echo "calibration: $(( $(date +%s) - t0 )) s; $left s left: $epochs epochs"
  fi
  time timeout -k 10 "$(( SECONDS_LIMIT - $(date +%s) + start ))" \
    "${study[@]}" --epochs="$epochs" --output="$runs/accuracy.md" \
    || echo "accuracy study stopped: exit $?"
} 2>&1 | grep -v "^WARNING: All log messages\|cuda_timer" | tee -a "$OUT/log.txt"
cp "$runs/accuracy.md" "$OUT/accuracy.md" 2>/dev/null || echo "no accuracy table" | tee -a "$OUT/log.txt"
tar -czf "$OUT/accuracy_runs.tgz" -C "$runs" accuracy
rm -r "$runs"
cat "$OUT/accuracy.md" 2>/dev/null || true

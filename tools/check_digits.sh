#!/usr/bin/env bash
# The acceptance protocol of the digits model, run on the engine: for each digit D,
# 20 samples (--class D --seed 1) with the given scheduler and steps, read by the
# shipped and by an independent classifier (tools/classify_pngs.py, needs PyTorch).
# Usage: tools/check_digits.sh [SCHEDULER] [STEPS] [OUT]   (default: ddim 50 /tmp/digits-check)
set -euo pipefail
cd "$(dirname "$0")/.."
scheduler=${1:-ddim}
steps=${2:-50}
out=${3:-/tmp/digits-check-$scheduler-$steps}
python=${VENV:-/work/venv}/bin/python
cargo build --release --quiet
start=$(date +%s)
for d in 0 1 2 3 4 5 6 7 8 9; do
    target/release/diffsteer generate --model weights/digits --class "$d" --count 20 --steps "$steps" \
        --scheduler "$scheduler" --cfg 3 --seed 1 --out "$out/$d" --overwrite --quiet
done
echo "generated 200 images in $(( $(date +%s) - start )) s ($scheduler, $steps steps)"
"$python" tools/classify_pngs.py "$out" --json "$out/summary.json"

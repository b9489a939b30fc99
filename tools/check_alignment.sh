#!/usr/bin/env bash
# The reward-guidance acceptance protocol, run on the engine: for each digit D, the
# UNCONDITIONAL model steered by `--reward classifier:D`, 20 samples, DDIM 50, seed 1,
# read by the shipped (guiding) classifier and by an independent one
# (tools/classify_pngs.py, needs PyTorch). Extra flags go to every `generate` call.
# Usage: tools/check_alignment.sh OUT [generate flags...]
#   tools/check_alignment.sh /tmp/align-x0
#   tools/check_alignment.sh /tmp/align-fk --particles 4 --steer fk
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/check_alignment.sh OUT [generate flags...]}
shift
python=${VENV:-/work/venv}/bin/python
cargo build --release --quiet
start=$(date +%s.%N)
for d in 0 1 2 3 4 5 6 7 8 9; do
    target/release/diffsteer generate --model weights/digits --class none --reward "classifier:$d" \
        --steps 50 --scheduler ddim --seed 1 --count 20 --out "$out/$d" --overwrite --quiet "$@"
done
end=$(date +%s.%N)
echo "generated 200 images in $(echo "$end - $start" | bc) s with: $*"
"$python" tools/classify_pngs.py "$out" --json "$out/summary.json"

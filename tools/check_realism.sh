#!/usr/bin/env bash
# The realism-reward protocol, run on the engine: for each digit D, class CFG 3 sampling
# (`--class D --cfg 3`, DDIM 50, seeds 1-20), judged by the five independent readers of
# tools/readers.py (share read as D, and the Frechet distance to real digits). Extra flags
# go to every `generate` call.
# Usage: tools/check_realism.sh OUT [generate flags...]
#   tools/check_realism.sh /tmp/cfg3                          # the baseline
#   tools/check_realism.sh /tmp/cfg3-realism --reward realism
#   tools/check_realism.sh /tmp/cfg3-both --reward classifier:{D} --reward realism@0.5
# A literal `{D}` in a flag is replaced by the digit of each run.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: tools/check_realism.sh OUT [generate flags...]}
shift
python=${VENV:-/work/venv}/bin/python
bin=${DIFFSTEER_BIN:-target/release/diffsteer}
start=$(date +%s.%N)
for d in 0 1 2 3 4 5 6 7 8 9; do
    flags=()
    for f in "$@"; do flags+=("${f//\{D\}/$d}"); done
    nice -n 19 "$bin" generate --model weights/digits --class "$d" --cfg 3 --steps 50 --scheduler ddim \
        --seed 1 --count 20 --out "$out/$d" --overwrite --quiet "${flags[@]}"
done
end=$(date +%s.%N)
echo "generated 200 images in $(echo "$end - $start" | bc) s with: $*"
nice -n 19 "$python" tools/readers.py --judge "$out" --json "$out/readers.json"

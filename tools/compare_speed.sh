#!/usr/bin/env bash
# Side-by-side speed of diffsteer (CPU backend) and diffusers + PyTorch (CPU) on the
# same model, batch, steps and thread count, in one run on this machine.
# Usage: tools/compare_speed.sh [MODEL_DIR] [THREADS]   (needs a venv with torch + diffusers in $VENV, default /work/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-weights/digits}
threads=${2:-2}
python=${VENV:-/work/venv}/bin/python
cargo build --release --quiet
echo "== diffsteer"
json=$(mktemp --suffix .json)
trap 'rm -f "$json"' EXIT
# --batch 16: 16 images with CFG, i.e. 32-row model calls, the same as diffusers' batch 32.
ours=$(target/release/diffsteer --threads "$threads" bench --model "$model" --batch 16 --steps 20 --scheduler ddim --iters 10 --json "$json")
echo "$ours"
echo "== diffusers"
theirs=$("$python" tools/bench_diffusers.py --model "$model" --batch 32 --steps 20 --scheduler ddim --iters 10 --threads "$threads")
echo "$theirs" | grep -v '^{'
gemm_ours=$(echo "$ours" | awk '/^gemm/ {print $(NF-2)}')
gemm_theirs=$(echo "$theirs" | awk '/^gemm/ {print $(NF-1)}')
fwd_ours=$(echo "$ours" | awk '/unet forward/ {print $5}')
smp_ours=$(python3 -c 'import json, sys; b = json.load(open(sys.argv[1]))["batches"][-1]; print(1.0 / b["images_per_s"])' "$json")
fwd_theirs=$(echo "$theirs" | awk '/unet forward/ {print $5}')
smp_theirs=$(echo "$theirs" | awk '/^sample/ {print $(NF-1)}')
echo "== ratio (diffusers time / diffsteer time)"
awk -v a="$gemm_ours" -v b="$gemm_theirs" 'BEGIN {printf "gemm 4096x1024x1024: %.1f vs %.1f GFLOP/s = %.2fx of torch.matmul\n", a, b, a / b}'
awk -v a="$fwd_theirs" -v b="$fwd_ours" 'BEGIN {printf "unet forward: %.2fx\n", a / b}'
awk -v a="$smp_theirs" -v b="$smp_ours" 'BEGIN {printf "sampling:     %.2fx\n", a / b}'

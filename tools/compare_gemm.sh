#!/usr/bin/env bash
# The large-GEMM ceiling of `diffsteer bench` (4096×1024×1024 f32) against
# torch.matmul on the same shape and thread count, alternating RUNS times so that
# a shared machine's drift hits both sides alike; prints every pair and the medians.
# Usage: tools/compare_gemm.sh [THREADS] [RUNS]   (torch from $VENV, default /work/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
runs=${2:-5}
python=${VENV:-/work/venv}/bin/python
cargo build --release --quiet
ours=()
theirs=()
for _ in $(seq "$runs"); do
    ours+=("$(target/release/diffsteer --threads "$threads" bench --batch 1 --steps 1 --iters 10 | awk '/^gemm/ {print $(NF-2)}')")
    theirs+=("$("$python" - "$threads" <<'PY'
import statistics, sys, time
import torch
torch.set_num_threads(int(sys.argv[1]))
a, b = torch.randn(4096, 1024), torch.randn(1024, 1024)
torch.matmul(a, b)
times = []
for _ in range(10):
    t = time.perf_counter()
    torch.matmul(a, b)
    times.append(time.perf_counter() - t)
print(f"{2 * 4096 * 1024 * 1024 / statistics.median(times) / 1e9:.1f}")
PY
)")
    echo "diffsteer ${ours[-1]} GFLOP/s   torch.matmul ${theirs[-1]} GFLOP/s"
done
python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
ours = [float(v) for v in sys.argv[1].split()]
theirs = [float(v) for v in sys.argv[2].split()]
a, b = statistics.median(ours), statistics.median(theirs)
print(f"median: diffsteer {a:.1f} GFLOP/s, torch.matmul {b:.1f} GFLOP/s, ratio {a / b:.2f}x")
PY

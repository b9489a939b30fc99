#!/usr/bin/env bash
# The whole SD1.5-shaped text-to-image pipeline (random weights) on the CPU:
# `diffsteer bench --model sd15-shape` against diffusers' StableDiffusionPipeline
# (tools/bench_diffusers.py --model sd15-shape), same latent size, steps, batch and
# threads, alternating the two sides ROUNDS times in this one session, per stage.
# Usage: tools/compare_pipeline.sh [SIZE] [STEPS] [ROUNDS] [THREADS]
#   (defaults 32 = 256×256 images, 5 DDIM steps, 2 rounds, 2 threads; needs torch,
#   diffusers and transformers in $VENV, default /work/venv)
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-32}
steps=${2:-5}
rounds=${3:-2}
threads=${4:-2}
python=${VENV:-/work/venv}/bin/python
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$rounds"); do
  echo "== round $round: diffsteer ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
  target/release/diffsteer --threads "$threads" bench --model sd15-shape --size "$size" --batch 1 \
    --steps "$steps" --scheduler ddim --iters 1 --json "$out/ours-$round.json" | sed -n '/^whole/,$p'
  echo "== round $round: diffusers ($(date -u +%H:%M:%S), load $(cut -d' ' -f1 /proc/loadavg))"
  "$python" tools/bench_diffusers.py --model sd15-shape --size "$size" --batch 1 --steps "$steps" \
    --scheduler ddim --iters 1 --threads "$threads" | tee "$out/theirs-$round.txt" | grep -v '^{'
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
ours, theirs = [], []
for r in range(1, rounds + 1):
    p = json.load(open(f"{out}/ours-{r}.json"))["batches"][0]["pipeline"]
    ours.append({"text": p["text_encode_ms"] / 1e3, "sampling": p["sampling_s"],
                 "decode": p["vae_decode_s"], "total": p["total_s"]})
    line = [l for l in open(f"{out}/theirs-{r}.txt") if l.startswith("{")][-1]
    m = json.loads(line)["median"]
    theirs.append({"text": m["text_encode_s"], "sampling": m["sampling_s"],
                   "decode": m["vae_decode_s"], "total": m["total_s"]})
print("== medians over rounds (seconds; each round's values in brackets)")
print(f"{'stage':<10} {'diffsteer':>10} {'diffusers':>10} {'ratio':>7}")
for k in ["text", "sampling", "decode", "total"]:
    a = statistics.median(x[k] for x in ours)
    b = statistics.median(x[k] for x in theirs)
    print(f"{k:<10} {a:>10.2f} {b:>10.2f} {b / a:>6.2f}x   "
          f"[{', '.join(f'{x[k]:.2f}' for x in ours)}] vs [{', '.join(f'{x[k]:.2f}' for x in theirs)}]")
PY

#!/usr/bin/env bash
# One SD1.5-shaped sampling step on the CPU: `diffsteer bench --model sd15-shape`
# against stable-diffusion.cpp (tools/bench_sdcpp.py time) on a checkpoint of the
# same architecture with random f32 weights, same 256×256 image (32×32 latent),
# one image with CFG, same threads, alternating the two sides ROUNDS times.
# Usage: tools/compare_sdcpp.sh [ROUNDS] [THREADS] [SDCPP_STEPS] [DIFFSTEER_BINARY...]
#   (defaults 3 rounds, 2 threads, 5 steps for sd.cpp's longer run,
#   target/release/diffsteer; give more binaries to time each of them in every round)
# Needs: the checkpoint ($CKPT, default /tmp/sd15-shape-f32.safetensors, written by
# `tools/bench_sdcpp.py make` in a venv with torch + diffusers) and
# stable-diffusion-cpp-python in $SDCPP_VENV (default /work/venv-sdcpp). KEEP=DIR keeps
# every side's raw output there.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
threads=${2:-2}
steps=${3:-5}
shift $(( $# < 3 ? $# : 3 ))
binaries=("$@")
[ ${#binaries[@]} -gt 0 ] || binaries=(target/release/diffsteer)
ckpt=${CKPT:-/tmp/sd15-shape-f32.safetensors}
python=${SDCPP_VENV:-/work/venv-sdcpp}/bin/python
if [ -n "${KEEP:-}" ]; then out=$KEEP; mkdir -p "$out"; else out=$(mktemp -d); trap 'rm -rf "$out"' EXIT; fi
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores; load average $(load)"
for round in $(seq 1 "$rounds"); do
  for i in "${!binaries[@]}"; do
    echo "== round $round: diffsteer ${binaries[$i]} ($(date -u +%H:%M:%S), load $(load))"
    "${binaries[$i]}" --threads "$threads" bench --model sd15-shape --size 32 --batch 1 --steps 1 \
      --scheduler euler --iters 3 --json "$out/ours-$i-$round.json" | grep -E '^(gemm|unet forward|whole| +1 )|text enc' || true
  done
  echo "== round $round: stable-diffusion.cpp ($(date -u +%H:%M:%S), load $(load))"
  "$python" tools/bench_sdcpp.py time --model "$ckpt" --threads "$threads" --steps "$steps" --iters 1 \
    | tee "$out/theirs-$round.txt" | grep -v '^{'
done
echo "== load average at the end: $(load)"
python3 - "$out" "$rounds" "${binaries[@]}" <<'PY'
import json, statistics, sys
out, rounds, binaries = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
theirs = []
for r in range(1, rounds + 1):
    line = [l for l in open(f"{out}/theirs-{r}.txt") if l.startswith("{")][-1]
    j = json.loads(line)
    theirs.append((j["per_step_ms"], j["peak_rss_mib"], j["rounds"][0]["text_encode_s"],
                   j["rounds"][0]["vae_decode_s"]))
step_theirs = [t[0] for t in theirs]
print(f"stable-diffusion.cpp ms/step: median {statistics.median(step_theirs):.0f} "
      f"[{', '.join(f'{x:.0f}' for x in step_theirs)}], peak RSS {max(t[1] for t in theirs):.0f} MiB; "
      f"text enc [{', '.join(f'{t[2]:.2f}' for t in theirs)}] s, vae decode [{', '.join(f'{t[3]:.2f}' for t in theirs)}] s")
for i, binary in enumerate(binaries):
    fwd, step, rss, text, decode = [], [], [], [], []
    for r in range(1, rounds + 1):
        j = json.load(open(f"{out}/ours-{i}-{r}.json"))
        fwd.append(j["forward"]["ms"])
        step.append(j["batches"][0]["ms_per_step"])
        rss.append(j["batches"][0]["peak_rss_mib"] or float("nan"))
        text.append(j["batches"][0]["pipeline"]["text_encode_ms"] / 1e3)
        decode.append(j["batches"][0]["pipeline"]["vae_decode_s"])
    ratios = [t / s for t, s in zip(step_theirs, step)]
    print(f"{binary}: unet forward batch 2 median {statistics.median(fwd):.0f} ms "
          f"[{', '.join(f'{x:.0f}' for x in fwd)}]; sampling ms/step median {statistics.median(step):.0f} "
          f"[{', '.join(f'{x:.0f}' for x in step)}]; peak RSS {max(rss):.0f} MiB; "
          f"text enc [{', '.join(f'{x:.2f}' for x in text)}] s, vae decode [{', '.join(f'{x:.2f}' for x in decode)}] s")
    print(f"  sd.cpp ms/step ÷ diffsteer ms/step per round: [{', '.join(f'{x:.2f}' for x in ratios)}], "
          f"ratio of medians {statistics.median(step_theirs) / statistics.median(step):.2f}x")
PY

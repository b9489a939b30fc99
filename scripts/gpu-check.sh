#!/usr/bin/env bash
# The GPU check, run on a machine with an NVIDIA GPU from a binary built elsewhere
# with `cargo build --release --features cuda` and copied to carry/diffsteer.
# Usage: scripts/gpu-check.sh [BINARY]   (the log also goes to $OUT/gpu-check.log when OUT is set)
set -u
bin=${1:-carry/diffsteer}
log=${OUT:-/tmp}/gpu-check.log
exec > >(tee "$log") 2>&1

echo "== machine"
date -u
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader || echo "nvidia-smi failed"
ldd --version | head -1

echo "== CUDA libraries known to the loader"
ldconfig -p | grep -E 'lib(cuda|nvrtc|cublas|cublasLt)\.so' || echo "(none in ldconfig)"

echo "== CUDA libraries on disk"
timeout 60 find /usr /opt /usr/local -xdev \( -name 'libcuda.so*' -o -name 'libnvrtc.so*' -o -name 'libnvrtc-builtins.so*' -o -name 'libcublas.so*' -o -name 'libcublasLt.so*' \) 2>/dev/null | sort

# Put every folder holding NVRTC or cuBLAS on the library path, so the binary's
# dynamic loader finds them where ldconfig does not.
extra=$(timeout 60 find /usr /opt /usr/local -xdev -not -path '*/stubs/*' \( -name 'libnvrtc.so*' -o -name 'libcublas.so*' \) -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$extra"
echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"

echo "== binary"
ls -la "$bin" && ldd "$bin"

echo "== selftest"
export DIFFSTEER_KERNEL_CACHE=/tmp/diffsteer-kernels
models=()
for m in tests/fixtures/models/unet2d_class tests/fixtures/models/unet_cond tests/fixtures/models/unet_cond_linear weights/digits \
         tests/fixtures/pipelines/sd1_tiny tests/fixtures/pipelines/sd2_tiny weights/digits-text; do
    [ -f "$m/config.json" ] && models+=(--model "$m")
done
"$bin" selftest --device cuda --dtype f32,f16,bf16 "${models[@]}"
rc=$?
echo "selftest exit code: $rc"

if [ -f weights/digits/config.json ]; then
    echo "== generate: the same 20 digits on the GPU and on the CPU"
    for dev in cuda cpu; do
        start=$(date +%s%N)
        "$bin" generate --device "$dev" --count 20 --batch 20 --steps 50 --scheduler ddim --cfg 3 --seed 1 \
            --out "/tmp/gen-$dev" --overwrite --quiet --grid "${OUT:-/tmp}/digits-$dev.png" --grid-scale 3 || rc=1
        echo "$dev: $(( ($(date +%s%N) - start) / 1000000 )) ms for 20 images (DDIM 50, CFG 3, batch 20)"
    done
    for dtype in f16 bf16; do
        start=$(date +%s%N)
        "$bin" generate --device cuda --dtype "$dtype" --count 20 --batch 20 --steps 50 --scheduler ddim --cfg 3 --seed 1 \
            --out "/tmp/gen-cuda-$dtype" --overwrite --quiet --grid "${OUT:-/tmp}/digits-cuda-$dtype.png" --grid-scale 3 || rc=1
        echo "cuda $dtype: $(( ($(date +%s%N) - start) / 1000000 )) ms for 20 images"
    done
    python3 - <<'PY' || rc=1
import numpy as np
from PIL import Image
for run in ["cuda", "cuda-f16", "cuda-bf16"]:
    worst, differing, total = 0, 0, 0
    for i in range(20):
        a = np.asarray(Image.open(f"/tmp/gen-{run}/{i:06d}.png"), dtype=np.int32)
        b = np.asarray(Image.open(f"/tmp/gen-cpu/{i:06d}.png"), dtype=np.int32)
        worst = max(worst, int(np.abs(a - b).max()))
        differing += int((a != b).sum())
        total += a.size
    print(f"{run} vs cpu PNGs: {differing} of {total} pixels differ, largest difference {worst}/255")
PY
    echo "== generate: throughput on the GPU (512 digits, batch 256, DDIM 50)"
    start=$(date +%s%N)
    "$bin" generate --device cuda --count 512 --batch 256 --steps 50 --scheduler ddim --cfg 3 --seed 1 \
        --out /tmp/gen-throughput --overwrite --quiet || rc=1
    echo "512 images in $(( ($(date +%s%N) - start) / 1000000 )) ms"
fi
if [ -f weights/digits/config.json ]; then
    echo "== reward guidance + Feynman-Kac steering on the GPU (the classifier runs there too, in f32)"
    start=$(date +%s%N)
    "$bin" generate --device cuda --class none --reward classifier:3 --particles 4 --steer fk --count 20 \
        --batch 20 --steps 50 --scheduler ddim --seed 1 --out /tmp/gen-steer --overwrite --quiet \
        --grid "${OUT:-/tmp}/steer-cuda.png" --grid-scale 3 || rc=1
    echo "20 steered threes (4 particles each) in $(( ($(date +%s%N) - start) / 1000000 )) ms"

    echo "== avoid:7 on the GPU (gated log(1 - p) steps): 40 images, one metadata line each"
    "$bin" generate --device cuda --class none --reward avoid:7 --count 40 --batch 40 --steps 50 \
        --scheduler ddim --seed 0 --out /tmp/gen-avoid --overwrite --quiet \
        --grid "${OUT:-/tmp}/avoid7-cuda.png" --grid-scale 3 || rc=1
    grep -c '"reward"' /tmp/gen-avoid/metadata.jsonl || rc=1

    echo "== bench: digits model"
    "$bin" bench --device cuda --batch 1,16,128 --steps 20 --iters 10 --json "${OUT:-/tmp}/bench-digits.json" || rc=1
fi
for run in f16:1,2,8 bf16:1,2,8 f32:2; do
    dtype=${run%%:*}
    echo "== bench: SD1.5-shaped U-Net (random weights), 64x64 latents, $dtype"
    "$bin" bench --device cuda --dtype "$dtype" --model sd15-shape --batch "${run#*:}" --steps 10 --iters 5 \
        --json "${OUT:-/tmp}/bench-sd15-$dtype.json" || rc=1
done

for pipe in tests/fixtures/pipelines/sd2_tiny weights/digits-text; do
    [ -f "$pipe/model_index.json" ] || continue
    echo "== text-to-image on the GPU and the CPU: $pipe"
    for dev in cuda cpu; do
        "$bin" generate --model "$pipe" --device "$dev" --prompt "a handwritten seven" --negative-prompt "blurry" \
            --count 8 --steps 20 --cfg 5 --seed 3 --out "/tmp/text-$dev" --overwrite --quiet || rc=1
    done
    python3 - <<'PY' || rc=1
import numpy as np
from PIL import Image
worst, differing, total = 0, 0, 0
for i in range(8):
    a = np.asarray(Image.open(f"/tmp/text-cuda/{i:06d}.png"), dtype=np.int32)
    b = np.asarray(Image.open(f"/tmp/text-cpu/{i:06d}.png"), dtype=np.int32)
    worst = max(worst, int(np.abs(a - b).max())); differing += int((a != b).sum()); total += a.size
print(f"text pipeline cuda vs cpu PNGs: {differing} of {total} pixels differ, largest difference {worst}/255")
PY
done

if [ -f weights/digits/config.json ]; then
    echo "== batch: the mixed jobs file (scripts/mixed-jobs.jsonl, 192 images) packed at --batch 64, then one job at a time"
    for mode in packed sequential; do
        flag=""; [ "$mode" = sequential ] && flag="--sequential"
        rm -rf "/tmp/batch-$mode"
        start=$(date +%s%N)
        "$bin" batch scripts/mixed-jobs.jsonl --out "/tmp/batch-$mode" --device cuda --batch 64 $flag || rc=1
        echo "$mode: $(( ($(date +%s%N) - start) / 1000000 )) ms"
    done
    python3 - <<'PY' || rc=1
import json, os
def images(d):
    out = {}
    for line in open(f"{d}/results.jsonl"):
        r = json.loads(line)
        out[(r["id"], r["index"])] = open(os.path.join(d, r["file"]), "rb").read()
    return out
a, b = images("/tmp/batch-packed"), images("/tmp/batch-sequential")
same = sum(a[k] == b.get(k) for k in a)
print(f"packed vs one job at a time: {len(a)} and {len(b)} images, {same} byte-identical")
PY

    echo "== serve: continuous batching under load (--batch 64), 1/4/16/64 clients vs one after the other"
    loadgen=${LOADGEN:-carry/loadgen}
    if [ -x "$loadgen" ]; then
        "$bin" serve --device cuda --batch 64 --max-queue 256 --port 8765 > /tmp/serve.log 2>&1 &
        server=$!
        for _ in $(seq 1 100); do grep -q "listening on" /tmp/serve.log && break; sleep 0.2; done
        "$loadgen" --url http://127.0.0.1:8765 --clients 1,4,16,64 --requests 128 --json "${OUT:-/tmp}/loadgen-cuda.json" || rc=1
        kill -TERM "$server"; wait "$server"; echo "server exit code: $?"
    else
        echo "no $loadgen (build it with cargo build --release --features cuda --example loadgen and copy it to carry/)"
    fi
fi

# The PyTorch side of the comparisons: diffusers' SD1.5 U-Net with SDPA, SDPA alone at
# head dim 80 and 4096 tokens, torch.matmul ceilings. diffusers is not installed on
# the GPU machine: carry its wheels in .whl/ (see tools/bench_torch_gpu.py).
if [ -d .whl ] && python3 -c "import torch" 2>/dev/null; then
    echo "== PyTorch + diffusers on the same GPU"
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
        PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 timeout 240 python3 tools/bench_torch_gpu.py --batch 1,2,8 --dtype f16,bf16 \
            --attn-shapes 2x8x4096x80,2x8x4096x40,2x8x1024x80,2x8x256x160 --json "${OUT:-/tmp}/torch-gpu.json" || rc=1
    else
        echo "installing the carried wheels failed"; rc=1
    fi
else
    echo "== PyTorch comparison skipped (no .whl/ folder or no torch)"
fi

echo "gpu-check exit code: $rc"
exit $rc

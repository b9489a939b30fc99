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
"$bin" selftest --device cuda
rc=$?
echo "selftest exit code: $rc"
exit $rc

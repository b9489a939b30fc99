#!/usr/bin/env python3
"""Known answers for tests/rng.rs: the engine's noise (src/rng.rs) computed by the
numpy Philox4x32-10 + Box-Muller of tools/compare_diffusers.py, an implementation
written apart from the Rust one. Prints Rust array literals to paste into the test.

Dev-only (numpy):

    /work/venv/bin/python tools/rng_known_answers.py

Draw addressing (src/rng.rs): normal `index` of (seed, stream) comes from Philox block
index // 4 with counter [block_lo, block_hi, stream_lo, stream_hi] and key
[seed_lo, seed_hi]; words w0..w3 become u = (w + 0.5) / 2^32 and Box-Muller in f64
gives sqrt(-2 ln u0) cos(2 pi u1), ... sin(2 pi u1), then the same with u2, u3.
"""
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compare_diffusers import normal_vec, philox4x32_10  # noqa: E402

M32 = 0xFFFFFFFF


def words(seed, stream, block):
    c = [block & M32, block >> 32, stream & M32, stream >> 32]
    return [int(w) for w in philox4x32_10(c, [seed & M32, seed >> 32])]


def uniform(word):
    return (float(word) + 0.5) * (1.0 / 4294967296.0)


def normals_of_block(seed, stream, block):
    w = words(seed, stream, block)
    out = []
    for pair in range(2):
        radius = np.sqrt(-2.0 * np.log(uniform(w[2 * pair])))
        angle = 2.0 * np.pi * uniform(w[2 * pair + 1])
        out += [np.float32(radius * np.cos(angle)), np.float32(radius * np.sin(angle))]
    return out


def normals(seed, stream, first, count):
    return [normals_of_block(seed, stream, i // 4)[i % 4] for i in range(first, first + count)]


def f32_bits(x):
    return int(np.float32(x).view(np.uint32))


# Stream ids (src/rng.rs NoiseStream::id).
INITIAL = 0
def STEP(n): return 1 + n
def RENOISE(step, repeat): return (1 << 33) + (repeat << 32) + step
def RESAMPLE(step): return (1 << 43) + step
def PARTICLE(particle, stream): return stream + (particle << 44)
CUSTOM = (1 << 57) + 123

# (label, seed, stream id, first element, count)
CASES = [
    ("seed 0, Initial, elements 0..8", 0, INITIAL, 0, 8),
    ("seed 42, Step(7), elements 5..7", 42, STEP(7), 5, 2),
    ("seed 0xDEADBEEF_CAFEBABE, Step(3) of particle 5, elements 1001..1004",
     0xDEADBEEF_CAFEBABE, PARTICLE(5, STEP(3)), 1001, 3),
    ("seed u64::MAX, Custom(2^57 + 123), elements 2^34 + 2 .. + 6 (block_hi = 1)",
     (1 << 64) - 1, CUSTOM, (1 << 34) + 2, 4),
    ("seed 7, Renoise { step: 2, repeat: 1 }, elements 0..4", 7, RENOISE(2, 1), 0, 4),
]


def main():
    # The block function agrees with compare_diffusers' whole-vector one.
    whole = normal_vec(3, STEP(0), 10)
    assert [f32_bits(x) for x in whole] == [f32_bits(x) for x in normals(3, STEP(0), 0, 10)]

    print("// Philox words: (seed, stream, block) -> [w0, w1, w2, w3]")
    for seed, stream, block in [(0, INITIAL, 0), (42, STEP(7), 1), ((1 << 64) - 1, CUSTOM, 1 << 32)]:
        w = ", ".join(f"0x{x:08x}" for x in words(seed, stream, block))
        print(f"({seed:#x}, {stream:#x}, {block:#x}) -> [{w}]")
    print()
    for label, seed, stream, first, count in CASES:
        values = normals(seed, stream, first, count)
        bits = ", ".join(f"0x{f32_bits(v):08x}" for v in values)
        shown = ", ".join(f"{float(v):.9g}" for v in values)
        print(f"// {label}: {shown}")
        print(f"({seed:#x}, {stream:#x}, {first:#x}) -> [{bits}]")
    print()
    print("// uniform(seed 9, Resample { step: 3 }, index) as f64 bits, index 0..3")
    for index in range(3):
        u = uniform(words(9, RESAMPLE(3), index)[0])
        print(f"{index} -> 0x{np.float64(u).view(np.uint64):016x} ({u!r})")


if __name__ == "__main__":
    main()

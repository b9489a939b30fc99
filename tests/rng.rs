//! Known answers for the engine's noise (src/rng.rs): exact Philox4x32-10 words and
//! exact f32 bits of the Box-Muller normals for a few (seed, stream, element) triples,
//! including 64-bit seeds, particle and recurrence stream ids, windows that start
//! inside a block and elements past 2^34 (the block counter's high word). The values
//! come from the numpy implementation in tools/compare_diffusers.py, printed by
//! tools/rng_known_answers.py. (The Random123 known-answer vectors of the raw block
//! function are in src/rng.rs's unit tests.)

use diffsteer::rng::{fill_normal, normal_vec, philox4x32_10, uniform, NoiseStream};

/// Normals `first .. first + bits.len()` of (seed, stream) have exactly these bits.
fn assert_bits(seed: u64, stream: NoiseStream, first: u64, bits: &[u32]) {
    let mut out = vec![0f32; bits.len()];
    fill_normal(seed, stream, first, &mut out);
    let got: Vec<u32> = out.iter().map(|v| v.to_bits()).collect();
    assert_eq!(
        got,
        bits,
        "seed {seed:#x}, stream {stream:?} (id {:#x}), elements from {first:#x}: {out:?}",
        stream.id()
    );
}

#[test]
fn philox_words_of_engine_counters() {
    // Counter [block_lo, block_hi, stream_lo, stream_hi], key [seed_lo, seed_hi].
    assert_eq!(
        philox4x32_10([1, 0, 8, 0], [42, 0]),
        [0xc5e12689, 0x108273dc, 0xc6209b3e, 0x9c6da2cf]
    );
    let stream = NoiseStream::Custom((1 << 57) + 123).id();
    assert_eq!(
        philox4x32_10(
            [0, 1, stream as u32, (stream >> 32) as u32],
            [u32::MAX, u32::MAX]
        ),
        [0xbd578f68, 0x992b8652, 0x1afdc402, 0x0e83fa6a]
    );
}

#[test]
fn normals_have_known_bits() {
    // 0.991137683, -0.92466259, -0.617608964, -0.482068598, -0.153638229, ...
    let first_eight = [
        0x3f7dbb33, 0xbf6cb6b0, 0xbf1e1b9f, 0xbef6d1b2, 0xbe1d5357, 0x3e392a6d, 0x3f54ec98,
        0x3e4a2da3,
    ];
    let whole: Vec<u32> = normal_vec(0, NoiseStream::Initial, 8)
        .iter()
        .map(|v| v.to_bits())
        .collect();
    assert_eq!(whole, first_eight);
    assert_bits(0, NoiseStream::Initial, 0, &first_eight);
    // A window inside block 1: its sin half of the first pair, then the cos of the second.
    assert_bits(42, NoiseStream::Step(7), 5, &[0x3e90d955, 0xbf0c716b]);
    // A 64-bit seed and particle 5's copy of Step(3) (id 4 + 5·2^44).
    let particle = NoiseStream::Step(3).for_particle(5);
    assert_eq!(particle.id(), 0x5000_0000_0004);
    assert_bits(
        0xdead_beef_cafe_babe,
        particle,
        1001,
        &[0x3e0d03e1, 0xbf8ecd28, 0x3e74d975],
    );
    // Elements 2^34 + 2 .. 2^34 + 6: blocks 2^32 and 2^32 + 1 (the counter's high word).
    assert_bits(
        u64::MAX,
        NoiseStream::Custom((1 << 57) + 123),
        (1 << 34) + 2,
        &[0x3ffe75aa, 0x3f3d643c, 0xbe1bd768, 0xbe20c2de],
    );
    let renoise = NoiseStream::Renoise { step: 2, repeat: 1 };
    assert_eq!(renoise.id(), 0x3_0000_0002);
    assert_bits(
        7,
        renoise,
        0,
        &[0x3d052aba, 0x3bab5521, 0x3faf7b1b, 0xbe281dce],
    );
}

#[test]
fn resampling_uniforms_have_known_bits() {
    let stream = NoiseStream::Resample { step: 3 };
    let got: Vec<u64> = (0..3).map(|i| uniform(9, stream, i).to_bits()).collect();
    assert_eq!(
        got,
        [0x3fee33ac35900000, 0x3fc2087ab1400000, 0x3fca81f8a7c00000]
    );
}

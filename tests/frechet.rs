//! The realism measure of `diffsteer eval --methods`: the shipped classifier's
//! penultimate features against PyTorch's, and the Fréchet distance against scipy's
//! (`tests/fixtures/frechet/reference.safetensors`, made by
//! `tools/make_digit_feature_stats.py`), plus the shipped real-digit statistics.

use std::path::PathBuf;

use diffsteer::frechet::{frechet_distance, Gaussian};
use diffsteer::reward::Classifier;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The named f32 tensor of the reference fixture and its shape.
fn reference(name: &str) -> (Vec<usize>, Vec<f32>) {
    let bytes = std::fs::read(root().join("tests/fixtures/frechet/reference.safetensors"))
        .expect("the fixture");
    let file = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let view = file.tensor(name).expect(name);
    let values = view
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    (view.shape().to_vec(), values)
}

fn shipped_classifier() -> Classifier {
    Classifier::load(&root().join("weights/digit-classifier")).expect("the shipped classifier")
}

#[test]
fn penultimate_features_match_pytorch() {
    let classifier = shipped_classifier();
    assert_eq!(classifier.feature_count().expect("count"), 64);
    let (_, digits) = reference("digits");
    let (shape, want) = reference("features");
    assert_eq!(shape, [4, 64]);
    let got = classifier.features(&digits).expect("features");
    assert_eq!(got.len(), want.len());
    let worst = got
        .iter()
        .zip(&want)
        .map(|(g, w)| (g - w).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-4, "largest difference {worst}");
    // Not all zero (a SiLU layer's output on real digits).
    assert!(want.iter().any(|v| v.abs() > 0.1));
}

#[test]
fn frechet_distance_matches_scipy() {
    let (a_shape, a) = reference("a");
    let (_, b) = reference("b");
    let (_, fd) = reference("fd");
    let dim = a_shape[1];
    let a = Gaussian::from_samples(&a, dim).expect("a");
    let b = Gaussian::from_samples(&b, dim).expect("b");
    let got = frechet_distance(&a, &b).expect("fd");
    assert!(
        (got - fd[0] as f64).abs() < 1e-5 * fd[0] as f64,
        "{got} vs scipy {}",
        fd[0]
    );
    assert!(frechet_distance(&a, &a).expect("fd") < 1e-9);
}

#[test]
fn real_digits_are_close_to_the_shipped_statistics_and_shifted_ones_are_not() {
    let stats = Gaussian::load(&root().join("weights/digit-classifier/real-features.safetensors"))
        .expect("the shipped statistics");
    assert_eq!(stats.dim, 64);
    let classifier = shipped_classifier();
    let (_, digits) = reference("digits");
    let own = Gaussian::from_samples(&classifier.features(&digits).expect("features"), 64)
        .expect("stats");
    // Digits moved 3 pixels right: the same strokes in a place real digits never are.
    let mut moved = vec![-1f32; digits.len()];
    for (src, dst) in digits.chunks_exact(784).zip(moved.chunks_exact_mut(784)) {
        for y in 0..28 {
            for x in 3..28 {
                dst[y * 28 + x] = src[y * 28 + x - 3];
            }
        }
    }
    let shifted =
        Gaussian::from_samples(&classifier.features(&moved).expect("features"), 64).expect("stats");
    let near = frechet_distance(&own, &stats).expect("fd");
    let far = frechet_distance(&shifted, &stats).expect("fd");
    assert!(near.is_finite() && far > near, "real {near}, shifted {far}");
}

#[test]
fn bad_statistics_files_are_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().expect("tmp");
    let missing = Gaussian::load(&tmp.path().join("none.safetensors"));
    assert!(missing.is_err());
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not safetensors").expect("write");
    let message = Gaussian::load(&junk).expect_err("junk").to_string();
    assert!(message.contains("junk.safetensors"), "{message}");
}

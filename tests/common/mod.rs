//! Helpers shared by the integration tests: fixture paths, layout conversion and
//! the relative-L2 error measure of DESIGN.md.
#![allow(dead_code)]

use std::path::PathBuf;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// ‖out − ref‖ / ‖ref‖ in f64; NaN anywhere gives NaN (which fails every bound).
pub fn rel_l2(out: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(out.len(), reference.len(), "length mismatch");
    let mut diff = 0f64;
    let mut norm = 0f64;
    for (&o, &r) in out.iter().zip(reference) {
        diff += (o as f64 - r as f64).powi(2);
        norm += (r as f64).powi(2);
    }
    (diff / norm).sqrt()
}

pub fn assert_close(what: &str, out: &[f32], reference: &[f32], tolerance: f64) -> f64 {
    let err = rel_l2(out, reference);
    assert!(
        err.is_finite() && err <= tolerance,
        "{what}: relative L2 error {err:.3e} exceeds {tolerance:.0e}"
    );
    err
}

/// `[n, c, h, w]` (diffusers) → `[n, h, w, c]` (the engine's layout).
pub fn nchw_to_nhwc(x: &[f32], shape: &[usize]) -> (Vec<usize>, Vec<f32>) {
    let (n, c, h, w) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * h + y) * w + xx) * c + ch] = x[((b * c + ch) * h + y) * w + xx];
                }
            }
        }
    }
    (vec![n, h, w, c], out)
}

/// `[n, h, w, c]` → `[n, c, h, w]`.
pub fn nhwc_to_nchw(x: &[f32], shape: &[usize]) -> Vec<f32> {
    let (n, h, w, c) = (shape[0], shape[1], shape[2], shape[3]);
    let mut out = vec![0f32; x.len()];
    for b in 0..n {
        for ch in 0..c {
            for y in 0..h {
                for xx in 0..w {
                    out[((b * c + ch) * h + y) * w + xx] = x[((b * h + y) * w + xx) * c + ch];
                }
            }
        }
    }
    out
}

/// Checks a rejected command line: exit code 2, a single `error: ` line naming
/// `flag` and containing `expected`, and `out` never created.
#[allow(dead_code)]
pub fn assert_usage_error(
    args: &[&str],
    result: &std::process::Output,
    out: &std::path::Path,
    flag: &str,
    expected: &str,
) {
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert_eq!(result.status.code(), Some(2), "{args:?}: stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(
        lines.len(),
        1,
        "{args:?}: expected one line, got {stderr:?}"
    );
    assert!(lines[0].starts_with("error: "), "{stderr}");
    assert!(
        lines[0].contains(flag) && lines[0].contains(expected),
        "{args:?}: {stderr}"
    );
    assert!(!out.exists(), "{args:?}: --out was created");
}

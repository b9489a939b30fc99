//! Helpers shared by the integration tests: fixture paths, layout conversion and
//! the relative-L2 error measure of DESIGN.md.
#![allow(dead_code)]

use std::path::PathBuf;

use diffsteer::backend::Backend;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::{ModelFolder, UNetInputs};
use diffsteer::reward::{Reward, SampleShape};

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

/// The forward of fixture model `name` (tests/fixtures/models) on `backend`, from its
/// saved inputs: (the output, diffusers' output), both NCHW.
pub fn fixture_forward(name: &str, backend: &dyn Backend) -> (Vec<f32>, Vec<f32>) {
    let dir = fixtures().join("models").join(name);
    let unet = ModelFolder::locate(&dir)
        .and_then(|f| f.load_unet(backend))
        .unwrap_or_else(|e| panic!("loading {name}: {e}"));
    let fx = WeightFile::open(dir.join("forward.safetensors")).expect("forward fixture");
    let (shape, sample) = fx.read_f32("sample").expect("sample");
    let (nhwc_shape, sample) = nchw_to_nhwc(&sample, &shape);
    let (_, timesteps) = fx.read_f32("timestep").expect("timestep");
    let labels: Option<Vec<usize>> = fx.contains("class_labels").then(|| {
        let (_, l) = fx.read_i64("class_labels").expect("labels");
        l.iter().map(|&l| l as usize).collect()
    });
    let encoder = fx.contains("encoder_hidden_states").then(|| {
        let (s, v) = fx.read_f32("encoder_hidden_states").expect("states");
        backend.tensor(&s, v).expect("tensor")
    });
    let (_, expected) = fx.read_f32("output").expect("output");
    let x = backend.tensor(&nhwc_shape, sample).expect("tensor");
    let out = unet
        .forward(
            backend,
            &x,
            &UNetInputs {
                timesteps: &timesteps,
                class_labels: labels.as_deref(),
                encoder_hidden_states: encoder.as_ref(),
            },
        )
        .unwrap_or_else(|e| panic!("forward {name}: {e}"));
    let out_shape = out.shape().to_vec();
    let out = nhwc_to_nchw(&backend.to_host(&out).expect("host"), &out_shape);
    (out, expected)
}

/// r(x) = −½‖x − target‖²: ∇r = target − x, so a raw x₀-form step of size ρ moves
/// x̂₀ a fraction ρ of the way to the target.
pub struct Quadratic {
    pub target: f32,
}

impl Reward for Quadratic {
    fn name(&self) -> String {
        format!("quadratic:{}", self.target)
    }
    fn check_shape(&self, _shape: SampleShape) -> diffsteer::Result<()> {
        Ok(())
    }
    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> diffsteer::Result<Vec<f32>> {
        if let Some(g) = grad {
            for (g, &x) in g.iter_mut().zip(x0) {
                *g = self.target - x;
            }
        }
        Ok(x0
            .chunks(shape.len())
            .map(|s| -0.5 * s.iter().map(|&x| (x - self.target).powi(2)).sum::<f32>())
            .collect())
    }
}

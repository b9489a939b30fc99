//! The backend checker (`diffsteer::backend::check`, what `diffsteer selftest` runs
//! on a GPU) run on the CPU, so the checker itself is tested without one: the plain
//! 16-bit backend is the yardstick of the 2× rule and must pass it, the CPU backend
//! must pass the f32 bound against itself, and a backend with one wrong op must fail
//! that op's check and no other.

use std::sync::Arc;

use diffsteer::backend::check::{self, CheckResult, HostSubject, References, Sizes};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::rounding::RoundingBackend;
use diffsteer::backend::{
    Activation, Backend, Conv2dGeometry, ConvEpilogue, SlotStep, StepBuffers, StepResult,
};
use diffsteer::tensor::{Precision, Tensor};
use diffsteer::Result;

fn run_checks(backend: Arc<dyn Backend>, precision: Precision) -> Vec<CheckResult> {
    let cpu = CpuBackend::new();
    let subject = HostSubject::new(backend, precision, "checked CPU");
    let refs = References::new(&cpu, precision);
    let mut results = Vec::new();
    check::run(&subject, &refs, Sizes::Small, &mut |r| {
        eprintln!(
            "{:<40} {:?} (tol {:?}) {}",
            r.name, r.rel_l2, r.tolerance, r.note
        );
        results.push(r);
    })
    .expect("the checks run");
    results
}

/// Every line compared something (the plain CPU subject has no device lines): the
/// 33 op cases at `Sizes::Small` (6 of them the text encoder's and VAE's) and the
/// fused step.
fn assert_all_compared(results: &[CheckResult]) {
    assert_eq!(results.len(), 34, "checks run");
    for r in results {
        assert!(
            r.rel_l2.is_some() && r.tolerance.is_some(),
            "{} compared nothing",
            r.name
        );
    }
}

#[test]
fn the_plain_sixteen_bit_backend_passes_the_twice_plain_rule() {
    for precision in [Precision::F16, Precision::BF16] {
        let results = run_checks(Arc::new(RoundingBackend::new(precision)), precision);
        assert_all_compared(&results);
        for r in &results {
            assert!(r.passed(), "{}: {:?} > {:?}", r.name, r.rel_l2, r.tolerance);
            assert!(r.name.starts_with(&format!("[{precision}] ")), "{}", r.name);
        }
        // The rule has teeth: rounding to 16 bits costs most ops a visible error.
        let rounded = results
            .iter()
            .filter(|r| r.rel_l2.is_some_and(|e| e > 1e-5))
            .count();
        assert!(
            rounded * 2 > results.len(),
            "{precision}: {rounded} of {} checks saw a rounding error",
            results.len()
        );
    }
}

#[test]
fn the_cpu_backend_passes_the_f32_bound_against_itself() {
    let results = run_checks(Arc::new(CpuBackend::new()), Precision::F32);
    assert_all_compared(&results);
    for r in &results {
        assert!(r.passed(), "{}: {:?}", r.name, r.rel_l2);
        assert_eq!(r.tolerance, Some(1e-5), "{}", r.name);
        // f32 ops are also timed on the CPU for comparison (the fused step is not).
        if !r.name.contains("guided step") {
            assert!(r.note.contains(", cpu "), "{}: {}", r.name, r.note);
        }
    }
}

#[test]
fn a_backend_whose_silu_returns_its_input_fails_the_silu_check_only() {
    for precision in [Precision::F16, Precision::BF16] {
        let wrong = SiluIsIdentity(RoundingBackend::new(precision));
        let results = run_checks(Arc::new(wrong), precision);
        assert_all_compared(&results);
        let failed: Vec<&str> = results
            .iter()
            .filter(|r| !r.passed())
            .map(|r| r.name.as_str())
            .collect();
        assert_eq!(failed, [format!("[{precision}] silu (in place)")]);
    }
}

/// The plain 16-bit backend with one deliberate bug: `silu_assign` leaves x as it is.
struct SiluIsIdentity(RoundingBackend);

impl Backend for SiluIsIdentity {
    fn name(&self) -> String {
        format!("{} with silu(x) = x", self.0.name())
    }

    fn tensor(&self, shape: &[usize], data: Vec<f32>) -> Result<Tensor> {
        self.0.tensor(shape, data)
    }

    fn to_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        self.0.to_host(x)
    }

    fn conv2d(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.0.conv2d(x, weight, bias, geometry)
    }

    fn conv2d_epilogue(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        geometry: &Conv2dGeometry,
        epilogue: ConvEpilogue,
    ) -> Result<Tensor> {
        self.0.conv2d_epilogue(x, weight, bias, geometry, epilogue)
    }

    fn linear(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        self.0.linear(x, weight, bias)
    }

    fn group_norm(
        &self,
        x: &Tensor,
        groups: usize,
        gamma: &Tensor,
        beta: &Tensor,
        eps: f32,
        silu: bool,
    ) -> Result<Tensor> {
        self.0.group_norm(x, groups, gamma, beta, eps, silu)
    }

    fn layer_norm(&self, x: &Tensor, gamma: &Tensor, beta: &Tensor, eps: f32) -> Result<Tensor> {
        self.0.layer_norm(x, gamma, beta, eps)
    }

    fn attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        self.0.attention(q, k, v, heads)
    }

    fn causal_attention(&self, q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        self.0.causal_attention(q, k, v, heads)
    }

    fn geglu(&self, x: &Tensor) -> Result<Tensor> {
        self.0.geglu(x)
    }

    fn silu_assign(&self, _x: &mut Tensor) -> Result<()> {
        Ok(())
    }

    fn add_assign(&self, x: &mut Tensor, y: &Tensor, scale: f32) -> Result<()> {
        self.0.add_assign(x, y, scale)
    }

    fn add_channel_bias_assign(&self, x: &mut Tensor, bias: &Tensor) -> Result<()> {
        self.0.add_channel_bias_assign(x, bias)
    }

    fn upsample_nearest(&self, x: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
        self.0.upsample_nearest(x, out_h, out_w)
    }

    fn concat_channels(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.0.concat_channels(a, b)
    }

    fn timestep_embedding(
        &self,
        timesteps: &[f32],
        frequencies: &[f32],
        dim: usize,
        flip_sin_to_cos: bool,
    ) -> Result<Tensor> {
        self.0
            .timestep_embedding(timesteps, frequencies, dim, flip_sin_to_cos)
    }

    fn activation_assign(
        &self,
        x: &mut Tensor,
        act: Activation,
        derivative: bool,
    ) -> Result<Option<Tensor>> {
        self.0.activation_assign(x, act, derivative)
    }

    fn mul_assign(&self, x: &mut Tensor, y: &Tensor) -> Result<()> {
        self.0.mul_assign(x, y)
    }

    fn avg_pool(&self, x: &Tensor, kernel: usize) -> Result<Tensor> {
        self.0.avg_pool(x, kernel)
    }

    fn avg_pool_backward(
        &self,
        dy: &Tensor,
        kernel: usize,
        in_h: usize,
        in_w: usize,
    ) -> Result<Tensor> {
        self.0.avg_pool_backward(dy, kernel, in_h, in_w)
    }

    fn col2im(
        &self,
        dpatches: &Tensor,
        input: [usize; 4],
        kernel: (usize, usize),
        geometry: &Conv2dGeometry,
    ) -> Result<Tensor> {
        self.0.col2im(dpatches, input, kernel, geometry)
    }

    fn guided_step(
        &self,
        model_out: &Tensor,
        slots: &[SlotStep],
        buffers: &StepBuffers,
    ) -> Result<StepResult> {
        self.0.guided_step(model_out, slots, buffers)
    }
}

/// The model-level selftest checks of a text-to-image pipeline (its U-Net, text
/// encoder and VAE against the CPU) with the plain 16-bit backend as the backend
/// under check: every check compares something and passes the 2× rule.
#[test]
fn the_pipeline_checks_compare_text_encoder_vae_and_unet() {
    let cpu = CpuBackend::new();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pipelines/sd2_tiny");
    for precision in [Precision::F16, Precision::BF16] {
        let subject = HostSubject::new(
            Arc::new(RoundingBackend::new(precision)),
            precision,
            "plain 16-bit",
        );
        let refs = References::new(&cpu, precision);
        let mut results =
            diffsteer::selftest::text::check(&refs, &subject, &dir).expect("text checks");
        results.push(diffsteer::selftest::unet::check(&refs, &subject, &dir).expect("unet check"));
        let names: Vec<&str> = results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(results.len(), 3, "{names:?}");
        for r in &results {
            assert!(
                r.passed() && r.rel_l2.is_some_and(|e| e > 0.0),
                "{}: {:?} {:?} {}",
                r.name,
                r.rel_l2,
                r.tolerance,
                r.note
            );
        }
    }
    // A folder that is not a pipeline has no text checks.
    let digits = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/digits");
    let refs = References::new(&cpu, Precision::F32);
    let subject = HostSubject::new(Arc::new(CpuBackend::new()), Precision::F32, "cpu");
    assert!(diffsteer::selftest::text::check(&refs, &subject, &digits)
        .expect("skipped")
        .is_empty());
}

//! The reward classifier next to a model folder (`../digit-classifier`, as
//! `generate` finds it) on the backend under check: log-probabilities and their
//! input gradients for 64 random images against the CPU.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::check::{rel_l2, CheckResult, References, Subject};
use crate::backend::cpu::CpuBackend;
use crate::backend::rounding::RoundingBackend;
use crate::backend::Backend;
use crate::error::Result;
use crate::reward::classifier::Classifier;
use crate::rng::{normal_vec, NoiseStream};

/// `None` when the model folder has no classifier beside it.
pub fn check(
    refs: &References,
    subject: &dyn Subject,
    model: &Path,
) -> Result<Option<CheckResult>> {
    let dir = model.with_file_name("digit-classifier");
    if !dir.join("config.json").is_file() {
        return Ok(None);
    }
    let precision = subject.precision();
    let n = 64;
    let run = |backend: Arc<dyn Backend>| -> Result<Vec<f32>> {
        let classifier = Classifier::load_on(&dir, backend)?;
        let per = classifier.input_shape().len();
        let x: Vec<f32> = normal_vec(1200, NoiseStream::Custom(1 << 57), n * per)
            .iter()
            .map(|v| 0.5 * v)
            .collect();
        let classes: Vec<usize> = (0..n).map(|i| i % classifier.num_classes()).collect();
        let mut grad = vec![0f32; x.len()];
        let log_probs = classifier.log_prob_and_grad(&x, &classes, Some(&mut grad))?;
        Ok(log_probs.into_iter().chain(grad).collect())
    };
    let reference = run(Arc::new(CpuBackend::new()))?;
    let (tolerance, plain_note) = match &refs.plain {
        None => (1e-5, String::new()),
        Some(_) => {
            let plain = run(Arc::new(RoundingBackend::new(precision)))?;
            let err = rel_l2(&plain, &reference);
            (2.0 * err, format!("plain {err:.1e}; "))
        }
    };
    let started = Instant::now();
    let out = run(subject.backend())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(Some(CheckResult {
        name: format!("[{precision}] reward classifier fwd + bwd"),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!("{plain_note}{n} images: log p and ∂/∂x, {ms:.1} ms incl. load"),
    }))
}

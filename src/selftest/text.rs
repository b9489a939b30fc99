//! A text-to-image pipeline's text encoder and VAE on the backend under check
//! against the CPU backend: the text encoder on two prompts (the empty one and a
//! real one, through the pipeline's own tokenizer), the VAE decoding two random
//! latents of the U-Net's sample size. Folders that are not pipelines are skipped.

use std::path::Path;
use std::time::Instant;

use super::folder_name;
use crate::backend::check::{rel_l2, CheckResult, References, Subject};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::vae::{Vae, VaeParts};
use crate::model::{clip::TextEncoder, PipelineFolder};
use crate::rng::{normal_vec, NoiseStream};

/// Runs `f` once for the result and `iters` more times for its wall time (ms).
fn timed(iters: usize, mut f: impl FnMut() -> Result<Vec<f32>>) -> Result<(Vec<f32>, f64)> {
    let out = f()?;
    let t = Instant::now();
    for _ in 0..iters {
        f()?;
    }
    Ok((out, t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64))
}

pub fn check(refs: &References, subject: &dyn Subject, dir: &Path) -> Result<Vec<CheckResult>> {
    if !PipelineFolder::is_pipeline(dir) {
        return Ok(Vec::new());
    }
    let folder = PipelineFolder::locate(dir)?;
    let configs = folder.check_components()?;
    let backend = subject.backend();
    let tokenizer = folder.load_tokenizer()?;
    let rows = [
        tokenizer.encode("").ids,
        tokenizer
            .encode("a photograph of an astronaut riding a horse")
            .ids,
    ];
    let encode = |b: &dyn Backend, encoder: &TextEncoder| -> Result<Vec<f32>> {
        b.to_host(&encoder.encode(b, &rows)?)
    };
    let text_cpu = folder.load_text_encoder(refs.cpu)?;
    let text_device = folder.load_text_encoder(backend.as_ref())?;
    let (reference, cpu_ms) = timed(3, || encode(refs.cpu, &text_cpu))?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| {
        encode(plain, &folder.load_text_encoder(plain)?)
    })?;
    let (out, device_ms) = timed(3, || encode(backend.as_ref(), &text_device))?;
    let label = subject.label().to_lowercase();
    let mut results = vec![CheckResult {
        name: format!(
            "[{}] text encoder {}",
            subject.precision(),
            folder_name(dir)
        ),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!("{plain_note}2 prompts: {label} {device_ms:.2} ms, cpu {cpu_ms:.1} ms"),
    }];

    let (h, w) = configs.unet.sample_size.unwrap_or((8, 8));
    let shape = [2, h, w, configs.vae.latent_channels];
    let latents = normal_vec(1002, NoiseStream::Custom(1 << 57), shape.iter().product());
    let decode = |b: &dyn Backend, vae: &Vae| -> Result<Vec<f32>> {
        let t = b.tensor(&shape, latents.clone())?;
        b.to_host(&vae.decode(b, &t)?)
    };
    let vae_cpu = folder.load_vae(refs.cpu, VaeParts::DecoderOnly)?;
    let vae_device = folder.load_vae(backend.as_ref(), VaeParts::DecoderOnly)?;
    let (reference, cpu_ms) = timed(1, || decode(refs.cpu, &vae_cpu))?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| {
        decode(plain, &folder.load_vae(plain, VaeParts::DecoderOnly)?)
    })?;
    let (out, device_ms) = timed(1, || decode(backend.as_ref(), &vae_device))?;
    results.push(CheckResult {
        name: format!("[{}] vae decode {}", subject.precision(), folder_name(dir)),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}2 latents {h}×{w}: {label} {device_ms:.2} ms, cpu {cpu_ms:.1} ms"
        ),
    });
    Ok(results)
}

//! A whole U-Net forward of a model folder on the backend under check against the
//! CPU backend, at batch 4 with random inputs (and random text states for a
//! text-conditioned model).

use std::path::Path;
use std::time::Instant;

use super::folder_name;
use crate::backend::check::{rel_l2, CheckResult, References, Subject};
use crate::backend::Backend;
use crate::error::Result;
use crate::model::{ModelFolder, UNet, UNetInputs};
use crate::rng::{normal_vec, NoiseStream};

pub fn check(refs: &References, subject: &dyn Subject, dir: &Path) -> Result<CheckResult> {
    let backend = subject.backend();
    let folder = ModelFolder::locate(dir)?;
    let on_cpu = folder.load_unet(refs.cpu)?;
    let on_device = folder.load_unet(backend.as_ref())?;
    let config = on_cpu.config();
    let (h, w) = config.sample_size.unwrap_or((32, 32));
    let batch = 4;
    let shape = [batch, h, w, config.in_channels];
    let x = normal_vec(1000, NoiseStream::Custom(1 << 57), shape.iter().product());
    let timesteps: Vec<f32> = vec![999.0, 640.5, 250.0, 3.0];
    let labels: Option<Vec<usize>> = on_cpu
        .num_classes()
        .map(|c| (0..batch).map(|i| (3 * i) % c).collect());
    let states = config.cross_attention_dim.map(|d| {
        (
            vec![batch, 7, d],
            normal_vec(1001, NoiseStream::Custom(1 << 57), batch * 7 * d),
        )
    });
    // Each forward is read back, so the wall clock holds for any backend.
    let run = |b: &dyn Backend, unet: &UNet, iters: usize| -> Result<(Vec<f32>, f64)> {
        let xt = b.tensor(&shape, x.clone())?;
        let enc = states
            .as_ref()
            .map(|(s, v)| b.tensor(s, v.clone()))
            .transpose()?;
        let inputs = UNetInputs {
            timesteps: &timesteps,
            class_labels: labels.as_deref(),
            encoder_hidden_states: enc.as_ref(),
        };
        let out = b.to_host(&unet.forward(b, &xt, &inputs)?)?;
        let t = Instant::now();
        for _ in 0..iters {
            b.to_host(&unet.forward(b, &xt, &inputs)?)?;
        }
        Ok((out, t.elapsed().as_secs_f64() * 1e3 / iters.max(1) as f64))
    };
    let (reference, cpu_ms) = run(refs.cpu, &on_cpu, 5)?;
    let (tolerance, plain_note) = refs.tolerance(&reference, |plain| {
        let on_plain = folder.load_unet(plain)?;
        Ok(run(plain, &on_plain, 0)?.0)
    })?;
    let (out, device_ms) = run(backend.as_ref(), &on_device, 5)?;
    Ok(CheckResult {
        name: format!("[{}] unet {}", subject.precision(), folder_name(dir)),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}batch {batch} {h}×{w}: {} {device_ms:.2} ms, cpu {cpu_ms:.1} ms per forward (incl. copy back)",
            subject.label().to_lowercase()
        ),
    })
}

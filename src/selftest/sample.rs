//! A 20-step DDIM sample with CFG (scale 3) of four images on the backend under
//! check against the same run on the references, for models conditioned on a class
//! or on nothing (a text-conditioned model's forward is checked by
//! [`super::unet`]). f32 must agree to 1e-4, DESIGN.md's bound for whole
//! trajectories.

use std::path::Path;
use std::time::Instant;

use super::folder_name;
use crate::backend::check::{rel_l2, CheckResult, References, Subject};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::guidance::{Guidance, GuidanceInterval};
use crate::model::ModelFolder;
use crate::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use crate::schedule::{self, ScheduleOptions, SchedulerKind};

/// `None` for a text-conditioned model.
pub fn check(refs: &References, subject: &dyn Subject, dir: &Path) -> Result<Option<CheckResult>> {
    let folder = ModelFolder::locate(dir)?;
    let config = folder.load_scheduler_config()?;
    let steps = 20;
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &config,
        steps,
        &ScheduleOptions::default(),
    )?;
    let run = |b: &dyn Backend| -> Result<Option<(Vec<f32>, f64)>> {
        let unet = folder.load_unet(b)?;
        if unet.config().cross_attention_dim.is_some() {
            return Ok(None);
        }
        let classes = unet.num_classes();
        let specs: Vec<SampleSpec> = (0..4)
            .map(|i| SampleSpec {
                seed: i as u64,
                condition: match classes {
                    // The last class is the null class.
                    Some(c) if c > 1 => Condition::Class((3 * i) % (c - 1)),
                    _ => Condition::Unconditional,
                },
                guidance: Guidance {
                    scale: 3.0,
                    rescale: 0.0,
                    interval: GuidanceInterval::ALWAYS,
                    ..Guidance::default()
                },
            })
            .collect();
        let sampler = Sampler::new(b, &unet, scheduler.as_ref())?;
        let started = Instant::now();
        let outputs = sampler.sample(&specs, &PhiloxNoise, &mut |_| {})?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        Ok(Some((
            outputs.into_iter().flat_map(|o| o.data).collect(),
            ms,
        )))
    };
    let Some((reference, cpu_ms)) = run(refs.cpu)? else {
        return Ok(None);
    };
    let (tolerance, plain_note) = match &refs.plain {
        None => (1e-4, String::new()),
        Some(_) => refs.tolerance(&reference, |plain| {
            run(plain)?
                .map(|(v, _)| v)
                .ok_or_else(|| Error::invalid("selftest", "the plain reference skipped the model"))
        })?,
    };
    let backend = subject.backend();
    let Some((out, device_ms)) = run(backend.as_ref())? else {
        return Ok(None);
    };
    Ok(Some(CheckResult {
        name: format!(
            "[{}] sample {} (DDIM {steps}, CFG 3)",
            subject.precision(),
            folder_name(dir)
        ),
        rel_l2: Some(rel_l2(&out, &reference)),
        tolerance: Some(tolerance),
        note: format!(
            "{plain_note}4 images: {} {device_ms:.1} ms, cpu {cpu_ms:.0} ms (incl. model load)",
            subject.label().to_lowercase()
        ),
    }))
}

//! A U-Net `config.json` (`model::config`), from arbitrary text: parsed, and when it
//! parses, a U-Net built from it over the class-conditional fixture's weights (which
//! mismatch most configs, and must be refused with an `Error`, never a panic or an
//! unbounded allocation). A config the weights fit is sampled for one step (at most
//! 64 × 64: larger sizes are valid but slow).
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use diffsteer::json_fields::Fields;
use diffsteer::model::config::UNetConfig;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::UNet;
use diffsteer::sampler::{Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
use diffsteer::{CpuBackend, Guidance};
use libfuzzer_sys::fuzz_target;

const WEIGHTS: &[u8] =
    include_bytes!("../../tests/fixtures/models/unet2d_class/diffusion_pytorch_model.safetensors");

fn backend() -> &'static CpuBackend {
    static BACKEND: OnceLock<CpuBackend> = OnceLock::new();
    BACKEND.get_or_init(CpuBackend::new)
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(fields) = Fields::parse(Path::new("config.json"), text) else {
        return;
    };
    let Ok(config) = UNetConfig::from_fields(&fields) else {
        return;
    };
    let _ = config.num_skips();
    let (h, w) = config.sample_size.unwrap_or((8, 8));
    let classes = config.num_class_embeds;
    let weights = WeightFile::from_bytes("fixture.safetensors", WEIGHTS.to_vec())
        .expect("the fixture weights parse");
    let Ok(unet) = UNet::load(backend(), config, &weights) else {
        return;
    };
    if h * w > 64 * 64 {
        return;
    }
    let scheduler = schedule::build(
        SchedulerKind::Ddim,
        &SchedulerConfig::empty(),
        1,
        &ScheduleOptions::default(),
    )
    .expect("a one-step DDIM schedule");
    let Ok(sampler) = Sampler::new(backend(), &unet, scheduler.as_ref()) else {
        return;
    };
    let spec = SampleSpec {
        seed: 1,
        condition: match classes {
            Some(n) if n > 1 => Condition::Class(1),
            _ => Condition::Unconditional,
        },
        guidance: Guidance::cfg(2.0),
    };
    let _ = sampler.sample(&[spec], &PhiloxNoise, &mut |_| {});
});

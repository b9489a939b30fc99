//! The README's alignment example: the unconditional digits model steered to draw
//! threes, by reward-gradient guidance plus Feynman-Kac steering over 4 particles.
//!
//!     cargo run --release --example steer

use std::path::Path;
use std::sync::Arc;

use diffsteer::guidance::reward::RewardGuidance;
use diffsteer::reward::{Classifier, ClassifierReward};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerKind};
use diffsteer::steer::{SteerMethod, Steering};
use diffsteer::{
    Alignment, Condition, CpuBackend, Guidance, Image8, ModelFolder, PhiloxNoise, SampleSpec,
    Sampler,
};

fn main() -> diffsteer::Result<()> {
    let backend = CpuBackend::new();
    let folder = ModelFolder::locate("weights/digits")?;
    let unet = folder.load_unet(&backend)?;
    let config = folder.load_scheduler_config()?;
    // Feynman-Kac resampling needs fresh noise at every step: DDIM with eta 1.
    let options = ScheduleOptions {
        eta: 1.0,
        karras: None,
    };
    let scheduler = schedule::build(SchedulerKind::Ddim, &config, 50, &options)?;
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref())?;

    let classifier = Arc::new(Classifier::load(Path::new("weights/digit-classifier"))?);
    let reward = ClassifierReward::new(classifier, 3)?;
    let alignment = Alignment {
        reward: Some(&reward),
        guidance: RewardGuidance::recommended(scheduler.num_steps()),
        steering: Steering::new(4, SteerMethod::FeynmanKac),
    };
    let specs: Vec<SampleSpec> = (1..=4)
        .map(|seed| SampleSpec {
            seed,
            condition: Condition::Unconditional,
            guidance: Guidance::cfg(1.0),
        })
        .collect();
    let samples = sampler.sample_aligned(&specs, &PhiloxNoise, &alignment, &mut |_| {})?;
    for (i, s) in samples.iter().enumerate() {
        println!(
            "three-{i}.png: log p(3 | x) = {:.4}, particle {}",
            s.reward.unwrap_or(f32::NAN),
            s.particle
        );
        let png = Image8::from_model_space(&s.data, s.height, s.width, s.channels)?.encode_png()?;
        std::fs::write(format!("three-{i}.png"), png)
            .map_err(|e| diffsteer::Error::io("three.png", "cannot write", e))?;
    }
    Ok(())
}

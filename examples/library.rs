//! The README's library example: four sevens from the shipped digits model with
//! DPM-Solver++ and classifier-free guidance, written as PNGs.
//!
//!     cargo run --release --example library

use diffsteer::schedule::{self, ScheduleOptions, SchedulerKind};
use diffsteer::{
    Condition, CpuBackend, Guidance, Image8, ModelFolder, PhiloxNoise, SampleSpec, Sampler,
};

fn main() -> diffsteer::Result<()> {
    let backend = CpuBackend::new();
    let folder = ModelFolder::locate("weights/digits")?;
    let unet = folder.load_unet(&backend)?;
    let config = folder.load_scheduler_config()?;
    let scheduler = schedule::build(
        SchedulerKind::DpmSolverMultistep,
        &config,
        20,
        &ScheduleOptions::default(),
    )?;
    let sampler = Sampler::new(&backend, &unet, scheduler.as_ref())?;

    let specs: Vec<SampleSpec> = (0..4)
        .map(|seed| SampleSpec {
            seed,
            condition: Condition::Class(7),
            guidance: Guidance::cfg(3.0),
        })
        .collect();
    let samples = sampler.sample(&specs, &PhiloxNoise, &mut |p| {
        eprint!("\rstep {}/{}", p.step, p.total)
    })?;
    eprintln!();
    for (i, s) in samples.iter().enumerate() {
        let png = Image8::from_model_space(&s.data, s.height, s.width, s.channels)?.encode_png()?;
        let path = format!("seven-{i}.png");
        std::fs::write(&path, png).map_err(|e| diffsteer::Error::io(&path, "cannot write", e))?;
        eprintln!("wrote {path}");
    }
    Ok(())
}

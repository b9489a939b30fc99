//! `diffsteer bench`: times the CPU backend on a model — a GEMM ceiling, the U-Net
//! forward (with the FLOPs it performed) and whole CFG sampling runs — so speed
//! claims are fractions of a ceiling measured in the same run.

use std::time::Instant;

use diffsteer::backend::counting::CountingBackend;
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::backend::Backend;
use diffsteer::guidance::reward::RewardGuidance;
use diffsteer::guidance::Guidance;
use diffsteer::model::{ModelFolder, UNetInputs};
use diffsteer::reward::{Classifier, ClassifierReward, Reward, SampleShape};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::sampler::{Alignment, Condition, PhiloxNoise, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions};
use diffsteer::steer::Steering;

use crate::args::{BenchArgs, SchedulerArg};
use crate::generate::resolve_model;
use crate::usage_error::{usage, CliError};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn time_it<T>(iters: usize, mut f: impl FnMut() -> diffsteer::Result<T>) -> diffsteer::Result<f64> {
    f()?; // warm-up: page in weights, grow the allocator's pools
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

pub fn run(args: &BenchArgs) -> Result<(), CliError> {
    let cpu = CpuBackend::new();
    let counting = CountingBackend::new(&cpu);
    let threads = rayon::current_num_threads();
    println!(
        "diffsteer bench: CPU backend, {threads} threads, median of {} runs",
        args.iters
    );

    // Ceiling: one large GEMM through the same backend path the model uses.
    let (m, k, n) = (4096, 1024, 1024);
    let a = cpu.tensor(&[m, k], normal_vec(1, NoiseStream::Custom(1 << 56), m * k))?;
    let w = cpu.tensor(&[k, n], normal_vec(2, NoiseStream::Custom(1 << 56), k * n))?;
    let gemm_s = time_it(args.iters, || cpu.linear(&a, &w, None))?;
    let ceiling = 2.0 * (m * k * n) as f64 / gemm_s / 1e9;
    println!(
        "gemm {m}×{k}×{n} f32            {:>9.2} ms  {ceiling:>7.1} GFLOP/s (ceiling)",
        gemm_s * 1e3
    );

    let model_dir = resolve_model(&args.model);
    let folder = ModelFolder::locate(&model_dir).map_err(|e| usage("--model", e))?;
    let unet = folder.load_unet(&counting)?;
    let config = unet.config();
    let (h, w) = config
        .sample_size
        .ok_or_else(|| usage("--model", "the model config has no sample_size"))?;
    let batch = args.batch;
    let x = cpu.tensor(
        &[batch, h, w, config.in_channels],
        normal_vec(
            3,
            NoiseStream::Custom(1 << 56),
            batch * h * w * config.in_channels,
        ),
    )?;
    let timesteps: Vec<f32> = (0..batch).map(|i| (999 - 37 * i % 1000) as f32).collect();
    let labels: Option<Vec<usize>> = unet
        .num_classes()
        .map(|c| (0..batch).map(|i| i % c).collect());
    if config.cross_attention_dim.is_some() {
        return Err(usage(
            "--model",
            "bench times class-conditional and unconditional models only",
        ));
    }
    let inputs = UNetInputs {
        timesteps: &timesteps,
        class_labels: labels.as_deref(),
        encoder_hidden_states: None,
    };
    counting.take_flops();
    unet.forward(&counting, &x, &inputs)?;
    let flops = counting.take_flops() as f64;
    let forward_s = time_it(args.iters, || unet.forward(&counting, &x, &inputs))?;
    let rate = flops / forward_s / 1e9;
    println!(
        "unet forward, batch {batch:<4}         {:>9.2} ms  {rate:>7.1} GFLOP/s ({:.0}% of ceiling; {:.2} GFLOP per call)",
        forward_s * 1e3,
        100.0 * rate / ceiling,
        flops / 1e9
    );
    let stats = counting.take_stats();
    let total: f64 = stats.values().map(|s| s.time.as_secs_f64()).sum();
    let mut rows: Vec<_> = stats.into_iter().collect();
    rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.time));
    for (op, s) in rows {
        let secs = s.time.as_secs_f64();
        let rate = if s.flops > 0 {
            format!("{:7.1} GFLOP/s", s.flops as f64 / secs / 1e9)
        } else {
            String::new()
        };
        println!(
            "  {op:<18} {:>5.1}%  {:>8.2} ms/forward  {:>5} calls/forward  {rate}",
            100.0 * secs / total,
            secs * 1e3 / (args.iters + 1) as f64,
            s.calls / (args.iters as u64 + 1)
        );
    }

    let scheduler_config = folder.load_scheduler_config()?;
    let kind = args
        .scheduler
        .or_else(|| scheduler_config.class_kind().map(SchedulerArg::from_kind))
        .unwrap_or(SchedulerArg::Ddim);
    let scheduler = schedule::build(
        kind.kind(),
        &scheduler_config,
        args.steps,
        &ScheduleOptions::default(),
    )?;
    let sampler = Sampler::new(&cpu, &unet, scheduler.as_ref())?;
    let images = (batch / 2).max(1);
    let specs: Vec<SampleSpec> = (0..images)
        .map(|i| SampleSpec {
            seed: i as u64,
            condition: match sampler.conditional_classes() {
                Some(c) => Condition::Class(i % c),
                None => Condition::Unconditional,
            },
            guidance: Guidance {
                scale: 3.0,
                ..Guidance::default()
            },
        })
        .collect();
    let sample_s = time_it(args.iters.min(3), || {
        sampler.sample(&specs, &PhiloxNoise, &mut |_| {})
    })?;
    println!(
        "sample {images} images, {} {} steps, cfg 3 {:>7.2} s   {:>7.3} s/image",
        args.steps,
        kind.name(),
        sample_s,
        sample_s / images as f64
    );

    // The same run with reward-gradient guidance by the digit classifier at the
    // defaults of `generate --reward`: what guidance adds to a CFG step.
    let classifier_dir = crate::align::default_classifier_dir(&model_dir);
    let shape = SampleShape::new(h, w, config.in_channels);
    let reward = Classifier::load(&classifier_dir)
        .and_then(|c| ClassifierReward::new(std::sync::Arc::new(c), 0))
        .and_then(|r| r.check_shape(shape).map(|()| r));
    match reward {
        Ok(reward) => {
            let alignment = Alignment {
                reward: Some(&reward),
                guidance: RewardGuidance::recommended(args.steps),
                steering: Steering::NONE,
            };
            let guided_s = time_it(args.iters.min(3), || {
                sampler.sample_aligned(&specs, &PhiloxNoise, &alignment, &mut |_| {})
            })?;
            println!(
                "  + reward guidance (defaults)    {:>7.2} s   {:>7.3} s/image  {:+.1}% per step vs cfg alone",
                guided_s,
                guided_s / images as f64,
                100.0 * (guided_s / sample_s - 1.0)
            );
        }
        Err(e) => println!(
            "  reward guidance not timed: no usable classifier in {} ({e})",
            classifier_dir.display()
        ),
    }
    Ok(())
}

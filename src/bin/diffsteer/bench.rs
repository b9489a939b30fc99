//! `diffsteer bench`: times a backend on a model — a GEMM ceiling, the U-Net
//! forward (with the FLOPs it performed and where its time goes) and CFG sampling
//! runs at several batch sizes — so speed claims are fractions of a ceiling
//! measured in the same run. `--json` writes every number to a file.
//!
//! With the built-in `sd15-shape`, each sampling run is a whole text-to-image
//! generation through Stable Diffusion 1.5-shaped components with random weights:
//! the CLIP text encoder on a prompt and a negative prompt (fixed token ids), the
//! sampling steps on its states, and the VAE decoding every latent; each stage is
//! timed on its own.

use std::path::{Path, PathBuf};
use std::time::Instant;

use diffsteer::backend::counting::CountingBackend;
use diffsteer::backend::{run_busy, Backend};
use diffsteer::guidance::Guidance;
use diffsteer::model::clip::{preset as clip_preset, TextEncoder};
use diffsteer::model::preset;
use diffsteer::model::vae::{preset as vae_preset, TileSettings, Vae, VaeParts};
use diffsteer::model::{ModelFolder, UNet, UNetInputs};
use diffsteer::pipeline::{drive, Engine, PlanFeed, Request};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::sampler::{Condition, PhiloxNoise, SampleOutput, SampleSpec, Sampler};
use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig};
use diffsteer::tensor::Tensor;
use serde_json::{json, Value};

use crate::args::{BenchArgs, SchedulerArg};
use crate::engine_flags::{device_of, engine_error, open_engine, resolve_model};
use crate::usage_error::{usage, CliError};

/// The built-in model of `--model sd15-shape`.
const SD15_SHAPE: &str = "sd15-shape";
/// Seed of the built-in model's weights.
const PRESET_SEED: u64 = 0;
/// Guidance scale of every timed sampling run.
const CFG: f32 = 3.0;
/// The `sd15-shape` pipeline's prompt, as SD 1.5's tokenizer splits "a photograph
/// of an astronaut riding a horse"; the negative prompt is empty. Every prompt is
/// padded to 77 tokens, so the words do not change the work.
const PROMPT_IDS: [u32; 8] = [320, 8853, 539, 550, 18376, 6765, 320, 4558];
/// Latents up to this side decode whole, larger ones in tiles (as the engine does).
const MAX_WHOLE_DECODE_LATENT: usize = 64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Waits for everything queued on `b` (a no-op on the synchronous CPU backend): a
/// download is ordered after all earlier work on the device.
fn sync(b: &dyn Backend, probe: &Tensor) -> diffsteer::Result<()> {
    b.to_host(probe).map(drop)
}

fn time_it<T>(iters: usize, mut f: impl FnMut() -> diffsteer::Result<T>) -> diffsteer::Result<f64> {
    f()?; // warm-up: page in weights, grow the allocator's pools, compile kernels
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(median(times))
}

/// The process's peak resident memory so far (`VmHWM`), in MiB, where the system
/// reports it.
fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// Refuses a `--json` path that cannot be written, before any timing is done.
fn check_json_path(path: &Path) -> Result<(), CliError> {
    let shown = path.display();
    if path.is_dir() {
        return Err(usage(
            "--json",
            format!("{shown} is a folder, expected a file"),
        ));
    }
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| usage("--json", format!("{shown} has no file name")))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        return Err(usage(
            "--json",
            format!(
                "cannot write {shown}: the folder {} does not exist",
                parent.display()
            ),
        ));
    }
    let probe = parent.join(format!(".{name}.{}.probe", std::process::id()));
    std::fs::File::create(&probe)
        .map_err(|e| usage("--json", format!("cannot write {shown}: {e}")))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// What `--model` names.
enum Source {
    Folder { dir: PathBuf, folder: ModelFolder },
    Sd15Shape,
}

impl Source {
    fn resolve(arg: &Path) -> Result<Self, CliError> {
        if arg == Path::new(SD15_SHAPE) {
            return Ok(Source::Sd15Shape);
        }
        let dir = resolve_model(arg);
        let folder = ModelFolder::locate(&dir)
            .map_err(|e| usage("--model", format!("{e} (or use the built-in {SD15_SHAPE})")))?;
        Ok(Source::Folder { dir, folder })
    }

    fn name(&self) -> String {
        match self {
            Source::Folder { dir, .. } => dir.display().to_string(),
            Source::Sd15Shape => SD15_SHAPE.to_string(),
        }
    }
}

/// Runs `request` through `engine` with all of its `batch` images in every
/// model call, pushing the time of each step onto `step_times`.
fn time_engine_run(
    engine: &Engine,
    request: &Request,
    batch: usize,
    step_times: &mut Vec<f64>,
) -> Result<(), CliError> {
    let plan = engine.prepare(request).map_err(engine_error)?;
    let mut runner = engine.runner::<()>(batch).map_err(engine_error)?;
    let mut last = Instant::now();
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut PlanFeed::new(plan),
                &mut |done| done.result.map(drop),
                &mut |_| {
                    step_times.push(last.elapsed().as_secs_f64());
                    last = Instant::now();
                },
            )
        })
        .map_err(engine_error)
}

/// One batch size's sampling numbers.
struct BatchResult {
    batch: usize,
    rows_per_call: usize,
    ms_per_step: f64,
    images_per_s: f64,
    gflops: f64,
    share: f64,
    wall_s: f64,
    peak_rss_mib: Option<f64>,
    /// Per-stage times of whole text-to-image runs (`sd15-shape`).
    stages: Option<Stages>,
}

/// The median time of each stage of a whole text-to-image generation, in seconds.
#[derive(Clone, Copy)]
struct Stages {
    text_encode: f64,
    sampling: f64,
    vae_decode: f64,
    total: f64,
}

/// The text side of `sd15-shape`: SD 1.5's CLIP text encoder and VAE decoder.
struct TextSide {
    encoder: TextEncoder,
    vae: Vae,
    encoder_params: usize,
    vae_params: usize,
}

impl TextSide {
    fn build(b: &dyn Backend) -> diffsteer::Result<Self> {
        let t = Instant::now();
        let config = clip_preset::sd15_text_config()?;
        let encoder_params = count(&clip_preset::weight_specs(&config));
        let encoder = clip_preset::random_text_encoder(b, config, PRESET_SEED)?;
        println!(
            "{SD15_SHAPE}: SD 1.5 text encoder (CLIP ViT-L/14), {:.1}M parameters, built in {:.1} s",
            encoder_params as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let config = vae_preset::sd_vae_config()?;
        let vae_params = count(&vae_preset::weight_specs(&config));
        let vae = vae_preset::random_vae(b, config, PRESET_SEED, VaeParts::DecoderOnly)?;
        println!(
            "{SD15_SHAPE}: SD 1.5 VAE (decoder used), {:.1}M parameters, built in {:.1} s",
            vae_params as f64 / 1e6,
            t.elapsed().as_secs_f64()
        );
        Ok(TextSide {
            encoder,
            vae,
            encoder_params,
            vae_params,
        })
    }

    /// The prompt's and the negative prompt's states, `[tokens, hidden]` each, one
    /// text encoder call per prompt as the engine makes them.
    fn encode(&self, b: &dyn Backend) -> diffsteer::Result<(Vec<f32>, Vec<f32>)> {
        let positions = self.encoder.config().max_position_embeddings;
        let states = |words: &[u32]| {
            let ids = clip_preset::padded_ids(words, positions);
            self.encoder.encode(b, &[ids]).and_then(|t| b.to_host(&t))
        };
        Ok((states(&PROMPT_IDS)?, states(&[])?))
    }

    /// Decodes one finished latent (as the engine does: whole, or in tiles past
    /// 64 latent pixels) and checks the image.
    fn decode(&self, b: &dyn Backend, output: &SampleOutput) -> diffsteer::Result<()> {
        let latent = b.tensor(
            &[1, output.height, output.width, output.channels],
            output.data.clone(),
        )?;
        let image = if output.height.max(output.width) > MAX_WHOLE_DECODE_LATENT {
            let tiles = TileSettings::for_config(self.vae.config());
            self.vae.decode_tiled(b, &latent, &tiles)?
        } else {
            self.vae.decode(b, &latent)?
        };
        let factor = self.factor();
        let expected = [1, output.height * factor, output.width * factor, 3];
        if image.shape() != expected {
            return Err(diffsteer::Error::shape(
                "VAE decode",
                format!(
                    "an image of shape {:?}, expected {expected:?}",
                    image.shape()
                ),
            ));
        }
        b.to_host(&image).map(drop)
    }

    /// Image pixels per latent pixel.
    fn factor(&self) -> usize {
        1 << self.vae.config().block_out_channels.len().saturating_sub(1)
    }
}

fn count(specs: &[preset::WeightSpec]) -> usize {
    specs
        .iter()
        .map(|w| w.shape.iter().product::<usize>())
        .sum()
}

fn opt_mib(v: Option<f64>) -> String {
    v.map_or("n/a".to_string(), |m| format!("{m:.0} MiB"))
}

pub fn run(args: &BenchArgs, threads: Option<usize>) -> Result<(), CliError> {
    // Everything a user can get wrong is checked before any timing.
    if let Some(path) = &args.json {
        check_json_path(path)?;
    }
    let source = Source::resolve(&args.model)?;
    match &source {
        // A model folder is timed through the engine every front end uses.
        Source::Folder { dir, .. } => {
            let engine = open_engine(dir, &args.target, threads, None)?;
            engine.install(|| bench(args, &source, engine.backend(), Some(&engine)))
        }
        // The built-in shape has no request form (random encoder states): it is
        // timed through the engine's sampler directly.
        Source::Sd15Shape => {
            let backend =
                diffsteer::pipeline::make_backend(device_of(args.target.device), args.target.dtype)
                    .map_err(engine_error)?;
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads.unwrap_or(0))
                .build()
                .map_err(|e| usage("--threads", format!("cannot start the thread pool: {e}")))?;
            pool.install(|| bench(args, &source, backend.as_ref(), None))
        }
    }
}

fn bench(
    args: &BenchArgs,
    source: &Source,
    b: &dyn Backend,
    engine: Option<&Engine>,
) -> Result<(), CliError> {
    let batches = &args.batch.0;
    let counting = CountingBackend::new(b);
    let probe = b.tensor(&[1], vec![0.0])?;
    let threads = rayon::current_num_threads();
    let device = b.name();
    println!(
        "diffsteer bench: {device} backend, {threads} CPU threads, median of {} runs",
        args.iters
    );

    // Ceiling: one large GEMM through the same backend path the model uses.
    let (m, k, n) = (4096, 1024, 1024);
    let a = b.tensor(&[m, k], normal_vec(1, NoiseStream::Custom(1 << 56), m * k))?;
    let w = b.tensor(&[k, n], normal_vec(2, NoiseStream::Custom(1 << 56), k * n))?;
    let gemm_s = time_it(args.iters, || {
        let out = b.linear(&a, &w, None)?;
        sync(b, &probe)?;
        Ok(out)
    })?;
    drop((a, w));
    let ceiling = 2.0 * (m * k * n) as f64 / gemm_s / 1e9;
    println!(
        "gemm {m}×{k}×{n} f32            {:>9.2} ms  {ceiling:>7.1} GFLOP/s (ceiling)",
        gemm_s * 1e3
    );

    let built: UNet;
    let mut text_side: Option<TextSide> = None;
    let (unet, scheduler_config): (&UNet, SchedulerConfig) = match (source, engine) {
        (Source::Folder { folder, .. }, Some(engine)) => {
            (engine.unet(), folder.load_scheduler_config()?)
        }
        (Source::Folder { folder, .. }, None) => {
            built = folder.load_unet(b)?;
            (&built, folder.load_scheduler_config()?)
        }
        (Source::Sd15Shape, _) => {
            let config = preset::config_from_json(
                &preset::sd15_config_json(args.size.unwrap_or(64)),
                SD15_SHAPE,
            )?;
            let params = preset::parameter_count(&config);
            let t = Instant::now();
            let unet = preset::random_unet(b, config, PRESET_SEED)?;
            println!(
                "{SD15_SHAPE}: SD 1.5 U-Net, {:.1}M parameters, random weights (seed {PRESET_SEED}), built in {:.1} s",
                params as f64 / 1e6,
                t.elapsed().as_secs_f64()
            );
            built = unet;
            text_side = Some(TextSide::build(b)?);
            (&built, preset::sd15_scheduler_config()?)
        }
    };
    let config = unet.config();
    let (h, w) = match (args.size, config.sample_size) {
        (Some(s), _) => (s, s),
        (None, Some(hw)) => hw,
        (None, None) => {
            return Err(usage(
                "--size",
                "the model config has no sample_size; give the size to time",
            ))
        }
    };
    let channels = config.in_channels;
    let cross_dim = config.cross_attention_dim;
    let tokens = preset::SD15_TOKENS;
    let params = preset::parameter_count(config);
    let classes = unet.num_classes();

    // One forward at the largest batch's model call: FLOPs and per-op breakdown.
    let largest = batches.iter().copied().max().unwrap_or(1);
    let cfg_applies = classes.is_some() || cross_dim.is_some();
    let rows_of = |batch: usize| if cfg_applies { 2 * batch } else { batch };
    let rows = rows_of(largest);
    let x = b.tensor(
        &[rows, h, w, channels],
        normal_vec(3, NoiseStream::Custom(1 << 56), rows * h * w * channels),
    )?;
    let timesteps: Vec<f32> = (0..rows).map(|i| (999 - 37 * i % 1000) as f32).collect();
    let labels: Option<Vec<usize>> = classes.map(|c| (0..rows).map(|i| i % c).collect());
    let hidden = cross_dim
        .map(|d| {
            b.tensor(
                &[rows, tokens, d],
                normal_vec(4, NoiseStream::Custom(1 << 56), rows * tokens * d),
            )
        })
        .transpose()?;
    let inputs = UNetInputs {
        timesteps: &timesteps,
        class_labels: labels.as_deref(),
        encoder_hidden_states: hidden.as_ref(),
    };
    counting.take_flops();
    unet.forward(&counting, &x, &inputs)?;
    sync(b, &probe)?;
    let flops = counting.take_flops() as f64;
    let forward_s = run_busy(b, || {
        time_it(args.iters, || {
            let out = unet.forward(&counting, &x, &inputs)?;
            sync(b, &probe)?;
            Ok(out)
        })
    })?;
    let rate = flops / forward_s / 1e9;
    println!(
        "unet forward, batch {rows:<4}         {:>9.2} ms  {rate:>7.1} GFLOP/s ({:.0}% of ceiling; {:.2} GFLOP per call)",
        forward_s * 1e3,
        100.0 * rate / ceiling,
        flops / 1e9
    );
    if device != "cpu" {
        println!("  (per-op times on an asynchronous device are launch times, not kernel times)");
    }
    let stats = counting.take_stats();
    let total: f64 = stats.values().map(|s| s.time.as_secs_f64()).sum();
    let mut op_rows: Vec<_> = stats.into_iter().collect();
    op_rows.sort_by_key(|(_, s)| std::cmp::Reverse(s.time));
    let forwards = (args.iters + 1) as f64;
    let mut ops_json = Vec::new();
    for (op, s) in op_rows {
        let secs = s.time.as_secs_f64();
        let op_rate = (s.flops > 0).then(|| s.flops as f64 / secs / 1e9);
        let share = secs / total;
        println!(
            "  {op:<18} {:>5.1}%  {:>8.2} ms/forward  {:>5} calls/forward  {}",
            100.0 * share,
            secs * 1e3 / forwards,
            s.calls / (args.iters as u64 + 1),
            op_rate.map_or(String::new(), |r| format!("{r:7.1} GFLOP/s"))
        );
        ops_json.push(json!({
            "op": op,
            "share": share,
            "ms_per_forward": secs * 1e3 / forwards,
            "calls_per_forward": s.calls as f64 / forwards,
            "gflops": op_rate,
        }));
    }
    drop((x, hidden));

    // CFG sampling at each batch size.
    let kind = args
        .scheduler
        .or_else(|| scheduler_config.class_kind().map(SchedulerArg::from_kind))
        .unwrap_or(SchedulerArg::Ddim);
    let build = |steps: usize| {
        schedule::build(
            kind.kind(),
            &scheduler_config,
            steps,
            &ScheduleOptions::default(),
        )
    };
    let scheduler = build(args.steps)?;
    let warmup_steps = args.steps.min(2);
    let warmup_scheduler = build(warmup_steps)?;
    let sampler = Sampler::new(b, unet, scheduler.as_ref())?.with_size(h, w)?;
    let counting_sampler =
        Sampler::new(&counting, unet, warmup_scheduler.as_ref())?.with_size(h, w)?;
    let specs_for = |batch: usize| -> Vec<SampleSpec> {
        (0..batch)
            .map(|i| SampleSpec {
                seed: i as u64,
                condition: match (cross_dim, sampler.conditional_classes()) {
                    (Some(d), _) => Condition::Embedding {
                        cond: normal_vec(1000 + i as u64, NoiseStream::Custom(1 << 56), tokens * d),
                        uncond: normal_vec(
                            2000 + i as u64,
                            NoiseStream::Custom(1 << 56),
                            tokens * d,
                        ),
                        tokens,
                    },
                    (None, Some(c)) => Condition::Class(i % c),
                    (None, None) => Condition::Unconditional,
                },
                guidance: Guidance {
                    scale: CFG,
                    ..Guidance::default()
                },
            })
            .collect()
    };
    let runs = args.iters.min(3);
    // Through the engine when it runs this model at this size.
    let via_engine =
        engine.filter(|_| args.size.is_none_or(|s| config.sample_size == Some((s, s))));
    let request_for = |batch: usize, rewarded: bool| Request {
        count: batch as u64,
        seed: 0,
        steps: args.steps,
        scheduler: Some(kind.kind()),
        cfg: CFG,
        reward: if rewarded {
            vec!["classifier:0".to_string()]
        } else {
            Vec::new()
        },
        ..Request::default()
    };
    println!(
        "sampling, cfg {CFG}, {} {} steps, {h}×{w}, median of {runs} runs after a {warmup_steps}-step warm-up:",
        kind.name(),
        args.steps,
    );
    if let Some(text) = &text_side {
        let f = text.factor();
        println!(
            "  each run: text encoder on the prompt and the negative prompt, {} steps, VAE decode to {}×{} images",
            args.steps,
            h * f,
            w * f
        );
        // Warm-up of the text side (the first VAE call transforms its weights).
        text.encode(b)?;
        let latent = normal_vec(5, NoiseStream::Custom(1 << 56), h * w * channels);
        text.decode(
            b,
            &SampleOutput {
                height: h,
                width: w,
                channels,
                data: latent,
                reward: None,
                particle: 0,
            },
        )?;
    }
    println!("  images  rows/call    ms/step   images/s    GFLOP/s  of ceiling  peak RSS");
    let mut results = Vec::new();
    for &batch in batches {
        let specs = specs_for(batch);
        counting.take_stats();
        counting_sampler.sample(&specs, &PhiloxNoise, &mut |_| {})?;
        let flops_per_step = counting.take_flops() as f64 / warmup_steps as f64;
        let mut step_times = Vec::new();
        let mut walls = Vec::new();
        let mut stage_runs: Vec<Stages> = Vec::new();
        for _ in 0..runs {
            let mut sample = |specs: &[SampleSpec]| {
                let mut last = 0.0;
                sampler.sample(specs, &PhiloxNoise, &mut |p| {
                    let now = p.elapsed.as_secs_f64();
                    step_times.push(now - last);
                    last = now;
                })
            };
            let t = Instant::now();
            match (via_engine, &text_side) {
                (Some(engine), _) => {
                    time_engine_run(engine, &request_for(batch, false), batch, &mut step_times)?
                }
                (None, None) => drop(sample(&specs)?),
                (None, Some(text)) => {
                    // A whole generation: the stages in turn, each timed.
                    let (cond, uncond) = text.encode(b)?;
                    let text_encode = t.elapsed().as_secs_f64();
                    let texted: Vec<SampleSpec> = specs
                        .iter()
                        .map(|s| SampleSpec {
                            condition: Condition::Embedding {
                                cond: cond.clone(),
                                uncond: uncond.clone(),
                                tokens,
                            },
                            ..s.clone()
                        })
                        .collect();
                    let t_sample = Instant::now();
                    let outputs = sample(&texted)?;
                    let sampling = t_sample.elapsed().as_secs_f64();
                    let t_decode = Instant::now();
                    for output in &outputs {
                        text.decode(b, output)?;
                    }
                    let vae_decode = t_decode.elapsed().as_secs_f64();
                    stage_runs.push(Stages {
                        text_encode,
                        sampling,
                        vae_decode,
                        total: t.elapsed().as_secs_f64(),
                    });
                    walls.push(sampling);
                    continue;
                }
            }
            walls.push(t.elapsed().as_secs_f64());
        }
        let wall_s = median(walls);
        let stages = (!stage_runs.is_empty()).then(|| Stages {
            text_encode: median(stage_runs.iter().map(|s| s.text_encode).collect()),
            sampling: median(stage_runs.iter().map(|s| s.sampling).collect()),
            vae_decode: median(stage_runs.iter().map(|s| s.vae_decode).collect()),
            total: median(stage_runs.iter().map(|s| s.total).collect()),
        });
        let gflops = flops_per_step * args.steps as f64 / wall_s / 1e9;
        let r = BatchResult {
            batch,
            rows_per_call: rows_of(batch),
            ms_per_step: median(step_times) * 1e3,
            images_per_s: batch as f64 / wall_s,
            gflops,
            share: gflops / ceiling,
            wall_s,
            peak_rss_mib: peak_rss_mib(),
            stages,
        };
        println!(
            "  {:>6}  {:>9}  {:>9.2}  {:>9.2}  {:>9.1}  {:>9.0}%  {}",
            r.batch,
            r.rows_per_call,
            r.ms_per_step,
            r.images_per_s,
            r.gflops,
            100.0 * r.share,
            opt_mib(r.peak_rss_mib)
        );
        results.push(r);
    }
    if text_side.is_some() {
        println!(
            "whole text-to-image runs (medians of {runs}): text encoder, sampling, VAE decode, total"
        );
        println!(
            "  images   text enc (ms)   sampling (s)   vae decode (s)    total (s)    s/image"
        );
        for r in &results {
            if let Some(st) = r.stages {
                println!(
                    "  {:>6}  {:>14.1}  {:>13.2}  {:>15.2}  {:>11.2}  {:>9.2}",
                    r.batch,
                    st.text_encode * 1e3,
                    st.sampling,
                    st.vae_decode,
                    st.total,
                    st.total / r.batch as f64
                );
            }
        }
    }

    // Reward-gradient guidance by the digit classifier at the defaults of
    // `generate --reward`, at the largest batch: what guidance adds to a CFG step.
    let mut reward_json = Value::Null;
    match (via_engine, source) {
        (Some(engine), _) => {
            let cfg_s = results
                .iter()
                .find(|r| r.batch == largest)
                .map_or(f64::NAN, |r| r.wall_s);
            match engine.prepare(&request_for(largest, true)) {
                Ok(_) => {
                    let guided_s = time_it(runs, || {
                        time_engine_run(engine, &request_for(largest, true), largest, &mut Vec::new())
                            .map_err(|e| match e {
                                CliError::Runtime(e) => e,
                                CliError::Usage(m) => diffsteer::Error::invalid("bench", m),
                            })
                    })?;
                    println!(
                        "  + reward guidance (defaults), {largest} images: {:.2} s, {:.3} s/image, {:+.1}% per step vs cfg alone",
                        guided_s,
                        guided_s / largest as f64,
                        100.0 * (guided_s / cfg_s - 1.0)
                    );
                    reward_json = json!({
                        "images": largest,
                        "seconds": guided_s,
                        "extra_per_step": guided_s / cfg_s - 1.0,
                    });
                }
                Err(e) => println!(
                    "  reward guidance not timed: no usable classifier in {} ({e})",
                    engine.rewards().classifier_dir.display()
                ),
            }
        }
        (None, Source::Folder { .. }) => println!(
            "  reward guidance not timed: it is timed through the engine, at the model's own sample size"
        ),
        (None, Source::Sd15Shape) => {}
    }

    if let Some(path) = &args.json {
        let report = json!({
            "machine": {
                "device": device,
                "threads": threads,
                "ceiling_gflops": ceiling,
                "gemm": {"m": m, "k": k, "n": n, "ms": gemm_s * 1e3},
            },
            "model": {
                "name": source.name(),
                "parameters": params,
                "height": h,
                "width": w,
                "channels": channels,
                "encoder_tokens": cross_dim.map(|_| tokens),
                "pipeline": text_side.as_ref().map(|t| json!({
                    "text_encoder_parameters": t.encoder_params,
                    "vae_parameters": t.vae_params,
                    "image_height": h * t.factor(),
                    "image_width": w * t.factor(),
                    "prompts_per_run": 2,
                })),
            },
            "sampling": {
                "scheduler": kind.name(),
                "steps": args.steps,
                "cfg": CFG,
                "runs": runs,
            },
            "forward": {
                "rows": rows,
                "ms": forward_s * 1e3,
                "gflop_per_call": flops / 1e9,
                "gflops": rate,
                "share_of_ceiling": rate / ceiling,
                "ops": ops_json,
            },
            "batches": results.iter().map(|r| json!({
                "batch": r.batch,
                "rows_per_call": r.rows_per_call,
                "ms_per_step": r.ms_per_step,
                "images_per_s": r.images_per_s,
                "gflops": r.gflops,
                "share_of_ceiling": r.share,
                "peak_rss_mib": r.peak_rss_mib,
                "pipeline": r.stages.map(|st| json!({
                    "text_encode_ms": st.text_encode * 1e3,
                    "sampling_s": st.sampling,
                    "vae_decode_s": st.vae_decode,
                    "total_s": st.total,
                    "seconds_per_image": st.total / r.batch as f64,
                })),
            })).collect::<Vec<_>>(),
            "reward_guidance": reward_json,
        });
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| CliError::Runtime(diffsteer::Error::invalid("--json", e.to_string())))?
            + "\n";
        diffsteer::fsutil::write_atomic(path, text.as_bytes())?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

//! Text-to-image through the engine against diffusers' `StableDiffusionPipeline`
//! (tests/fixtures/text/<pipeline>__<scheduler>.safetensors, made by
//! tools/make_text_fixtures.py): the tiny SD1-style and SD2-style pipelines, prompt
//! and negative prompt, CFG 5, DDIM, DPM++ 2M and Euler, started from the engine's
//! own Philox noise — the images within 1 level of 255 on ≥ 99.5% of the pixels (and
//! within 1e-4 relative L2 as floats); plus the engine's refusals on text models.

mod common;

use common::{fixtures, rel_l2};
use diffsteer::model::weights::WeightFile;
use diffsteer::pipeline::{drive, Engine, EngineOptions, PlanFeed, Request};
use diffsteer::schedule::SchedulerKind;
use diffsteer::Error;

fn meta(fx: &WeightFile, key: &str) -> String {
    fx.user_metadata(key)
        .unwrap_or_else(|| panic!("{}: metadata `{key}` missing", fx.path().display()))
        .to_string()
}

fn number<T: std::str::FromStr>(fx: &WeightFile, key: &str) -> T {
    meta(fx, key)
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number"))
}

/// The one image of `request` through `engine`, NHWC in [-1, 1].
fn generate(engine: &Engine, request: &Request) -> (Vec<f32>, [usize; 3]) {
    let plan = engine
        .prepare(request)
        .unwrap_or_else(|e| panic!("{request:?}: {e}"));
    let mut runner = engine.runner::<()>(4).expect("runner");
    let mut out = None;
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut PlanFeed::new(plan),
                &mut |done| {
                    let image = done.result?.output;
                    out = Some((image.data, [image.height, image.width, image.channels]));
                    Ok(())
                },
                &mut |_| {},
            )
        })
        .expect("generation");
    out.expect("an image")
}

/// The pipeline folder `folder` against tests/fixtures/text/<name>__<scheduler>.safetensors.
fn check_pipeline(name: &str, folder: &std::path::Path) {
    let engine = Engine::open(EngineOptions {
        threads: Some(2),
        ..EngineOptions::new(folder)
    })
    .expect("the pipeline opens");
    assert!(engine.is_text_to_image());
    let mut report = Vec::new();
    for sched in ["ddim", "dpmpp2m", "euler"] {
        let path = fixtures()
            .join("text")
            .join(format!("{name}__{sched}.safetensors"));
        let fx = WeightFile::open(&path).expect("fixture");
        let prompts: Vec<String> = serde_json::from_str(&meta(&fx, "prompts")).expect("prompts");
        let negatives: Vec<String> =
            serde_json::from_str(&meta(&fx, "negative_prompts")).expect("negatives");
        let seeds: Vec<u64> = serde_json::from_str(&meta(&fx, "seeds")).expect("seeds");
        let kind = SchedulerKind::from_class_name(&meta(&fx, "scheduler_class")).expect("class");
        let (shape, expected) = fx.read_f32("images").expect("images");
        let per = shape[1..].iter().product::<usize>();
        for (i, ((prompt, negative), seed)) in
            prompts.iter().zip(&negatives).zip(&seeds).enumerate()
        {
            let request = Request {
                count: 1,
                seed: *seed,
                prompt: Some(prompt.clone()),
                negative_prompt: Some(negative.clone()),
                steps: number(&fx, "num_inference_steps"),
                cfg: number(&fx, "guidance_scale"),
                scheduler: Some(kind),
                height: Some(number(&fx, "height")),
                width: Some(number(&fx, "width")),
                ..Request::default()
            };
            let (ours, dims) = generate(&engine, &request);
            assert_eq!(
                dims.to_vec(),
                shape[1..].to_vec(),
                "{name} {sched}: image shape"
            );
            let theirs = &expected[i * per..(i + 1) * per];
            let ours01: Vec<f32> = ours
                .iter()
                .map(|v| (v / 2.0 + 0.5).clamp(0.0, 1.0))
                .collect();
            let err = rel_l2(&ours01, theirs);
            let level = |v: f32| (v * 255.0).round() as i32;
            let off = ours01
                .iter()
                .zip(theirs)
                .filter(|(a, b)| (level(**a) - level(**b)).abs() > 1)
                .count();
            report.push(format!("{name} {sched} image {i}: rel L2 {err:.2e}, {off} of {per} pixels off by > 1 level"));
            assert!(
                err.is_finite() && err <= 1e-4 && (off as f64) <= 0.005 * per as f64,
                "{}",
                report.join("\n")
            );
        }
    }
    eprintln!("{}", report.join("\n"));
}

#[test]
fn sd1_style_pipeline_matches_diffusers() {
    check_pipeline("sd1_tiny", &fixtures().join("pipelines/sd1_tiny"));
}

#[test]
fn sd2_style_v_prediction_pipeline_matches_diffusers() {
    check_pipeline("sd2_tiny", &fixtures().join("pipelines/sd2_tiny"));
}

/// The shipped text-to-image model (weights/digits-text: grayscale 3-level VAE, a
/// trained CLIP text encoder, the real CLIP vocabulary) against diffusers' runs of it
/// (tools/compare_digits_text.py --write-fixture), with a negative prompt and the
/// empty prompt among the cases.
#[test]
fn shipped_digits_text_model_matches_diffusers() {
    let folder = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("weights/digits-text");
    check_pipeline("digits_text", &folder);
}

fn field_of(e: Error) -> String {
    match e {
        Error::InvalidArgument { name, .. } => name,
        other => panic!("expected an argument error, got {other}"),
    }
}

#[test]
fn text_requests_are_checked_against_the_model() {
    let text =
        Engine::open(EngineOptions::new(fixtures().join("pipelines/sd1_tiny"))).expect("pipeline");
    for (json, field) in [
        (r#"{"class": 3}"#, "class"),
        (r#"{"width": 18}"#, "width"),
        (r#"{"height": 100000}"#, "height"),
        (r#"{"clip_skip": 9}"#, "clip_skip"),
        (r#"{"strength": 0.5}"#, "strength"),
        (r#"{"init_image": "/nonexistent/image.png"}"#, "init_image"),
    ] {
        let r = Request::from_json_str(json).expect(json);
        assert_eq!(field_of(text.prepare(&r).expect_err(json)), field, "{json}");
    }
    let digits = Engine::open(EngineOptions::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/weights/digits"
    )))
    .expect("digits");
    let r = Request::from_json_str(r#"{"prompt": "a seven"}"#).expect("json");
    assert_eq!(
        field_of(digits.prepare(&r).expect_err("prompt on a class model")),
        "prompt"
    );
}

#[test]
fn a_pipeline_without_vae_weights_is_an_error_naming_the_vae() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("pipe");
    copy_dir(&fixtures().join("pipelines/sd1_tiny"), &dir);
    std::fs::remove_file(dir.join("vae/diffusion_pytorch_model.safetensors")).expect("rm");
    let message = Engine::open(EngineOptions::new(&dir))
        .err()
        .expect("refused")
        .to_string();
    assert!(message.contains("vae"), "{message}");
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            // Follow symlinks (the tokenizer files of some fixtures are links).
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// The shipped text model draws the digit a prompt asks for, as the shipped digit
/// classifier (trained apart from it, on 28×28 digits: it reads the 32×32 images'
/// centre, where the text model's training data had its 28×28 MNIST digit) reads them:
/// every digit named as a word and as a numeral, two seeds each, DDIM 20 steps at the
/// default CFG.
#[test]
fn shipped_digits_text_model_draws_the_digit_the_prompt_names() {
    use diffsteer::reward::classifier::Classifier;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let engine = Engine::open(EngineOptions {
        threads: Some(2),
        ..EngineOptions::new(root.join("weights/digits-text"))
    })
    .expect("the shipped text model opens");
    let classifier =
        Classifier::load(&root.join("weights/digit-classifier")).expect("the digit classifier");
    let words = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    ];
    let mut misread = Vec::new();
    let mut total = 0;
    for (digit, word) in words.iter().enumerate() {
        for prompt in [
            format!("a handwritten {word}"),
            format!("the number {digit}"),
        ] {
            for seed in [0u64, 1] {
                let request = Request {
                    count: 1,
                    seed,
                    prompt: Some(prompt.clone()),
                    steps: 20,
                    ..Request::default()
                };
                let (image, [h, w, c]) = generate(&engine, &request);
                assert_eq!([h, w, c], [32, 32, 1], "{prompt}: image shape");
                let centre: Vec<f32> = (2..30)
                    .flat_map(|y| image[y * 32 + 2..y * 32 + 30].to_vec())
                    .collect();
                let read = classifier.predict(&centre).expect("classifier")[0];
                total += 1;
                if read != digit {
                    misread.push(format!("{prompt:?} seed {seed}: read as {read}"));
                }
            }
        }
    }
    // 40 images; at most one misread (2.5%).
    assert!(
        misread.len() <= 1,
        "{} of {total} misread:\n{}",
        misread.len(),
        misread.join("\n")
    );
}

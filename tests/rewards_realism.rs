//! The `realism` reward (src/reward/realism.rs): the shipped discriminator's log-odds
//! and input gradient against PyTorch (tests/fixtures/rewards/realism_reference, made by
//! tools/make_realism_fixture.py), the gradient against finite differences at several
//! noise levels, specs that parse and compose, and bad folders, shapes and levels.

mod common;

use std::path::PathBuf;

use common::{assert_close, fixtures};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::model::weights::WeightFile;
use diffsteer::reward::{
    parse_reward_spec, parse_reward_specs, RealismReward, Reward, RewardContext, SampleShape,
};
use std::sync::Arc;

const DIGIT: SampleShape = SampleShape {
    height: 28,
    width: 28,
    channels: 1,
};

fn weights(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("weights")
        .join(name)
}

fn shipped() -> RealismReward {
    RealismReward::load(&weights("realism"), Arc::new(CpuBackend::new()))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn error_of<T>(r: diffsteer::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => e.to_string(),
    }
}

struct Reference {
    x: Vec<f32>,
    alpha_bars: Vec<f32>,
    log_odds: Vec<f32>,
    grad: Vec<f32>,
}

fn reference() -> Reference {
    let f = WeightFile::open(fixtures().join("rewards/realism_reference.safetensors"))
        .expect("reference file");
    let get = |name: &str| f.read_f32(name).expect(name).1;
    Reference {
        x: get("x"),
        alpha_bars: get("alpha_bars"),
        log_odds: get("log_odds"),
        grad: get("grad"),
    }
}

#[test]
fn log_odds_and_gradient_match_pytorch() {
    let r = reference();
    let reward = shipped();
    reward.check_shape(DIGIT).expect("28×28×1");
    let mut grad = vec![0f32; r.x.len()];
    let values = reward
        .evaluate_at(DIGIT, &r.x, &r.alpha_bars, Some(&mut grad))
        .expect("evaluate");
    let e1 = assert_close("log-odds", &values, &r.log_odds, 1e-5);
    let e2 = assert_close("input gradient", &grad, &r.grad, 1e-4);
    eprintln!("realism vs PyTorch: relative L2 log-odds {e1:.2e}, gradient {e2:.2e}");
    // The same values without the gradient, and `evaluate` is the clean level ᾱ = 1.
    let plain = reward
        .evaluate_at(DIGIT, &r.x, &r.alpha_bars, None)
        .expect("values");
    assert_eq!(plain, values);
    assert_eq!(r.alpha_bars[0], 1.0);
    // A batch of one may sum in another order than the batch of four: equal to rounding.
    let clean = reward.evaluate(DIGIT, &r.x[..784], None).expect("clean");
    assert!(
        (clean[0] - values[0]).abs() <= 1e-5,
        "{} vs {}",
        clean[0],
        values[0]
    );
    // The level is read: one digit at two noise levels scores differently.
    assert!((values[0] - values[1]).abs() > 1e-3, "{values:?}");
}

/// A smooth digit-like test image: a ring, in [-1, 1].
fn ring() -> Vec<f32> {
    let mut x = Vec::with_capacity(784);
    for y in 0..28 {
        for xx in 0..28 {
            let (dy, dx) = (y as f32 - 13.5, (xx as f32 - 13.5) * 1.4);
            let r = (dy * dy + dx * dx).sqrt();
            x.push(2.0 * (-(r - 8.0).powi(2) / 6.0).exp() - 1.0);
        }
    }
    x
}

#[test]
fn gradient_matches_finite_differences() {
    // Central differences of the f32 forward along unit directions, h = 1e-2: the
    // same error budget as the classifier's test in tests/rewards.rs (≤ 1e-2 relative
    // where the directional derivative is ≥ 0.05, else 5e-4 absolute). A gradient that
    // kept the level plane's channel, or mixed up the interleaving, is off by order 1.
    let reward = shipped();
    let x = ring();
    let per = x.len();
    for alpha_bar in [1.0f32, 0.6, 0.1] {
        let mut grad = vec![0f32; per];
        let value = reward
            .evaluate_at(DIGIT, &x, &[alpha_bar], Some(&mut grad))
            .expect("grad")[0];
        let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        assert!(norm > 0.0, "zero gradient at ᾱ = {alpha_bar}");
        let mut dirs: Vec<Vec<f32>> = vec![grad.iter().map(|g| g / norm).collect()];
        let rnd: Vec<f32> = (0..per)
            .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect();
        let rn = rnd.iter().map(|v| v * v).sum::<f32>().sqrt();
        dirs.push(rnd.iter().map(|v| v / rn).collect());
        let mut order: Vec<usize> = (0..per).collect();
        order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        let mut pixel = vec![0f32; per];
        pixel[order[0]] = 1.0;
        dirs.push(pixel);
        let h = 1e-2f32;
        for (k, d) in dirs.iter().enumerate() {
            let mut batch = Vec::with_capacity(2 * per);
            batch.extend(x.iter().zip(d).map(|(x, d)| x + h * d));
            batch.extend(x.iter().zip(d).map(|(x, d)| x - h * d));
            let f = reward
                .evaluate_at(DIGIT, &batch, &[alpha_bar, alpha_bar], None)
                .expect("fd");
            let fd = (f[0] as f64 - f[1] as f64) / (2.0 * h as f64);
            let analytic: f64 = grad.iter().zip(d).map(|(&g, &d)| g as f64 * d as f64).sum();
            let rel = (fd - analytic).abs() / analytic.abs();
            eprintln!(
                "ᾱ {alpha_bar} (log-odds {value:.3}) direction {k}: analytic {analytic:.6}, fd {fd:.6}, rel {rel:.1e}"
            );
            if analytic.abs() >= 0.05 {
                assert!(rel <= 1e-2, "ᾱ {alpha_bar} direction {k}: {rel:.2e}");
            } else {
                assert!((fd - analytic).abs() <= 5e-4, "ᾱ {alpha_bar} direction {k}");
            }
        }
    }
}

#[test]
fn specs_parse_and_compose_with_other_rewards() {
    let ctx = RewardContext::new(weights("digit-classifier"));
    assert_eq!(
        ctx.realism_dir,
        weights("realism"),
        "next to the classifier"
    );
    let (w, r) = parse_reward_spec("realism", &ctx).expect("realism");
    assert_eq!((w, r.name()), (1.0, "realism".to_string()));
    let (w, r) = parse_reward_spec(" realism @ 0.5 ", &ctx).expect("weighted");
    assert_eq!((w, r.name()), (0.5, "realism".to_string()));

    // classifier:3 + 0.5·realism: the values and the gradient are the weighted sums
    // of the terms' own.
    let specs = ["classifier:3".to_string(), "realism@0.5".to_string()];
    let sum = parse_reward_specs(&specs, &ctx).expect("sum");
    assert_eq!(sum.name(), "classifier:3 + 0.5·realism");
    let r = reference();
    let n = r.alpha_bars.len();
    let mut grad = vec![0f32; r.x.len()];
    let (total, per_term) = sum
        .evaluate_terms_at(DIGIT, &r.x, Some(&r.alpha_bars), Some(&mut grad))
        .expect("sum values");
    let classifier = &sum.terms()[0].1;
    let mut g_classifier = vec![0f32; r.x.len()];
    let c_values = classifier
        .evaluate_at(DIGIT, &r.x, &r.alpha_bars, Some(&mut g_classifier))
        .expect("classifier");
    assert_close("realism term", &per_term[1], &r.log_odds, 1e-5);
    for i in 0..n {
        let want = c_values[i] + 0.5 * per_term[1][i];
        assert!((total[i] - want).abs() <= 1e-5 * want.abs().max(1.0), "{i}");
    }
    let want: Vec<f32> = g_classifier
        .iter()
        .zip(&r.grad)
        .map(|(c, g)| c + 0.5 * g)
        .collect();
    assert_close("summed gradient", &grad, &want, 1e-4);
}

#[test]
fn bad_specs_and_folders_are_clear_errors() {
    let ctx = RewardContext::new(weights("digit-classifier"));
    let e = error_of(parse_reward_spec("realism:3", &ctx), "realism:3");
    assert!(e.contains("takes no argument"), "{e}");
    let e = error_of(parse_reward_spec("realism@x", &ctx), "realism@x");
    assert!(e.contains("not a number"), "{e}");
    let e = error_of(parse_reward_spec("aesthetic:1", &ctx), "unknown");
    assert!(
        e.contains("realism"),
        "the accepted forms list realism: {e}"
    );

    // A missing folder names the folder and the file.
    let missing =
        RewardContext::new(weights("digit-classifier")).with_realism_dir("/nonexistent/realism");
    let e = error_of(parse_reward_spec("realism", &missing), "missing folder");
    assert!(
        e.contains("realism") && e.contains("/nonexistent/realism/config.json"),
        "{e}"
    );
    // A valid classifier that is no discriminator: ten classes, one channel.
    let wrong = RewardContext::new(weights("digit-classifier"))
        .with_realism_dir(weights("digit-classifier"));
    let e = error_of(
        parse_reward_spec("realism", &wrong),
        "a 10-class classifier",
    );
    assert!(e.contains("10 classes") && e.contains("must have 2"), "{e}");
    // Truncated weights.
    let tmp = tempfile::tempdir().expect("tmp");
    std::fs::copy(
        weights("realism").join("config.json"),
        tmp.path().join("config.json"),
    )
    .expect("copy");
    let bytes = std::fs::read(weights("realism").join("model.safetensors")).expect("read");
    std::fs::write(
        tmp.path().join("model.safetensors"),
        &bytes[..bytes.len() / 2],
    )
    .expect("write");
    let e = error_of(
        RealismReward::load(tmp.path(), Arc::new(CpuBackend::new())),
        "truncated weights",
    );
    assert!(e.contains("model.safetensors"), "{e}");
}

#[test]
fn bad_shapes_and_levels_are_errors() {
    let reward = shipped();
    let e = error_of(reward.check_shape(SampleShape::new(32, 32, 1)), "32×32");
    assert!(e.contains("28×28×1") && e.contains("32×32×1"), "{e}");
    let x = ring();
    let e = error_of(reward.evaluate_at(DIGIT, &x, &[0.5, 0.5], None), "2 levels");
    assert!(e.contains("2 noise levels for 1 samples"), "{e}");
    for bad in [f32::NAN, -0.1, 1.5] {
        let e = error_of(reward.evaluate_at(DIGIT, &x, &[bad], None), "bad level");
        assert!(e.contains("not in [0, 1]"), "{bad}: {e}");
    }
    let mut short = vec![0f32; 10];
    assert!(reward
        .evaluate_at(DIGIT, &x, &[1.0], Some(&mut short))
        .is_err());
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    let mut g = vec![7f32; 784];
    let e = error_of(
        reward.evaluate_at(DIGIT, &nan, &[1.0], Some(&mut g)),
        "NaN pixel",
    );
    assert!(e.contains("non-finite"), "{e}");
    assert!(
        g.iter().all(|&v| v == 7.0),
        "the gradient buffer was written"
    );
}

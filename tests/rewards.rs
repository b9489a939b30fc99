//! Reward models (src/reward/): the classifier against PyTorch (tests/fixtures/rewards,
//! made by tools/make_reward_fixtures.py), its gradient against finite differences,
//! the ink reward against hand-derived values, weighted sums, spec parsing, and bad
//! input of every kind.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{assert_close, fixtures, rel_l2};
use diffsteer::model::weights::WeightFile;
use diffsteer::reward::{
    log_probability_gate, parse_reward_spec, parse_reward_specs, ClassGoal, Classifier,
    ClassifierReward, InkReward, Readout, Reward, RewardContext, SampleShape, WeightedSum,
    AVOID_STEP_SHARE, AVOID_UNTIL_NOISE,
};
use safetensors::Dtype;

fn shipped_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights/digit-classifier")
}

fn fixture_dir() -> PathBuf {
    fixtures().join("rewards/classifier")
}

/// The message of an expected error (panics if `r` succeeded).
fn error_of<T>(r: diffsteer::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => e.to_string(),
    }
}

struct Reference {
    x: Vec<f32>,
    classes: Vec<usize>,
    logits: Vec<f32>,
    log_probs: Vec<f32>,
    grad: Vec<f32>,
}

fn reference(file: &str) -> Reference {
    let f = WeightFile::open(fixtures().join("rewards").join(file)).expect("reference file");
    let get = |name: &str| f.read_f32(name).expect(name).1;
    Reference {
        x: get("x"),
        classes: f
            .read_i64("classes")
            .expect("classes")
            .1
            .iter()
            .map(|&c| c as usize)
            .collect(),
        logits: get("logits"),
        log_probs: get("log_probs"),
        grad: get("grad"),
    }
}

fn check_against_pytorch(dir: &Path, file: &str) {
    let c = Classifier::load(dir).unwrap_or_else(|e| panic!("{e}"));
    let r = reference(file);
    let logits = c.logits(&r.x).expect("logits");
    let e1 = assert_close(&format!("{file} logits"), &logits, &r.logits, 1e-5);
    let mut grad = vec![0f32; r.x.len()];
    let lp = c
        .log_prob_and_grad(&r.x, &r.classes, Some(&mut grad))
        .expect("log prob");
    let e2 = assert_close(&format!("{file} log-probs"), &lp, &r.log_probs, 1e-5);
    let e3 = assert_close(&format!("{file} input gradient"), &grad, &r.grad, 1e-4);
    eprintln!("{file}: relative L2 logits {e1:.2e}, log-probs {e2:.2e}, gradient {e3:.2e}");

    // The value does not depend on whether the gradient is asked for.
    let lp_only = c.log_prob_and_grad(&r.x, &r.classes, None).expect("lp");
    assert_eq!(lp, lp_only);
    let k = c.num_classes();
    let expected: Vec<usize> = r
        .logits
        .chunks(k)
        .map(|row| {
            (0..k)
                .max_by(|&a, &b| row[a].total_cmp(&row[b]))
                .expect("row")
        })
        .collect();
    assert_eq!(c.predict(&r.x).expect("predict"), expected);
}

#[test]
fn fixture_classifier_matches_pytorch() {
    // Every layer type: convs with stride 1 and 2 (whose windows leave rows/columns
    // unread), padding 0 and 1, one without bias; relu, silu, an avg pool that drops a
    // row and a column, flatten, two linears; weights stored as f16; 11×13×3 inputs.
    check_against_pytorch(&fixture_dir(), "classifier_reference.safetensors");
}

#[test]
fn shipped_classifier_matches_pytorch_on_shipped_digits() {
    check_against_pytorch(&shipped_dir(), "shipped_reference.safetensors");
    let c = Classifier::load(&shipped_dir()).expect("load");
    assert_eq!(c.input_shape(), SampleShape::new(28, 28, 1));
    assert_eq!(c.num_classes(), 10);
    assert_eq!(c.input_range(), Some((-1.0, 1.0)));
    let r = reference("shipped_reference.safetensors");
    assert_eq!(c.predict(&r.x).expect("predict"), vec![3, 7, 3, 7]);
}

#[test]
fn results_do_not_depend_on_the_batch() {
    let c = Classifier::load(&shipped_dir()).expect("load");
    let per = c.input_shape().len();
    let n = 37;
    let x: Vec<f32> = (0..n * per)
        .map(|i| ((i as f32 * 0.618).sin() * 1.3).clamp(-1.0, 1.0))
        .collect();
    let classes: Vec<usize> = (0..n).map(|i| i % 10).collect();
    let mut grad = vec![0f32; x.len()];
    let lp = c
        .log_prob_and_grad(&x, &classes, Some(&mut grad))
        .expect("batch");
    let mut identical = true;
    for i in [0, 5, 36] {
        let xi = &x[i * per..(i + 1) * per];
        let mut gi = vec![0f32; per];
        let lpi = c
            .log_prob_and_grad(xi, &classes[i..=i], Some(&mut gi))
            .expect("one");
        assert!(
            rel_l2(&lpi, &lp[i..=i]) <= 1e-6,
            "sample {i}: log-prob differs"
        );
        assert!(
            rel_l2(&gi, &grad[i * per..(i + 1) * per]) <= 1e-5,
            "sample {i}: gradient differs"
        );
        identical &= lpi[0] == lp[i] && gi[..] == grad[i * per..(i + 1) * per];
    }
    eprintln!("batch of 37 vs single samples: bit-identical = {identical}");
}

/// A smooth digit-like test image: a ring, in [-1, 1].
fn ring(h: usize, w: usize) -> Vec<f32> {
    let mut x = Vec::with_capacity(h * w);
    for y in 0..h {
        for xx in 0..w {
            let (dy, dx) = (y as f32 - 13.5, (xx as f32 - 13.5) * 1.4);
            let r = (dy * dy + dx * dx).sqrt();
            x.push(2.0 * (-(r - 8.0).powi(2) / 6.0).exp() - 1.0);
        }
    }
    x
}

#[test]
fn shipped_classifier_gradient_matches_finite_differences() {
    // Central differences (f(x + h·v) − f(x − h·v)) / 2h of the f32 forward. Two error
    // sources: truncation h²/6·|f'''| and rounding ≈ ε_f / h, where ε_f ~ 1e-6 is the
    // f32 noise of a log-prob of magnitude ~1–10 (a few ulp through ~10⁴-term sums).
    // With h = 1e-2 along a unit direction the rounding part is ~1e-4 absolute; the
    // smooth SiLU network keeps f''' moderate, so the truncation part is of the same
    // order (observed: ≤ 2.5e-4 absolute, ≤ 2.2e-3 relative). Against directional
    // derivatives of magnitude ≥ 0.05 that is ≤ 1e-2 relative, the bound asserted
    // below (else 5e-4 absolute); a wrong layer (a transposed kernel, a missing flatten
    // permutation, a silu' off by a factor) gives errors of order 1.
    let c = Classifier::load(&shipped_dir()).expect("load");
    let x = ring(28, 28);
    let per = x.len();
    for class in [0usize, 3, 8] {
        let mut grad = vec![0f32; per];
        let lp = c
            .log_prob_and_grad(&x, &[class], Some(&mut grad))
            .expect("grad")[0];
        // Directions: the normalised gradient, a fixed pseudo-random unit vector, and
        // the three pixels with the largest |gradient|.
        let mut dirs: Vec<Vec<f32>> = Vec::new();
        let norm = grad.iter().map(|g| g * g).sum::<f32>().sqrt();
        dirs.push(grad.iter().map(|g| g / norm).collect());
        let rnd: Vec<f32> = (0..per)
            .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect();
        let rn = rnd.iter().map(|v| v * v).sum::<f32>().sqrt();
        dirs.push(rnd.iter().map(|v| v / rn).collect());
        let mut order: Vec<usize> = (0..per).collect();
        order.sort_by(|&a, &b| grad[b].abs().total_cmp(&grad[a].abs()));
        for &p in &order[..3] {
            let mut d = vec![0f32; per];
            d[p] = 1.0;
            dirs.push(d);
        }
        let h = 1e-2f32;
        for (k, d) in dirs.iter().enumerate() {
            let mut batch = Vec::with_capacity(2 * per);
            batch.extend(x.iter().zip(d).map(|(x, d)| x + h * d));
            batch.extend(x.iter().zip(d).map(|(x, d)| x - h * d));
            let f = c
                .log_prob_and_grad(&batch, &[class, class], None)
                .expect("fd");
            let fd = (f[0] as f64 - f[1] as f64) / (2.0 * h as f64);
            let analytic: f64 = grad.iter().zip(d).map(|(&g, &d)| g as f64 * d as f64).sum();
            let rel = (fd - analytic).abs() / analytic.abs();
            eprintln!(
                "class {class} (log p {lp:.3}) direction {k}: analytic {analytic:.6}, fd {fd:.6}, rel {rel:.1e}"
            );
            if analytic.abs() >= 0.05 {
                assert!(
                    rel <= 1e-2,
                    "class {class} direction {k}: relative error {rel:.2e}"
                );
            } else {
                assert!((fd - analytic).abs() <= 5e-4, "class {class} direction {k}");
            }
        }
    }
}

#[test]
fn dtypes_f32_f16_bf16_are_read() {
    // The fixture is stored as f16 (values exact in f32): an f32 copy must give
    // bit-identical results; a bf16 copy (rounded weights) close ones.
    let r = reference("classifier_reference.safetensors");
    let f16 = Classifier::load(&fixture_dir()).expect("f16");
    let want = f16.logits(&r.x).expect("logits");
    for dtype in [Dtype::F32, Dtype::BF16] {
        let tmp = copy_with(&fixture_dir(), |tensors| {
            for t in tensors.iter_mut() {
                t.convert(dtype);
            }
        });
        let got = Classifier::load(tmp.path())
            .expect("load")
            .logits(&r.x)
            .expect("logits");
        let err = rel_l2(&got, &want);
        if dtype == Dtype::F32 {
            assert_eq!(got, want, "f32 copy of an f16 file");
        } else {
            assert!(err < 5e-2, "bf16: {err}");
        }
    }
}

// ------------------------------------------------------------------------ readouts

fn readout(r: Readout, logits: &[f32]) -> (f64, Vec<f32>) {
    let mut d = vec![f32::NAN; logits.len()];
    let v = r.value_and_grad(logits, Some(&mut d));
    assert_eq!(
        v,
        r.value_and_grad(logits, None),
        "value without the gradient"
    );
    (v, d)
}

fn assert_near(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (j, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!((g as f64 - w).abs() <= tol, "{what}[{j}]: {g} vs {w}");
    }
}

#[test]
fn readouts_match_hand_derived_values() {
    // Logits (0, ln 2, ln 3): p = (1/6, 2/6, 3/6).
    let l = [0.0f32, 2f32.ln(), 3f32.ln()];
    // log p_2 = ln ½; ∂/∂l_j = [j = 2] − p_j.
    let (v, d) = readout(Readout::LogProb(2), &l);
    assert!((v - 0.5f64.ln()).abs() < 1e-7, "{v}");
    assert_near("log p_2", &d, &[-1.0 / 6.0, -2.0 / 6.0, 0.5], 1e-7);
    // log(1 − p_2) = ln ½ too; the softmax over the others is q = (1/3, 2/3), so
    // ∂/∂l = (q_0 − p_0, q_1 − p_1, −p_2) = (1/6, 1/3, −1/2).
    let (v, d) = readout(Readout::LogNotProb(2), &l);
    assert!((v - 0.5f64.ln()).abs() < 1e-7, "{v}");
    assert_near("log(1 - p_2)", &d, &[1.0 / 6.0, 1.0 / 3.0, -0.5], 1e-7);
    // log(1 − p_0) = ln(5/6); q = (·, 2/5, 3/5): ∂/∂l = (−1/6, 2/5 − 1/3, 3/5 − 1/2).
    let (v, d) = readout(Readout::LogNotProb(0), &l);
    assert!((v - (5.0f64 / 6.0).ln()).abs() < 1e-7, "{v}");
    assert_near(
        "log(1 - p_0)",
        &d,
        &[-1.0 / 6.0, 2.0 / 5.0 - 1.0 / 3.0, 3.0 / 5.0 - 0.5],
        1e-7,
    );
    // Adding a constant to every logit changes nothing: the derivatives sum to 0.
    for r in [Readout::LogProb(1), Readout::LogNotProb(1)] {
        let (v, d) = readout(r, &l);
        let shifted: Vec<f32> = l.iter().map(|x| x + 5.0).collect();
        let (v2, _) = readout(r, &shifted);
        assert!((v - v2).abs() < 1e-6, "{r:?}: {v} vs {v2}");
        assert!(
            d.iter().map(|&x| x as f64).sum::<f64>().abs() < 1e-7,
            "{r:?}"
        );
    }
    // The log-odds of class 0 against 1 is l_0 − l_1, with derivative (1, −1, 0).
    let (v, d) = readout(Readout::LogOdds(0, 1), &[3.0, 1.0, -2.0]);
    assert_eq!((v, d), (2.0, vec![1.0, -1.0, 0.0]));
}

#[test]
fn avoidance_stays_finite_at_extreme_logits() {
    // p_0 = e^100 / (e^100 + 2) rounds to 1 in any float: 1 − p would be 0 and its
    // log −∞. log(1 − p_0) = ln 2 − ln(e^100 + 2) = ln 2 − 100 − ln(1 + 2e^−100).
    let (v, d) = readout(Readout::LogNotProb(0), &[100.0, 0.0, 0.0]);
    assert!((v - (2f64.ln() - 100.0)).abs() < 1e-9, "{v}");
    // ∂/∂l = (−p_0, q_1 − p_1, q_2 − p_2) = (−1, ½, ½) up to e^−100.
    assert_near("certain class", &d, &[-1.0, 0.5, 0.5], 1e-7);
    // The avoided class is impossible: log(1 − p_0) = −ln(1 + e^−100/2) ≈ −e^−100/2,
    // and every derivative is of order e^−100.
    let (v, d) = readout(Readout::LogNotProb(0), &[-100.0, 0.0, 0.0]);
    assert!(v <= 0.0 && v > -1e-40, "{v}");
    assert!(d.iter().all(|x| x.is_finite() && x.abs() < 1e-40), "{d:?}");
    // Logits far beyond what f32 softmax survives.
    for l in [[1e4f32, -1e4, 0.0], [-3e4, 3e4, 3e4], [f32::MAX, 0.0, 0.0]] {
        for r in [Readout::LogProb(0), Readout::LogNotProb(0)] {
            let (v, d) = readout(r, &l);
            assert!(v.is_finite() && v <= 0.0, "{r:?} at {l:?}: {v}");
            assert!(d.iter().all(|x| x.is_finite()), "{r:?} at {l:?}: {d:?}");
        }
    }
    let (v, _) = readout(Readout::LogNotProb(0), &[1e4, -1e4, 0.0]);
    assert!((v + 1e4).abs() < 1e-6, "{v}");
}

#[test]
fn the_step_gate_is_the_missing_probability() {
    // 1 − e^r: 0 at certainty, ¾ at p = ¼, 1 far from it; clamped to [0, 1].
    assert_eq!(log_probability_gate(0.0), 0.0);
    assert!((log_probability_gate(0.25f32.ln()) - 0.75).abs() < 1e-7);
    assert!(
        (log_probability_gate(-1e-6) - 1e-6).abs() < 1e-12,
        "precision near p = 1"
    );
    assert_eq!(log_probability_gate(-200.0), 1.0);
    assert_eq!(log_probability_gate(f32::NEG_INFINITY), 1.0);
    assert_eq!(log_probability_gate(0.5), 0.0);
    assert_eq!(log_probability_gate(f32::NAN), 1.0);
}

#[test]
fn avoid_reward_is_log_one_minus_p_with_a_matching_gradient() {
    let c = Arc::new(Classifier::load(&shipped_dir()).expect("load"));
    let shape = SampleShape::new(28, 28, 1);
    let x = ring(28, 28);
    let logits = c.logits(&x).expect("logits");
    for class in [0usize, 3, 7] {
        let avoid = ClassifierReward::avoid(c.clone(), class).expect("avoid");
        assert_eq!(avoid.name(), format!("avoid:{class}"));
        assert_eq!(avoid.goal(), ClassGoal::Avoid);
        let mut g = vec![0f32; 784];
        let r = avoid.evaluate(shape, &x, Some(&mut g)).expect("avoid")[0] as f64;
        // Against the softmax of the logits, in f64.
        let m = logits.iter().fold(f32::MIN, |a, &b| a.max(b)) as f64;
        let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
        let p = (logits[class] as f64 - m).exp() / z;
        assert!(
            (r - (1.0 - p).ln()).abs() < 1e-5,
            "class {class}: {r} vs p {p}"
        );
        // The gate of avoid:D is 0.7·√p(D) (p(D) the probability still to remove) on
        // estimates with at least 0.9 of noise (√(1 − ᾱ) ≥ 0.9), 0 after.
        assert_eq!((AVOID_UNTIL_NOISE, AVOID_STEP_SHARE), (0.9, 0.7));
        for alpha_bar in [0.0f32, 0.1, 0.18] {
            let gate = avoid.step_gate(r as f32, alpha_bar) as f64;
            assert!(
                (gate - 0.7 * p.sqrt()).abs() < 1e-5,
                "ᾱ {alpha_bar}: {gate} vs {p}"
            );
        }
        for alpha_bar in [0.2f32, 0.5, 1.0] {
            assert_eq!(avoid.step_gate(r as f32, alpha_bar), 0.0);
        }
        // classifier:D is not gated.
        let target = ClassifierReward::new(c.clone(), class).expect("target");
        assert_eq!(target.step_gate(-0.001, 0.5), 1.0);
        // Central differences along the gradient (see the classifier's test above
        // for the error budget).
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        let dir: Vec<f32> = g.iter().map(|v| v / norm).collect();
        let h = 1e-2f32;
        let mut batch: Vec<f32> = x.iter().zip(&dir).map(|(x, d)| x + h * d).collect();
        batch.extend(x.iter().zip(&dir).map(|(x, d)| x - h * d));
        let f = avoid.evaluate(shape, &batch, None).expect("fd");
        let fd = (f[0] as f64 - f[1] as f64) / (2.0 * h as f64);
        let analytic = norm as f64;
        assert!(
            (fd - analytic).abs() <= 1e-2 * analytic.max(0.05),
            "class {class}: fd {fd} vs analytic {analytic}"
        );
    }
    // Classes out of range, for both goals and through the spec.
    let e = error_of(ClassifierReward::avoid(c.clone(), 10), "avoid:10");
    assert!(e.contains("avoid:10") && e.contains("0..=9"), "{e}");
    let e = error_of(
        c.readout_and_grad(&x, &[Readout::LogNotProb(12)], None),
        "readout 12",
    );
    assert!(e.contains("12") && e.contains("0..=9"), "{e}");
}

// ------------------------------------------------------------------------ ink

#[test]
fn ink_reward_matches_hand_derived_values() {
    let shape = SampleShape::new(4, 5, 2);
    let per = shape.len();
    let ink = InkReward::new(0.2).expect("ink");
    assert_eq!(ink.name(), "ink:0.2");
    // Sample 0 all black (m = 0), sample 1 all white (m = 1), sample 2 half (m = 0.5),
    // sample 3 exactly on target (m = 0.2: pixels at −0.6).
    let mut x = vec![-1f32; per];
    x.extend(vec![1f32; per]);
    x.extend((0..per).map(|i| if i % 2 == 0 { 1.0 } else { -1.0 }));
    x.extend(vec![-0.6f32; per]);
    let mut g = vec![f32::NAN; x.len()];
    let r = ink.evaluate(shape, &x, Some(&mut g)).expect("ink");
    // r = −(m − 0.2)² / (2·0.05²) = −200·(m − 0.2)².
    let expect = [-8.0, -128.0, -18.0, 0.0];
    for (i, (&got, want)) in r.iter().zip(expect).enumerate() {
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "sample {i}: {got} vs {want}"
        );
    }
    // ∂r/∂x_j = −(m − 0.2)/0.05² / (2·len) = −200·(m − 0.2)/len.
    let slopes = [40.0, -160.0, -60.0, 0.0];
    for (i, s) in slopes.iter().enumerate() {
        let want = s / per as f32;
        for &v in &g[i * per..(i + 1) * per] {
            assert!(
                (v - want).abs() <= 1e-5 * want.abs().max(1.0),
                "sample {i}: {v} vs {want}"
            );
        }
    }
    // Any (non-empty) shape.
    assert!(ink.check_shape(SampleShape::new(64, 64, 3)).is_ok());
    assert!(ink.check_shape(SampleShape::new(0, 64, 3)).is_err());
    for bad in [f32::NAN, f32::INFINITY, -0.1, 1.5] {
        let e = error_of(InkReward::new(bad), "bad target");
        assert!(e.contains("[0, 1]"), "{e}");
    }
}

// ------------------------------------------------------------------------ sums

#[test]
fn weighted_sum_combines_values_and_gradients() {
    let ctx = RewardContext::new(shipped_dir());
    let sum = parse_reward_specs(
        &[
            "classifier:3".into(),
            "ink:0.2@0.5".into(),
            "ink:0.6@-2".into(),
        ],
        &ctx,
    )
    .expect("specs");
    assert_eq!(sum.name(), "classifier:3 + 0.5·ink:0.2 - 2·ink:0.6");
    assert_eq!(sum.term_names(), ["classifier:3", "ink:0.2", "ink:0.6"]);
    assert_eq!(sum.weights(), [1.0, 0.5, -2.0]);
    let shape = SampleShape::new(28, 28, 1);
    sum.check_shape(shape).expect("shape");
    let mut x = ring(28, 28);
    x.extend(ring(28, 28).iter().map(|v| -v));
    let mut grad = vec![0f32; x.len()];
    let (total, terms) = sum
        .evaluate_terms(shape, &x, Some(&mut grad))
        .expect("eval");
    assert_eq!(terms.len(), 3);
    let mut want_total = [0f32; 2];
    let mut want_grad = vec![0f32; x.len()];
    for ((w, r), values) in sum.terms().iter().zip(&terms) {
        let mut g = vec![0f32; x.len()];
        let v = r.evaluate(shape, &x, Some(&mut g)).expect("term");
        assert_eq!(&v, values, "{} unweighted", r.name());
        for i in 0..2 {
            want_total[i] += w * v[i];
        }
        want_grad.iter_mut().zip(&g).for_each(|(a, b)| *a += w * b);
    }
    assert!(rel_l2(&total, &want_total) <= 1e-6);
    assert!(rel_l2(&grad, &want_grad) <= 1e-6);
    assert_eq!(sum.evaluate(shape, &x, None).expect("plain"), total);

    // A zero weight still reports its term's value.
    let watch = parse_reward_specs(&["ink:0.3@0".into()], &ctx).expect("watch");
    let mut g = vec![1f32; 784];
    let (t, terms) = watch
        .evaluate_terms(shape, &x[..784], Some(&mut g))
        .expect("eval");
    assert_eq!(t, [0.0]);
    assert!(terms[0][0] < 0.0);
    assert!(g.iter().all(|&v| v == 0.0));
}

#[test]
fn weighted_sum_refuses_empty_and_non_finite_weights() {
    let e = error_of(WeightedSum::new(vec![]), "empty");
    assert!(e.contains("empty"), "{e}");
    for w in [f32::NAN, f32::INFINITY] {
        let ink = Box::new(InkReward::new(0.5).expect("ink"));
        let e = error_of(WeightedSum::new(vec![(w, ink)]), "bad weight");
        assert!(e.contains("finite"), "{e}");
    }
    let e = error_of(
        parse_reward_specs(&[], &RewardContext::new(shipped_dir())),
        "empty",
    );
    assert!(e.contains("empty"), "{e}");
}

// ------------------------------------------------------------------------ specs

#[test]
fn specs_parse_and_share_one_classifier() {
    let ctx = RewardContext::new(shipped_dir());
    let (w, r) = parse_reward_spec("classifier:3", &ctx).expect("classifier");
    assert_eq!((w, r.name()), (1.0, "classifier:3".to_string()));
    let (w, r) = parse_reward_spec("ink:0.2@0.5", &ctx).expect("ink");
    assert_eq!((w, r.name()), (0.5, "ink:0.2".to_string()));
    let (w, r) = parse_reward_spec("avoid:7@2", &ctx).expect("avoid");
    assert_eq!((w, r.name()), (2.0, "avoid:7".to_string()));
    let (w, _) = parse_reward_spec(" ink : 0.25 @ -1e-1 ", &ctx).expect("spaces");
    assert_eq!(w, -0.1);
    let a = ctx.classifier().expect("a");
    let b = ctx.classifier().expect("b");
    assert!(Arc::ptr_eq(&a, &b), "the classifier is loaded once");

    // Lazy: without a classifier spec the (here missing) folder is never read.
    let missing = RewardContext::new("/nonexistent/classifier");
    parse_reward_spec("ink:0.5", &missing).expect("ink needs no classifier");
    let e = error_of(
        parse_reward_spec("classifier:1", &missing),
        "missing folder",
    );
    assert!(e.contains("/nonexistent/classifier/config.json"), "{e}");
}

#[test]
fn bad_specs_say_what_is_accepted() {
    let ctx = RewardContext::new(shipped_dir());
    let err = |s: &str| error_of(parse_reward_spec(s, &ctx), s);
    let e = err("aesthetic:3");
    assert!(
        e.contains("unknown reward \"aesthetic\"")
            && e.contains("classifier:D")
            && e.contains("ink:T"),
        "{e}"
    );
    let e = err("ink0.2");
    assert!(e.contains("missing `:`"), "{e}");
    let e = err("classifier:10");
    assert!(e.contains("out of range") && e.contains("0..=9"), "{e}");
    let e = err("avoid:10");
    assert!(
        e.contains("avoid:10") && e.contains("out of range") && e.contains("0..=9"),
        "{e}"
    );
    for s in ["avoid:-1", "avoid:7.0", "avoid:seven", "avoid:"] {
        let e = err(s);
        assert!(
            e.contains("not a whole") || e.contains("accepted"),
            "{s}: {e}"
        );
    }
    let e = err("classifier:3.5");
    assert!(e.contains("not a whole"), "{e}");
    let e = err("classifier:-1");
    assert!(e.contains("not a whole"), "{e}");
    let e = err("ink:abc");
    assert!(e.contains("not a number"), "{e}");
    let e = err("ink:1.2");
    assert!(e.contains("[0, 1]"), "{e}");
    let e = err("ink:nan");
    assert!(e.contains("[0, 1]"), "{e}");
    for s in ["ink:0.2@inf", "ink:0.2@NaN", "classifier:3@-inf"] {
        let e = err(s);
        assert!(e.contains("finite"), "{s}: {e}");
    }
    let e = err("ink:0.2@heavy");
    assert!(e.contains("not a number"), "{e}");
    let e = err("ink:0.2@1@2");
    assert!(e.contains("not a number"), "{e}");
    for e in [err(""), err("ink:")] {
        assert!(e.contains("accepted"), "{e}");
    }
}

// ------------------------------------------------------------------------ bad input

#[test]
fn shape_mismatch_names_both_shapes() {
    let c = Arc::new(Classifier::load(&shipped_dir()).expect("load"));
    let r = ClassifierReward::new(c.clone(), 3).expect("reward");
    assert_eq!(r.name(), "classifier:3");
    r.check_shape(SampleShape::new(28, 28, 1))
        .expect("right shape");
    let e = error_of(r.check_shape(SampleShape::new(64, 64, 3)), "mismatch");
    assert!(e.contains("28×28×1") && e.contains("64×64×3"), "{e}");
    let x = vec![0f32; 64 * 64 * 3];
    assert!(r.evaluate(SampleShape::new(64, 64, 3), &x, None).is_err());
    // A length that is not a whole number of samples.
    assert!(c.logits(&[0.0; 785]).is_err());
    assert!(c.logits(&[]).is_err());
    // Wrong class count / gradient length.
    assert!(c.log_prob_and_grad(&[0.0; 784], &[1, 2], None).is_err());
    let mut short = vec![0f32; 10];
    assert!(c
        .log_prob_and_grad(&[0.0; 784], &[1], Some(&mut short))
        .is_err());
    let e = error_of(c.log_prob_and_grad(&[0.0; 784], &[10], None), "class 10");
    assert!(e.contains("0..=9"), "{e}");
    assert!(ClassifierReward::new(c, 10).is_err());
}

/// Non-finite input is an Err naming the sample — never NaN rewards or gradients —
/// and the caller's gradient buffer is left untouched.
#[test]
fn non_finite_input_is_an_error_not_a_nan() {
    let shape = SampleShape::new(28, 28, 1);
    let ctx = RewardContext::new(shipped_dir());
    let sum = parse_reward_specs(&["classifier:3".into(), "ink:0.2".into()], &ctx).expect("sum");
    let mut x = ring(28, 28);
    x.extend(ring(28, 28));
    x[784 + 100] = f32::NAN;
    for (name, r) in [
        ("classifier", &sum.terms()[0].1),
        ("ink", &sum.terms()[1].1),
    ] {
        let mut g = vec![7f32; x.len()];
        let e = error_of(r.evaluate(shape, &x, Some(&mut g)), name);
        assert!(
            e.contains("sample 1") && e.contains("non-finite"),
            "{name}: {e}"
        );
        assert!(
            g.iter().all(|&v| v == 7.0),
            "{name} wrote into the gradient"
        );
    }
    assert!(sum.evaluate(shape, &x, None).is_err());
    x[784 + 100] = f32::INFINITY;
    assert!(sum.evaluate(shape, &x, None).is_err());

    // Finite but absurd pixels: either finite results or an error, never NaN.
    let huge = vec![1e30f32; 784];
    let c = Classifier::load(&shipped_dir()).expect("load");
    let mut g = vec![0f32; 784];
    match c.log_prob_and_grad(&huge, &[3], Some(&mut g)) {
        Ok(v) => assert!(v[0].is_finite() && g.iter().all(|v| v.is_finite())),
        Err(e) => assert!(e.to_string().contains("not finite"), "{e}"),
    }
}

// A classifier folder's tensors, editable in tests.
struct RawTensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl RawTensor {
    fn values(&self) -> Vec<f32> {
        match self.dtype {
            Dtype::F32 => bytemuck_f32(&self.data),
            Dtype::F16 => self
                .data
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            other => panic!("test helper reads f32/f16 only, not {other:?}"),
        }
    }

    fn convert(&mut self, dtype: Dtype) {
        let v = self.values();
        self.data = match dtype {
            Dtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Dtype::F16 => v
                .iter()
                .flat_map(|&x| half::f16::from_f32(x).to_le_bytes())
                .collect(),
            Dtype::BF16 => v
                .iter()
                .flat_map(|&x| half::bf16::from_f32(x).to_le_bytes())
                .collect(),
            other => panic!("{other:?}"),
        };
        self.dtype = dtype;
    }
}

fn bytemuck_f32(b: &[u8]) -> Vec<f32> {
    b.chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// A temp copy of a classifier folder with its tensors edited by `edit`.
fn copy_with(src: &Path, edit: impl FnOnce(&mut Vec<RawTensor>)) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::copy(src.join("config.json"), tmp.path().join("config.json")).expect("config");
    let bytes = std::fs::read(src.join("model.safetensors")).expect("weights");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("parse");
    let mut tensors: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, v)| RawTensor {
            name,
            dtype: v.dtype(),
            shape: v.shape().to_vec(),
            data: v.data().to_vec(),
        })
        .collect();
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    edit(&mut tensors);
    let views: Vec<(String, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|t| {
            (
                t.name.clone(),
                safetensors::tensor::TensorView::new(t.dtype, t.shape.clone(), &t.data)
                    .expect("view"),
            )
        })
        .collect();
    let out = safetensors::serialize(views, None).expect("serialize");
    std::fs::write(tmp.path().join("model.safetensors"), out).expect("write");
    tmp
}

/// A temp copy of the fixture classifier with `config.json` edited as text.
fn copy_with_config(edit: impl FnOnce(String) -> String) -> tempfile::TempDir {
    let tmp = copy_with(&fixture_dir(), |_| {});
    let path = tmp.path().join("config.json");
    let text = std::fs::read_to_string(&path).expect("config");
    let edited = edit(text.clone());
    assert_ne!(edited, text, "the edit changed nothing");
    std::fs::write(&path, edited).expect("write");
    tmp
}

fn load_err(dir: &Path) -> String {
    match Classifier::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn bad_weights_are_refused_naming_file_and_tensor() {
    // Missing tensor.
    let tmp = copy_with(&shipped_dir(), |t| t.retain(|t| t.name != "conv2.bias"));
    let e = load_err(tmp.path());
    assert!(
        e.contains("model.safetensors") && e.contains("conv2.bias") && e.contains("missing"),
        "{e}"
    );
    // Extra tensor.
    let tmp = copy_with(&fixture_dir(), |t| {
        t.push(RawTensor {
            name: "head.weight".into(),
            dtype: Dtype::F32,
            shape: vec![2],
            data: vec![0; 8],
        })
    });
    let e = load_err(tmp.path());
    assert!(e.contains("head.weight") && e.contains("unexpected"), "{e}");
    // A bias for the layer that has none ("bias": false) is extra too.
    let tmp = copy_with(&fixture_dir(), |t| {
        t.push(RawTensor {
            name: "conv_b.bias".into(),
            dtype: Dtype::F32,
            shape: vec![4],
            data: vec![0; 16],
        })
    });
    let e = load_err(tmp.path());
    assert!(e.contains("conv_b.bias") && e.contains("unexpected"), "{e}");
    // Wrong shape.
    let tmp = copy_with(&fixture_dir(), |t| {
        let fc = t.iter_mut().find(|t| t.name == "fc2.weight").expect("fc2");
        fc.shape = vec![fc.shape[1], fc.shape[0]];
    });
    let e = load_err(tmp.path());
    assert!(
        e.contains("fc2.weight") && e.contains("[12, 7]") && e.contains("[7, 12]"),
        "{e}"
    );
    // Non-finite weight.
    let tmp = copy_with(&fixture_dir(), |t| {
        let b = t.iter_mut().find(|t| t.name == "fc1.bias").expect("fc1");
        b.convert(Dtype::F32);
        b.data[4..8].copy_from_slice(&f32::NAN.to_le_bytes());
    });
    let e = load_err(tmp.path());
    assert!(e.contains("fc1.bias") && e.contains("element 1"), "{e}");
    // Integer dtype.
    let tmp = copy_with(&fixture_dir(), |t| {
        let b = t.iter_mut().find(|t| t.name == "fc1.bias").expect("fc1");
        b.dtype = Dtype::I16;
    });
    let e = load_err(tmp.path());
    assert!(e.contains("fc1.bias") && e.contains("I16"), "{e}");
    // Truncated file, and a missing one.
    let tmp = copy_with(&fixture_dir(), |_| {});
    let path = tmp.path().join("model.safetensors");
    let bytes = std::fs::read(&path).expect("read");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    let e = load_err(tmp.path());
    assert!(
        e.contains("model.safetensors") && e.contains("not a valid safetensors"),
        "{e}"
    );
    std::fs::remove_file(&path).expect("rm");
    let e = load_err(tmp.path());
    assert!(e.contains("model.safetensors"), "{e}");
}

type ConfigEdit = Box<dyn Fn(String) -> String>;

#[test]
fn bad_configs_are_refused_naming_file_and_layer() {
    let cases: Vec<(&str, ConfigEdit, &[&str])> = vec![
        (
            "unknown layer type",
            Box::new(|s| s.replacen("\"relu\"", "\"gelu\"", 1)),
            &["layers[1]", "\"gelu\"", "supported: conv2d"],
        ),
        (
            "channel mismatch",
            Box::new(|s| s.replace("\"in_channels\": 8", "\"in_channels\": 7")),
            &["layers[3].in_channels", "8 channels"],
        ),
        (
            "flatten size",
            Box::new(|s| s.replace("\"in_features\": 36", "\"in_features\": 20")),
            &["layers[10].in_features", "36 features"],
        ),
        (
            "num_classes",
            Box::new(|s| s.replace("\"num_classes\": 7", "\"num_classes\": 10")),
            &["num_classes", "layers[12]", "7 outputs"],
        ),
        (
            "input shape",
            Box::new(|s| s.replace("\"height\": 11", "\"height\": 15")),
            &["layers[10].in_features", "48 features"],
        ),
        (
            "unknown key",
            Box::new(|s| s.replacen("\"padding\": 1}", "\"padding\": 1, \"dilation\": 2}", 1)),
            &["layers[0].dilation", "unknown key"],
        ),
        (
            "format",
            Box::new(|s| s.replace("diffsteer-classifier/1", "diffsteer-classifier/2")),
            &["format", "diffsteer-classifier/1"],
        ),
        (
            "linear on a map",
            Box::new(|s| s.replace("{\"type\": \"flatten\"}", "{\"type\": \"silu\"}")),
            &["layers[10]", "flatten"],
        ),
        (
            "zero kernel",
            Box::new(|s| s.replacen("\"kernel\": 3", "\"kernel\": 0", 1)),
            &["layers[0].kernel", "positive integer"],
        ),
        (
            "not json",
            Box::new(|s| s.replacen('{', "[", 1)),
            &["config.json", "JSON"],
        ),
    ];
    for (what, edit, needles) in cases {
        let tmp = copy_with_config(edit);
        let e = load_err(tmp.path());
        assert!(e.contains("config.json"), "{what}: {e}");
        for n in needles {
            assert!(e.contains(n), "{what}: {e:?} lacks {n:?}");
        }
        eprintln!("{what}: {e}");
    }
}

//! The reward classifier ensemble (src/reward/classifier/ensemble.rs): the shipped
//! `weights/digit-reward` averages its members' readouts and gradients exactly,
//! its gradient matches finite differences of its value, a plain classifier folder
//! reads as that classifier, and bad ensemble folders are refused with a message.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{fixtures, rel_l2};
use diffsteer::backend::cpu::CpuBackend;
use diffsteer::reward::{
    parse_reward_spec, ClassGoal, Classifier, ClassifierEnsemble, ClassifierReward, Readout,
    Reward, RewardContext, SampleShape,
};

fn weights() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("weights")
}

fn load(dir: &Path) -> diffsteer::Result<ClassifierEnsemble> {
    ClassifierEnsemble::load_on(dir, Arc::new(CpuBackend::new()))
}

fn error_of<T>(r: diffsteer::Result<T>, what: &str) -> String {
    match r {
        Ok(_) => panic!("{what} was accepted"),
        Err(e) => e.to_string(),
    }
}

/// Three 28×28 test images in [-1, 1]: a ring (an "0"-like shape), a vertical bar
/// (a "1"-like one) and smooth pseudo-random texture.
fn images() -> Vec<f32> {
    let mut x = Vec::with_capacity(3 * 784);
    for y in 0..28 {
        for c in 0..28 {
            let (dy, dx) = (y as f32 - 13.5, (c as f32 - 13.5) * 1.4);
            let r = (dy * dy + dx * dx).sqrt();
            x.push(2.0 * (-(r - 8.0).powi(2) / 6.0).exp() - 1.0);
        }
    }
    for _y in 0..28 {
        for c in 0..28 {
            let d = c as f32 - 14.0;
            x.push(2.0 * (-d * d / 4.0).exp() - 1.0);
        }
    }
    for y in 0..28 {
        for c in 0..28 {
            let v = ((y as f32 * 0.7).sin() * (c as f32 * 0.45).cos()).tanh();
            x.push(0.8 * v - 0.2);
        }
    }
    x
}

#[test]
fn shipped_ensemble_is_the_mean_of_its_members() {
    let ens = load(&weights().join("digit-reward")).expect("the shipped ensemble");
    assert_eq!(
        ens.members().len(),
        2,
        "two classifiers of different layouts"
    );
    assert_eq!(ens.input_shape(), SampleShape::new(28, 28, 1));
    assert_eq!(ens.num_classes(), 10);
    let names: Vec<_> = ens
        .members()
        .iter()
        .map(|m| {
            m.dir()
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
        })
        .collect();
    assert_eq!(
        names,
        [
            Some("digit-classifier".to_string()),
            Some("digit-classifier-strided".to_string())
        ]
    );

    let x = images();
    for readouts in [
        [
            Readout::LogProb(0),
            Readout::LogProb(1),
            Readout::LogProb(7),
        ],
        [
            Readout::LogNotProb(0),
            Readout::LogNotProb(1),
            Readout::LogNotProb(3),
        ],
    ] {
        let mut grad = vec![0f32; x.len()];
        let value = ens
            .readout_and_grad(&x, &readouts, Some(&mut grad))
            .expect("ensemble");
        let mut want = [0f64; 3];
        let mut want_grad = vec![0f64; x.len()];
        for m in ens.members() {
            let mut g = vec![0f32; x.len()];
            let v = m.readout_and_grad(&x, &readouts, Some(&mut g)).expect("m");
            want.iter_mut()
                .zip(&v)
                .for_each(|(a, &b)| *a += b as f64 / 2.0);
            want_grad
                .iter_mut()
                .zip(&g)
                .for_each(|(a, &b)| *a += b as f64 / 2.0);
        }
        for i in 0..3 {
            assert!(
                (value[i] as f64 - want[i]).abs() <= 1e-6 * want[i].abs().max(1.0),
                "{:?}: {} vs {}",
                readouts[i],
                value[i],
                want[i]
            );
        }
        let want_grad: Vec<f32> = want_grad.iter().map(|&v| v as f32).collect();
        assert!(rel_l2(&grad, &want_grad) <= 1e-6, "{readouts:?}");
        // The value does not depend on whether the gradient is asked for.
        assert_eq!(ens.readout_and_grad(&x, &readouts, None).expect("v"), value);
        // The two members disagree on these images, so the mean is neither of them.
        let a = ens.members()[0]
            .readout_and_grad(&x, &readouts, None)
            .expect("a");
        assert!(a.iter().zip(&value).any(|(a, v)| (a - v).abs() > 1e-3));
    }
}

#[test]
fn ensemble_gradient_matches_finite_differences() {
    // The error budget of central differences with h = 1e-2 on these smooth SiLU
    // networks is that of the single classifier (tests/rewards.rs): ≤ 1e-2 relative
    // for directional derivatives ≥ 0.05, else 5e-4 absolute.
    let ens = Arc::new(load(&weights().join("digit-reward")).expect("ensemble"));
    let shape = SampleShape::new(28, 28, 1);
    let all = images();
    for (sample, class, goal) in [
        (0usize, 0usize, ClassGoal::Target),
        (1, 7, ClassGoal::Target),
        (2, 3, ClassGoal::Target),
        (0, 0, ClassGoal::Avoid),
        (1, 1, ClassGoal::Avoid),
    ] {
        let reward = ClassifierReward::of_ensemble(ens.clone(), class, goal).expect("reward");
        let x = &all[sample * 784..(sample + 1) * 784];
        let mut g = vec![0f32; 784];
        reward.evaluate(shape, x, Some(&mut g)).expect("grad");
        let norm = g.iter().map(|v| v * v).sum::<f32>().sqrt();
        let rnd: Vec<f32> = (0..784)
            .map(|i| ((i as f32 * 12.9898).sin() * 43758.547).fract() - 0.5)
            .collect();
        let rn = rnd.iter().map(|v| v * v).sum::<f32>().sqrt();
        let dirs = [
            g.iter().map(|v| v / norm).collect::<Vec<f32>>(),
            rnd.iter().map(|v| v / rn).collect(),
        ];
        let h = 1e-2f32;
        for (k, d) in dirs.iter().enumerate() {
            let mut batch: Vec<f32> = x.iter().zip(d).map(|(x, d)| x + h * d).collect();
            batch.extend(x.iter().zip(d).map(|(x, d)| x - h * d));
            let f = reward.evaluate(shape, &batch, None).expect("fd");
            let fd = (f[0] as f64 - f[1] as f64) / (2.0 * h as f64);
            let analytic: f64 = g.iter().zip(d).map(|(&a, &b)| a as f64 * b as f64).sum();
            eprintln!(
                "{} on sample {sample}, direction {k}: analytic {analytic:.6}, fd {fd:.6}",
                reward.name()
            );
            if analytic.abs() >= 0.05 {
                assert!(
                    (fd - analytic).abs() <= 1e-2 * analytic.abs(),
                    "{} direction {k}: {fd} vs {analytic}",
                    reward.name()
                );
            } else {
                assert!(
                    (fd - analytic).abs() <= 5e-4,
                    "{} direction {k}",
                    reward.name()
                );
            }
        }
    }
}

#[test]
fn a_classifier_folder_reads_as_that_classifier() {
    let dir = weights().join("digit-classifier");
    let single = load(&dir).expect("single");
    assert_eq!(single.members().len(), 1);
    let c = Classifier::load(&dir).expect("classifier");
    let x = images();
    let readouts = [
        Readout::LogProb(2),
        Readout::LogNotProb(5),
        Readout::LogProb(9),
    ];
    let mut g1 = vec![0f32; x.len()];
    let mut g2 = vec![0f32; x.len()];
    let v1 = single
        .readout_and_grad(&x, &readouts, Some(&mut g1))
        .expect("1");
    let v2 = c.readout_and_grad(&x, &readouts, Some(&mut g2)).expect("2");
    assert_eq!((v1, g1), (v2, g2));
    assert_eq!(single.predict(&x).expect("p"), c.predict(&x).expect("p"));

    // Through a spec, `--classifier DIR` of either kind.
    for folder in ["digit-classifier", "digit-reward"] {
        let ctx = RewardContext::new(weights().join(folder));
        let (w, r) = parse_reward_spec("avoid:4@2", &ctx).expect("spec");
        assert_eq!((w, r.name()), (2.0, "avoid:4".to_string()));
        let direct = ClassifierReward::of_ensemble(
            Arc::new(load(&weights().join(folder)).expect("load")),
            4,
            ClassGoal::Avoid,
        )
        .expect("direct");
        let shape = SampleShape::new(28, 28, 1);
        assert_eq!(
            r.evaluate(shape, &x, None).expect("a"),
            direct.evaluate(shape, &x, None).expect("b"),
            "{folder}"
        );
    }
}

#[test]
fn ensemble_predict_is_the_argmax_of_the_mean_log_probability() {
    let ens = load(&weights().join("digit-reward")).expect("ensemble");
    let x = images();
    let pred = ens.predict(&x).expect("predict");
    for (i, &p) in pred.iter().enumerate() {
        let sample = &x[i * 784..(i + 1) * 784];
        let lp: Vec<f32> = (0..10)
            .map(|c| {
                ens.readout_and_grad(sample, &[Readout::LogProb(c)], None)
                    .expect("lp")[0]
            })
            .collect();
        let best = (0..10)
            .max_by(|&a, &b| lp[a].total_cmp(&lp[b]))
            .expect("max");
        assert_eq!(p, best, "sample {i}: {lp:?}");
    }
}

#[test]
fn bad_ensemble_folders_are_refused_with_a_message() {
    let tmp = tempfile::tempdir().expect("tmp");
    let write = |name: &str, text: &str| -> PathBuf {
        let dir = tmp.path().join(name);
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("config.json"), text).expect("write");
        dir
    };
    let shipped = weights().join("digit-classifier");
    let fixture = fixtures().join("rewards/classifier");
    let format = "\"format\": \"diffsteer-classifier-ensemble/1\"";
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "empty",
            format!("{{{format}, \"members\": []}}"),
            vec!["members", "at least one"],
        ),
        (
            "no-members",
            format!("{{{format}}}"),
            vec!["members", "list"],
        ),
        (
            "not-a-string",
            format!("{{{format}, \"members\": [3]}}"),
            vec!["members[0]", "string"],
        ),
        (
            "unknown-key",
            format!("{{{format}, \"members\": [{shipped:?}], \"weights\": [1]}}"),
            vec!["weights", "unknown key"],
        ),
        (
            "missing-member",
            format!("{{{format}, \"members\": [\"nowhere\"]}}"),
            vec!["nowhere", "config.json"],
        ),
        (
            "mismatch",
            format!("{{{format}, \"members\": [{shipped:?}, {fixture:?}]}}"),
            vec!["must agree", "28×28×1"],
        ),
        ("not-json", "{members".to_string(), vec!["not valid JSON"]),
    ];
    for (name, text, needles) in cases {
        let dir = write(name, &text);
        let e = error_of(load(&dir), name);
        for n in needles {
            assert!(e.contains(n), "{name}: {e:?} lacks {n:?}");
        }
        // The same through a reward spec, as the CLI meets it.
        let e = error_of(
            parse_reward_spec("classifier:1", &RewardContext::new(&dir)),
            name,
        );
        assert!(e.contains("config.json"), "{name}: {e}");
    }
    // An ensemble of ensembles is refused (its members are listed instead).
    let inner = weights().join("digit-reward");
    let dir = write("nested", &format!("{{{format}, \"members\": [{inner:?}]}}"));
    let e = error_of(load(&dir), "nested");
    assert!(e.contains("itself an ensemble"), "{e}");
}

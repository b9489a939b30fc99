//! The engine's promises (DESIGN.md, "Per-sample everything"): a sample's result
//! depends only on its own request — the same bytes whatever it was batched with
//! and whenever it joined — failures stay with the sample that failed, and bad
//! requests are refused with the field at fault before anything runs.

use std::collections::HashMap;
use std::sync::Arc;

use diffsteer::pipeline::{
    drive, Engine, EngineOptions, Feed, Finished, Plan, PlanFeed, Request, StepWindow,
};
use diffsteer::schedule::SchedulerKind;
use diffsteer::steer::SteerMethod;
use diffsteer::Error;

const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/weights/digits");

fn engine() -> Engine {
    Engine::open(EngineOptions {
        threads: Some(2),
        ..EngineOptions::new(MODEL)
    })
    .expect("the shipped model opens")
}

/// A small deterministic generator (SplitMix64) for the test's random choices.
struct Dice(u64);

impl Dice {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random request: any scheduler, 3–9 steps, CFG with rescale or an interval,
/// unconditional, reward guidance, recurrence or Feynman-Kac particles.
fn random_request(dice: &mut Dice, n: usize) -> Request {
    let schedulers = [
        SchedulerKind::Ddim,
        SchedulerKind::Ddpm,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
    ];
    let steps = 3 + dice.below(7) as usize;
    let mut r = Request {
        id: Some(format!("r{n}")),
        count: 1 + dice.below(3),
        seed: dice.below(1000),
        steps,
        scheduler: Some(schedulers[dice.below(5) as usize]),
        cfg: 1.0 + dice.below(5) as f32,
        ..Request::default()
    };
    match dice.below(6) {
        0 => r.cfg_rescale = 0.7,
        1 => {
            r.cfg_interval = Some(StepWindow {
                start: 1,
                stop: steps - 1,
            })
        }
        2 => r.class = Some(diffsteer::pipeline::ClassChoice::Unconditional),
        3 => {
            r.class = Some(diffsteer::pipeline::ClassChoice::Unconditional);
            r.reward = vec![format!("classifier:{}", dice.below(10))];
            r.recur = Some(1 + dice.below(2) as usize);
        }
        4 => {
            r.class = Some(diffsteer::pipeline::ClassChoice::Unconditional);
            r.reward = vec![
                format!("classifier:{}", dice.below(10)),
                "ink:0.2@0.5".into(),
            ];
            r.particles = 2 + dice.below(2) as usize;
            r.steer = Some(SteerMethod::FeynmanKac);
            r.fk_every = Some(2);
            // Resampled copies need fresh noise to diverge.
            r.scheduler = Some(SchedulerKind::Ddpm);
        }
        _ => {
            r.class = Some(diffsteer::pipeline::ClassChoice::Label(
                dice.below(10) as usize
            ))
        }
    }
    r
}

/// Hands out the samples of several plans in a shuffled order, and at random
/// holds back while others are in flight (so samples join at different steps of
/// the others).
struct RandomFeed {
    waiting: Vec<(Arc<Plan>, u64, usize)>,
    dice: Dice,
    capacity: usize,
}

impl Feed<usize> for RandomFeed {
    fn next_sample(&mut self, free_slots: usize) -> Option<(Arc<Plan>, u64, usize)> {
        let busy = free_slots < self.capacity;
        if self.waiting.is_empty() || (busy && self.dice.below(3) == 0) {
            return None;
        }
        let pick = self.dice.below(self.waiting.len() as u64) as usize;
        if self.waiting[pick].0.particles() > free_slots {
            return None;
        }
        Some(self.waiting.swap_remove(pick))
    }
}

/// Every image of `plan` run alone (a runner holding only its own samples).
fn solo(engine: &Engine, plan: &Arc<Plan>) -> Vec<Vec<f32>> {
    let mut runner = engine.runner::<()>(plan.particles()).expect("runner");
    let mut images = vec![Vec::new(); plan.count() as usize];
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut PlanFeed::new(plan.clone()),
                &mut |done| {
                    images[done.index as usize] = done.result?.output.data;
                    Ok(())
                },
                &mut |_| {},
            )
        })
        .expect("solo run");
    images
}

#[test]
fn random_mixes_joining_at_random_steps_give_the_solo_bytes() {
    let engine = engine();
    let mut dice = Dice(20261203);
    let plans: Vec<Arc<Plan>> = (0..9)
        .map(|n| {
            let request = random_request(&mut dice, n);
            engine
                .prepare(&request)
                .unwrap_or_else(|e| panic!("{request:?}: {e}"))
        })
        .collect();
    let mut waiting = Vec::new();
    for (p, plan) in plans.iter().enumerate() {
        for index in 0..plan.count() {
            waiting.push((plan.clone(), index, p));
        }
    }
    let total = waiting.len();
    let mut feed = RandomFeed {
        waiting,
        dice: Dice(7),
        capacity: 6,
    };
    let mut runner = engine.runner::<usize>(6).expect("runner");
    let mut mixed: HashMap<(usize, u64), Vec<f32>> = HashMap::new();
    let mut occupancy = Vec::new();
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut feed,
                &mut |done: Finished<usize>| {
                    let image = done.result?;
                    mixed.insert((done.tag, done.index), image.output.data);
                    Ok(())
                },
                &mut |r| occupancy.push(r.used_slots()),
            )
        })
        .expect("mixed run");
    assert_eq!(mixed.len(), total);
    // Samples really were mixed: some steps held samples of several requests.
    assert!(
        runner.stats().mean_slots_per_call() > 1.5,
        "{:?}",
        runner.stats()
    );
    for (p, plan) in plans.iter().enumerate() {
        for (index, alone) in solo(&engine, plan).into_iter().enumerate() {
            let together = &mixed[&(p, index as u64)];
            assert!(
                together == &alone,
                "request {:?} image {index}: batched result differs from the solo run",
                plan.request()
            );
        }
    }
}

#[test]
fn a_failing_sample_fails_alone() {
    let engine = engine();
    // A guidance scale this large overflows the CFG combine to ±Inf (for class 0
    // and these seeds at the first step).
    let bad = engine
        .prepare(&Request {
            count: 2,
            steps: 5,
            cfg: 3.4e38,
            class: Some(diffsteer::pipeline::ClassChoice::Label(0)),
            ..Request::default()
        })
        .expect("a finite scale is a valid request");
    let good = engine
        .prepare(&Request {
            count: 2,
            steps: 5,
            ..Request::default()
        })
        .expect("plain request");
    let mut waiting = vec![
        (bad.clone(), 0, 0usize),
        (good.clone(), 0, 1),
        (bad, 1, 0),
        (good.clone(), 1, 1),
    ];
    waiting.reverse();
    struct InOrder(Vec<(Arc<Plan>, u64, usize)>);
    impl Feed<usize> for InOrder {
        fn next_sample(&mut self, free: usize) -> Option<(Arc<Plan>, u64, usize)> {
            (free > 0).then(|| self.0.pop()).flatten()
        }
    }
    let mut runner = engine.runner::<usize>(4).expect("runner");
    let mut outcomes = Vec::new();
    engine
        .with_workers(|| {
            drive(
                &mut runner,
                &mut InOrder(waiting),
                &mut |done| {
                    outcomes.push((done.tag, done.index, done.result.map(|i| i.output.data)));
                    Ok(())
                },
                &mut |_| {},
            )
        })
        .expect("the run itself goes on");
    assert_eq!(outcomes.len(), 4);
    let alone = solo(&engine, &good);
    for (tag, index, result) in outcomes {
        match (tag, result) {
            (0, Err(Error::NonFinite { what, step, .. })) => {
                assert!(what.contains(&format!("sample {index}")), "{what}");
                assert_eq!(step, 0, "{what}");
            }
            (1, Ok(data)) => assert!(data == alone[index as usize]),
            (tag, other) => panic!("request {tag} image {index}: {:?}", other.map(|d| d.len())),
        }
    }
    assert_eq!(runner.stats().failed, 2);
    assert_eq!(runner.stats().images, 2);
}

fn field_of(e: Error) -> String {
    match e {
        Error::InvalidArgument { name, .. } => name,
        other => panic!("expected an argument error, got {other}"),
    }
}

#[test]
fn bad_requests_are_refused_naming_the_field() {
    let engine = engine();
    let cases: Vec<(&str, &str)> = vec![
        (r#"{"count": 4294967297}"#, "count"),
        (r#"{"seed": 18446744073709551615, "count": 2}"#, "seed"),
        (r#"{"steps": 1001}"#, "steps"),
        (r#"{"class": 10}"#, "class"),
        (r#"{"scheduler": "ddim", "karras": true}"#, "karras"),
        (
            r#"{"cfg": 2, "cfg_rescale": 1, "cfg_interval": "60:70"}"#,
            "cfg_interval",
        ),
        (r#"{"particles": 2}"#, "particles"),
        (r#"{"reward_scale": 0.3}"#, "reward_scale"),
        (r#"{"reward": "classifier:12"}"#, "reward"),
        (r#"{"reward": "aesthetic:1"}"#, "reward"),
        (
            r#"{"reward": "classifier:1", "reward_window": "0:80", "steps": 10}"#,
            "reward_window",
        ),
        (r#"{"reward": "classifier:1", "fk_lambda": 3}"#, "fk_lambda"),
        (
            r#"{"reward": "classifier:1", "particles": 2, "scheduler": "euler"}"#,
            "steer",
        ),
        (
            r#"{"reward": "classifier:1", "reward_form": "eps"}"#,
            "reward_form",
        ),
        (r#"{"model": "/nonexistent/model"}"#, "model"),
    ];
    for (text, field) in cases {
        let request = Request::from_json_str(text).expect(text);
        let e = engine.prepare(&request).expect_err(text);
        assert_eq!(field_of(e), field, "{text}");
    }
}

#[test]
fn a_model_too_large_for_memory_is_refused_with_the_numbers() {
    let tmp = tempfile::tempdir().expect("tmp");
    let dir = tmp.path().join("huge");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let config = std::fs::read_to_string(format!("{MODEL}/config.json")).expect("config");
    let mut json: serde_json::Value = serde_json::from_str(&config).expect("json");
    // The largest side a config may name (4096): still far beyond this machine.
    json["sample_size"] = serde_json::json!(4096);
    std::fs::write(dir.join("config.json"), json.to_string()).expect("write");
    for f in [
        "diffusion_pytorch_model.safetensors",
        "scheduler_config.json",
    ] {
        std::fs::copy(format!("{MODEL}/{f}"), dir.join(f)).expect("copy");
    }
    let e = Engine::open(EngineOptions::new(&dir))
        .err()
        .expect("refused");
    let message = e.to_string();
    assert_eq!(field_of(e), "model");
    assert!(
        message.contains("needs about") && message.contains("available"),
        "{message}"
    );
}

#[test]
fn cancelled_samples_leave_at_the_next_step_boundary() {
    let engine = engine();
    let long = engine
        .prepare(&Request {
            count: 3,
            steps: 30,
            ..Request::default()
        })
        .expect("plan");
    let short = engine
        .prepare(&Request {
            count: 1,
            steps: 3,
            ..Request::default()
        })
        .expect("plan");
    let mut runner = engine.runner::<&str>(8).expect("runner");
    for i in 0..3 {
        runner.admit(&long, i, "long").expect("admit");
    }
    runner.admit(&short, 0, "short").expect("admit");
    let mut finished = Vec::new();
    engine
        .with_workers(|| {
            for _ in 0..4 {
                finished.extend(runner.step().into_iter().map(|f| f.tag));
            }
            Ok(())
        })
        .expect("steps");
    // The short request finished after its 3 steps, never stuck behind the long one.
    assert_eq!(finished, ["short"]);
    assert_eq!(runner.active(), 3);
    assert_eq!(runner.cancel(|t| *t == "long"), 3);
    assert!(runner.is_idle());
    assert_eq!(runner.stats().cancelled, 3);
    // Four steps: 4 slots in the first three calls, 3 in the fourth.
    assert_eq!(runner.stats().model_calls, 4);
    assert_eq!(runner.stats().slots, 15);
}

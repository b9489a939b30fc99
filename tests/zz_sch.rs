use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
#[test]
fn sch() {
    let cases = [
        r#"{"num_train_timesteps": 1000000000000}"#,
        r#"{"num_train_timesteps": 100000000}"#,
        r#"{"num_train_timesteps": 0}"#,
        r#"{"num_train_timesteps": 1}"#,
        r#"{"steps_offset": 1000000000000}"#,
        r#"{"beta_start": 0.5, "beta_end": 0.1}"#,
        r#"{"beta_start": -1, "beta_end": 2}"#,
        r#"{"beta_end": 1.0}"#,
        r#"{"trained_betas": []}"#,
        r#"{"trained_betas": [1.0, 1.0], "num_train_timesteps": 2}"#,
        r#"{"trained_betas": [0.5, -0.5], "num_train_timesteps": 2}"#,
        r#"{"clip_sample_range": -1}"#,
        r#"{"solver_order": 100}"#,
        r#"{"timestep_spacing": "leading", "steps_offset": 999}"#,
        r#"{"use_karras_sigmas": true, "beta_end": 1e-30, "beta_start": 1e-30}"#,
        r#"{"sigma_min": 1e30}"#,
        r#"{"rescale_betas_zero_snr": true, "num_train_timesteps": 2}"#,
    ];
    for c in cases {
        let cfg = match SchedulerConfig::from_json_str(c, "s.json") {
            Ok(c) => c,
            Err(e) => {
                eprintln!("{c}: parse {e}");
                continue;
            }
        };
        for kind in [
            SchedulerKind::Ddpm,
            SchedulerKind::Ddim,
            SchedulerKind::Euler,
            SchedulerKind::EulerAncestral,
            SchedulerKind::DpmSolverMultistep,
        ] {
            for steps in [1usize, 7, 1000] {
                for karras in [None, Some(true)] {
                    let t = std::time::Instant::now();
                    let r = std::panic::catch_unwind(|| {
                        schedule::build(kind, &cfg, steps, &ScheduleOptions { eta: 1.0, karras })
                            .map(|s| s.num_steps())
                    });
                    let el = t.elapsed().as_secs_f64();
                    match r {
                        Ok(Ok(_)) if el < 0.5 => {}
                        Ok(Err(e)) => eprintln!("{c} {kind} {steps} {karras:?}: err {e}"),
                        other => eprintln!(
                            "{c} {kind} {steps} {karras:?}: {:?} {el}s",
                            other.map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
                        ),
                    }
                }
            }
        }
    }
}

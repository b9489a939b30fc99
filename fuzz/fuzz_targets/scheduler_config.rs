//! A `scheduler_config.json` (`schedule::config`), from arbitrary text: parsed, then
//! every scheduler built from it for a few step counts, with and without eta and
//! Karras sigmas; every schedule that builds is walked step by step on a small sample.
#![no_main]

use diffsteer::schedule::{self, ScheduleOptions, SchedulerConfig, SchedulerKind};
use libfuzzer_sys::fuzz_target;

const KINDS: [SchedulerKind; 5] = [
    SchedulerKind::Ddpm,
    SchedulerKind::Ddim,
    SchedulerKind::Euler,
    SchedulerKind::EulerAncestral,
    SchedulerKind::DpmSolverMultistep,
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(config) = SchedulerConfig::from_json_str(text, "scheduler_config.json") else {
        return;
    };
    let _ = config.class_kind();
    for kind in KINDS {
        for steps in [1usize, 2, 7, 50, 1000] {
            for options in [
                ScheduleOptions::default(),
                ScheduleOptions {
                    eta: 1.0,
                    karras: Some(true),
                },
            ] {
                let Ok(s) = schedule::build(kind, &config, steps, &options) else {
                    continue;
                };
                let _ = (s.init_noise_sigma(), s.prediction_type(), s.sigmas());
                if steps > 50 {
                    continue;
                }
                let sample = [0.5f32, -1.0, 2.0, 0.0];
                let noise = [0.1f32, -0.3, 1.2, -2.0];
                let mut x = sample;
                let mut out = [0f32; 4];
                let mut state = s.new_state();
                for step in 0..s.num_steps() {
                    let _ = (s.timestep(step), s.input_scale(step), s.needs_noise(step));
                    let _ = (s.alpha_bar(step), s.alpha_bar_after(step));
                    let _ = s.linear_step(step, &state);
                    let drew = s.needs_noise(step).then_some(&noise[..]);
                    if s.step(step, &mut state, &x, &sample, drew, &mut out)
                        .is_err()
                    {
                        break;
                    }
                    x = out;
                }
            }
        }
    }
});

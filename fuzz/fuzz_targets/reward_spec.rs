//! A reward spec as written on the command line (`reward::spec::parse_reward_spec`),
//! from arbitrary text. The first byte picks where `classifier:` specs load from: the
//! shipped classifier folder (odd) or a folder that does not exist (even).
#![no_main]

use std::sync::OnceLock;

use diffsteer::reward::{parse_reward_spec, RewardContext, SampleShape};
use libfuzzer_sys::fuzz_target;

fn contexts() -> &'static [RewardContext; 2] {
    static CONTEXTS: OnceLock<[RewardContext; 2]> = OnceLock::new();
    CONTEXTS.get_or_init(|| {
        [
            RewardContext::new("/nonexistent/diffsteer-fuzz/classifier"),
            RewardContext::new(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../weights/digit-classifier"
            )),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(spec) = std::str::from_utf8(rest) else {
        return;
    };
    let ctx = &contexts()[usize::from(pick & 1)];
    if let Ok((weight, reward)) = parse_reward_spec(spec, ctx) {
        assert!(weight.is_finite(), "{spec:?}: weight {weight}");
        let _ = reward.name();
        let shape = SampleShape::new(28, 28, 1);
        if reward.check_shape(shape).is_ok() {
            let x = vec![0.25f32; shape.len()];
            let mut grad = vec![0f32; shape.len()];
            let _ = reward.evaluate(shape, &x, Some(&mut grad));
        }
    }
});

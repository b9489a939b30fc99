//! A reward classifier's `config.json` (`reward::classifier::config`), from arbitrary
//! text, loaded with the shipped classifier's weights (`Classifier::from_parts`);
//! when it loads, one forward and backward pass on a blank input.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use diffsteer::backend::Backend;
use diffsteer::reward::Classifier;
use diffsteer::CpuBackend;
use libfuzzer_sys::fuzz_target;

const WEIGHTS: &[u8] = include_bytes!("../../weights/digit-classifier/model.safetensors");

fn backend() -> Arc<dyn Backend> {
    static BACKEND: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    BACKEND.get_or_init(|| Arc::new(CpuBackend::new())).clone()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(classifier) =
        Classifier::from_parts(Path::new("fuzz-classifier"), text, WEIGHTS, backend())
    else {
        return;
    };
    let x = vec![0f32; classifier.input_shape().len()];
    let _ = classifier.logits(&x);
    let _ = classifier.predict(&x);
    let mut grad = vec![0f32; x.len()];
    let _ = classifier.log_prob_and_grad(&x, &[0], Some(&mut grad));
});

//! A safetensors file as the engine loads it, from arbitrary bytes: the U-Net loader's
//! header and tensor table (`model::weights::WeightFile`, every tensor read as f32 and
//! as integers), a U-Net built from it with the fixture config, and the reward
//! classifier's loader (`Classifier::from_parts`, with the shipped classifier config).
//! Any input may be refused with an `Error`; none may panic or allocate without bound.
#![no_main]

use std::path::Path;
use std::sync::{Arc, OnceLock};

use diffsteer::backend::Backend;
use diffsteer::json_fields::Fields;
use diffsteer::model::config::UNetConfig;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::UNet;
use diffsteer::reward::Classifier;
use diffsteer::CpuBackend;
use libfuzzer_sys::fuzz_target;

const UNET_CONFIG: &str = include_str!("../../tests/fixtures/models/unet2d_class/config.json");
const CLASSIFIER_CONFIG: &str = include_str!("../../weights/digit-classifier/config.json");

fn backend() -> Arc<dyn Backend> {
    static BACKEND: OnceLock<Arc<dyn Backend>> = OnceLock::new();
    BACKEND.get_or_init(|| Arc::new(CpuBackend::new())).clone()
}

fn unet_config() -> UNetConfig {
    static CONFIG: OnceLock<UNetConfig> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            Fields::parse(Path::new("config.json"), UNET_CONFIG)
                .and_then(|f| UNetConfig::from_fields(&f))
                .expect("the fixture config parses")
        })
        .clone()
}

fuzz_target!(|data: &[u8]| {
    let backend = backend();
    if let Ok(file) = WeightFile::from_bytes("fuzz.safetensors", data.to_vec()) {
        for name in file.names() {
            let _ = file.shape(&name);
            let _ = file.read_f32(&name);
            let _ = file.read_i64(&name);
        }
        let _ = file.user_metadata("format");
        let _ = UNet::load(backend.as_ref(), unet_config(), &file);
        let _ = file.ensure_all_used();
    }
    let _ = Classifier::from_parts(
        Path::new("fuzz-classifier"),
        CLASSIFIER_CONFIG,
        data,
        backend,
    );
});

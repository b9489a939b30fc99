//! A pipeline folder's `model_index.json`: `PipelineFolder::locate` (the pipeline
//! class, its components and their libraries and classes, unsupported pipelines) and
//! `check_components` (every component's config), over the tiny SD1-style fixture
//! pipeline's components (linked into a scratch folder made once per process).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use diffsteer::PipelineFolder;
use libfuzzer_sys::fuzz_target;

fn folder() -> &'static PathBuf {
    static FOLDER: OnceLock<PathBuf> = OnceLock::new();
    FOLDER.get_or_init(|| {
        let fixture = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/pipelines/sd1_tiny"
        ));
        let dir =
            std::env::temp_dir().join(format!("diffsteer-fuzz-pipeline-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the scratch pipeline folder");
        for component in ["scheduler", "text_encoder", "tokenizer", "unet", "vae"] {
            let link = dir.join(component);
            if !link.exists() {
                std::os::unix::fs::symlink(fixture.join(component), &link)
                    .expect("linking a fixture component");
            }
        }
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = folder();
    std::fs::write(dir.join("model_index.json"), data).expect("writing model_index.json");
    if let Ok(pipeline) = PipelineFolder::locate(dir) {
        let _ = pipeline.check_components();
    }
});

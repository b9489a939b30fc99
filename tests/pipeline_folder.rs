//! Stable Diffusion pipeline folders (`model_index.json` + components): the tiny
//! fixture pipelines saved by diffusers load and fit together, and every way a
//! folder can be wrong gets an error naming the component, file or field.

mod common;

use std::path::{Path, PathBuf};

use common::assert_close;
use diffsteer::backend::Backend;
use diffsteer::model::vae::VaeParts;
use diffsteer::model::weights::WeightFile;
use diffsteer::model::{ModelFolder, PipelineFolder};
use diffsteer::CpuBackend;

fn pipeline(name: &str) -> PathBuf {
    common::fixtures().join("pipelines").join(name)
}

#[test]
fn tiny_pipelines_load_and_their_prompts_encode_as_diffusers_does() {
    let cpu = CpuBackend::new();
    for (name, class, hidden) in [
        ("sd1_tiny", "StableDiffusionPipeline", 32),
        ("sd2_tiny", "StableDiffusionPipeline", 48),
    ] {
        let folder =
            PipelineFolder::locate(pipeline(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(folder.class_name, class);
        let configs = folder.check_components().expect("components fit");
        assert_eq!(configs.text_encoder.hidden_size, hidden);
        assert_eq!(configs.unet.cross_attention_dim, Some(hidden));
        assert_eq!(configs.vae.latent_channels, 4);
        // The same folder is a model folder for everything that takes one.
        let model = ModelFolder::locate(pipeline(name)).expect("model folder");
        assert!(model.unet_dir.ends_with("unet"));
        assert!(model.scheduler_config.is_some());
        folder.load_unet(&cpu).expect("unet");
        folder.load_vae(&cpu, VaeParts::DecoderOnly).expect("vae");
        // Prompt → ids → embeddings, as the reference runs' encode_prompt did.
        let reference = WeightFile::open(
            common::fixtures().join(format!("text/{name}_text_encoder.safetensors")),
        )
        .expect("reference");
        let prompts: Vec<String> =
            serde_json::from_str(reference.user_metadata("prompts").expect("prompts"))
                .expect("json");
        let tokenizer = folder.load_tokenizer().expect("tokenizer");
        let encoder = folder.load_text_encoder(&cpu).expect("text encoder");
        let rows: Vec<Vec<u32>> = prompts.iter().map(|p| tokenizer.encode(p).ids).collect();
        let got = cpu
            .to_host(&encoder.encode(&cpu, &rows).expect("encode"))
            .expect("host");
        let (_, want) = reference.read_f32("last_hidden_state").expect("want");
        assert_close(&format!("{name} prompt embeddings"), &got, &want, 1e-5);
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.path().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A fresh copy of sd1_tiny, changed by `edit`, and the error `locate` (or, when
/// `locate` accepts it, `check_components`) gives for it.
fn error_after(edit: impl FnOnce(&Path)) -> String {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline("sd1_tiny"), &dir);
    edit(&dir);
    let result = PipelineFolder::locate(&dir).and_then(|f| f.check_components().map(|_| ()));
    match result {
        Ok(()) => panic!("the edited folder was accepted"),
        Err(e) => {
            eprintln!("{e}");
            e.to_string()
        }
    }
}

fn set_class(dir: &Path, class: &str) {
    let path = dir.join("model_index.json");
    let text = std::fs::read_to_string(&path).expect("index");
    std::fs::write(
        &path,
        text.replace("\"StableDiffusionPipeline\"", &format!("{class:?}")),
    )
    .expect("write");
}

#[test]
fn unsupported_pipelines_are_named_with_what_is_supported() {
    for (class, why) in [
        ("StableDiffusionXLPipeline", "two text encoders"),
        ("StableDiffusion3Pipeline", "MMDiT"),
        ("FluxPipeline", "flow-matching"),
        ("KandinskyPipeline", ""),
    ] {
        let e = error_after(|d| set_class(d, class));
        assert!(
            e.contains(class)
                && e.contains(why)
                && e.contains("supported: StableDiffusionPipeline, StableDiffusionImg2ImgPipeline"),
            "{e}"
        );
        assert!(
            e.contains("model_index.json") && e.contains("_class_name"),
            "{e}"
        );
    }
    // The img2img class is accepted.
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("pipe");
    copy_tree(&pipeline("sd1_tiny"), &dir);
    set_class(&dir, "StableDiffusionImg2ImgPipeline");
    assert_eq!(
        PipelineFolder::locate(&dir).expect("img2img").class_name,
        "StableDiffusionImg2ImgPipeline"
    );
}

#[test]
fn missing_or_broken_components_are_named() {
    let e = error_after(|d| std::fs::remove_file(d.join("model_index.json")).expect("rm"));
    assert!(e.contains("model_index.json"), "{e}");

    let e = error_after(|d| std::fs::remove_dir_all(d.join("vae")).expect("rm"));
    assert!(e.contains("`vae` component folder"), "{e}");

    let e = error_after(|d| {
        let unet = d.join("unet");
        std::fs::rename(
            unet.join("diffusion_pytorch_model.safetensors"),
            unet.join("diffusion_pytorch_model.fp16.safetensors"),
        )
        .expect("rename");
    });
    assert!(
        e.contains("`unet` component") && e.contains("diffusion_pytorch_model.fp16.safetensors"),
        "{e}"
    );

    let e = error_after(|d| {
        let path = d.join("text_encoder/model.safetensors");
        let bytes = std::fs::read(&path).expect("read");
        std::fs::write(&path, &bytes[..bytes.len() - 1000]).expect("truncate");
    });
    assert!(
        e.contains("text_encoder") && e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    let e = error_after(|d| std::fs::remove_file(d.join("tokenizer/merges.txt")).expect("rm"));
    assert!(
        e.contains("merges.txt") && e.contains("`tokenizer` component"),
        "{e}"
    );

    let e = error_after(|d| {
        let path = d.join("model_index.json");
        let text = std::fs::read_to_string(&path).expect("index");
        let edited = text.replacen(
            "\"transformers\",\n    \"CLIPTextModel\"",
            "null,\n    null",
            1,
        );
        assert_ne!(text, edited, "the index names the text encoder");
        std::fs::write(&path, edited).expect("write");
    });
    assert!(
        e.contains("text_encoder") && e.contains("missing or null"),
        "{e}"
    );
}

#[test]
fn components_that_do_not_fit_together_are_refused() {
    let e = error_after(|d| {
        let path = d.join("unet/config.json");
        let text = std::fs::read_to_string(&path).expect("config");
        std::fs::write(
            &path,
            text.replace("\"cross_attention_dim\": 32", "\"cross_attention_dim\": 40"),
        )
        .expect("write");
    });
    assert!(
        e.contains("cross_attention_dim") && e.contains("outputs 32 features"),
        "{e}"
    );

    let e = error_after(|d| {
        let path = d.join("text_encoder/config.json");
        let text = std::fs::read_to_string(&path).expect("config");
        std::fs::write(
            &path,
            text.replace("\"vocab_size\": 1000", "\"vocab_size\": 900"),
        )
        .expect("write");
    });
    assert!(
        e.contains("vocab_size") && e.contains("ids up to 999"),
        "{e}"
    );
}

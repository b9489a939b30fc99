//! The CLIP text encoder against transformers / diffusers (tests/fixtures/text/
//! <pipeline>_text_encoder.safetensors, made by tools/make_text_fixtures.py): the
//! tiny SD1-style (quick GELU, f16, transformers 5 names) and SD2-style (GELU, bf16,
//! `text_model.` names + `position_ids`) encoders of the fixture pipelines, on the
//! prompts of their reference runs: the last hidden state diffusers' `encode_prompt`
//! returns, and `clip_skip` 1 and 2. DESIGN.md: ≤ 1e-5 relative L2.

mod common;

use common::assert_close;
use diffsteer::backend::Backend;
use diffsteer::model::clip::{ClipTokenizer, TextEncoder};
use diffsteer::model::weights::WeightFile;
use diffsteer::CpuBackend;

struct Reference {
    file: WeightFile,
    folder: String,
    tokenizer: String,
    prompts: Vec<String>,
}

fn reference(name: &str) -> Reference {
    let path = common::fixtures().join(format!("text/{name}_text_encoder.safetensors"));
    let file = WeightFile::open(&path).expect("opening the reference");
    let meta = |key: &str| {
        file.user_metadata(key)
            .unwrap_or_else(|| panic!("metadata {key}"))
            .to_string()
    };
    let prompts = serde_json::from_str(&meta("prompts")).expect("prompts");
    Reference {
        folder: meta("folder"),
        tokenizer: meta("tokenizer"),
        prompts,
        file,
    }
}

fn check(name: &str) {
    let r = reference(name);
    let cpu = CpuBackend::new();
    let encoder = TextEncoder::load_dir(&cpu, common::fixtures().join(&r.folder))
        .expect("loading the text encoder");
    let (shape, ids) = r.file.read_i64("input_ids").expect("input_ids");
    let rows: Vec<Vec<u32>> = ids
        .chunks(shape[1])
        .map(|row| row.iter().map(|&v| v as u32).collect())
        .collect();
    assert_eq!(rows.len(), r.prompts.len());
    // The fixture's ids are the tokenizer's (the test of the whole prompt → embedding path).
    let tokenizer = ClipTokenizer::load(common::fixtures().join(&r.tokenizer)).expect("tokenizer");
    for (prompt, row) in r.prompts.iter().zip(&rows) {
        assert_eq!(
            &tokenizer.encode(prompt).ids,
            row,
            "{name}: ids of {prompt:?}"
        );
    }
    for (key, skip) in [
        ("last_hidden_state", 0usize),
        ("clip_skip_1", 1),
        ("clip_skip_2", 2),
    ] {
        let (want_shape, want) = r.file.read_f32(key).expect(key);
        let out = encoder.encode_clip_skip(&cpu, &rows, skip).expect("encode");
        assert_eq!(out.shape(), &want_shape[..], "{name} {key}");
        let got = cpu.to_host(&out).expect("host");
        let err = assert_close(&format!("{name} {key}"), &got, &want, 1e-5);
        eprintln!("{name} {key}: rel L2 {err:.2e}");
    }
    // encode() is clip_skip 0.
    let plain = cpu
        .to_host(&encoder.encode(&cpu, &rows).expect("encode"))
        .expect("host");
    let (_, want) = r.file.read_f32("last_hidden_state").expect("last");
    assert_close(&format!("{name} encode"), &plain, &want, 1e-5);
}

#[test]
fn sd1_style_text_encoder_matches_transformers() {
    check("sd1_tiny");
}

#[test]
fn sd2_style_text_encoder_matches_transformers() {
    check("sd2_tiny");
}

#[test]
fn rows_are_independent_of_the_batch() {
    let r = reference("sd1_tiny");
    let cpu = CpuBackend::new();
    let encoder = TextEncoder::load_dir(&cpu, common::fixtures().join(&r.folder)).expect("load");
    let (shape, ids) = r.file.read_i64("input_ids").expect("input_ids");
    let rows: Vec<Vec<u32>> = ids
        .chunks(shape[1])
        .map(|row| row.iter().map(|&v| v as u32).collect())
        .collect();
    let all = cpu
        .to_host(&encoder.encode(&cpu, &rows).expect("all"))
        .expect("host");
    let one = cpu
        .to_host(&encoder.encode(&cpu, &rows[1..2]).expect("one"))
        .expect("host");
    let per = one.len();
    assert_eq!(&all[per..2 * per], &one[..], "row 1 alone and in the batch");
}

#[test]
fn bad_inputs_are_refused_with_the_reason() {
    let r = reference("sd1_tiny");
    let cpu = CpuBackend::new();
    let encoder = TextEncoder::load_dir(&cpu, common::fixtures().join(&r.folder)).expect("load");
    let err = |rows: &[Vec<u32>], skip: usize| match encoder.encode_clip_skip(&cpu, rows, skip) {
        Ok(_) => panic!("accepted"),
        Err(e) => e.to_string(),
    };
    let vocab = encoder.config().vocab_size as u32;
    let e = err(&[vec![0, vocab]], 0);
    assert!(
        e.contains(&format!("id {vocab}")) && e.contains("vocabulary"),
        "{e}"
    );
    let e = err(&[vec![0; 78]], 0);
    assert!(e.contains("78 tokens"), "{e}");
    let e = err(&[vec![0; 5], vec![0; 6]], 0);
    assert!(e.contains("row 1 has 6 tokens"), "{e}");
    let e = err(&[], 0);
    assert!(e.contains("0 rows"), "{e}");
    let e = err(&[vec![0; 5]], 4);
    assert!(e.contains("clip_skip") && e.contains("3 layers"), "{e}");
}

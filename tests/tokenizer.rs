//! The CLIP tokenizer against transformers' CLIPTokenizer on a corpus of tricky and
//! random prompts (tests/fixtures/text/tokenizer_cases.json, made by
//! tools/make_text_fixtures.py), through every tokenizer folder the fixtures hold:
//! the full CLIP vocabulary padded SD 1.x style and SD 2.x style ("!"), and the tiny
//! pipelines' reduced vocabularies (one in the older vocab.json/merges.txt format,
//! one as transformers 5 saves it, tokenizer.json).

mod common;

use std::path::Path;

use diffsteer::model::clip::ClipTokenizer;
use serde_json::Value;

fn cases() -> Value {
    let path = common::fixtures().join("text/tokenizer_cases.json");
    let text = std::fs::read_to_string(&path).expect("reading the tokenizer cases");
    serde_json::from_str(&text).expect("parsing the tokenizer cases")
}

#[test]
fn every_prompt_gives_transformers_ids_with_every_tokenizer() {
    let cases = cases();
    let tokenizers = cases["tokenizers"].as_object().expect("tokenizers");
    assert!(tokenizers.len() >= 2, "the fixture names its tokenizers");
    let mut checked = 0;
    for (name, spec) in tokenizers {
        let folder = common::fixtures().join(spec["folder"].as_str().expect("folder"));
        let tokenizer = ClipTokenizer::load(&folder).unwrap_or_else(|e| panic!("{name}: {e}"));
        let pad = spec["pad_id"].as_u64().expect("pad id") as u32;
        assert_eq!(tokenizer.pad_id(), pad, "{name}: pad id");
        assert_eq!(tokenizer.max_length(), 77, "{name}");
        let mut mismatches = Vec::new();
        for case in cases["cases"].as_array().expect("cases") {
            let prompt = case["prompt"].as_str().expect("prompt");
            let want = &case[name.as_str()];
            let mut ids: Vec<u32> = want["ids"]
                .as_array()
                .expect("ids")
                .iter()
                .map(|v| v.as_u64().expect("id") as u32)
                .collect();
            ids.resize(77, pad);
            let full = want["full_length"].as_u64().expect("length") as usize;
            let got = tokenizer.encode(prompt);
            if got.ids != ids || got.full_length != full || got.truncated != (full > 77) {
                mismatches.push(format!(
                    "{prompt:?}:\n  got  {:?} (length {})\n  want {ids:?} (length {full})",
                    got.ids, got.full_length
                ));
            }
            checked += 1;
        }
        assert!(
            mismatches.is_empty(),
            "{name}: {} of the prompts differ from transformers:\n{}",
            mismatches.len(),
            mismatches.join("\n")
        );
    }
    assert!(checked >= 200, "only {checked} prompt × tokenizer pairs");
}

#[test]
fn known_stable_diffusion_ids_and_padding() {
    let tokenizer = ClipTokenizer::load(common::fixtures().join("clip-tokenizer"))
        .expect("loading the tokenizer");
    let e = tokenizer.encode("a photograph of an astronaut riding a horse");
    // The ids every SD 1.x tutorial prints for this prompt.
    assert_eq!(
        &e.ids[..10],
        &[49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407]
    );
    assert!(e.ids[10..].iter().all(|&id| id == 49407));
    assert!(!e.truncated);
    assert_eq!(
        tokenizer.token_text(8853).as_deref(),
        Some("photograph</w>")
    );
    assert_eq!(
        tokenizer.token_text(49406).as_deref(),
        Some("<|startoftext|>")
    );
    let sd2 = ClipTokenizer::load(common::fixtures().join("clip-tokenizer-sd2")).expect("sd2");
    let e = sd2.encode("wow!!");
    // transformers: [49406, 2781, 0, 0, 49407] ("wow</w>", then "!" twice as the pad token).
    assert_eq!(&e.ids[..5], &[49406, 2781, 0, 0, 49407]);
    assert!(e.ids[5..].iter().all(|&id| id == 0));
    let long = tokenizer.encode(&"a ".repeat(100));
    assert!(long.truncated);
    assert_eq!(long.full_length, 102);
    assert_eq!(
        (long.ids[0], long.ids[75], long.ids[76]),
        (49406, 320, 49407)
    );
}

fn copy_folder(from: &Path, to: &Path, skip: &[&str]) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read_dir") {
        let entry = entry.expect("entry");
        let name = entry.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        std::fs::copy(entry.path(), to.join(&name)).expect("copy");
    }
}

#[test]
fn broken_folders_get_errors_naming_the_file() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let src = common::fixtures().join("clip-tokenizer");
    let err = |dir: &Path| match ClipTokenizer::load(dir) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e) => e.to_string(),
    };

    let no_merges = tmp.path().join("no-merges");
    copy_folder(&src, &no_merges, &["merges.txt"]);
    let e = err(&no_merges);
    assert!(e.contains("merges.txt") && e.contains("missing"), "{e}");

    let no_config = tmp.path().join("no-config");
    copy_folder(&src, &no_config, &["tokenizer_config.json"]);
    let e = err(&no_config);
    assert!(e.contains("tokenizer_config.json"), "{e}");

    let cut = tmp.path().join("cut-merges");
    copy_folder(&src, &cut, &[]);
    let merges = std::fs::read_to_string(cut.join("merges.txt")).expect("merges");
    std::fs::write(cut.join("merges.txt"), &merges[..merges.len() / 2]).expect("write");
    // Half a file ends in the middle of a line (one symbol) or loses merges the
    // vocabulary's symbols need; either way the load names merges.txt.
    let loaded = ClipTokenizer::load(&cut);
    if let Err(e) = &loaded {
        assert!(e.to_string().contains("merges.txt"), "{e}");
    }

    let bad_json = tmp.path().join("bad-vocab");
    copy_folder(&src, &bad_json, &[]);
    std::fs::write(bad_json.join("vocab.json"), "{\"a\": 0,").expect("write");
    let e = err(&bad_json);
    assert!(e.contains("vocab.json") && e.contains("JSON"), "{e}");

    let e = err(&tmp.path().join("nowhere"));
    assert!(e.contains("nowhere") && e.contains("missing"), "{e}");

    let other = tmp.path().join("other-class");
    copy_folder(&src, &other, &[]);
    let config = std::fs::read_to_string(other.join("tokenizer_config.json")).expect("config");
    std::fs::write(
        other.join("tokenizer_config.json"),
        config.replace("\"CLIPTokenizer\"", "\"T5Tokenizer\""),
    )
    .expect("write");
    let e = err(&other);
    assert!(
        e.contains("T5Tokenizer") && e.contains("CLIPTokenizer"),
        "{e}"
    );
}

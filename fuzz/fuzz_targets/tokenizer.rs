//! A prompt through the CLIP tokenizer with the real CLIP vocabulary
//! (tests/fixtures/clip-tokenizer): any UTF-8 text gives exactly `max_length` ids,
//! BOS first, EOS after the tokens, every id in the vocabulary.
#![no_main]

use std::sync::OnceLock;

use diffsteer::ClipTokenizer;
use libfuzzer_sys::fuzz_target;

fn tokenizer() -> &'static ClipTokenizer {
    static TOKENIZER: OnceLock<ClipTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        ClipTokenizer::load(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/clip-tokenizer"
        ))
        .expect("the CLIP vocabulary fixture loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let encoding = tokenizer().encode(text);
    assert_eq!(encoding.ids.len(), 77, "{text:?}");
    assert_eq!(encoding.ids[0], 49406, "{text:?}: BOS first");
    let tokens = encoding.full_length.min(77) - 1;
    assert_eq!(
        encoding.ids[tokens], 49407,
        "{text:?}: EOS after the tokens"
    );
    assert!(encoding.ids.iter().all(|&id| id < 49408), "{text:?}");
    assert_eq!(encoding.truncated, encoding.full_length > 77, "{text:?}");
});

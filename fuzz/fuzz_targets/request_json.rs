//! A request body as `serve`'s `/v1/generate` takes it (and a `batch` jobs line holds
//! it): `Request::from_json_str`, then the engine's validation (`Engine::prepare`,
//! which the server runs before queueing) on the shipped class model (first byte
//! even) or the shipped text-to-image pipeline (odd: prompts are tokenized and
//! encoded). A request that parses must also survive its own `to_json` unchanged.
#![no_main]

use std::sync::OnceLock;

use diffsteer::pipeline::{Engine, EngineOptions, Request};
use libfuzzer_sys::fuzz_target;

fn engines() -> &'static [Engine; 2] {
    static ENGINES: OnceLock<[Engine; 2]> = OnceLock::new();
    ENGINES.get_or_init(|| {
        let open = |folder: &str| {
            let path = format!("{}/../weights/{folder}", env!("CARGO_MANIFEST_DIR"));
            Engine::open(EngineOptions {
                threads: Some(1),
                ..EngineOptions::new(path)
            })
            .expect("the shipped models open")
        };
        [open("digits"), open("digits-text")]
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let Ok(request) = Request::from_json_str(text) else {
        return;
    };
    let again = Request::from_json(&request.to_json())
        .unwrap_or_else(|e| panic!("{text:?}: its own JSON is refused: {e}"));
    assert_eq!(again, request, "{text:?}: changed by a JSON round trip");
    let _ = engines()[usize::from(pick & 1)].prepare(&request);
});

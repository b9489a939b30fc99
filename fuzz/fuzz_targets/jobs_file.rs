//! A `batch` jobs file (JSONL, one request per line with an `"id"`): the whole of
//! `batch::load_jobs` — line reading and its limits, ids, duplicate ids, per-line
//! `model` folders and every request's validation — over the shipped class model.
#![no_main]

use std::io::Write;

use diffsteer::batch::load_jobs;
use diffsteer::pipeline::EngineOptions;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut file = tempfile_in_tmp();
    file.write_all(data).expect("writing the jobs file");
    let base = EngineOptions {
        threads: Some(1),
        ..EngineOptions::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../weights/digits"))
    };
    let path = file.path().to_path_buf();
    if let Ok((_, jobs)) = load_jobs(&path, &base, 64) {
        assert!(!jobs.is_empty(), "an accepted jobs file holds jobs");
    }
});

/// A file removed when dropped, named by the process and a counter.
struct TempFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl TempFile {
    fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Write for TempFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn tempfile_in_tmp() -> TempFile {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "diffsteer-fuzz-jobs-{}-{}.jsonl",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let file = std::fs::File::create(&path).expect("creating the jobs file");
    TempFile { path, file }
}

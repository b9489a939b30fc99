//! `results.jsonl`: one line per image, appended only after the image file is in
//! place (written to a temporary file, synced, renamed), so that whatever stops a
//! run — Ctrl-C, `kill -9`, power loss — the file lists exactly the images that
//! exist. Several processes (shards of one jobs file) may share an output folder:
//! every read, append and rewrite holds an exclusive lock on `.results.lock`, and
//! every append opens the file afresh, so a rewrite (rename) never strands another
//! writer on the old file. A line torn by power loss (no final newline) is cut off
//! on the next run.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

pub const RESULTS: &str = "results.jsonl";
const LOCK: &str = ".results.lock";

/// What one line of `results.jsonl` says about one image.
#[derive(Debug, Clone, PartialEq)]
pub struct ResultRecord {
    /// 1-based line number in the file.
    pub line: usize,
    pub id: String,
    pub index: u64,
    /// The image, relative to the output folder (absent for a failure).
    pub file: Option<String>,
    pub failed: bool,
    pub error: Option<String>,
    /// The fingerprint of the job's settings when the image was made.
    pub fingerprint: Option<String>,
}

/// The results file of an output folder.
pub struct ResultsFile {
    dir: PathBuf,
    path: PathBuf,
    lock_path: PathBuf,
}

/// Holds the folder's results lock until dropped.
struct LockGuard(File);

impl Drop for LockGuard {
    fn drop(&mut self) {
        let _ = self.0.unlock();
    }
}

impl ResultsFile {
    pub fn new(dir: &Path) -> Self {
        ResultsFile {
            dir: dir.to_path_buf(),
            path: dir.join(RESULTS),
            lock_path: dir.join(LOCK),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> Result<LockGuard> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&self.lock_path)
            .map_err(|e| Error::io(&self.lock_path, "cannot open the results lock", e))?;
        file.lock()
            .map_err(|e| Error::io(&self.lock_path, "cannot lock", e))?;
        Ok(LockGuard(file))
    }

    /// Every record of the file, after cutting off a torn last line. Lines that
    /// are not results of this format are an error naming the line.
    pub fn load(&self) -> Result<Vec<ResultRecord>> {
        let _lock = self.lock()?;
        let mut text = String::new();
        match File::open(&self.path) {
            Ok(mut f) => {
                f.read_to_string(&mut text)
                    .map_err(|e| Error::io(&self.path, "cannot read", e))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(&self.path, "cannot open", e)),
        }
        if !text.is_empty() && !text.ends_with('\n') {
            let keep = text.rfind('\n').map_or(0, |i| i + 1);
            text.truncate(keep);
            write_atomic(&self.path, text.as_bytes())?;
        }
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| self.parse_line(i + 1, l))
            .collect()
    }

    fn parse_line(&self, line: usize, text: &str) -> Result<ResultRecord> {
        let bad =
            |why: &str| Error::invalid("results", format!("{}:{line}: {why}", self.path.display()));
        let value: Value = serde_json::from_str(text).map_err(|_| bad("not a JSON line"))?;
        let id = value["id"]
            .as_str()
            .ok_or_else(|| bad("no string `id`"))?
            .to_string();
        let index = value["index"]
            .as_u64()
            .ok_or_else(|| bad("no whole-number `index`"))?;
        let failed = value["status"].as_str() == Some("failed");
        Ok(ResultRecord {
            line,
            id,
            index,
            file: value["file"].as_str().map(str::to_string),
            failed,
            error: value["error"].as_str().map(str::to_string),
            fingerprint: value["job_fingerprint"].as_str().map(str::to_string),
        })
    }

    /// Appends one line (no newline inside) and syncs it to disk.
    pub fn append(&self, line: &str) -> Result<()> {
        let _lock = self.lock()?;
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(|e| Error::io(&self.path, "cannot open", e))?;
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        file.write_all(&bytes)
            .and_then(|()| file.sync_data())
            .map_err(|e| Error::io(&self.path, "cannot append to", e))
    }

    /// Rewrites the file keeping only the lines whose record `keep` accepts
    /// (atomically, under the lock).
    pub fn retain(&self, keep: &dyn Fn(&ResultRecord) -> bool) -> Result<usize> {
        let _lock = self.lock()?;
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
            Err(e) => return Err(Error::io(&self.path, "cannot read", e)),
        };
        let mut out = String::with_capacity(text.len());
        let mut dropped = 0;
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record = self.parse_line(i + 1, line)?;
            if keep(&record) {
                out.push_str(line);
                out.push('\n');
            } else {
                dropped += 1;
            }
        }
        if dropped > 0 {
            write_atomic(&self.path, out.as_bytes())?;
        }
        Ok(dropped)
    }

    /// Whether the image a record names is on disk.
    pub fn image_exists(&self, record: &ResultRecord) -> bool {
        record
            .file
            .as_ref()
            .is_some_and(|f| self.dir.join(f).is_file())
    }
}

//! The jobs file: one request per line (JSON, as a `serve` body or the library's
//! [`Request`]), with a required unique `id` naming the job in paths and results.
//! Every line is read and validated against its model before anything is
//! written; a problem is reported with its line number and field.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::pipeline::{Engine, EngineOptions, Plan, Request};

use super::BatchError;

/// Longest line a jobs file may hold.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Most jobs (lines) in one file.
pub const MAX_JOBS: usize = 100_000;
/// Longest job id.
pub const MAX_ID_CHARS: usize = 128;

/// One validated line.
pub struct Job {
    /// 1-based line number in the jobs file.
    pub line: usize,
    pub id: String,
    pub plan: Arc<Plan>,
    /// Which engine (model) runs it.
    pub engine: usize,
    /// A fingerprint of everything that decides the job's images: its request,
    /// the model folder and the element type.
    pub fingerprint: String,
}

/// The lines of a jobs file that hold something, with their numbers.
fn read_lines(path: &Path) -> Result<Vec<(usize, String)>, BatchError> {
    let file = std::fs::File::open(path).map_err(|e| BatchError::Input {
        line: None,
        field: None,
        message: format!("cannot open {}: {e}", path.display()),
    })?;
    let mut reader = BufReader::new(file);
    let mut lines = Vec::new();
    let mut number = 0;
    loop {
        number += 1;
        let mut buf = Vec::new();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(|e| BatchError::Input {
                line: Some(number),
                field: None,
                message: format!("cannot read {}: {e}", path.display()),
            })?;
        if read == 0 {
            break;
        }
        if buf.len() > MAX_LINE_BYTES && !buf.ends_with(b"\n") {
            return Err(BatchError::Input {
                line: Some(number),
                field: None,
                message: format!("longer than {MAX_LINE_BYTES} bytes"),
            });
        }
        let text = String::from_utf8(buf).map_err(|_| BatchError::Input {
            line: Some(number),
            field: None,
            message: "not UTF-8 text".into(),
        })?;
        if text.trim().is_empty() {
            continue;
        }
        if lines.len() == MAX_JOBS {
            return Err(BatchError::Input {
                line: Some(number),
                field: None,
                message: format!("a jobs file holds at most {MAX_JOBS} jobs; split it"),
            });
        }
        lines.push((number, text));
    }
    Ok(lines)
}

/// A job id is a path component of its own: letters, digits, `.`, `_`, `-`.
fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().count() > MAX_ID_CHARS {
        return Err(format!(
            "must be 1 to {MAX_ID_CHARS} characters, found {:?}",
            id
        ));
    }
    if id == "." || id == ".." || id.starts_with('.') {
        return Err(format!("{id:?} may not start with a dot"));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{id:?} holds {c:?}; ids may hold letters, digits, '.', '_' and '-' (they name folders)"
        ));
    }
    Ok(())
}

/// FNV-1a 64 of `text`, as 16 hex digits.
fn fingerprint(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Reads and validates every job of `path`, opening one engine per model the jobs
/// name (`base`'s model for jobs that name none). `max_slots` is the runner's
/// capacity: a job whose images need more slots (particles) is refused.
pub fn load_jobs(
    path: &Path,
    base: &EngineOptions,
    max_slots: usize,
) -> Result<(Vec<Engine>, Vec<Job>), BatchError> {
    let lines = read_lines(path)?;
    if lines.is_empty() {
        return Err(BatchError::Input {
            line: None,
            field: None,
            message: format!("{} holds no jobs", path.display()),
        });
    }
    let mut engines: Vec<Engine> = Vec::new();
    let mut models: Vec<PathBuf> = Vec::new();
    let mut jobs: Vec<Job> = Vec::new();
    let mut ids = std::collections::HashMap::new();
    for (line, text) in lines {
        let at = |field: &str, message: String| BatchError::Input {
            line: Some(line),
            field: Some(field.to_string()),
            message,
        };
        let request = Request::from_json_str(&text).map_err(|e| BatchError::from_field(line, e))?;
        let id = request
            .id
            .clone()
            .ok_or_else(|| at("id", "missing: every job needs a unique \"id\"".into()))?;
        check_id(&id).map_err(|m| at("id", m))?;
        if let Some(first) = ids.insert(id.clone(), line) {
            return Err(at(
                "id",
                format!("{id:?} is already the id of line {first}"),
            ));
        }
        let model = request
            .model
            .as_ref()
            .map_or_else(|| base.model.clone(), PathBuf::from);
        let engine = match models.iter().position(|m| *m == model) {
            Some(i) => i,
            None => {
                let options = EngineOptions {
                    model: model.clone(),
                    ..base.clone()
                };
                let engine = Engine::open(options).map_err(|e| match request.model {
                    Some(_) => at("model", e.to_string()),
                    None => BatchError::from_option(e),
                })?;
                engines.push(engine);
                models.push(model.clone());
                engines.len() - 1
            }
        };
        // The engine serves this request's model, given or not.
        let mut resolved = request.clone();
        resolved.model = None;
        let plan = engines[engine]
            .prepare(&resolved)
            .map_err(|e| BatchError::from_field(line, e))?;
        if plan.particles() > max_slots {
            return Err(at(
                "particles",
                format!(
                    "an image with {} particles needs {} slots of a model call; --batch is {max_slots}",
                    plan.particles(),
                    plan.particles()
                ),
            ));
        }
        let mut canonical = request.to_json();
        if let Some(fields) = canonical.as_object_mut() {
            fields.insert("model".into(), model.display().to_string().into());
            fields.insert("dtype".into(), base.dtype.to_string().into());
        }
        jobs.push(Job {
            line,
            id,
            plan,
            engine,
            fingerprint: fingerprint(&canonical.to_string()),
        });
    }
    Ok((engines, jobs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_folders_safely() {
        for good in ["a", "job-7", "Cats_v2.1"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "ü",
            &"x".repeat(129),
        ] {
            assert!(check_id(bad).is_err(), "{bad:?}");
        }
    }
}

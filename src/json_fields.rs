//! Typed reads from a diffusers `config.json` object, with errors that name the
//! file, the field, the value found and what was expected.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub struct Fields {
    path: PathBuf,
    map: Map<String, Value>,
}

impl Fields {
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::config(path, "(file)", format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(map) => Ok(Fields {
                path: path.to_path_buf(),
                map,
            }),
            other => Err(Error::config(
                path,
                "(file)",
                format!("expected a JSON object, found {other}"),
            )),
        }
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).map_err(|e| Error::io(path, "cannot read config", e))?;
        Self::parse(path, &text)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `key` is present at all (even as `null`).
    pub fn has_key(&self, key: &str) -> bool {
        self.map.contains_key(key)
    }

    /// The value of `key`, treating JSON `null` as absent.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> Error {
        Error::config(&self.path, key, message)
    }

    fn as_usize(&self, key: &str, v: &Value) -> Result<usize> {
        v.as_u64()
            .map(|n| n as usize)
            .ok_or_else(|| self.error(key, format!("expected a non-negative integer, found {v}")))
    }

    pub fn usize(&self, key: &str, default: usize) -> Result<usize> {
        self.get(key).map_or(Ok(default), |v| self.as_usize(key, v))
    }

    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        self.get(key).map(|v| self.as_usize(key, v)).transpose()
    }

    pub fn f64(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.error(key, format!("expected a number, found {v}"))),
        }
    }

    pub fn bool(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.error(key, format!("expected true or false, found {v}"))),
        }
    }

    pub fn opt_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.error(key, format!("expected a string, found {v}"))),
        }
    }

    /// A string field that must be one of `accepted` (the first is the default).
    pub fn choice(&self, key: &str, accepted: &[&str]) -> Result<String> {
        let value = self.opt_str(key)?.unwrap_or(accepted[0]);
        if accepted.contains(&value) {
            Ok(value.to_string())
        } else {
            Err(self.error(
                key,
                format!(
                    "value {value:?} is not supported (supported: {})",
                    accepted.join(", ")
                ),
            ))
        }
    }

    /// A list of strings (JSON array).
    pub fn str_list(&self, key: &str, default: &[&str]) -> Result<Vec<String>> {
        match self.get(key) {
            None => Ok(default.iter().map(|s| s.to_string()).collect()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        self.error(
                            key,
                            format!("expected a list of strings, found element {v}"),
                        )
                    })
                })
                .collect(),
            Some(v) => Err(self.error(key, format!("expected a list of strings, found {v}"))),
        }
    }

    /// A list of non-negative integers.
    pub fn usize_list(&self, key: &str, default: &[usize]) -> Result<Vec<usize>> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(Value::Array(items)) => items.iter().map(|v| self.as_usize(key, v)).collect(),
            Some(v) => Err(self.error(key, format!("expected a list of integers, found {v}"))),
        }
    }

    /// An integer or a list of `n` integers (diffusers accepts both for many
    /// per-block fields); `None` when the field is absent.
    pub fn per_block(&self, key: &str, n: usize) -> Result<Option<Vec<usize>>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => {
                if items.len() != n {
                    return Err(self.error(
                        key,
                        format!("has {} entries, expected one per block ({n})", items.len()),
                    ));
                }
                items
                    .iter()
                    .map(|v| self.as_usize(key, v))
                    .collect::<Result<Vec<_>>>()
                    .map(Some)
            }
            Some(v) => Ok(Some(vec![self.as_usize(key, v)?; n])),
        }
    }

    /// Fails unless `key` is absent, null, or equal to `default`: for diffusers
    /// options this engine does not implement.
    pub fn require_default(&self, key: &str, default: Value) -> Result<()> {
        match self.get(key) {
            None => Ok(()),
            Some(v) if *v == default => Ok(()),
            Some(v) if default.is_number() && v.as_f64() == default.as_f64() => Ok(()),
            Some(v) => Err(self.error(
                key,
                format!(
                    "value {v} is not supported (only {} is implemented)",
                    if default.is_null() {
                        "null".to_string()
                    } else {
                        default.to_string()
                    }
                ),
            )),
        }
    }
}

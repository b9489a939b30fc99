//! A diffusers `scheduler_config.json`, kept as the raw JSON object it is and read
//! field by field the way each diffusers scheduler class reads it.
//!
//! diffusers lets any scheduler class be built from any other class's config
//! (`DDIMScheduler.from_config(euler_config)`): the class takes the fields its
//! constructor knows, uses its own defaults for the ones that are missing and
//! ignores the rest. The readers here do the same: a scheduler asks for a field
//! together with its class's default. Two more diffusers rules are honoured:
//! fields listed in `_use_default_values` count as missing (diffusers wrote them
//! only because the saving class used its default), and the bare tokens `NaN`,
//! `Infinity` and `-Infinity` that Python's `json` module writes (for example
//! `"lambda_min_clipped": -Infinity`) are accepted as numbers.
//!
//! A field that is present with the wrong JSON type, or with a value the engine
//! does not implement, is an error naming the file, the field, the value found and
//! what is accepted.

use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::SchedulerKind;
use crate::error::{Error, Result};

/// Strings that stand for the non-standard JSON number tokens after parsing. They
/// start with a NUL character, which no real config string contains.
const NAN_TOKEN: &str = "\u{0}NaN";
const POS_INF_TOKEN: &str = "\u{0}Infinity";
const NEG_INF_TOKEN: &str = "\u{0}-Infinity";

/// A diffusers scheduler config: the JSON object plus the file it came from (used in
/// every error message).
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    origin: PathBuf,
    fields: Map<String, Value>,
}

impl SchedulerConfig {
    /// Reads a diffusers `scheduler_config.json`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, "cannot read the scheduler config", e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses the text of a scheduler config; `origin` names it in error messages.
    pub fn from_json_str(text: &str, origin: impl Into<PathBuf>) -> Result<Self> {
        let origin = origin.into();
        let value: Value = serde_json::from_str(&replace_non_finite_tokens(text))
            .map_err(|e| Error::config(&origin, "<document>", format!("not valid JSON: {e}")))?;
        match value {
            Value::Object(fields) => Ok(SchedulerConfig { origin, fields }),
            other => Err(Error::config(
                &origin,
                "<document>",
                format!("expected a JSON object, found {}", json_kind(&other)),
            )),
        }
    }

    /// No fields at all: every scheduler uses its diffusers defaults.
    pub fn empty() -> Self {
        SchedulerConfig {
            origin: PathBuf::from("<diffusers defaults>"),
            fields: Map::new(),
        }
    }

    /// Where this config came from, as shown in error messages.
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    /// Sets (or replaces) one field, as `from_config(config, field=value)` would.
    pub fn set(&mut self, field: &str, value: Value) {
        self.fields.insert(field.to_string(), value);
    }

    /// The config's `_class_name`, if it is a string.
    pub fn class_name(&self) -> Option<&str> {
        self.fields.get("_class_name").and_then(Value::as_str)
    }

    /// The scheduler kind named by `_class_name`, if the engine implements it.
    pub fn class_kind(&self) -> Option<SchedulerKind> {
        self.class_name().and_then(SchedulerKind::from_class_name)
    }

    /// The value of `field`, or `None` when it is absent, `null`, or listed in
    /// `_use_default_values` (diffusers then uses the class default).
    fn get(&self, field: &str) -> Option<&Value> {
        if let Some(Value::Array(defaults)) = self.fields.get("_use_default_values") {
            if defaults.iter().any(|d| d.as_str() == Some(field)) {
                return None;
            }
        }
        match self.fields.get(field) {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        }
    }

    /// An error about `field` of this config.
    pub(crate) fn error(&self, field: &str, message: impl Into<String>) -> Error {
        Error::config(&self.origin, field, message)
    }

    fn type_error(&self, field: &str, expected: &str, found: &Value) -> Error {
        self.error(field, format!("expected {expected}, found {}", show(found)))
    }

    /// A boolean field.
    pub(crate) fn bool(&self, field: &str, default: bool) -> Result<bool> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => Err(self.type_error(field, "true or false", v)),
        }
    }

    /// A number field (integers are accepted too); `null` means "not set".
    pub(crate) fn opt_f64(&self, field: &str) -> Result<Option<f64>> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match number(v) {
                Some(x) => Ok(Some(x)),
                None => Err(self.type_error(field, "a number", v)),
            },
        }
    }

    /// A number field with a default.
    pub(crate) fn f64(&self, field: &str, default: f64) -> Result<f64> {
        Ok(self.opt_f64(field)?.unwrap_or(default))
    }

    /// A non-negative integer field.
    pub(crate) fn usize(&self, field: &str, default: usize) -> Result<usize> {
        match self.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_u64()
                .and_then(|x| usize::try_from(x).ok())
                .ok_or_else(|| self.type_error(field, "a non-negative integer", v)),
        }
    }

    /// A string field.
    pub(crate) fn str<'a>(&'a self, field: &str, default: &'a str) -> Result<&'a str> {
        match self.get(field) {
            None => Ok(default),
            Some(Value::String(s)) if !s.starts_with('\u{0}') => Ok(s),
            Some(v) => Err(self.type_error(field, "a string", v)),
        }
    }

    /// A string field that must be one of `choices` (name, value).
    pub(crate) fn choice<T: Copy>(
        &self,
        field: &str,
        default: T,
        choices: &[(&str, T)],
    ) -> Result<T> {
        let Some(found) = self.get(field) else {
            return Ok(default);
        };
        if let Value::String(s) = found {
            if let Some((_, v)) = choices.iter().find(|(name, _)| name == s) {
                return Ok(*v);
            }
        }
        Err(self.error(
            field,
            format!(
                "found {}; accepted: {}",
                show(found),
                accepted(choices.iter().map(|(n, _)| *n))
            ),
        ))
    }

    /// A boolean field whose only implemented value is `implemented`.
    pub(crate) fn require_bool(
        &self,
        field: &str,
        default: bool,
        implemented: bool,
        why: &str,
    ) -> Result<()> {
        let value = self.bool(field, default)?;
        if value != implemented {
            return Err(self.error(
                field,
                format!("found {value}; accepted: {implemented} ({why})"),
            ));
        }
        Ok(())
    }

    /// An optional array of numbers (`trained_betas`).
    pub(crate) fn opt_f64_array(&self, field: &str) -> Result<Option<Vec<f64>>> {
        let Some(v) = self.get(field) else {
            return Ok(None);
        };
        let Value::Array(items) = v else {
            return Err(self.type_error(field, "an array of numbers", v));
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                number(item).ok_or_else(|| {
                    self.error(
                        field,
                        format!("element {i}: expected a number, found {}", show(item)),
                    )
                })
            })
            .collect::<Result<Vec<f64>>>()
            .map(Some)
    }

    /// Checks that `field` has the right JSON kind without using its value (fields
    /// that only matter together with an option the engine refuses anyway).
    pub(crate) fn check_number(&self, field: &str) -> Result<()> {
        self.opt_f64(field).map(|_| ())
    }

    /// See [`SchedulerConfig::check_number`].
    pub(crate) fn check_string(&self, field: &str) -> Result<()> {
        self.str(field, "").map(|_| ())
    }
}

/// "`a`, `b` or `c`" for error messages.
pub(crate) fn accepted<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
    match names.len() {
        0 => String::new(),
        1 => names[0].clone(),
        n => format!("{} or {}", names[..n - 1].join(", "), names[n - 1]),
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => match s.as_str() {
            NAN_TOKEN => Some(f64::NAN),
            POS_INF_TOKEN => Some(f64::INFINITY),
            NEG_INF_TOKEN => Some(f64::NEG_INFINITY),
            _ => None,
        },
        _ => None,
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A JSON value as the user wrote it, shortened for error messages.
fn show(v: &Value) -> String {
    let text = match v {
        Value::String(s) if s == NAN_TOKEN => "NaN".to_string(),
        Value::String(s) if s == POS_INF_TOKEN => "Infinity".to_string(),
        Value::String(s) if s == NEG_INF_TOKEN => "-Infinity".to_string(),
        other => other.to_string(),
    };
    if text.chars().count() > 60 {
        let head: String = text.chars().take(57).collect();
        format!("{head}... ({})", json_kind(v))
    } else {
        text
    }
}

/// Rewrites the bare tokens `NaN`, `Infinity` and `-Infinity` (outside strings) into
/// marker strings that [`number`] understands, so that serde_json can parse what
/// Python's `json.dumps` writes.
fn replace_non_finite_tokens(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.contains("NaN") && !text.contains("Infinity") {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
            rest = &rest[c.len_utf8()..];
            continue;
        }
        let replaced = [
            ("-Infinity", NEG_INF_TOKEN),
            ("Infinity", POS_INF_TOKEN),
            ("NaN", NAN_TOKEN),
        ]
        .iter()
        .find(|(token, _)| rest.starts_with(token));
        if let Some((token, marker)) = replaced {
            out.push('"');
            out.push_str(&marker.replace('\u{0}', "\\u0000"));
            out.push('"');
            rest = &rest[token.len()..];
            continue;
        }
        if c == '"' {
            in_string = true;
        }
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> SchedulerConfig {
        SchedulerConfig::from_json_str(text, "test.json").unwrap()
    }

    #[test]
    fn reads_python_non_finite_numbers() {
        let c = cfg(
            r#"{"lambda_min_clipped": -Infinity, "a": NaN, "b": Infinity, "s": "NaN -Infinity"}"#,
        );
        assert_eq!(c.f64("lambda_min_clipped", 0.0).unwrap(), f64::NEG_INFINITY);
        assert!(c.f64("a", 0.0).unwrap().is_nan());
        assert_eq!(c.f64("b", 0.0).unwrap(), f64::INFINITY);
        assert_eq!(c.str("s", "").unwrap(), "NaN -Infinity");
    }

    #[test]
    fn use_default_values_means_absent() {
        let c =
            cfg(r#"{"timestep_spacing": "linspace", "_use_default_values": ["timestep_spacing"]}"#);
        assert_eq!(c.str("timestep_spacing", "leading").unwrap(), "leading");
    }

    #[test]
    fn null_means_default() {
        let c = cfg(r#"{"trained_betas": null, "sigma_min": null}"#);
        assert!(c.opt_f64_array("trained_betas").unwrap().is_none());
        assert!(c.opt_f64("sigma_min").unwrap().is_none());
    }

    #[test]
    fn wrong_types_name_field_and_value() {
        let c = cfg(r#"{"clip_sample": "yes", "steps_offset": 1.5, "beta_end": "0.02"}"#);
        let e = c.bool("clip_sample", true).unwrap_err().to_string();
        assert!(
            e.contains("test.json") && e.contains("clip_sample") && e.contains("\"yes\""),
            "{e}"
        );
        let e = c.usize("steps_offset", 0).unwrap_err().to_string();
        assert!(e.contains("steps_offset") && e.contains("1.5"), "{e}");
        let e = c.f64("beta_end", 0.02).unwrap_err().to_string();
        assert!(e.contains("beta_end") && e.contains("\"0.02\""), "{e}");
    }

    #[test]
    fn choice_lists_accepted_values() {
        let c = cfg(r#"{"variance_type": "learned"}"#);
        let e = c
            .choice(
                "variance_type",
                0,
                &[("fixed_small", 0), ("fixed_large", 1)],
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("variance_type")
                && e.contains("\"learned\"")
                && e.contains("\"fixed_small\" or \"fixed_large\""),
            "{e}"
        );
    }

    #[test]
    fn class_kind_from_class_name() {
        let c = cfg(r#"{"_class_name": "EulerAncestralDiscreteScheduler"}"#);
        assert_eq!(c.class_kind(), Some(SchedulerKind::EulerAncestral));
        assert_eq!(
            cfg(r#"{"_class_name": "PNDMScheduler"}"#).class_kind(),
            None
        );
        assert_eq!(SchedulerConfig::empty().class_kind(), None);
    }

    #[test]
    fn not_an_object_is_an_error() {
        let e = SchedulerConfig::from_json_str("[1]", "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.json") && e.contains("object"), "{e}");
        let e = SchedulerConfig::from_json_str("{", "x.json")
            .unwrap_err()
            .to_string();
        assert!(e.contains("x.json") && e.contains("JSON"), "{e}");
    }
}

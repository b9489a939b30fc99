//! A generation request: everything `diffsteer generate` takes, in one serde type
//! that every front end shares (a `diffsteer batch` line, a `serve` body, a library
//! call). Keys are `generate`'s long flag names with `-` replaced by `_`; values are
//! what the flag takes, as JSON: numbers, strings (`"none"`, `"2:15"`, scheduler
//! names), `true` for switches and arrays for repeatable flags. Missing keys (and
//! `null`) take `generate`'s defaults; unknown keys are errors, so a typo never
//! passes silently. Every error names the key at fault
//! ([`Error::InvalidArgument`]'s `name`), so front ends map it to a flag, a line
//! or a JSON error field without reading messages.

use serde::de::{Deserializer, Error as _};
use serde::ser::Serializer;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::guidance::reward::{RewardForm, RhoSchedule};
use crate::schedule::SchedulerKind;
use crate::steer::{Potential, SteerMethod};

/// The class of a request's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassChoice {
    /// This class label for every image.
    Label(usize),
    /// The unconditional (null-class) prediction.
    Unconditional,
}

/// Steps `start..stop` (0-based, stop exclusive), written `"START:STOP"` (either
/// side may be empty: `":30"`, `"5:"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepWindow {
    pub start: usize,
    pub stop: usize,
}

/// One generation request. `Default` gives `diffsteer generate`'s defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Names the request in results (required by `diffsteer batch`).
    pub id: Option<String>,
    /// The model folder; `None` is the engine's.
    pub model: Option<String>,
    pub count: u64,
    /// Image `i` uses seed `seed + i`.
    pub seed: u64,
    /// `None`: image `i` gets class `i mod K` on a class model, nothing otherwise.
    pub class: Option<ClassChoice>,
    /// The prompt of a text-to-image pipeline (`None`: the empty prompt).
    pub prompt: Option<String>,
    /// The prompt CFG steers away from (`None`: the empty prompt, as diffusers).
    pub negative_prompt: Option<String>,
    /// Image size in pixels (text pipelines; `None`: the U-Net's sample size times
    /// the VAE's factor).
    pub width: Option<usize>,
    pub height: Option<usize>,
    /// Which text-encoder layer conditions the U-Net, counted as other front ends
    /// do: 1 the last (the default), 2 the penultimate, …
    pub clip_skip: Option<usize>,
    /// img2img: an 8-bit PNG to start from, and how much of the schedule reshapes it
    /// (0: none, 1: all of it).
    pub init_image: Option<String>,
    pub strength: Option<f64>,
    pub steps: usize,
    /// `None`: the class named in the model's scheduler config, else DDIM.
    pub scheduler: Option<SchedulerKind>,
    pub karras: bool,
    /// `None`: 0, or 1 with Feynman-Kac steering on DDIM.
    pub eta: Option<f64>,
    pub cfg: f32,
    pub cfg_rescale: f32,
    pub cfg_interval: Option<StepWindow>,
    /// `cfg` (the default), `apg` or `cfg-zero-star`.
    pub guidance: GuidanceKind,
    /// APG's η, norm threshold and momentum (diffusers' defaults: 1, 15, none).
    pub apg_eta: Option<f32>,
    pub apg_norm_threshold: Option<f32>,
    pub apg_momentum: Option<f32>,
    /// CFG-Zero*'s zero-initialised steps (default 1).
    pub zero_init_steps: Option<usize>,
    pub reward: Vec<String>,
    pub reward_scale: Option<f32>,
    pub reward_form: Option<RewardForm>,
    pub reward_schedule: Option<RhoSchedule>,
    pub reward_window: Option<StepWindow>,
    pub reward_iters: Option<usize>,
    pub reward_raw: bool,
    pub recur: Option<usize>,
    pub particles: usize,
    pub steer: Option<SteerMethod>,
    pub fk_potential: Option<Potential>,
    pub fk_lambda: Option<f64>,
    pub fk_every: Option<usize>,
    pub fk_window: Option<StepWindow>,
    pub fk_adaptive: bool,
}

impl Default for Request {
    fn default() -> Self {
        Request {
            id: None,
            model: None,
            count: 16,
            seed: 0,
            class: None,
            prompt: None,
            negative_prompt: None,
            width: None,
            height: None,
            clip_skip: None,
            init_image: None,
            strength: None,
            steps: 50,
            scheduler: None,
            karras: false,
            eta: None,
            cfg: 3.0,
            cfg_rescale: 0.0,
            cfg_interval: None,
            guidance: GuidanceKind::Cfg,
            apg_eta: None,
            apg_norm_threshold: None,
            apg_momentum: None,
            zero_init_steps: None,
            reward: Vec::new(),
            reward_scale: None,
            reward_form: None,
            reward_schedule: None,
            reward_window: None,
            reward_iters: None,
            reward_raw: false,
            recur: None,
            particles: 1,
            steer: None,
            fk_potential: None,
            fk_lambda: None,
            fk_every: None,
            fk_window: None,
            fk_adaptive: false,
        }
    }
}

/// The guidance method of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GuidanceKind {
    #[default]
    Cfg,
    Apg,
    CfgZeroStar,
}

/// Every key a request may hold, in the order they are written.
pub const REQUEST_KEYS: [&str; 39] = [
    "id",
    "model",
    "count",
    "seed",
    "class",
    "prompt",
    "negative_prompt",
    "width",
    "height",
    "clip_skip",
    "init_image",
    "strength",
    "steps",
    "scheduler",
    "karras",
    "eta",
    "cfg",
    "cfg_rescale",
    "cfg_interval",
    "guidance",
    "apg_eta",
    "apg_norm_threshold",
    "apg_momentum",
    "zero_init_steps",
    "reward",
    "reward_scale",
    "reward_form",
    "reward_schedule",
    "reward_window",
    "reward_iters",
    "reward_raw",
    "recur",
    "particles",
    "steer",
    "fk_potential",
    "fk_lambda",
    "fk_every",
    "fk_window",
    "fk_adaptive",
];

fn bad(field: &str, message: impl Into<String>) -> Error {
    Error::invalid(field, message)
}

/// A short rendering of a JSON value for messages (long strings are cut).
fn shown(v: &Value) -> String {
    let text = v.to_string();
    if text.chars().count() > 60 {
        format!("{}…", text.chars().take(60).collect::<String>())
    } else {
        text
    }
}

fn whole(field: &str, v: &Value) -> Result<u64> {
    v.as_u64().ok_or_else(|| {
        bad(
            field,
            format!("expected a whole number ≥ 0, found {}", shown(v)),
        )
    })
}

fn positive(field: &str, v: &Value) -> Result<usize> {
    let n = whole(field, v)?;
    if n == 0 {
        return Err(bad(field, "must be at least 1, found 0"));
    }
    usize::try_from(n).map_err(|_| bad(field, format!("{n} is too large")))
}

fn number(field: &str, v: &Value) -> Result<f64> {
    match v.as_f64() {
        Some(x) if x.is_finite() => Ok(x),
        _ => Err(bad(
            field,
            format!("expected a finite number, found {}", shown(v)),
        )),
    }
}

fn number_f32(field: &str, v: &Value) -> Result<f32> {
    let x = number(field, v)?;
    let narrowed = x as f32;
    if !narrowed.is_finite() {
        return Err(bad(field, format!("{x} is out of range")));
    }
    Ok(narrowed)
}

fn non_negative(field: &str, v: &Value) -> Result<f64> {
    let x = number(field, v)?;
    if x < 0.0 {
        return Err(bad(field, format!("expected a number ≥ 0, found {x}")));
    }
    Ok(x)
}

fn switch(field: &str, v: &Value) -> Result<bool> {
    v.as_bool()
        .ok_or_else(|| bad(field, format!("expected true or false, found {}", shown(v))))
}

fn text<'v>(field: &str, v: &'v Value) -> Result<&'v str> {
    v.as_str()
        .ok_or_else(|| bad(field, format!("expected a string, found {}", shown(v))))
}

fn choice<T: Copy>(field: &str, v: &Value, options: &[(&str, T)]) -> Result<T> {
    let names: Vec<&str> = options.iter().map(|(n, _)| *n).collect();
    let found = v.as_str().ok_or_else(|| {
        bad(
            field,
            format!("expected one of {}, found {}", names.join(", "), shown(v)),
        )
    })?;
    options
        .iter()
        .find(|(n, _)| *n == found)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            bad(
                field,
                format!("invalid value {found:?} (accepted: {})", names.join(", ")),
            )
        })
}

impl StepWindow {
    /// `"START:STOP"`, either side may be empty (0 and the last step).
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        let (a, b) = s.split_once(':').ok_or_else(|| {
            bad(
                field,
                format!("{s:?}: expected START:STOP (steps, stop exclusive), e.g. 0:30"),
            )
        })?;
        let side = |part: &str, empty: usize, which: &str| -> Result<usize> {
            let part = part.trim();
            if part.is_empty() {
                return Ok(empty);
            }
            part.parse::<usize>()
                .map_err(|_| bad(field, format!("{s:?}: bad {which} {part:?}")))
        };
        let window = StepWindow {
            start: side(a, 0, "start")?,
            stop: side(b, usize::MAX, "stop")?,
        };
        if window.start > window.stop {
            return Err(bad(
                field,
                format!(
                    "{s:?}: start {} is after stop {}",
                    window.start, window.stop
                ),
            ));
        }
        Ok(window)
    }

    fn from_json(field: &str, v: &Value) -> Result<Self> {
        match v {
            Value::String(s) => Self::parse(field, s),
            Value::Array(pair) if pair.len() == 2 => Self::parse(
                field,
                &format!("{}:{}", whole(field, &pair[0])?, whole(field, &pair[1])?),
            ),
            other => Err(bad(
                field,
                format!("expected \"START:STOP\", found {}", shown(other)),
            )),
        }
    }
}

impl std::fmt::Display for StepWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.stop == usize::MAX {
            write!(f, "{}:", self.start)
        } else {
            write!(f, "{}:{}", self.start, self.stop)
        }
    }
}

impl ClassChoice {
    /// A class number or `none` (any case).
    pub fn parse(field: &str, s: &str) -> Result<Self> {
        if s.trim().eq_ignore_ascii_case("none") {
            return Ok(ClassChoice::Unconditional);
        }
        s.trim()
            .parse::<usize>()
            .map(ClassChoice::Label)
            .map_err(|_| {
                bad(
                    field,
                    format!("expected a class number (0, 1, ...) or \"none\", found {s:?}"),
                )
            })
    }

    fn from_json(field: &str, v: &Value) -> Result<Self> {
        match v {
            Value::String(s) => Self::parse(field, s),
            Value::Number(_) => Ok(ClassChoice::Label(positive_or_zero(field, v)?)),
            other => Err(bad(
                field,
                format!(
                    "expected a class number or \"none\", found {}",
                    shown(other)
                ),
            )),
        }
    }
}

fn positive_or_zero(field: &str, v: &Value) -> Result<usize> {
    let n = whole(field, v)?;
    usize::try_from(n).map_err(|_| bad(field, format!("{n} is too large")))
}

/// Names and values of the enumerated settings, shared by parsing and writing.
const SCHEDULERS: [(&str, SchedulerKind); 5] = [
    ("ddim", SchedulerKind::Ddim),
    ("ddpm", SchedulerKind::Ddpm),
    ("euler", SchedulerKind::Euler),
    ("euler-a", SchedulerKind::EulerAncestral),
    ("dpm++2m", SchedulerKind::DpmSolverMultistep),
];
const GUIDANCE_KINDS: [(&str, GuidanceKind); 3] = [
    ("cfg", GuidanceKind::Cfg),
    ("apg", GuidanceKind::Apg),
    ("cfg-zero-star", GuidanceKind::CfgZeroStar),
];
const REWARD_FORMS: [(&str, RewardForm); 2] = [("x0", RewardForm::X0), ("eps", RewardForm::Eps)];
const RHO_SCHEDULES: [(&str, RhoSchedule); 2] = [
    ("constant", RhoSchedule::Constant),
    ("noise", RhoSchedule::NoiseLevel),
];
const STEER_METHODS: [(&str, SteerMethod); 2] = [
    ("best-of-n", SteerMethod::BestOfN),
    ("fk", SteerMethod::FeynmanKac),
];
const POTENTIALS: [(&str, Potential); 3] = [
    ("diff", Potential::Difference),
    ("max", Potential::Max),
    ("sum", Potential::Sum),
];

fn name_of<T: PartialEq + Copy>(options: &[(&'static str, T)], value: T) -> &'static str {
    options
        .iter()
        .find(|(_, t)| *t == value)
        .map_or("?", |(n, _)| n)
}

/// The spelling of `form` in requests and metadata.
pub fn reward_form_name(form: RewardForm) -> &'static str {
    name_of(&REWARD_FORMS, form)
}

/// The spelling of `schedule` in requests and metadata.
pub fn rho_schedule_name(schedule: RhoSchedule) -> &'static str {
    name_of(&RHO_SCHEDULES, schedule)
}

/// The known key closest to `key`, when it is close enough to be a typo.
fn suggestion(key: &str) -> Option<&'static str> {
    // Edit distance with adjacent transpositions (optimal string alignment), so a
    // swapped pair of letters ("stesp") counts as one typo.
    fn distance(a: &str, b: &str) -> usize {
        let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
        let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
        for (i, row) in d.iter_mut().enumerate() {
            row[0] = i;
        }
        for (j, cell) in d[0].iter_mut().enumerate() {
            *cell = j;
        }
        for i in 1..=a.len() {
            for j in 1..=b.len() {
                let cost = usize::from(a[i - 1] != b[j - 1]);
                let mut best = (d[i - 1][j] + 1)
                    .min(d[i][j - 1] + 1)
                    .min(d[i - 1][j - 1] + cost);
                if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                    best = best.min(d[i - 2][j - 2] + 1);
                }
                d[i][j] = best;
            }
        }
        d[a.len()][b.len()]
    }
    let normalised = key.replace('-', "_").to_ascii_lowercase();
    REQUEST_KEYS
        .iter()
        .map(|k| (distance(&normalised, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 4))
        .min()
        .map(|(_, k)| k)
}

impl Request {
    /// Parses a request from a JSON object, naming the key at fault in every error.
    pub fn from_json(value: &Value) -> Result<Self> {
        match value {
            Value::Object(map) => Self::from_map(map),
            other => Err(bad(
                "(request)",
                format!("expected a JSON object, found {}", shown(other)),
            )),
        }
    }

    /// Parses a request from the text of one JSON object.
    pub fn from_json_str(text: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| bad("(request)", format!("not valid JSON: {e}")))?;
        Self::from_json(&value)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self> {
        let mut r = Request::default();
        for (key, v) in map {
            if v.is_null() {
                if !REQUEST_KEYS.contains(&key.as_str()) {
                    return Err(unknown_key(key));
                }
                continue;
            }
            let k = key.as_str();
            match k {
                "id" => r.id = Some(text(k, v)?.to_string()),
                "model" => r.model = Some(text(k, v)?.to_string()),
                "count" => r.count = positive(k, v)? as u64,
                "seed" => r.seed = whole(k, v)?,
                "class" => r.class = Some(ClassChoice::from_json(k, v)?),
                "steps" => r.steps = positive(k, v)?,
                "scheduler" => r.scheduler = Some(choice(k, v, &SCHEDULERS)?),
                "karras" => r.karras = switch(k, v)?,
                "eta" => r.eta = Some(non_negative(k, v)?),
                "cfg" => r.cfg = number_f32(k, v)?,
                "cfg_rescale" => {
                    let phi = number_f32(k, v)?;
                    if !(0.0..=1.0).contains(&phi) {
                        return Err(bad(k, format!("expected a number in [0, 1], found {phi}")));
                    }
                    r.cfg_rescale = phi;
                }
                "cfg_interval" => r.cfg_interval = Some(StepWindow::from_json(k, v)?),
                "guidance" => r.guidance = choice(k, v, &GUIDANCE_KINDS)?,
                "apg_eta" => r.apg_eta = Some(number_f32(k, v)?),
                "apg_norm_threshold" => r.apg_norm_threshold = Some(non_negative(k, v)? as f32),
                "apg_momentum" => r.apg_momentum = Some(number_f32(k, v)?),
                "zero_init_steps" => r.zero_init_steps = Some(positive_or_zero(k, v)?),
                "reward" => {
                    r.reward = match v {
                        Value::String(s) => vec![s.clone()],
                        Value::Array(items) => items
                            .iter()
                            .map(|item| text(k, item).map(str::to_string))
                            .collect::<Result<_>>()?,
                        other => {
                            return Err(bad(
                                k,
                                format!(
                                    "expected a reward spec or an array of them, found {}",
                                    shown(other)
                                ),
                            ))
                        }
                    }
                }
                "reward_scale" => r.reward_scale = Some(non_negative(k, v)? as f32),
                "reward_form" => r.reward_form = Some(choice(k, v, &REWARD_FORMS)?),
                "reward_schedule" => r.reward_schedule = Some(choice(k, v, &RHO_SCHEDULES)?),
                "reward_window" => r.reward_window = Some(StepWindow::from_json(k, v)?),
                "reward_iters" => r.reward_iters = Some(positive(k, v)?),
                "reward_raw" => r.reward_raw = switch(k, v)?,
                "recur" => r.recur = Some(positive(k, v)?),
                "particles" => r.particles = positive(k, v)?,
                "steer" => r.steer = Some(choice(k, v, &STEER_METHODS)?),
                "fk_potential" => r.fk_potential = Some(choice(k, v, &POTENTIALS)?),
                "fk_lambda" => r.fk_lambda = Some(non_negative(k, v)?),
                "fk_every" => r.fk_every = Some(positive(k, v)?),
                "fk_window" => r.fk_window = Some(StepWindow::from_json(k, v)?),
                "fk_adaptive" => r.fk_adaptive = switch(k, v)?,
                "prompt" => r.prompt = Some(text(k, v)?.to_string()),
                "negative_prompt" => r.negative_prompt = Some(text(k, v)?.to_string()),
                "width" => r.width = Some(positive(k, v)?),
                "height" => r.height = Some(positive(k, v)?),
                "clip_skip" => r.clip_skip = Some(positive(k, v)?),
                "init_image" => r.init_image = Some(text(k, v)?.to_string()),
                "strength" => {
                    let strength = number(k, v)?;
                    if !(0.0..=1.0).contains(&strength) {
                        return Err(bad(
                            k,
                            format!("expected a number in [0, 1], found {strength}"),
                        ));
                    }
                    r.strength = Some(strength);
                }
                _ => return Err(unknown_key(key)),
            }
        }
        Ok(r)
    }

    /// The request as a JSON object, every setting written (defaults included),
    /// in the spelling [`Request::from_json`] reads.
    pub fn to_json(&self) -> Value {
        let window = |w: &Option<StepWindow>| w.map(|w| w.to_string());
        json!({
            "id": self.id,
            "model": self.model,
            "count": self.count,
            "seed": self.seed,
            "class": self.class.map(|c| match c {
                ClassChoice::Label(n) => json!(n),
                ClassChoice::Unconditional => json!("none"),
            }),
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "width": self.width,
            "height": self.height,
            "clip_skip": self.clip_skip,
            "init_image": self.init_image,
            "strength": self.strength,
            "steps": self.steps,
            "scheduler": self.scheduler.map(|s| name_of(&SCHEDULERS, s)),
            "karras": self.karras,
            "eta": self.eta,
            "cfg": self.cfg,
            "cfg_rescale": self.cfg_rescale,
            "cfg_interval": window(&self.cfg_interval),
            "guidance": name_of(&GUIDANCE_KINDS, self.guidance),
            "apg_eta": self.apg_eta,
            "apg_norm_threshold": self.apg_norm_threshold,
            "apg_momentum": self.apg_momentum,
            "zero_init_steps": self.zero_init_steps,
            "reward": self.reward,
            "reward_scale": self.reward_scale,
            "reward_form": self.reward_form.map(reward_form_name),
            "reward_schedule": self.reward_schedule.map(rho_schedule_name),
            "reward_window": window(&self.reward_window),
            "reward_iters": self.reward_iters,
            "reward_raw": self.reward_raw,
            "recur": self.recur,
            "particles": self.particles,
            "steer": self.steer.map(|s| name_of(&STEER_METHODS, s)),
            "fk_potential": self.fk_potential.map(|p| name_of(&POTENTIALS, p)),
            "fk_lambda": self.fk_lambda,
            "fk_every": self.fk_every,
            "fk_window": window(&self.fk_window),
            "fk_adaptive": self.fk_adaptive,
        })
    }
}

fn unknown_key(key: &str) -> Error {
    let hint = suggestion(key)
        .map(|k| format!(" (did you mean {k:?}?)"))
        .unwrap_or_default();
    bad(
        key,
        format!(
            "unknown key{hint}; accepted keys: {}",
            REQUEST_KEYS.join(", ")
        ),
    )
}

impl Serialize for Request {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Request {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        Request::from_json(&value).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(e: Error) -> String {
        match e {
            Error::InvalidArgument { name, .. } => name,
            other => panic!("expected an argument error, got {other}"),
        }
    }

    #[test]
    fn defaults_are_generates() {
        let r = Request::from_json_str("{}").expect("empty request");
        assert_eq!(r, Request::default());
        assert_eq!((r.count, r.steps, r.cfg, r.particles), (16, 50, 3.0, 1));
    }

    #[test]
    fn values_are_what_the_flags_take() {
        let r = Request::from_json_str(
            r#"{"id": "a", "class": "none", "cfg_interval": "2:15", "karras": true,
                "reward": ["classifier:3", "ink:0.2@0.5"], "scheduler": "dpm++2m",
                "steer": "fk", "fk_window": ":30", "seed": 18446744073709551615}"#,
        )
        .expect("request");
        assert_eq!(r.class, Some(ClassChoice::Unconditional));
        assert_eq!(r.cfg_interval, Some(StepWindow { start: 2, stop: 15 }));
        assert_eq!(r.fk_window, Some(StepWindow { start: 0, stop: 30 }));
        assert_eq!(r.scheduler, Some(SchedulerKind::DpmSolverMultistep));
        assert_eq!(r.reward.len(), 2);
        assert_eq!(r.seed, u64::MAX);
        // A single spec may be a plain string; a class may be a number or its text.
        let r = Request::from_json_str(r#"{"reward": "ink:0.3", "class": "7"}"#).expect("ok");
        assert_eq!(r.reward, ["ink:0.3"]);
        assert_eq!(r.class, Some(ClassChoice::Label(7)));
    }

    #[test]
    fn round_trips_through_json() {
        let text = r#"{"id": "x", "count": 3, "class": 4, "steps": 12, "eta": 0.5,
            "cfg_rescale": 0.7, "reward_window": "1:9", "reward_form": "eps",
            "reward_schedule": "noise", "fk_potential": "max", "particles": 2}"#;
        let r = Request::from_json_str(text).expect("request");
        let again = Request::from_json(&r.to_json()).expect("written form");
        assert_eq!(r, again);
        let via_serde: Request = serde_json::from_str(text).expect("serde");
        assert_eq!(via_serde, r);
    }

    #[test]
    fn errors_name_the_key() {
        for (text, field) in [
            (r#"{"stesp": 10}"#, "stesp"),
            (r#"{"steps": 0}"#, "steps"),
            (r#"{"steps": "ten"}"#, "steps"),
            (r#"{"count": -1}"#, "count"),
            (r#"{"cfg": "3"}"#, "cfg"),
            (r#"{"cfg_rescale": 2}"#, "cfg_rescale"),
            (r#"{"cfg_interval": "9:3"}"#, "cfg_interval"),
            (r#"{"cfg_interval": 5}"#, "cfg_interval"),
            (r#"{"scheduler": "heun"}"#, "scheduler"),
            (r#"{"karras": 1}"#, "karras"),
            (r#"{"reward": [3]}"#, "reward"),
            (r#"{"class": -2}"#, "class"),
            (r#"{"class": "seven"}"#, "class"),
            (r#"{"fk_every": 0}"#, "fk_every"),
            (r#"{"eta": -0.5}"#, "eta"),
            ("[1, 2]", "(request)"),
            ("{\"steps\": ", "(request)"),
        ] {
            let e = Request::from_json_str(text).expect_err(text);
            assert_eq!(field_of(e), field, "{text}");
        }
        let e = Request::from_json_str(r#"{"stesp": 10}"#).expect_err("typo");
        assert!(e.to_string().contains("did you mean \"steps\""), "{e}");
        let e = serde_json::from_str::<Request>(r#"{"particles": 0}"#).expect_err("serde");
        assert!(e.to_string().contains("particles"), "{e}");
    }
}

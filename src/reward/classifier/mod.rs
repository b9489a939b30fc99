//! A small image classifier (format `diffsteer-classifier/1`) with a hand-written
//! backward pass, so that log p(class | x) can steer sampling by its gradient.
//!
//! A classifier folder holds `config.json` — the input shape, the class count and a
//! list of layers, run in order exactly as `LayerListNet` in `tools/train_digits.py`
//! runs them in PyTorch — and `model.safetensors` with `<name>.weight` and
//! `<name>.bias` for every `conv2d` and `linear` layer, in PyTorch's layout
//! (`[out, in, kh, kw]` and `[out, in]`; f32, f16 or bf16).
//!
//! Layer types and their keys:
//!
//! | type | keys |
//! |---|---|
//! | `conv2d` | `name`, `in_channels`, `out_channels`, `kernel`, `stride` (1), `padding` (0), `bias` (true) |
//! | `linear` | `name`, `in_features`, `out_features`, `bias` (true) |
//! | `silu`, `relu`, `flatten` | – |
//! | `avg_pool2d` | `kernel` (the stride equals the kernel; trailing rows/columns that do not fill a window are dropped, as in PyTorch) |
//!
//! PyTorch runs NCHW; the engine keeps data channels-last (NHWC). Every weight is
//! converted once at load time: convolution weights to `[kh, kw, c_in, c_out]`, the
//! first linear layer after a `flatten` has its input rows permuted from PyTorch's
//! flatten order (c·H·W + h·W + w) to the engine's ((h·W + w)·C + c), so results equal
//! PyTorch's without any per-call transposes. The input gradient of a convolution is
//! col2im of one GEMM (the output gradient times the transposed `[k·k·c_in, c_out]`
//! weight gives every patch's gradient; each input pixel then sums the patches that
//! cover it: `Backend::col2im`), and that of a linear layer a product with the
//! transposed weight; the transposes are prepared at load time.
//!
//! Every layer, forward and backward, runs as ops of a [`Backend`] chosen at load
//! time (the CPU by default; [`Classifier::load_on`] takes another, e.g. the GPU a
//! sampler runs on); only the log-softmax of the logits runs on the host, in f64.

mod config;
mod ensemble;
mod features;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{check_gradient_buffer, log_probability_gate, Reward, SampleShape};
use crate::backend::cpu::CpuBackend;
use crate::backend::{Activation, Backend, Conv2dGeometry};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use config::{parse_config, LayerKind};
use weights::{load_conv, load_linear, Weights};

pub use ensemble::{is_ensemble_folder, ClassifierEnsemble, ENSEMBLE_FORMAT};

/// The `format` field a classifier `config.json` must carry.
pub const CLASSIFIER_FORMAT: &str = "diffsteer-classifier/1";

/// A loaded classifier. Its weights are immutable after loading; calls from several
/// threads may share one (`Arc`), each call using its own activation buffers.
pub struct Classifier {
    dir: PathBuf,
    input: SampleShape,
    range: Option<(f32, f32)>,
    num_classes: usize,
    layers: Vec<Layer>,
    /// Where the weights live and every layer runs.
    backend: Arc<dyn Backend>,
}

/// The per-sample shape of an activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dims {
    /// A feature map, channels-last.
    Map { h: usize, w: usize, c: usize },
    /// A feature vector; `from` is the map it was flattened from while no linear
    /// layer has consumed it yet (the next linear layer's rows are permuted for it).
    Flat {
        features: usize,
        from: Option<(usize, usize, usize)>,
    },
}

impl Dims {
    /// The tensor shape of `n` samples.
    fn shape(&self, n: usize) -> Vec<usize> {
        match *self {
            Dims::Map { h, w, c } => vec![n, h, w, c],
            Dims::Flat { features, .. } => vec![n, features],
        }
    }

    fn describe(&self) -> String {
        match *self {
            // Described in PyTorch's order, as the config is written in its terms.
            Dims::Map { h, w, c } => format!("a {c}×{h}×{w} (C×H×W) feature map"),
            Dims::Flat { features, .. } => format!("a flat vector of {features} features"),
        }
    }
}

struct Conv {
    /// `[k, k, c_in, c_out]`.
    weight: Tensor,
    bias: Option<Tensor>,
    geometry: Conv2dGeometry,
    /// `[c_out, k·k·c_in]`: the transposed im2col weight matrix, for the input gradient.
    weight_t: Tensor,
    kernel: usize,
}

struct Linear {
    /// `[in, out]` (rows permuted to NHWC order after a flatten).
    weight: Tensor,
    bias: Option<Tensor>,
    /// `[out, in]`: the input-gradient product.
    weight_t: Tensor,
}

enum Op {
    Conv(Conv),
    Silu,
    Relu,
    AvgPool { kernel: usize },
    Flatten,
    Linear(Linear),
}

struct Layer {
    op: Op,
    input: Dims,
    output: Dims,
}

/// What the backward pass of a layer needs from the forward pass: an activation's
/// derivative at its input (`None` for the other layers).
type Saved = Option<Tensor>;

/// What a reward reads from one sample's logits l (softmax p = e^{l − lse}, with
/// lse = log Σ_j e^{l_j}); each value is computed in f64 in a form that stays finite
/// for any finite logits, and so is its derivative with respect to the logits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readout {
    /// log p_c = l_c − lse; ∂/∂l_j = [j = c] − p_j.
    LogProb(usize),
    /// log(1 − p_c) = log Σ_{j≠c} e^{l_j} − lse (never 1 − p_c itself, which rounds to
    /// 0 once p_c is close to 1); ∂/∂l_j = q_j − p_j for j ≠ c, with q the softmax
    /// over the classes other than c, and −p_c for j = c.
    LogNotProb(usize),
    /// l_a − l_b: the log-odds of class a against class b (for a two-class
    /// classifier, log p_a/(1 − p_a)); ∂/∂l_j = [j = a] − [j = b].
    LogOdds(usize, usize),
}

impl Readout {
    /// What the value is called in messages.
    fn what(&self) -> &'static str {
        match self {
            Readout::LogProb(_) => "log-probability",
            Readout::LogNotProb(_) => "log(1 − probability)",
            Readout::LogOdds(..) => "log-odds",
        }
    }

    /// The value of one logit row; with `d`, its derivative with respect to every
    /// logit is written there.
    pub fn value_and_grad(&self, row: &[f32], d: Option<&mut [f32]>) -> f64 {
        let lse = |skip: Option<usize>| {
            let live = || {
                row.iter()
                    .enumerate()
                    .filter(move |(j, _)| Some(*j) != skip)
                    .map(|(_, &v)| v as f64)
            };
            let m = live().fold(f64::NEG_INFINITY, f64::max);
            m + live().map(|v| (v - m).exp()).sum::<f64>().ln()
        };
        match *self {
            Readout::LogProb(c) => {
                let all = lse(None);
                if let Some(d) = d {
                    for (j, (dj, &lj)) in d.iter_mut().zip(row).enumerate() {
                        let p = (lj as f64 - all).exp();
                        *dj = ((j == c) as u8 as f64 - p) as f32;
                    }
                }
                row[c] as f64 - all
            }
            Readout::LogNotProb(c) => {
                let all = lse(None);
                let rest = lse(Some(c));
                if let Some(d) = d {
                    for (j, (dj, &lj)) in d.iter_mut().zip(row).enumerate() {
                        let p = (lj as f64 - all).exp();
                        let q = if j == c {
                            0.0
                        } else {
                            (lj as f64 - rest).exp()
                        };
                        *dj = (q - p) as f32;
                    }
                }
                rest - all
            }
            Readout::LogOdds(a, b) => {
                if let Some(d) = d {
                    for (j, dj) in d.iter_mut().enumerate() {
                        *dj = ((j == a) as u8 as f64 - (j == b) as u8 as f64) as f32;
                    }
                }
                row[a] as f64 - row[b] as f64
            }
        }
    }
}

impl Classifier {
    /// Loads and validates a classifier folder (`config.json` + `model.safetensors`).
    ///
    /// Every mismatch between the config and the weights — a missing, extra or
    /// wrongly shaped tensor, a non-finite weight — is an error naming the file and
    /// the tensor; config errors name the file and the layer index.
    pub fn load(dir: &Path) -> Result<Classifier> {
        Self::load_on(dir, Arc::new(CpuBackend::new()))
    }

    /// [`Classifier::load`] with the weights on `backend`, where every call then runs.
    pub fn load_on(dir: &Path, backend: Arc<dyn Backend>) -> Result<Classifier> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path)
            .map_err(|e| Error::io(&config_path, "cannot read classifier config", e))?;
        let weights_path = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights_path)
            .map_err(|e| Error::io(&weights_path, "cannot read classifier weights", e))?;
        Self::from_parts(dir, &text, &bytes, backend)
    }

    /// [`Classifier::load_on`] from the text of `config.json` and the bytes of
    /// `model.safetensors`, already in memory; `dir` names the folder in messages.
    pub fn from_parts(
        dir: &Path,
        config_text: &str,
        weights_bytes: &[u8],
        backend: Arc<dyn Backend>,
    ) -> Result<Classifier> {
        let b = backend.as_ref();
        let config = parse_config(&dir.join("config.json"), config_text)?;
        let weights_path = dir.join("model.safetensors");
        let weights = Weights::parse(&weights_path, weights_bytes)?;

        let mut layers = Vec::with_capacity(config.layers.len());
        for spec in &config.layers {
            let op = match &spec.kind {
                LayerKind::Conv {
                    name,
                    cin,
                    cout,
                    kernel,
                    stride,
                    padding,
                    bias,
                } => Op::Conv(load_conv(
                    b, &weights, spec, name, *cin, *cout, *kernel, *stride, *padding, *bias,
                )?),
                LayerKind::Linear {
                    name,
                    fin,
                    fout,
                    bias,
                } => Op::Linear(load_linear(b, &weights, spec, name, *fin, *fout, *bias)?),
                LayerKind::Silu => Op::Silu,
                LayerKind::Relu => Op::Relu,
                LayerKind::AvgPool { kernel } => Op::AvgPool { kernel: *kernel },
                LayerKind::Flatten => Op::Flatten,
            };
            layers.push(Layer {
                op,
                input: spec.input,
                output: spec.output,
            });
        }
        weights.ensure_all_used()?;
        Ok(Classifier {
            dir: dir.to_path_buf(),
            input: config.input,
            range: config.range,
            num_classes: config.num_classes,
            layers,
            backend,
        })
    }

    /// The backend the classifier runs on.
    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// The folder it was loaded from (for messages and metadata).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The shape of one input sample, channels-last.
    pub fn input_shape(&self) -> SampleShape {
        self.input
    }

    /// The pixel range the classifier was trained on (config `input.range`), if given.
    pub fn input_range(&self) -> Option<(f32, f32)> {
        self.range
    }

    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// The logits of every sample in `x` (`n × input_shape().len()` values,
    /// channels-last): `n × num_classes()` values, sample-major.
    ///
    /// Non-finite input is an error (naming the sample), never a NaN output.
    pub fn logits(&self, x: &[f32]) -> Result<Vec<f32>> {
        let n = self.check_input(x)?;
        let (logits, _) = self.forward(x, n, false)?;
        ensure_finite("classifier logits", &logits, self.num_classes)?;
        Ok(logits)
    }

    /// The most likely class of every sample.
    pub fn predict(&self, x: &[f32]) -> Result<Vec<usize>> {
        let logits = self.logits(x)?;
        Ok(logits
            .chunks_exact(self.num_classes)
            .map(|row| {
                let mut best = 0;
                for (i, &v) in row.iter().enumerate() {
                    if v > row[best] {
                        best = i;
                    }
                }
                best
            })
            .collect())
    }

    /// log p(`classes[i]` | sample i) under the classifier's softmax, for every
    /// sample; when `grad` is given (same length as `x`), ∂ log p / ∂x of each sample
    /// is written into it, by a hand-written backward pass through every layer.
    ///
    /// Errors (nothing written to `grad`): wrong lengths, a class out of range,
    /// non-finite input, or a non-finite result (inputs far outside the trained range).
    pub fn log_prob_and_grad(
        &self,
        x: &[f32],
        classes: &[usize],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let readouts: Vec<Readout> = classes.iter().map(|&c| Readout::LogProb(c)).collect();
        self.readout_and_grad(x, &readouts, grad)
    }

    /// [`Readout`] `readouts[i]` of sample i (see there for each value and its
    /// derivative with respect to the logits); when `grad` is given (same length as
    /// `x`), its gradient with respect to the sample is written into it, by a
    /// hand-written backward pass through every layer.
    ///
    /// Errors (nothing written to `grad`): wrong lengths, a class out of range,
    /// non-finite input, or a non-finite result (inputs far outside the trained range).
    pub fn readout_and_grad(
        &self,
        x: &[f32],
        readouts: &[Readout],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        let n = self.check_input(x)?;
        if readouts.len() != n {
            return Err(Error::shape(
                "classifier log-prob",
                format!("{} classes given for {n} samples", readouts.len()),
            ));
        }
        for readout in readouts {
            self.check_readout(*readout)?;
        }
        check_gradient_buffer("classifier gradient", x, grad.as_deref())?;
        let want_grad = grad.is_some();
        let (logits, saved) = self.forward(x, n, want_grad)?;
        let k = self.num_classes;
        let mut values = Vec::with_capacity(n);
        let mut dlogits = if want_grad {
            vec![0f32; n * k]
        } else {
            Vec::new()
        };
        for (i, row) in logits.chunks_exact(k).enumerate() {
            let d = want_grad.then(|| &mut dlogits[i * k..(i + 1) * k]);
            let value = readouts[i].value_and_grad(row, d);
            if !value.is_finite() {
                return Err(non_finite_result(readouts[i].what(), i));
            }
            values.push(value as f32);
        }
        if let Some(g) = grad {
            let dx = self.backward(dlogits, n, saved)?;
            ensure_finite("classifier gradient", &dx, self.input.len())?;
            g.copy_from_slice(&dx);
        }
        Ok(values)
    }

    /// An error unless every class `readout` names is one of the classifier's.
    pub fn check_readout(&self, readout: Readout) -> Result<()> {
        let classes: &[usize] = match &readout {
            Readout::LogProb(c) | Readout::LogNotProb(c) => std::slice::from_ref(c),
            Readout::LogOdds(a, b) => &[*a, *b],
        };
        if let Some(&bad) = classes.iter().find(|&&c| c >= self.num_classes) {
            return Err(Error::invalid(
                "class",
                format!(
                    "{bad} is out of range for the classifier in {} (accepted: 0..={})",
                    self.dir.display(),
                    self.num_classes - 1
                ),
            ));
        }
        if matches!(readout, Readout::LogNotProb(_)) && self.num_classes < 2 {
            return Err(Error::invalid(
                "class",
                format!(
                    "the classifier in {} has a single class: log(1 − p) of it is −∞ everywhere",
                    self.dir.display()
                ),
            ));
        }
        Ok(())
    }

    fn check_input(&self, x: &[f32]) -> Result<usize> {
        let n = self.input.count(x, "classifier input")?;
        if let Some(pos) = x.iter().position(|v| !v.is_finite()) {
            let per = self.input.len();
            return Err(Error::invalid(
                "classifier input",
                format!(
                    "sample {} holds a non-finite value ({}) at element {}; the classifier \
                     scores finite pixels only",
                    pos / per,
                    x[pos],
                    pos % per
                ),
            ));
        }
        Ok(n)
    }

    /// Runs every layer; with `keep`, also returns what each layer's backward needs.
    fn forward(&self, x: &[f32], n: usize, keep: bool) -> Result<(Vec<f32>, Vec<Saved>)> {
        let b = self.backend.as_ref();
        let mut cur = b.tensor(&self.input_dims().shape(n), x.to_vec())?;
        let mut saved = Vec::with_capacity(if keep { self.layers.len() } else { 0 });
        for layer in &self.layers {
            let mut keep_this = None;
            cur = match &layer.op {
                Op::Conv(c) => b.conv2d(&cur, &c.weight, c.bias.as_ref(), &c.geometry)?,
                Op::Linear(l) => b.linear(&cur, &l.weight, l.bias.as_ref())?,
                Op::Silu | Op::Relu => {
                    let act = match layer.op {
                        Op::Silu => Activation::Silu,
                        _ => Activation::Relu,
                    };
                    keep_this = b.activation_assign(&mut cur, act, keep)?;
                    cur
                }
                Op::AvgPool { kernel } => b.avg_pool(&cur, *kernel)?,
                Op::Flatten => cur.reshape(&layer.output.shape(n))?,
            };
            if keep {
                saved.push(keep_this);
            }
        }
        Ok((b.to_host(&cur)?, saved))
    }

    /// ∂/∂x of `Σ_i dlogits_i · logits_i`, given the forward pass's `saved` values.
    fn backward(&self, dlogits: Vec<f32>, n: usize, saved: Vec<Saved>) -> Result<Vec<f32>> {
        let b = self.backend.as_ref();
        let last = self.layers.last().map_or(self.input_dims(), |l| l.output);
        let mut g = b.tensor(&last.shape(n), dlogits)?;
        for (layer, saved) in self.layers.iter().zip(saved).rev() {
            let (input, output) = (layer.input, layer.output);
            g = match (&layer.op, saved) {
                (Op::Linear(l), _) => b.linear(&g, &l.weight_t, None)?,
                (Op::Conv(c), _) => {
                    // The gradient of every input patch is dy·Wᵀ (one GEMM over all
                    // output pixels); col2im adds each patch into its pixels.
                    let (oh, ow, cout) = map_dims(output);
                    let dy = g.reshape(&[n * oh * ow, cout])?;
                    let dpatches = b.linear(&dy, &c.weight_t, None)?;
                    let (h, w, cin) = map_dims(input);
                    b.col2im(&dpatches, [n, h, w, cin], (c.kernel, c.kernel), &c.geometry)?
                }
                (Op::Silu | Op::Relu, Some(derivative)) => {
                    b.mul_assign(&mut g, &derivative)?;
                    g
                }
                (Op::AvgPool { kernel }, _) => {
                    let (h, w, _) = map_dims(input);
                    b.avg_pool_backward(&g, *kernel, h, w)?
                }
                (Op::Flatten, _) => g.reshape(&input.shape(n))?,
                (Op::Silu | Op::Relu, None) => {
                    return Err(Error::shape(
                        "classifier backward",
                        "an activation's derivative was not kept (internal error)",
                    ))
                }
            };
        }
        b.to_host(&g)
    }

    fn input_dims(&self) -> Dims {
        Dims::Map {
            h: self.input.height,
            w: self.input.width,
            c: self.input.channels,
        }
    }
}

fn map_dims(d: Dims) -> (usize, usize, usize) {
    match d {
        Dims::Map { h, w, c } => (h, w, c),
        // Validation puts pools and convolutions on maps only.
        Dims::Flat { features, .. } => (1, 1, features),
    }
}

/// An error unless every value is finite; names the first sample at fault.
fn ensure_finite(what: &str, values: &[f32], per_sample: usize) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(pos) => Err(non_finite_result(what, pos / per_sample.max(1))),
    }
}

fn non_finite_result(what: &str, sample: usize) -> Error {
    Error::invalid(
        "classifier input",
        format!(
            "the {what} of sample {sample} is not finite (its pixels are probably far outside \
             the classifier's input range)"
        ),
    )
}

// -------------------------------------------------------------------------- reward

/// `avoid:` guides only estimates at least this noisy (√(1 − ᾱ), the share of noise
/// in x_t): with the digits model's schedule the first 30 of 50 DDIM steps. Whether a
/// sample becomes the avoided class is mostly decided there; pushing later mainly
/// reshapes strokes (measured on 300 unconditional samples of `avoid:7`, README,
/// Alignment: guided to step 45, the Fréchet distance to real digits rose by another
/// 0.2 for one or two fewer sevens of 300 on two of five readers; stopping after 20
/// steps let 3–4% sevens back).
pub const AVOID_UNTIL_NOISE: f32 = 0.9;

/// The share of a full guidance step that `avoid:` takes where p(D) = 1. With the
/// default ρ_t = 0.6·√(1−ᾱ_t) (0.54–0.6 where `avoid:` acts) that is a push of about
/// 0.4·√p(D) RMS per pixel: a full step (about 0.57·√p) took the sevens of `avoid:7`
/// from 0.33–1.0% to 0–0.67% of 300 samples but raised the Fréchet distance by 0.6
/// more and thinned out the nines.
pub const AVOID_STEP_SHARE: f32 = 0.7;

/// What a classifier reward asks of its class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassGoal {
    /// `classifier:D`: r = log p(D | x₀), steering towards the class.
    Target,
    /// `avoid:D`: r = log(1 − p(D | x₀)), steering away from it. Bounded above by 0
    /// and flat once p(D) is small, so the push fades when the class is gone (where
    /// −log p(D) would keep pushing without end).
    Avoid,
}

/// A reward read from a classifier: log p(`class` | x₀) ([`ClassGoal::Target`]) or
/// log(1 − p(`class` | x₀)) ([`ClassGoal::Avoid`]). Its scale is a log-probability
/// (≤ 0), which makes weights of different rewards comparable.
pub struct ClassifierReward {
    classifiers: Arc<ClassifierEnsemble>,
    target: usize,
    goal: ClassGoal,
}

impl ClassifierReward {
    /// `classifier:target`; an error if `target` is not one of the classifier's classes.
    pub fn new(classifier: Arc<Classifier>, target: usize) -> Result<Self> {
        Self::with_goal(classifier, target, ClassGoal::Target)
    }

    /// `avoid:class`; an error if `class` is not one of the classifier's classes.
    pub fn avoid(classifier: Arc<Classifier>, class: usize) -> Result<Self> {
        Self::with_goal(classifier, class, ClassGoal::Avoid)
    }

    pub fn with_goal(classifier: Arc<Classifier>, target: usize, goal: ClassGoal) -> Result<Self> {
        Self::of_ensemble(
            Arc::new(ClassifierEnsemble::single(classifier)),
            target,
            goal,
        )
    }

    /// The reward read from the mean of an ensemble's members (see
    /// [`ClassifierEnsemble`]); an error if `target` is not one of its classes.
    pub fn of_ensemble(
        classifier: Arc<ClassifierEnsemble>,
        target: usize,
        goal: ClassGoal,
    ) -> Result<Self> {
        let name = spec_name(goal, target);
        if target >= classifier.num_classes() {
            return Err(Error::invalid(
                "reward",
                format!(
                    "{name}: class {target} is out of range for the classifier in {} \
                     (accepted: 0..={})",
                    classifier.dir().display(),
                    classifier.num_classes() - 1
                ),
            ));
        }
        if goal == ClassGoal::Avoid && classifier.num_classes() < 2 {
            return Err(Error::invalid(
                "reward",
                format!(
                    "{name}: the classifier in {} has a single class, which cannot be avoided",
                    classifier.dir().display()
                ),
            ));
        }
        Ok(ClassifierReward {
            classifiers: classifier,
            target,
            goal,
        })
    }

    /// The classifier(s) it reads: one, or an ensemble whose readouts are averaged.
    pub fn classifiers(&self) -> &Arc<ClassifierEnsemble> {
        &self.classifiers
    }

    pub fn target(&self) -> usize {
        self.target
    }

    pub fn goal(&self) -> ClassGoal {
        self.goal
    }

    fn readout(&self) -> Readout {
        match self.goal {
            ClassGoal::Target => Readout::LogProb(self.target),
            ClassGoal::Avoid => Readout::LogNotProb(self.target),
        }
    }
}

fn spec_name(goal: ClassGoal, class: usize) -> String {
    match goal {
        ClassGoal::Target => format!("classifier:{class}"),
        ClassGoal::Avoid => format!("avoid:{class}"),
    }
}

impl Reward for ClassifierReward {
    fn name(&self) -> String {
        spec_name(self.goal, self.target)
    }

    fn check_shape(&self, shape: SampleShape) -> Result<()> {
        let expected = self.classifiers.input_shape();
        if shape == expected {
            return Ok(());
        }
        Err(Error::shape(
            self.name(),
            format!(
                "the classifier in {} expects {expected} samples (H×W×C), the model makes {shape}",
                self.classifiers.dir().display()
            ),
        ))
    }

    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        self.check_shape(shape)?;
        let n = shape.count(x0, "classifier reward")?;
        let readouts = vec![self.readout(); n];
        self.classifiers.readout_and_grad(x0, &readouts, grad)
    }

    /// `avoid:D` pushes while the sample's content is still being decided, on
    /// estimates whose noise level √(1 − ᾱ) is at least [`AVOID_UNTIL_NOISE`], and
    /// there by [`AVOID_STEP_SHARE`]·√p(D) = 0.7·√(1 − e^r) of a full step: the push fades as the class
    /// disappears (a normalised step would otherwise keep its full size however flat
    /// the reward has become, and wreck the image), but more slowly than p(D), so
    /// shapes the classifier is unsure about still move away. `classifier:D` is not
    /// gated: it steps the same at every guided step.
    fn step_gate(&self, value: f32, alpha_bar: f32) -> f32 {
        match self.goal {
            ClassGoal::Target => 1.0,
            ClassGoal::Avoid => {
                if (1.0 - alpha_bar).max(0.0).sqrt() < AVOID_UNTIL_NOISE {
                    0.0
                } else {
                    AVOID_STEP_SHARE * log_probability_gate(value).sqrt()
                }
            }
        }
    }
}

//! A weighted sum of rewards: what `--reward a --reward b@0.5` asks for. It is itself
//! a [`Reward`], so guidance and steering treat one reward and many alike, and
//! [`WeightedSum::evaluate_terms`] also hands back each term's own values for the
//! metadata without evaluating anything twice.

use super::{check_gradient_buffer, Reward, SampleShape};
use crate::error::{Error, Result};

/// Σₖ wₖ·rₖ(x₀), with gradient Σₖ wₖ·∂rₖ/∂x₀.
pub struct WeightedSum {
    terms: Vec<(f32, Box<dyn Reward>)>,
}

impl WeightedSum {
    /// An error for an empty list or a non-finite weight. Zero and negative weights
    /// are allowed (a zero-weight term is still evaluated and reported, which is how
    /// a reward is watched without steering by it).
    pub fn new(terms: Vec<(f32, Box<dyn Reward>)>) -> Result<Self> {
        if terms.is_empty() {
            return Err(Error::invalid(
                "reward",
                "an empty sum of rewards (give at least one reward)",
            ));
        }
        if let Some((w, r)) = terms.iter().find(|(w, _)| !w.is_finite()) {
            return Err(Error::invalid(
                "reward",
                format!("{}@{w}: the weight must be a finite number", r.name()),
            ));
        }
        Ok(WeightedSum { terms })
    }

    pub fn terms(&self) -> &[(f32, Box<dyn Reward>)] {
        &self.terms
    }

    /// The names of the terms, in order (the keys of per-term metadata).
    pub fn term_names(&self) -> Vec<String> {
        self.terms.iter().map(|(_, r)| r.name()).collect()
    }

    pub fn weights(&self) -> Vec<f32> {
        self.terms.iter().map(|(w, _)| *w).collect()
    }

    /// Evaluates every term once. Returns `(total, per_term)`: the weighted total of
    /// each sample, and `per_term[k][i]`, the UNWEIGHTED value of term k on sample i.
    /// When `grad` is given (same length as `x0`), the gradient of the total is
    /// written into it. On error nothing meaningful is left in `grad`.
    pub fn evaluate_terms(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        self.evaluate_terms_at(shape, x0, None, grad)
    }

    /// [`WeightedSum::evaluate_terms`] of estimates at the noise levels
    /// `alpha_bars` (see [`Reward::evaluate_at`]); `None` is clean samples.
    pub fn evaluate_terms_at(
        &self,
        shape: SampleShape,
        x0: &[f32],
        alpha_bars: Option<&[f32]>,
        mut grad: Option<&mut [f32]>,
    ) -> Result<(Vec<f32>, Vec<Vec<f32>>)> {
        let n = shape.count(x0, "reward")?;
        if let Some(levels) = alpha_bars.filter(|l| l.len() != n) {
            return Err(Error::shape(
                "reward",
                format!("{} noise levels for {n} samples", levels.len()),
            ));
        }
        let eval = |reward: &dyn Reward, g: Option<&mut [f32]>| match alpha_bars {
            Some(levels) => reward.evaluate_at(shape, x0, levels, g),
            None => reward.evaluate(shape, x0, g),
        };
        check_gradient_buffer("reward gradient", x0, grad.as_deref())?;
        if let Some(g) = grad.as_deref_mut() {
            g.fill(0.0);
        }
        let mut scratch = Vec::new();
        let mut total = vec![0f32; n];
        let mut per_term = Vec::with_capacity(self.terms.len());
        for (w, reward) in &self.terms {
            // A zero-weight term adds nothing to the gradient: value only.
            let values = match grad.as_deref_mut() {
                Some(g) if *w != 0.0 => {
                    scratch.resize(x0.len(), 0.0);
                    let values = eval(reward.as_ref(), Some(&mut scratch))?;
                    g.iter_mut().zip(&scratch).for_each(|(g, s)| *g += w * s);
                    values
                }
                _ => eval(reward.as_ref(), None)?,
            };
            if values.len() != n {
                return Err(Error::shape(
                    reward.name(),
                    format!("returned {} values for {n} samples", values.len()),
                ));
            }
            total.iter_mut().zip(&values).for_each(|(t, v)| *t += w * v);
            per_term.push(values);
        }
        Ok((total, per_term))
    }
}

impl Reward for WeightedSum {
    /// `classifier:3 + 0.5·ink:0.2` (weights of 1 are left out).
    fn name(&self) -> String {
        let mut out = String::new();
        for (i, (w, r)) in self.terms.iter().enumerate() {
            let (sign, mag) = if *w < 0.0 { ("-", -w) } else { ("+", *w) };
            match (i, sign) {
                (0, "+") => {}
                (0, _) => out.push('-'),
                _ => {
                    out.push(' ');
                    out.push_str(sign);
                    out.push(' ');
                }
            }
            if mag != 1.0 {
                out.push_str(&format!("{mag}·"));
            }
            out.push_str(&r.name());
        }
        out
    }

    fn check_shape(&self, shape: SampleShape) -> Result<()> {
        self.terms
            .iter()
            .try_for_each(|(_, r)| r.check_shape(shape))
    }

    fn evaluate(
        &self,
        shape: SampleShape,
        x0: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        Ok(self.evaluate_terms(shape, x0, grad)?.0)
    }

    fn evaluate_at(
        &self,
        shape: SampleShape,
        x0: &[f32],
        alpha_bars: &[f32],
        grad: Option<&mut [f32]>,
    ) -> Result<Vec<f32>> {
        Ok(self.evaluate_terms_at(shape, x0, Some(alpha_bars), grad)?.0)
    }

    fn terms(&self) -> Option<&[(f32, Box<dyn Reward>)]> {
        Some(&self.terms)
    }
}

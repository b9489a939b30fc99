//! Feynman-Kac potentials: which tilted target exp(λ·φ_t) a particle population
//! tracks, where φ_t is built from the rewards r_s of a particle's x̂₀ estimates at
//! the evaluation steps s ≤ t of its own history (copied to its children).

/// φ_t for the three potentials of Feynman-Kac steering (Singhal et al., 2025).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Potential {
    /// φ_t = r_t: incremental weights λ·(r_t − r_prev) favour particles whose reward
    /// is rising; the product over time telescopes to the final reward.
    Difference,
    /// φ_t = max_{s≤t} r_s: keeps particles that have ever looked good.
    Max,
    /// φ_t = Σ_{s≤t} r_s: favours particles that looked good throughout.
    Sum,
}

impl Potential {
    pub const ALL: [Potential; 3] = [Potential::Difference, Potential::Max, Potential::Sum];

    pub fn cli_name(self) -> &'static str {
        match self {
            Potential::Difference => "diff",
            Potential::Max => "max",
            Potential::Sum => "sum",
        }
    }

    pub fn from_cli_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.cli_name() == name)
    }
}

/// One particle's potential history.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PotentialTrack {
    /// φ at the latest evaluation (0 before any).
    pub value: f64,
    /// φ when the population was last resampled: log-weights are λ·(φ − anchor).
    pub anchor: f64,
    evaluations: usize,
}

impl Default for PotentialTrack {
    fn default() -> Self {
        PotentialTrack {
            value: 0.0,
            anchor: 0.0,
            evaluations: 0,
        }
    }
}

impl PotentialTrack {
    /// Folds in the reward of a new evaluation.
    pub fn observe(&mut self, potential: Potential, reward: f64) {
        self.value = match (potential, self.evaluations) {
            (Potential::Difference, _) | (Potential::Max, 0) => reward,
            (Potential::Max, _) => self.value.max(reward),
            (Potential::Sum, _) => self.value + reward,
        };
        self.evaluations += 1;
    }

    /// The log-weight since the last resampling, λ·(φ − anchor). Before the first
    /// resampling the anchor is φ = 0 of the untilted start, so the population
    /// targets p(x)·exp(λ·φ_t) at every evaluation.
    pub fn log_weight(&self, lambda: f64) -> f64 {
        lambda * (self.value - self.anchor)
    }

    /// Starts a new weighting period from the current φ (after resampling).
    pub fn rebase(&mut self) {
        self.anchor = self.value;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_names_are_the_documented_ones_and_round_trip() {
        let names: Vec<&str> = Potential::ALL.iter().map(|p| p.cli_name()).collect();
        assert_eq!(names, ["diff", "max", "sum"]);
        for p in Potential::ALL {
            assert_eq!(Potential::from_cli_name(p.cli_name()), Some(p));
        }
        assert_eq!(Potential::from_cli_name("mean"), None);
        assert_eq!(Potential::from_cli_name(""), None);
    }

    #[test]
    fn potentials_fold_rewards_as_documented() {
        let rewards = [-2.0, -0.5, -1.0];
        let fold = |p| {
            let mut t = PotentialTrack::default();
            rewards.iter().for_each(|&r| t.observe(p, r));
            t.value
        };
        assert_eq!(fold(Potential::Difference), -1.0);
        assert_eq!(fold(Potential::Max), -0.5);
        assert_eq!(fold(Potential::Sum), -3.5);
    }

    #[test]
    fn log_weight_is_relative_to_the_last_resampling() {
        let mut t = PotentialTrack::default();
        t.observe(Potential::Difference, -3.0);
        t.rebase();
        t.observe(Potential::Difference, -1.0);
        assert_eq!(t.log_weight(2.0), 4.0);
        // λ·(φ − anchor) = 0.5·2: λ = 2 alone cannot tell λ·2 from λ + 2.
        assert_eq!(t.log_weight(0.5), 1.0);
        assert_eq!(t.log_weight(0.0), 0.0);
    }
}

//! diffusers' `get_timestep_embedding` as a backend op
//! ([`super::Backend::timestep_embedding`]): `[sin(t·f), cos(t·f)]` (cos first with
//! `flip_sin_to_cos`), `f_i = exp(−ln(10000)·i / (dim/2 − shift))`, zero-padded to an
//! odd `dim`. The frequencies and products are rounded to f32 exactly where PyTorch
//! rounds them (t·f reaches ~1000 radians, so the argument's rounding dominates the
//! error); sin and cos are then evaluated in f64.

const MAX_PERIOD: f32 = 10000.0;

/// The `dim / 2` frequencies of an embedding of width `dim` with `freq_shift`.
pub fn sinusoidal_frequencies(dim: usize, shift: f64) -> Vec<f32> {
    let half = dim / 2;
    let neg_log_period = -MAX_PERIOD.ln();
    let denom = (half as f64 - shift) as f32;
    (0..half)
        .map(|i| ((neg_log_period * i as f32) / denom).exp())
        .collect()
}

/// The embedding rows `[timesteps.len(), dim]` on the host (the reference and the
/// default implementation).
pub fn sinusoidal_embedding(
    timesteps: &[f32],
    frequencies: &[f32],
    dim: usize,
    flip_sin_to_cos: bool,
) -> Vec<f32> {
    let half = frequencies.len();
    let mut out = vec![0f32; timesteps.len() * dim];
    for (row, &t) in out.chunks_mut(dim).zip(timesteps) {
        for (i, &f) in frequencies.iter().enumerate() {
            let arg = (t * f) as f64;
            let (sin, cos) = (arg.sin() as f32, arg.cos() as f32);
            let (first, second) = if flip_sin_to_cos {
                (cos, sin)
            } else {
                (sin, cos)
            };
            row[i] = first;
            row[half + i] = second;
        }
    }
    out
}

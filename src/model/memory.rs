//! How much memory a U-Net forward needs, estimated from its config before anything
//! is allocated, so that a config or request asking for more than the machine has
//! (a `sample_size` of 10^6, a batch of thousands) is refused with the numbers
//! instead of ending in an allocation abort.
//!
//! The estimate counts the activations a forward keeps alive at its peak: the skip
//! connections of every level (kept until the up path consumes them), the working
//! tensors of the largest level (a convolution's input, output and im2col patches,
//! nine values per input value), and where a level has attention, one score matrix
//! of one head (tokens × tokens). It is an upper-end estimate in f32; the real
//! peak is usually lower (Winograd tiles and blocked attention are smaller).

use super::config::{Mixer, UNetConfig};

/// Bytes per stored value (f32 activations; 16-bit GPU storage needs half).
const VALUE_BYTES: f64 = 4.0;

impl UNetConfig {
    /// Estimated peak bytes of activations for a forward of `rows` rows of
    /// `height × width` samples.
    pub fn forward_bytes_estimate(&self, rows: usize, height: usize, width: usize) -> f64 {
        let pixels = height as f64 * width as f64;
        let mut skips = pixels * self.block_out_channels.first().copied().unwrap_or(0) as f64;
        let mut working: f64 = 0.0;
        let mut attention: f64 = 0.0;
        for (level, block) in self.down_blocks.iter().enumerate() {
            let level_pixels = pixels / 4f64.powi(level as i32);
            let channels = block.out_channels.max(block.in_channels) as f64;
            skips += level_pixels * channels * (block.resnets + usize::from(block.resample)) as f64;
            // Input, output and im2col patches (9 per input value) of a 3×3 conv.
            working = working.max(level_pixels * channels * 11.0);
            if !matches!(block.mixer, Mixer::None) {
                attention = attention.max(level_pixels * level_pixels);
            }
        }
        if let Some(mid) = &self.mid {
            let level_pixels = pixels / 4f64.powi(self.down_blocks.len().saturating_sub(1) as i32);
            working = working.max(level_pixels * mid.channels as f64 * 11.0);
            if !matches!(mid.mixer, Mixer::None) {
                attention = attention.max(level_pixels * level_pixels);
            }
        }
        rows as f64 * VALUE_BYTES * (skips + 2.0 * working + attention)
    }
}

/// Memory the system reports as available for new allocations (`MemAvailable`),
/// or `None` where it does not say.
pub fn available_memory_bytes() -> Option<f64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024.0)
}

/// `bytes` as a short human-readable size ("3.2 GiB").
pub fn format_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit + 1 == UNITS.len() && value >= 1024.0 {
        return format!("{bytes:.2e} B");
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_well() {
        assert_eq!(format_bytes(512.0), "512.0 B");
        assert_eq!(format_bytes(3.5 * 1024.0 * 1024.0 * 1024.0), "3.5 GiB");
        assert!(format_bytes(1e30).ends_with(" B"));
    }
}

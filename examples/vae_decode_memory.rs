//! Peak memory and time of decoding with Stable Diffusion's VAE architecture
//! (`sd-vae-shape`: random weights, SD 1.5's config, nothing downloaded).
//!
//!     cargo run --release --example vae_decode_memory -- [LATENT_SIZE=64] [BATCH=1] [tiled]
//!
//! With `tiled`, decodes as diffusers does after `vae.enable_tiling()` (tiles of 64
//! latent pixels: only latents larger than that are tiled).
//!
//! Prints the process's resident memory after loading the decoder, and the peak
//! during decoding alone (Linux: the high-water mark is reset through
//! /proc/self/clear_refs after loading, then read from /proc/self/status).

use std::time::Instant;

use diffsteer::backend::Backend;
use diffsteer::model::vae::preset::{random_vae, sd_vae_config};
use diffsteer::model::vae::{TileSettings, VaeParts};
use diffsteer::rng::{normal_vec, NoiseStream};
use diffsteer::CpuBackend;

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("unknown".to_string(), |k| {
        format!("{:.0} MiB", k as f64 / 1024.0)
    })
}

fn main() -> diffsteer::Result<()> {
    let mut args = std::env::args().skip(1);
    let size: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    let batch: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1);
    let tiled = args.next().as_deref() == Some("tiled");
    let cpu = CpuBackend::new();
    let vae = random_vae(&cpu, sd_vae_config()?, 1, VaeParts::DecoderOnly)?;
    let loaded = status_kib("VmRSS:");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let latents = cpu.tensor(
        &[batch, size, size, 4],
        normal_vec(7, NoiseStream::Custom(1 << 57), batch * size * size * 4),
    )?;
    let start = Instant::now();
    let image = if tiled {
        vae.decode_tiled(&cpu, &latents, &TileSettings::for_config(vae.config()))?
    } else {
        vae.decode(&cpu, &latents)?
    };
    let seconds = start.elapsed().as_secs_f64();
    let peak = status_kib("VmHWM:");
    let values = cpu.to_host(&image)?;
    let finite = values.iter().all(|v| v.is_finite());
    println!(
        "sd-vae-shape {}decode {batch}×{size}×{size}×4 → {:?} in {seconds:.2} s ({} threads): resident after loading {}, peak {} {}, output finite: {finite}",
        if tiled { "tiled " } else { "" },
        image.shape(),
        rayon::current_num_threads(),
        mib(loaded),
        if reset { "during decoding" } else { "of the process (clear_refs unavailable)" },
        mib(peak),
    );
    Ok(())
}

//! NVRTC kernel registry: each `kernels/*.cu` file is embedded in the binary, compiled
//! for the device's compute capability on first use, and cached in memory and on
//! disk. The disk key is a hash of the source, the architecture and the options, so
//! an edited kernel or a new GPU never picks up a stale build.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

/// One `.cu` file: its name (for messages and the cache) and its source text.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    pub name: &'static str,
    pub source: &'static str,
}

pub const ELEMENTWISE: KernelSource = KernelSource {
    name: "elementwise",
    source: include_str!("../../../kernels/elementwise.cu"),
};

/// Every kernel file, so CI and `selftest` can compile all of them.
pub const ALL: &[KernelSource] = &[ELEMENTWISE];

/// The NVRTC options used for every kernel of `arch` (e.g. `sm_90`), plus `defines`
/// (`NAME=VALUE`) used to specialise head dims and tile sizes.
pub fn compile_options(arch: &str, defines: &[String]) -> Vec<String> {
    let mut options = vec![
        format!("--gpu-architecture={arch}"),
        "--std=c++17".to_string(),
        "--fmad=true".to_string(),
    ];
    options.extend(defines.iter().map(|d| format!("-D{d}")));
    options
}

/// A hex key that changes whenever the source, the architecture or an option does.
pub fn cache_key(kernel: &KernelSource, options: &[String]) -> String {
    let mut hasher = DefaultHasher::new();
    kernel.source.hash(&mut hasher);
    options.hash(&mut hasher);
    format!("{}-{:016x}", kernel.name, hasher.finish())
}

/// Where compiled PTX is kept between runs: `$DIFFSTEER_KERNEL_CACHE`, else
/// `$XDG_CACHE_HOME/diffsteer/kernels`, else `~/.cache/diffsteer/kernels`.
pub fn disk_cache_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("DIFFSTEER_KERNEL_CACHE") {
        return Some(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return Some(PathBuf::from(dir).join("diffsteer/kernels"));
    }
    std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/diffsteer/kernels"))
}

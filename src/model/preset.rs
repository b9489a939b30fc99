//! Built-in model shapes with deterministic random weights, so a machine can be
//! benchmarked without downloading a checkpoint: `sd15-shape` is a
//! `UNet2DConditionModel` with Stable Diffusion 1.5's architecture.
//!
//! The weights go through the normal loading path: the tensor names and shapes a
//! config needs are derived from the config (mirroring the loaders in this module),
//! written as a BF16 safetensors file into a temporary folder, loaded with
//! [`UNet::load`] (which checks every name and shape, and that none is left over),
//! and the folder is removed again. Values follow PyTorch's default initialisation
//! (uniform in ±1/√fan_in for weights and biases, norms at 1 and 0), drawn from a
//! counter-based hash of (seed, tensor, element): the same seed gives the same model.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde_json::{json, Value};

use super::config::{Mixer, UNetConfig};
use super::unet::UNet;
use super::weights::WeightFile;
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::json_fields::Fields;
use crate::schedule::SchedulerConfig;

/// Text tokens of the `sd15-shape` encoder hidden states (CLIP's 77).
pub const SD15_TOKENS: usize = 77;
/// Feature size of the `sd15-shape` encoder hidden states (CLIP ViT-L/14's 768).
pub const SD15_CROSS_ATTENTION_DIM: usize = 768;

/// The `config.json` of Stable Diffusion 1.5's U-Net, with `sample_size` (the latent
/// size; 64 in SD 1.5) as given.
pub fn sd15_config_json(sample_size: usize) -> Value {
    json!({
        "_class_name": "UNet2DConditionModel",
        "act_fn": "silu",
        "attention_head_dim": 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": false,
        "cross_attention_dim": SD15_CROSS_ATTENTION_DIM,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D"
        ],
        "downsample_padding": 1,
        "flip_sin_to_cos": true,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D"
        ]
    })
}

/// Stable Diffusion 1.5's noise schedule (scaled-linear betas 0.00085…0.012,
/// epsilon prediction, leading spacing with offset 1) for a DDIM scheduler.
pub fn sd15_scheduler_config() -> Result<SchedulerConfig> {
    let text = json!({
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": false,
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "set_alpha_to_one": false,
        "steps_offset": 1,
        "timestep_spacing": "leading"
    })
    .to_string();
    SchedulerConfig::from_json_str(&text, "<sd15-shape scheduler>")
}

/// Parses a config built in code (e.g. [`sd15_config_json`]); `origin` names it in errors.
pub fn config_from_json(config: &Value, origin: &str) -> Result<UNetConfig> {
    UNetConfig::from_fields(&Fields::parse(Path::new(origin), &config.to_string())?)
}

/// How one tensor's values are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Uniform in ±bound.
    Uniform(f32),
    Ones,
    Zeros,
}

/// One tensor a model config needs: its diffusers name, shape (diffusers layout) and
/// initialisation.
#[derive(Debug, Clone)]
pub struct WeightSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

/// The tensors of a model being described, in load order (shared with `vae::preset`).
#[derive(Default)]
pub(crate) struct Specs(pub(crate) Vec<WeightSpec>);

impl Specs {
    pub(crate) fn push(&mut self, name: String, shape: Vec<usize>, init: Init) {
        self.0.push(WeightSpec { name, shape, init });
    }

    /// A weight `shape` (fan-in = all but the first dimension) and, optionally, its bias.
    pub(crate) fn layer(&mut self, p: &str, shape: Vec<usize>, bias: bool) {
        let fan_in: usize = shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f32).sqrt();
        let out = shape[0];
        self.push(format!("{p}.weight"), shape, Init::Uniform(bound));
        if bias {
            self.push(format!("{p}.bias"), vec![out], Init::Uniform(bound));
        }
    }

    pub(crate) fn linear(&mut self, p: &str, fin: usize, fout: usize, bias: bool) {
        self.layer(p, vec![fout, fin], bias);
    }

    pub(crate) fn conv(&mut self, p: &str, cin: usize, cout: usize, k: usize) {
        self.layer(p, vec![cout, cin, k, k], true);
    }

    pub(crate) fn norm(&mut self, p: &str, channels: usize) {
        self.push(format!("{p}.weight"), vec![channels], Init::Ones);
        self.push(format!("{p}.bias"), vec![channels], Init::Zeros);
    }

    pub(crate) fn resnet(&mut self, p: &str, cin: usize, cout: usize, temb: usize) {
        self.norm(&format!("{p}.norm1"), cin);
        self.conv(&format!("{p}.conv1"), cin, cout, 3);
        self.linear(&format!("{p}.time_emb_proj"), temb, cout, true);
        self.norm(&format!("{p}.norm2"), cout);
        self.conv(&format!("{p}.conv2"), cout, cout, 3);
        if cin != cout {
            self.conv(&format!("{p}.conv_shortcut"), cin, cout, 1);
        }
    }

    pub(crate) fn attention(
        &mut self,
        p: &str,
        query: usize,
        context: usize,
        inner: usize,
        qkv_bias: bool,
    ) {
        self.linear(&format!("{p}.to_q"), query, inner, qkv_bias);
        self.linear(&format!("{p}.to_k"), context, inner, qkv_bias);
        self.linear(&format!("{p}.to_v"), context, inner, qkv_bias);
        self.linear(&format!("{p}.to_out.0"), inner, query, true);
    }

    fn mixer(&mut self, p: &str, mixer: Mixer, channels: usize, linear_projection: bool) {
        match mixer {
            Mixer::None => {}
            Mixer::SelfAttention {
                heads, head_dim, ..
            } => {
                self.norm(&format!("{p}.group_norm"), channels);
                self.attention(p, channels, channels, heads * head_dim, true);
            }
            Mixer::Transformer {
                heads,
                head_dim,
                layers,
                cross_attention_dim,
            } => {
                let dim = heads * head_dim;
                self.norm(&format!("{p}.norm"), channels);
                let projection = |s: &mut Self, name: &str, fin: usize, fout: usize| {
                    if linear_projection {
                        s.linear(&format!("{p}.{name}"), fin, fout, true);
                    } else {
                        s.layer(&format!("{p}.{name}"), vec![fout, fin, 1, 1], true);
                    }
                };
                projection(self, "proj_in", channels, dim);
                for i in 0..layers {
                    let t = format!("{p}.transformer_blocks.{i}");
                    self.norm(&format!("{t}.norm1"), dim);
                    self.attention(&format!("{t}.attn1"), dim, dim, dim, false);
                    self.norm(&format!("{t}.norm2"), dim);
                    self.attention(&format!("{t}.attn2"), dim, cross_attention_dim, dim, false);
                    self.norm(&format!("{t}.norm3"), dim);
                    self.linear(&format!("{t}.ff.net.0.proj"), dim, 8 * dim, true);
                    self.linear(&format!("{t}.ff.net.2"), 4 * dim, dim, true);
                }
                projection(self, "proj_out", dim, channels);
            }
        }
    }
}

/// Every tensor [`UNet::load`] reads for `config`, in load order.
pub fn weight_specs(config: &UNetConfig) -> Vec<WeightSpec> {
    let mut s = Specs::default();
    let c0 = config.block_out_channels[0];
    let temb = config.time_embed_dim;
    let lp = config.use_linear_projection;
    s.linear("time_embedding.linear_1", c0, temb, true);
    s.linear("time_embedding.linear_2", temb, temb, true);
    if let Some(n) = config.num_class_embeds {
        s.push(
            "class_embedding.weight".to_string(),
            vec![n, temb],
            Init::Uniform(3f32.sqrt()),
        );
    }
    s.conv("conv_in", config.in_channels, c0, config.conv_in_kernel);
    for (i, b) in config.down_blocks.iter().enumerate() {
        let p = format!("down_blocks.{i}");
        for j in 0..b.resnets {
            let cin = if j == 0 {
                b.in_channels
            } else {
                b.out_channels
            };
            s.resnet(&format!("{p}.resnets.{j}"), cin, b.out_channels, temb);
            s.mixer(&format!("{p}.attentions.{j}"), b.mixer, b.out_channels, lp);
        }
        if b.resample {
            let c = b.out_channels;
            s.conv(&format!("{p}.downsamplers.0.conv"), c, c, 3);
        }
    }
    if let Some(mid) = &config.mid {
        let c = mid.channels;
        s.resnet("mid_block.resnets.0", c, c, temb);
        for j in 0..mid.layers {
            s.mixer(&format!("mid_block.attentions.{j}"), mid.mixer, c, lp);
            s.resnet(&format!("mid_block.resnets.{}", j + 1), c, c, temb);
        }
    }
    for (i, b) in config.up_blocks.iter().enumerate() {
        let p = format!("up_blocks.{i}");
        for j in 0..b.resnets {
            let skip = if j + 1 == b.resnets {
                b.in_channels
            } else {
                b.out_channels
            };
            let cin = if j == 0 {
                b.prev_output_channels
            } else {
                b.out_channels
            };
            s.resnet(
                &format!("{p}.resnets.{j}"),
                cin + skip,
                b.out_channels,
                temb,
            );
            s.mixer(&format!("{p}.attentions.{j}"), b.mixer, b.out_channels, lp);
        }
        if b.resample {
            let c = b.out_channels;
            s.conv(&format!("{p}.upsamplers.0.conv"), c, c, 3);
        }
    }
    s.norm("conv_norm_out", c0);
    s.conv("conv_out", c0, config.out_channels, config.conv_out_kernel);
    s.0
}

/// Number of parameters of `config`.
pub fn parameter_count(config: &UNetConfig) -> usize {
    weight_specs(config)
        .iter()
        .map(|w| w.shape.iter().product::<usize>())
        .sum()
}

fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The BF16 bits of tensor `index`'s values.
fn values_bf16(spec: &WeightSpec, seed: u64, index: usize) -> Vec<u16> {
    let len: usize = spec.shape.iter().product();
    let key = splitmix64(seed ^ splitmix64(index as u64));
    match spec.init {
        Init::Ones => vec![half::bf16::ONE.to_bits(); len],
        Init::Zeros => vec![0; len],
        Init::Uniform(bound) => (0..len)
            .into_par_iter()
            .with_min_len(1 << 14)
            .map(|e| {
                let bits = splitmix64(key ^ (e as u64).wrapping_mul(0xd6e8_feb8_6659_fd93));
                let u = (bits >> 40) as f32 / (1u64 << 24) as f32; // [0, 1)
                half::bf16::from_f32((2.0 * u - 1.0) * bound).to_bits()
            })
            .collect(),
    }
}

/// Writes random weights for `config` as a BF16 safetensors file at `path`.
pub fn write_random_weights(config: &UNetConfig, path: &Path, seed: u64) -> Result<()> {
    write_random_specs(&weight_specs(config), path, seed)
}

/// Writes the tensors `specs` describes, with values drawn from `seed`, as a BF16
/// safetensors file at `path` (any model's preset: see also `vae::preset`).
pub fn write_random_specs(specs: &[WeightSpec], path: &Path, seed: u64) -> Result<()> {
    let mut header = serde_json::Map::new();
    let mut offset = 0usize;
    for w in specs {
        let bytes = 2 * w.shape.iter().product::<usize>();
        header.insert(
            w.name.clone(),
            json!({"dtype": "BF16", "shape": w.shape, "data_offsets": [offset, offset + bytes]}),
        );
        offset += bytes;
    }
    let mut header = Value::Object(header).to_string().into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    let io = |e: std::io::Error| Error::io(path, "cannot write random weights", e);
    let file = std::fs::File::create(path).map_err(io)?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&(header.len() as u64).to_le_bytes())
        .map_err(io)?;
    out.write_all(&header).map_err(io)?;
    for (index, w) in specs.iter().enumerate() {
        let values = values_bf16(w, seed, index);
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        out.write_all(&bytes).map_err(io)?;
    }
    out.flush().map_err(io)
}

/// A fresh folder under the system's temporary directory.
pub(crate) fn temp_folder() -> Result<PathBuf> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = base.join(format!(
            "diffsteer-preset-{}-{nanos}-{attempt}",
            std::process::id()
        ));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(Error::io(&dir, "cannot create a temporary folder", e)),
        }
    }
    Err(Error::io(
        &base,
        "cannot create a temporary folder",
        std::io::Error::new(std::io::ErrorKind::AlreadyExists, "every name was taken"),
    ))
}

/// A U-Net for `config` with deterministic random weights drawn from `seed`, loaded
/// onto `backend` through the normal safetensors path (via a temporary file that is
/// removed again).
pub fn random_unet(backend: &dyn Backend, config: UNetConfig, seed: u64) -> Result<UNet> {
    let dir = temp_folder()?;
    let path = dir.join("diffusion_pytorch_model.safetensors");
    let result = write_random_weights(&config, &path, seed)
        .and_then(|()| WeightFile::open(&path))
        .and_then(|weights| UNet::load(backend, config, &weights));
    let _ = std::fs::remove_dir_all(&dir);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn fixture(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/models")
            .join(name)
    }

    /// The derived names and shapes are exactly those of real diffusers checkpoints.
    #[test]
    fn specs_match_diffusers_checkpoints() {
        for name in ["unet2d_class", "unet_cond", "unet_cond_linear"] {
            let dir = fixture(name);
            let config = UNetConfig::load(&dir.join("config.json")).unwrap();
            let file = WeightFile::open(dir.join("diffusion_pytorch_model.safetensors")).unwrap();
            let specs = weight_specs(&config);
            let ours: BTreeSet<String> = specs.iter().map(|w| w.name.clone()).collect();
            let theirs: BTreeSet<String> = file.names().into_iter().collect();
            assert_eq!(ours, theirs, "{name}");
            for w in &specs {
                assert_eq!(
                    file.shape(&w.name).as_ref(),
                    Some(&w.shape),
                    "{name}: {}",
                    w.name
                );
            }
        }
    }

    #[test]
    fn random_unet_loads_and_is_deterministic() {
        let cpu = crate::backend::cpu::CpuBackend::new();
        let dir = fixture("unet_cond");
        let config = UNetConfig::load(&dir.join("config.json")).unwrap();
        let a = temp_folder().unwrap();
        write_random_weights(&config, &a.join("x.safetensors"), 7).unwrap();
        write_random_weights(&config, &a.join("y.safetensors"), 7).unwrap();
        let x = std::fs::read(a.join("x.safetensors")).unwrap();
        let y = std::fs::read(a.join("y.safetensors")).unwrap();
        std::fs::remove_dir_all(&a).unwrap();
        assert_eq!(x, y);
        random_unet(&cpu, config, 7).unwrap();
    }

    #[test]
    fn sd15_shape_has_sd15s_parameter_count() {
        let config = config_from_json(&sd15_config_json(64), "sd15").unwrap();
        assert_eq!(config.cross_attention_dim, Some(768));
        // diffusers: UNet2DConditionModel of SD 1.5 has 859,520,964 parameters.
        assert_eq!(parameter_count(&config), 859_520_964);
        sd15_scheduler_config().unwrap();
    }
}

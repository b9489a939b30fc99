//! The VAE against diffusers' AutoencoderKL (tests/fixtures/text/vae_<name>.safetensors,
//! made by tools/make_text_fixtures.py): a 2-level (sd1_tiny, f32), a 3-level
//! (sd2_tiny, f16) and a 4-level VAE (three latent channels, no quant convs,
//! `shift_factor`, two ResNets per level): `Vae::decode` of sampler-space latents
//! against `vae.decode(latents / scaling_factor + shift_factor)`, and the posterior
//! mean and std of `Vae::encode` against `vae.encode(images).latent_dist`.
//! DESIGN.md: ≤ 1e-5 relative L2.

mod common;

use common::assert_close;
use diffsteer::backend::Backend;
use diffsteer::model::vae::{TileSettings, Vae, VaeParts};
use diffsteer::model::weights::WeightFile;
use diffsteer::CpuBackend;

fn check(name: &str) {
    let path = common::fixtures().join(format!("text/vae_{name}.safetensors"));
    let r = WeightFile::open(&path).expect("reference");
    let folder = r.user_metadata("folder").expect("folder").to_string();
    let cpu = CpuBackend::new();
    let vae = Vae::load_dir(
        &cpu,
        common::fixtures().join(&folder),
        VaeParts::EncoderAndDecoder,
    )
    .expect("loading the VAE");
    let tensor = |key: &str| {
        let (shape, values) = r.read_f32(key).expect(key);
        (shape.clone(), cpu.tensor(&shape, values).expect("tensor"))
    };
    let (_, latents) = tensor("latents");
    let (want_shape, want) = r.read_f32("decoded").expect("decoded");
    let out = vae.decode(&cpu, &latents).expect("decode");
    assert_eq!(out.shape(), &want_shape[..], "{name}: decoded shape");
    let err = assert_close(
        &format!("{name} decode"),
        &cpu.to_host(&out).expect("host"),
        &want,
        1e-5,
    );
    eprintln!("{name} decode: rel L2 {err:.2e}");

    // diffusers' tiled decoding (enable_tiling) with its default tiles.
    let (tiled_shape, want_tiled) = r.read_f32("decoded_tiled").expect("decoded_tiled");
    let tiles = TileSettings::for_config(vae.config());
    let out = vae
        .decode_tiled(&cpu, &latents, &tiles)
        .expect("tiled decode");
    assert_eq!(out.shape(), &tiled_shape[..], "{name}: tiled shape");
    let err = assert_close(
        &format!("{name} tiled decode"),
        &cpu.to_host(&out).expect("host"),
        &want_tiled,
        1e-5,
    );
    eprintln!("{name} tiled decode: rel L2 {err:.2e}");

    let (_, images) = tensor("images");
    let posterior = vae.encode(&cpu, &images).expect("encode");
    for (key, got) in [("mean", &posterior.mean), ("std", &posterior.std)] {
        let (shape, want) = r.read_f32(key).expect(key);
        assert_eq!(&posterior.shape[..], &shape[..], "{name} {key} shape");
        let err = assert_close(&format!("{name} encode {key}"), got, &want, 1e-5);
        eprintln!("{name} encode {key}: rel L2 {err:.2e}");
    }
}

#[test]
fn two_level_vae_matches_diffusers() {
    check("sd1_tiny");
}

#[test]
fn three_level_vae_matches_diffusers() {
    check("sd2_tiny");
}

#[test]
fn four_level_vae_without_quant_convs_and_with_shift_matches_diffusers() {
    check("4level");
}

#[test]
fn decoder_only_loads_and_decodes_the_same_but_cannot_encode() {
    let cpu = CpuBackend::new();
    let dir = common::fixtures().join("pipelines/sd1_tiny/vae");
    let full = Vae::load_dir(&cpu, &dir, VaeParts::EncoderAndDecoder).expect("full");
    let decoder = Vae::load_dir(&cpu, &dir, VaeParts::DecoderOnly).expect("decoder only");
    let latents = cpu
        .tensor(
            &[2, 3, 5, 4],
            (0..120).map(|i| (i as f32 * 0.37).sin()).collect(),
        )
        .expect("latents");
    let a = cpu
        .to_host(&full.decode(&cpu, &latents).expect("a"))
        .expect("host");
    let b = cpu
        .to_host(&decoder.decode(&cpu, &latents).expect("b"))
        .expect("host");
    assert_eq!(a, b);
    let e = decoder
        .encode(&cpu, &latents)
        .expect_err("no encoder")
        .to_string();
    assert!(e.contains("without its encoder"), "{e}");
    // A latent with the wrong channel count, or a NaN, is refused.
    let bad = cpu.tensor(&[1, 2, 2, 3], vec![0.0; 12]).expect("bad");
    let e = full.decode(&cpu, &bad).expect_err("refused").to_string();
    assert!(e.contains("[n, h, w, 4]"), "{e}");
    let nan = cpu
        .tensor(&[1, 1, 1, 4], vec![0.0, f32::NAN, 0.0, 0.0])
        .expect("nan");
    let e = full.decode(&cpu, &nan).expect_err("refused").to_string();
    assert!(e.contains("element 1") && e.contains("NaN"), "{e}");
}

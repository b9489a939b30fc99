#!/usr/bin/env python3
"""Reference fixtures for diffsteer's text-to-image pieces: CLIP tokenizer ids, tiny
random CLIP text encoders, tiny random VAEs and two tiny complete Stable Diffusion
pipelines with reference runs (see tests/fixtures/README.md, "Text-to-image").

    /work/venv/bin/python tools/make_text_fixtures.py [--out tests/fixtures] [--only PART ...]

PART is one of: tokenizer (the CLIP vocabulary folders and the tokenizer corpus),
pipelines (the tiny pipelines, their text encoder / VAE references and reference
runs, and the standalone 4-level VAE). Default: both.

Deterministic like tools/make_model_fixtures.py: every random draw comes from a
torch.Generator / random.Random seeded from a fixed string (crc32), reference maths
is float32 on CPU with one thread, safetensors headers are written sorted; two runs
give byte-identical files. Dev-only: CI never runs it; the outputs are committed.
"""

import argparse
import contextlib
import io
import json
import os
import random
import shutil
import struct
import sys
import zlib
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import diffusers  # noqa: E402
import transformers  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import make_clip_tokenizer  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

FULL_TOKENIZER = "clip-tokenizer"
SD2_TOKENIZER = "clip-tokenizer-sd2"
# The tiny pipelines' reduced vocabulary: the first 486 of CLIP's merges, so
# 256 + 256 + 486 + 2 = 1000 symbols (BOS 998, EOS 999).
TINY_MERGES = 486


def gen(tag: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(tag.encode()))
    return g


def randn(shape, tag):
    return torch.randn(shape, generator=gen(tag), dtype=torch.float32)


def save_safetensors(tensors, path, metadata):
    """A safetensors file with a byte-deterministic header (sorted names and metadata,
    compact JSON padded to 8 bytes), written atomically and read back as a check."""
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64", torch.uint8: "U8"}
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        # Flattened first: a size-1 last dimension may keep any stride after contiguous().
        data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    hjson += b" " * (-len(hjson) % 8)
    tmp = str(path) + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata() == metadata
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


def write_json(path, value):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(value, f, indent=1, sort_keys=True, ensure_ascii=False)
        f.write("\n")


# ------------------------------------------------------------------------ tokenizer

TRICKY = [
    "",
    " ",
    "   \t\n  ",
    "a photograph of an astronaut riding a horse",
    "A PHOTOGRAPH of an Astronaut RIDING a HoRsE",
    "don't stop, I'm here; we'll see. they've it's she'd you're",
    "DON'T I'M WE'LL THEY'VE",
    "rock'n'roll o'clock ''quoted'' 's 't",
    "café déjà vu naïve façade Ångström crème brûlée",
    "e\u0301 combining a\u0308 o\u0302",  # NFC composes these
    "Straße ﬁre ﬂower ǅ İstanbul",
    "ΟΔΟΣ Σίσυφος ΣΣ",
    "東京タワーの夜景、水墨画のスタイル",
    "한국어 프롬프트 테스트",
    "Москва зимой, масляная живопись",
    "عربي العربية",
    "emoji 🐱‍👤 🎨🖌️ ❤️ 👍🏽 🇯🇵",
    "numbers 12345 3.14159 1,000,000 2nd 3rd 10x 4k 8K",
    "punctuation ... ?!?! --- ((( ))) [[x]] {y} <z> ~~~ ***",
    "!!!wow!!! hello! world!! (masterpiece:1.2), [bad]",
    "tabs\tand\nnewlines\r\nand    spaces\u00a0nbsp\u3000ideographic",
    "\u001c\u001d\u001e\u001f separators \u0085 nel \u200b zwsp \ufeff bom",
    "&amp; &lt;b&gt; &quot;quoted&quot; &#39;apos&#39;",
    "<|startoftext|> literal <|endoftext|> tokens <|ENDOFTEXT|> <|StartOfText|>",
    "x<|endoftext|>y<|endoftext|><|endoftext|>",
    "mixed CaSe WoRdS and UPPER lower MiXeD123abc",
    "a,b;c:d'e\"f/g\\h|i@j#k$l%m^n&o*p",
    "snake_case kebab-case camelCase PascalCase dot.case",
    "http://example.com/path?q=1&r=2 user@example.com",
    "¡hola! ¿qué tal? «guillemets» „quotes“ ‘single’ “double”",
    "\u0000nul \u0007bell \u001bescape",
    "soft\u00adhyphen zero\u200dwidth joiner",
    "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３",
    "𝔉𝔯𝔞𝔨𝔱𝔲𝔯 𝐛𝐨𝐥𝐝 math alphanumerics",
    "a " * 100,
    "masterpiece, best quality, highly detailed, " * 8,
    " ".join(f"word{i}" for i in range(90)),
    "supercalifragilisticexpialidocious" * 3,
    "1234567890" * 10,
    "!" * 80,
]

FUZZ_POOLS = [
    "abcdefghijklmnopqrstuvwxyz",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "0123456789",
    " \t\n\u00a0\u3000",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "àáâãäåæçèéêëìíîïñòóôõöøùúûüýÿßÀÉÎÕÜ",
    "\u0301\u0308\u0302\u0327",
    "αβγδεζηθΣσςΩωабвгдежзЖЩЯ",
    "日本語中文漢字ひらがなカタカナ한글",
    "😀🐱🎨❤️👍🏽\u200d🇯🇵",
    "İıŁłŒœǅǆﬁﬂ",
]
FUZZ_PIECES = ["'s", "'T", "'re", "'LL", "don't", "<|endoftext|>", "<|startoftext|>", "&amp;", "!!", "...", "..."]


def fuzz_corpus(count):
    rnd = random.Random(zlib.crc32(b"tokenizer/fuzz"))
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rnd.randint(1, 14)):
            if rnd.random() < 0.15:
                parts.append(rnd.choice(FUZZ_PIECES))
            else:
                pool = rnd.choice(FUZZ_POOLS)
                parts.append("".join(rnd.choice(pool) for _ in range(rnd.randint(1, 8))))
        out.append("".join(parts))
    return out


def tokenizer_variants(out):
    """The tokenizer folders the corpus runs through: (name, folder relative to out)."""
    return [
        ("sd1", FULL_TOKENIZER),
        ("sd2", SD2_TOKENIZER),
        ("sd1_tiny", "pipelines/sd1_tiny/tokenizer"),
        ("sd2_tiny", "pipelines/sd2_tiny/tokenizer"),
    ]


def make_tokenizer_folders(out):
    """The full vocabulary once, SD 1.x style; the SD 2.x pad variant beside it, its
    vocab.json and merges.txt relative symlinks to the same files."""
    vocab, merges = make_clip_tokenizer.build(make_clip_tokenizer.FULL_MERGES)
    full = out / FULL_TOKENIZER
    make_clip_tokenizer.write(full, vocab, merges, make_clip_tokenizer.EOS)
    sd2 = out / SD2_TOKENIZER
    if sd2.exists():
        shutil.rmtree(sd2)
    make_clip_tokenizer.write(sd2, vocab, merges, "!")
    for name in ("vocab.json", "merges.txt"):
        (sd2 / name).unlink()
        (sd2 / name).symlink_to(Path("..") / FULL_TOKENIZER / name)
    make_clip_tokenizer.check(full, vocab, make_clip_tokenizer.EOS, True)
    make_clip_tokenizer.check(sd2, vocab, "!", False)


def make_tokenizer_fixture(out):
    corpus = TRICKY + fuzz_corpus(60)
    variants = tokenizer_variants(out)
    tokenizers = {}
    for name, folder in variants:
        path = out / folder
        assert path.is_dir(), f"{path} is missing (run the pipelines part first)"
        tokenizers[name] = transformers.CLIPTokenizer.from_pretrained(str(path))
    cases = []
    for prompt in corpus:
        case = {"prompt": prompt}
        for name, tok in tokenizers.items():
            # Exactly the call diffusers' encode_prompt makes.
            padded = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True)["input_ids"]
            full = tok(prompt)["input_ids"]
            assert len(padded) == 77
            # Stored without the padding (reconstructible: BOS, the tokens and EOS fill
            # min(full length, 77) places, pad_id the rest), checked here.
            end = min(len(full), 77)
            kept = padded[:end]
            assert kept[-1] == tok.eos_token_id
            assert kept + [tok.pad_token_id] * (77 - end) == padded
            case[name] = {"ids": kept, "full_length": len(full)}
        cases.append(case)
    fixture = {
        "transformers_version": transformers.__version__,
        "call": 'tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True)',
        "tokenizers": {
            name: {"folder": folder, "pad_id": tokenizers[name].pad_token_id, "max_length": 77} for name, folder in variants
        },
        "note": "ids: the first min(full_length, 77) of the padded 77 ids (the rest is pad_id); "
        "full_length: the untruncated length with BOS and EOS",
        "cases": cases,
    }
    # One case per line: small, and a diff shows which prompts changed.
    cases_text = ",\n".join(json.dumps(c, ensure_ascii=False, separators=(",", ":"), sort_keys=True) for c in cases)
    head = json.dumps({k: v for k, v in fixture.items() if k != "cases"}, ensure_ascii=False, indent=1, sort_keys=True)
    with open(out / "text" / "tokenizer_cases.json", "w", encoding="utf-8") as f:
        f.write(head[:-2] + ',\n "cases": [\n' + cases_text + "\n ]\n}\n")
    assert json.load(open(out / "text" / "tokenizer_cases.json", encoding="utf-8")) == fixture
    truncated = sum(c["sd1"]["full_length"] > 77 for c in cases)
    print(f"tokenizer: {len(cases)} prompts x {len(variants)} tokenizers ({truncated} truncated)")


# --------------------------------------------------------------- model building

PERTURB = 0.1


def perturb_(model, tag):
    """p += PERTURB·randn·std(p) (or ±≥0.01 for constant-initialised tensors), so no
    norm weight is exactly 1 and no bias exactly 0: a loader cannot fake one."""
    g = gen("perturb/" + tag)
    with torch.no_grad():
        for _, p in sorted(model.named_parameters()):
            std = p.std().item() if p.numel() > 1 else 0.0
            delta = PERTURB * (std if std > 0 else 1.0) * torch.randn(p.shape, generator=g, dtype=p.dtype)
            if std == 0:
                delta = delta.sign() * delta.abs().clamp(min=0.01)
            p.add_(delta)


def scale_(model, names, factor):
    """Multiplies the parameters whose name contains one of `names` by `factor`."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if any(n in name for n in names):
                p.mul_(factor)


def rel(a, b):
    a, b = a.double(), b.double()
    return ((a - b).norm() / b.norm()).item()


# The tiny pipelines. Latents are 8 x 12 (non-square on purpose); images 16 x 24 (SD1:
# a 2-level VAE) and 32 x 48 (SD2: 3 levels).
LATENT_H, LATENT_W = 8, 12

PIPELINES = {
    "sd1_tiny": dict(
        text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4, hidden_act="quick_gelu"),
        text_dtype=torch.float16,
        text_layout="transformers5",  # names as transformers 5 saves them (no text_model.)
        pad="<|endoftext|>",
        tokenizer_format="legacy",  # vocab.json + merges.txt + special_tokens_map.json (SD 1.5's folders)
        unet=dict(
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=2,  # 2 heads of 8 (a head COUNT in diffusers' naming)
            norm_num_groups=8,
        ),
        unet_dtype=torch.float16,
        vae=dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
        vae_dtype=torch.float32,
        scheduler=dict(
            _class_name="DDIMScheduler",
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="epsilon",
            timestep_spacing="leading",
            num_train_timesteps=1000,
        ),
    ),
    "sd2_tiny": dict(
        text=dict(hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu"),
        text_dtype=torch.bfloat16,
        text_layout="text_model",  # text_model.* names + position_ids, as on the Hub
        pad="!",
        tokenizer_format="saved",  # what transformers 5 save_pretrained writes: tokenizer.json
        unet=dict(
            block_out_channels=(16, 32),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            attention_head_dim=(2, 4),  # per-block head COUNTS (diffusers' naming): 8 wide each
            use_linear_projection=True,
            upcast_attention=True,
            norm_num_groups=8,
        ),
        unet_dtype=torch.bfloat16,
        vae=dict(block_out_channels=(8, 8, 16), layers_per_block=1, norm_num_groups=4),
        vae_dtype=torch.float16,
        scheduler=dict(
            _class_name="DDIMScheduler",
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            clip_sample=False,
            set_alpha_to_one=False,
            steps_offset=1,
            prediction_type="v_prediction",
            timestep_spacing="leading",
            num_train_timesteps=1000,
        ),
    ),
}


def build_text_encoder(name, spec):
    cfg = transformers.CLIPTextConfig(
        vocab_size=TINY_VOCAB,
        max_position_embeddings=77,
        bos_token_id=TINY_VOCAB - 2,
        eos_token_id=TINY_VOCAB - 1,
        pad_token_id=TINY_VOCAB - 1,
        projection_dim=spec["text"]["hidden_size"],
        **spec["text"],
    )
    torch.manual_seed(zlib.crc32(("init/text/" + name).encode()))
    model = transformers.CLIPTextModel(cfg).eval()
    # transformers initialises embeddings with std 0.02: lift them so that the
    # layers' updates and the embeddings are of one size and every layer matters.
    scale_(model, ["token_embedding", "position_embedding"], 25.0)
    perturb_(model, "text/" + name)
    return model.to(spec["text_dtype"])


def build_vae(tag, vae_kwargs, latent_channels=4, sample_size=None, **extra):
    """sample_size (default: the pipelines' image height) is also the tile size of
    diffusers' tiled decoding."""
    levels = len(vae_kwargs["block_out_channels"])
    torch.manual_seed(zlib.crc32(("init/vae/" + tag).encode()))
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * levels,
        up_block_types=("UpDecoderBlock2D",) * levels,
        latent_channels=latent_channels,
        sample_size=sample_size or LATENT_H * 2 ** (levels - 1),
        **vae_kwargs,
        **extra,
    ).eval()
    perturb_(vae, "vae/" + tag)
    return vae


def build_unet(name, spec, cross_dim):
    torch.manual_seed(zlib.crc32(("init/unet/" + name).encode()))
    unet = diffusers.UNet2DConditionModel(
        sample_size=LATENT_H, in_channels=4, out_channels=4, cross_attention_dim=cross_dim, **spec["unet"]
    ).eval()
    perturb_(unet, "unet/" + name)
    # Output std 1 on noise-like inputs, as a trained model's: then the prediction,
    # not the initial noise alone, shapes the trajectory and the schedulers differ.
    with torch.no_grad():
        x = randn((2, 4, LATENT_H, LATENT_W), f"unet/{name}/probe-x")
        ctx = randn((2, 77, cross_dim), f"unet/{name}/probe-ctx")
        std = unet(x, torch.tensor([500.0, 500.0]), ctx).sample.std().item()
    scale_(unet, ["conv_out"], 1.0 / std)
    return unet.to(spec["unet_dtype"])


def write_tokenizer(folder, pad, fmt):
    """The tiny vocabulary (CLIP's first TINY_MERGES merges), SD 1.5's file layout, or
    as transformers 5 saves a CLIPTokenizer (tokenizer.json + tokenizer_config.json)."""
    vocab, merges = make_clip_tokenizer.build(TINY_MERGES)
    assert len(vocab) == TINY_VOCAB
    if folder.exists():
        shutil.rmtree(folder)
    make_clip_tokenizer.write(folder, vocab, merges, pad)
    if fmt == "saved":
        tok = transformers.CLIPTokenizer.from_pretrained(str(folder))
        shutil.rmtree(folder)
        tok.save_pretrained(str(folder))
        # Only the files transformers writes, with no machine-specific entries.
        config = json.load(open(folder / "tokenizer_config.json"))
        for key in ("is_local", "local_files_only", "name_or_path"):
            config.pop(key, None)
        write_json(folder / "tokenizer_config.json", config)
        assert sorted(os.listdir(folder)) == ["tokenizer.json", "tokenizer_config.json"], os.listdir(folder)


TINY_VOCAB = 1000


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def nchw(t):
    return t.permute(0, 3, 1, 2).contiguous()


def text_prompts():
    """Every prompt and negative prompt of the reference runs (one far over 77
    tokens, one empty): the text-encoder fixture holds the embeddings the runs used."""
    return sorted(set(RUN["prompts"] + RUN["negative_prompts"]))


def encode_clip_skip(text_encoder, ids, clip_skip):
    """diffusers' encode_prompt for clip_skip = N, line for line: hidden_states[-(N + 1)]
    through the final layer norm. (diffusers 0.42.1 reaches the norm through
    `text_encoder.text_model`, which transformers 5's CLIPTextModel no longer has, so
    `encode_prompt(clip_skip=N)` itself raises AttributeError with this pair.)"""
    hidden = text_encoder(ids, output_hidden_states=True).hidden_states
    return text_encoder.final_layer_norm(hidden[-(clip_skip + 1)])


def make_text_encoder_fixture(out, name, pipe):
    """The pipeline's text encoder on four prompts: diffusers' encode_prompt (clip_skip
    None), and clip_skip 1 and 2 as encode_prompt computes them."""
    prompts = text_prompts()
    ids = pipe.tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    tensors = {"input_ids": ids.to(torch.int64)}
    with torch.no_grad():
        plain = pipe.text_encoder(ids)[0]
        embeds, _ = pipe.encode_prompt(prompts, "cpu", 1, False)
        tensors["last_hidden_state"] = embeds.float()
        for skip in (1, 2):
            tensors[f"clip_skip_{skip}"] = encode_clip_skip(pipe.text_encoder, ids, skip).float()
    # diffusers feeds the U-Net the plain last hidden state (SD2's "penultimate layer"
    # is already the last layer of its shipped text encoder).
    assert torch.equal(tensors["last_hidden_state"], plain)
    for k in ("clip_skip_1", "clip_skip_2"):
        d = rel(tensors[k], tensors["last_hidden_state"])
        assert d > 0.05, f"{name} {k} is too close to the last hidden state ({d:.3g}): the layers barely matter"
    meta = {
        "folder": f"pipelines/{name}/text_encoder",
        "tokenizer": f"pipelines/{name}/tokenizer",
        "prompts": json.dumps(prompts, ensure_ascii=False),
        "transformers_version": transformers.__version__,
        "diffusers_version": diffusers.__version__,
    }
    save_safetensors(tensors, out / "text" / f"{name}_text_encoder.safetensors", meta)
    stds = {k: round(v.std().item(), 3) for k, v in tensors.items() if k != "input_ids"}
    print(f"{name} text encoder: std {stds}")


def make_vae_fixture(out, tag, vae, folder, latent_hw=(LATENT_H, LATENT_W)):
    """decode(latents / scaling + shift) of two sampler-space latents, and the posterior
    mean / std of two images; everything NHWC."""
    cfg = vae.config
    levels = len(cfg.block_out_channels)
    f = 2 ** (levels - 1)
    lh, lw = latent_hw
    latents = randn((2, lh, lw, cfg.latent_channels), f"vae/{tag}/latents")
    images = (0.6 * randn((2, lh * f, lw * f, 3), f"vae/{tag}/images")).clamp(-1, 1)
    shift = cfg.shift_factor or 0.0
    with torch.no_grad():
        decoded = vae.decode(nchw(latents) / cfg.scaling_factor + shift).sample
        posterior = vae.encode(nchw(images)).latent_dist
        # diffusers' tiled decoding with its default tiles (the config's sample_size,
        # here smaller than the latents on purpose): several tiles, partial ones at
        # the edges.
        vae.enable_tiling()
        assert vae.tile_latent_min_size < max(lh, lw), (tag, vae.tile_latent_min_size)
        tiled = vae.decode(nchw(latents) / cfg.scaling_factor + shift).sample
        vae.disable_tiling()
    assert rel(tiled, decoded) > 1e-3, f"{tag}: tiling changed nothing"
    tensors = {
        "latents": latents,
        "decoded": nhwc(decoded),
        "decoded_tiled": nhwc(tiled),
        "images": images,
        "mean": nhwc(posterior.mean),
        "std": nhwc(posterior.std),
    }
    meta = {"folder": folder, "diffusers_version": diffusers.__version__}
    save_safetensors(tensors, out / "text" / f"vae_{tag}.safetensors", meta)
    print(
        f"vae {tag}: decoded std {decoded.std():.3f} (|x| > 1: {(decoded.abs() > 1).float().mean():.1%}), "
        f"mean std {posterior.mean.std():.3f}, std mean {posterior.std.mean():.3f}"
    )


SCHEDULERS = [
    ("ddim", "DDIMScheduler"),
    ("dpmpp2m", "DPMSolverMultistepScheduler"),
    ("euler", "EulerDiscreteScheduler"),
]
RUN = dict(
    prompts=["a photograph of an astronaut riding a horse", "Café déjà vu, masterpiece!! " * 12],
    negative_prompts=["", "blurry, low quality"],
    seeds=[11, 12],
    steps=8,
    guidance_scale=5.0,
)


def scheduler_config_json(scheduler):
    """The resolved config; diffusers' `_use_default_values` is a set turned into a
    list in hash order, so it is sorted to keep the file byte-stable."""
    config = dict(scheduler.config)
    if "_use_default_values" in config:
        config["_use_default_values"] = sorted(config["_use_default_values"])
    return json.dumps(config, sort_keys=True, default=str)


def make_reference_runs(out, name, pipe, image_size):
    import compare_diffusers

    compare_diffusers.check_philox()
    height, width = image_size
    noise = np.stack([compare_diffusers.initial_noise(s, 4, LATENT_H, LATENT_W) for s in RUN["seeds"]])
    base_config = dict(pipe.scheduler.config)
    for sched_name, cls_name in SCHEDULERS:
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base_config)

        def run(output_type, perturb=False):
            hook = None
            if perturb:
                g = gen(f"probe/{name}/{sched_name}")

                def nudge(module, args, output):
                    # The pipeline calls the U-Net with return_dict=False: a tuple.
                    sample = output[0] if isinstance(output, tuple) else output.sample
                    sample.mul_(1 + 1e-6 * torch.randn(sample.shape, generator=g))

                hook = pipe.unet.register_forward_hook(nudge)
            try:
                with torch.no_grad():
                    return pipe(
                        prompt=RUN["prompts"],
                        negative_prompt=RUN["negative_prompts"],
                        height=height,
                        width=width,
                        num_inference_steps=RUN["steps"],
                        guidance_scale=RUN["guidance_scale"],
                        latents=torch.from_numpy(noise.copy()),
                        output_type=output_type,
                    ).images
            finally:
                if hook is not None:
                    hook.remove()

        images = torch.from_numpy(run("np"))
        final_latents = run("latent")
        probe = torch.from_numpy(run("np", perturb=True))
        moved = rel(probe, images)
        assert moved < 1e-5, f"{name} {sched_name}: a 1e-6 nudge of the U-Net output moves the images by {moved:.2e}"
        clamped = ((images == 0) | (images == 1)).float().mean().item()
        std = images.std().item()
        assert clamped < 0.05 and std > 0.05, f"{name} {sched_name}: images saturated ({clamped:.1%}) or flat (std {std:.3f})"
        pipe.scheduler.set_timesteps(RUN["steps"])
        tensors = {
            "initial_noise": torch.from_numpy(noise).permute(0, 2, 3, 1).contiguous(),
            "final_latents": nhwc(final_latents),
            "images": images.float(),
            "timesteps": pipe.scheduler.timesteps.to(torch.float32),
        }
        meta = {
            "pipeline": f"pipelines/{name}",
            "prompts": json.dumps(RUN["prompts"], ensure_ascii=False),
            "negative_prompts": json.dumps(RUN["negative_prompts"], ensure_ascii=False),
            "seeds": json.dumps(RUN["seeds"]),
            "num_inference_steps": str(RUN["steps"]),
            "guidance_scale": str(RUN["guidance_scale"]),
            "height": str(height),
            "width": str(width),
            "scheduler_class": cls_name,
            "scheduler_config": scheduler_config_json(pipe.scheduler),
            "init_noise_sigma": str(float(pipe.scheduler.init_noise_sigma)),
            "diffusers_version": diffusers.__version__,
        }
        save_safetensors(tensors, out / "text" / f"{name}__{sched_name}.safetensors", meta)
        print(
            f"{name} {sched_name}: image mean {images.mean():.3f} std {std:.3f} clamped {clamped:.2%}, "
            f"final latent std {final_latents.std():.3f}, probe {moved:.1e}"
        )
    pipe.scheduler = diffusers.DDIMScheduler.from_config(base_config)


def make_pipelines(out):
    for name, spec in PIPELINES.items():
        pdir = out / "pipelines" / name
        hidden = spec["text"]["hidden_size"]
        scratch = out / "pipelines" / f".{name}-tokenizer"
        write_tokenizer(scratch, spec["pad"], "legacy")
        pipe = diffusers.StableDiffusionPipeline(
            vae=build_vae(name, spec["vae"]).to(spec["vae_dtype"]),
            text_encoder=build_text_encoder(name, spec),
            tokenizer=transformers.CLIPTokenizer.from_pretrained(str(scratch)),
            unet=build_unet(name, spec, hidden),
            scheduler=diffusers.DDIMScheduler.from_config(spec["scheduler"]),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
        shutil.rmtree(scratch)
        if pdir.exists():
            shutil.rmtree(pdir)
        pipe.save_pretrained(str(pdir), safe_serialization=True)
        write_tokenizer(pdir / "tokenizer", spec["pad"], spec["tokenizer_format"])
        if spec["text_layout"] == "text_model":
            # The layout of the text encoders on the Hub (older transformers): names
            # under `text_model.` plus the saved `position_ids` buffer.
            path = pdir / "text_encoder" / "model.safetensors"
            weights = {"text_model." + k: v for k, v in load_file(str(path)).items()}
            weights["text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64).unsqueeze(0)
            save_safetensors(weights, path, {"format": "pt"})
        # The reference: what diffusers loads from the folder, in f32.
        pipe = diffusers.StableDiffusionPipeline.from_pretrained(str(pdir), torch_dtype=torch.float32).to("cpu")
        pipe.set_progress_bar_config(disable=True)
        make_text_encoder_fixture(out, name, pipe)
        make_vae_fixture(out, name, pipe.vae, f"pipelines/{name}/vae")
        f = pipe.vae_scale_factor
        make_reference_runs(out, name, pipe, (LATENT_H * f, LATENT_W * f))
    # A standalone 4-level VAE with the options SD's VAEs leave at their defaults.
    vdir = out / "vae" / "4level"
    vae = build_vae(
        "4level",
        dict(block_out_channels=(8, 8, 8, 16), layers_per_block=2, norm_num_groups=4),
        latent_channels=3,
        sample_size=32,  # tiles of 4 latent pixels over its 4 x 6 latents: a 1-pixel-high tile row too
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.1,
        scaling_factor=0.3,
        force_upcast=False,
    )
    if vdir.exists():
        shutil.rmtree(vdir)
    vae.save_pretrained(str(vdir), safe_serialization=True)
    vae = diffusers.AutoencoderKL.from_pretrained(str(vdir), torch_dtype=torch.float32).eval()
    make_vae_fixture(out, "4level", vae, "vae/4level", latent_hw=(4, 6))


# ------------------------------------------------------------------------- main

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "tests/fixtures"))
    p.add_argument("--only", nargs="*", choices=["tokenizer", "pipelines"])
    args = p.parse_args()
    out = Path(args.out)
    (out / "text").mkdir(parents=True, exist_ok=True)
    parts = args.only or ["tokenizer", "pipelines"]
    if "tokenizer" in parts:
        make_tokenizer_folders(out)
    if "pipelines" in parts:
        make_pipelines(out)
    if "tokenizer" in parts:
        make_tokenizer_fixture(out)


if __name__ == "__main__":
    main()

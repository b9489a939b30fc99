#!/usr/bin/env python3
"""Evaluate the shipped text-to-image digits model (weights/digits-text) as diffusers runs
it (dev-only; PyTorch on CPU).

    /work/venv/bin/python tools/eval_digits_text.py [--model weights/digits-text] [--cfg 4]

Every image is made by diffusers' own `StableDiffusionPipeline.from_pretrained(model,
torch_dtype=float32)` with the folder's scheduler (DDIM) and the ENGINE's initial noise:
image i of a prompt starts from the Philox normals of seed + i (tools/engine_noise.py),
so these are the images the engine makes for the same prompt, seed and settings. Images
are rounded to 8 bits as the engine's PNGs are, then read by an independent JUDGE: a CNN
(BatchNorm, 3 stages, global average pooling) trained here on the 4,500 training digits
with heavy augmentation (affine, stroke dilation/erosion, blur, noise); no part of the
model's training ever used it or any other classifier. It is cached (git-ignored) under
target/.

Measured:
  1. prompt accuracy: every digit under phrasings from the training grammar and under
     phrasings held out of training (train_digits_text.HELD_OUT_FRAMES: neither the frames
     nor their words were ever in a caption), per digit and per phrasing;
  2. a CFG sweep on a subset, to pick the default guidance;
  3. diversity ratio: mean pairwise L2 between the samples of a digit / the same for the
     50 held-out real digits of it (1.0 = as varied as real digits);
  4. negative prompt: "a handwritten digit" with negative_prompt "seven" vs without it
     (share of sevens, spread over the other digits);
  5. thickness: "a thick seven" vs "a thin seven" (mean ink ratio, still sevens), and the
     same for every digit.
Results go to stdout and --json; grids of samples to --grid-dir.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from engine_noise import pipeline_latents  # noqa: E402
from train_digits import gaussian_blur, load_digits, random_affine, set_seeds  # noqa: E402
from train_digits_text import HELD_OUT_FRAMES, NUMBER_WORDS, ink, pad32  # noqa: E402

JUDGE_CACHE = ROOT / "target" / "digits-text-judge.pt"

# Phrasings from the training grammar ({n}: numeral, {w}: word)
SEEN_FRAMES = ["{n}", "{w}", "a handwritten {w}", "the digit {n}", "number {w} written by hand", "a photo of a {n}"]


def fill(frame, d):
    from train_digits_text import fix_articles

    return fix_articles(frame.format(n=d, w=NUMBER_WORDS[d], W=NUMBER_WORDS[d].capitalize()))


# ---------------------------------------------------------------------------------------
# the judge
# ---------------------------------------------------------------------------------------
def make_judge():
    def block(cin, cout):
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

    return nn.Sequential(
        *block(1, 32), *block(32, 32), nn.MaxPool2d(2),
        *block(32, 64), *block(64, 64), nn.MaxPool2d(2),
        *block(64, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, 10))


def judge_augment(x28, g):
    """Affine (rotation 15 deg, scale 0.85-1.15, shift 2 px), then per image one of:
    nothing / dilation (thicker strokes) / erosion (thinner) / blur, then maybe noise."""
    B = len(x28)
    x = pad32(random_affine(x28, g, max_rot_deg=15.0, scale=(0.85, 1.15), max_shift_px=2.0))
    kind = torch.randint(0, 5, (B,), generator=g)
    dil = F.max_pool2d(x, 3, 1, 1)
    ero = -F.max_pool2d(-x, 3, 1, 1)
    a = torch.rand(B, 1, 1, 1, generator=g) * 0.7 + 0.3
    x = torch.where((kind == 1).view(B, 1, 1, 1), a * dil + (1 - a) * x, x)
    x = torch.where((kind == 2).view(B, 1, 1, 1), a * ero + (1 - a) * x, x)
    sig = torch.where(kind == 3, 0.5 + 0.7 * torch.rand(B, generator=g), torch.zeros(B))
    x = blur32(x, sig)
    m = (torch.rand(B, generator=g) < 0.25).view(B, 1, 1, 1)
    return torch.where(m, x + 0.15 * torch.rand(B, 1, 1, 1, generator=g) * torch.randn(x.shape, generator=g), x)


def blur32(x, sigma):
    # train_digits.gaussian_blur is written for 28 x 28: blur the centre, where the digit is
    inner = x[:, :, 2:30, 2:30]
    out = x.clone()
    out[:, :, 2:30, 2:30] = gaussian_blur(inner.contiguous(), sigma)
    return out


def get_judge(x28, y, log):
    net = make_judge()
    if JUDGE_CACHE.exists():
        net.load_state_dict(torch.load(JUDGE_CACHE))
        net.eval()
        log(f"judge: loaded {JUDGE_CACHE}")
        return net
    set_seeds(4242)
    g = torch.Generator().manual_seed(4242)
    epochs, bs = 12, 64
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=5e-4)
    steps = epochs * (len(x28) // bs)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.2)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(x28), generator=g)
        tot = 0.0
        for i in range(len(x28) // bs):
            idx = perm[i * bs:(i + 1) * bs]
            loss = F.cross_entropy(net(judge_augment(x28[idx], g)), y[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sch.step()
            tot += loss.item()
        log(f"  judge epoch {ep + 1}/{epochs}: loss {tot / (len(x28) // bs):.4f}")
    net.eval()
    JUDGE_CACHE.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), JUDGE_CACHE)
    log(f"judge: trained in {time.time() - t0:.0f} s, cached at {JUDGE_CACHE}")
    return net


@torch.no_grad()
def judge_predict(net, x, bs=500):
    return torch.cat([net(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])


# ---------------------------------------------------------------------------------------
# sampling through diffusers' pipeline
# ---------------------------------------------------------------------------------------
class Sampler:
    def __init__(self, model, steps, seed, batch_rows):
        from diffusers import StableDiffusionPipeline

        self.pipe = StableDiffusionPipeline.from_pretrained(model, dtype=torch.float32)
        self.pipe.set_progress_bar_config(disable=True)
        self.steps, self.seed, self.batch_rows = steps, seed, batch_rows
        self.images = 0
        self.seconds = 0.0

    @torch.no_grad()
    def __call__(self, prompts, n, cfg, negative=None):
        """[len(prompts), n, 1, 32, 32] in [-1, 1], 8-bit rounded; image i of every prompt
        from the engine's noise for seed + i."""
        per_call = max(1, self.batch_rows // n)
        out = []
        t0 = time.time()
        for i in range(0, len(prompts), per_call):
            chunk = prompts[i:i + per_call]
            lat = pipeline_latents(self.pipe, self.seed, n).repeat(len(chunk), 1, 1, 1)
            kw = {}
            if negative is not None:
                kw["negative_prompt"] = [negative] * len(chunk)
            img = self.pipe(chunk, num_images_per_prompt=n, guidance_scale=cfg, num_inference_steps=self.steps,
                            latents=lat, output_type="np", **kw).images
            img = np.round(img * 255.0) / 255.0  # as the engine's 8-bit PNG
            x = torch.from_numpy(img).float().permute(0, 3, 1, 2) * 2 - 1
            out.append(x.view(len(chunk), n, 1, 32, 32))
        self.seconds += time.time() - t0
        self.images += len(prompts) * n
        return torch.cat(out)


def pairwise_mean(x):
    f = x.flatten(1)
    n = len(f)
    return (torch.cdist(f, f).sum() / (n * (n - 1))).item()


def save_grid(x, path, scale=3):
    from PIL import Image

    rows, cols = x.shape[:2]
    a = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()
    pad = 2
    img = np.full((rows * (32 + pad) + pad, cols * (32 + pad) + pad), 60, dtype=np.uint8)
    for r in range(rows):
        for c in range(cols):
            img[pad + r * 34: pad + r * 34 + 32, pad + c * 34: pad + c * 34 + 32] = a[r, c, 0]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((img.shape[1] * scale, img.shape[0] * scale), Image.NEAREST).save(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "weights/digits-text"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=4.0, help="the guidance of the main measurements")
    ap.add_argument("--sweep", default="2,3,4,5,7", help="CFG values of the sweep ('' to skip)")
    ap.add_argument("--sweep-n", type=int, default=10, help="samples per digit and phrasing in the sweep")
    ap.add_argument("--n", type=int, default=20, help="samples per digit and phrasing")
    ap.add_argument("--n-negative", type=int, default=200)
    ap.add_argument("--n-thick", type=int, default=50)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-rows", type=int, default=100, help="images per pipeline call")
    ap.add_argument("--quick", action="store_true", help="fewer samples (a checkpoint check)")
    ap.add_argument("--json", default=str(ROOT / "target/digits-text-eval.json"))
    ap.add_argument("--grid-dir", default=str(ROOT / "target/digits-text-eval"))
    args = ap.parse_args()
    if args.quick:
        args.n, args.n_negative, args.n_thick, args.sweep = 8, 80, 20, ""
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    x28, y, x28_held, y_held = load_digits()
    held32 = pad32(x28_held)
    judge = get_judge(x28, y, log)
    acc_held = (judge_predict(judge, held32) == y_held).float().mean().item()
    dil = F.max_pool2d(held32, 3, 1, 1)
    acc_dil = (judge_predict(judge, dil) == y_held).float().mean().item()
    log(f"judge on the 500 held-out digits: {100 * acc_held:.1f}% (dilated strokes: {100 * acc_dil:.1f}%)")
    res = {"settings": vars(args), "judge": {"held_out": acc_held, "held_out_dilated": acc_dil}}

    sampler = Sampler(args.model, args.steps, args.seed, args.batch_rows)
    pipe = sampler.pipe
    res["model"] = {"scheduler": type(pipe.scheduler).__name__, "vae_scaling_factor": pipe.vae.config.scaling_factor}
    # tokenizer: case does not matter (CLIP lower-cases), so "Seven" gives the images of "seven"
    tk = pipe.tokenizer
    assert tk("A Handwritten SEVEN").input_ids == tk("a handwritten seven").input_ids
    # the shipped tokenizer folder against open_clip's tokenizer (CLIP's reference BPE)
    from make_clip_tokenizer import CORPUS
    from train_digits_text import check_tokenizer

    probe = [fill(f, d) for f in SEEN_FRAMES + HELD_OUT_FRAMES for d in range(10)] + CORPUS + [
        "a handwritten digit", "seven", "a thick seven", "a thin seven", "",
        "a photograph of an astronaut riding a horse on the moon, trending on artstation, 8k"]
    res["tokenizer_prompts_checked"] = check_tokenizer(tk, probe)
    log(f"tokenizer: same ids as open_clip.tokenize on {res['tokenizer_prompts_checked']} prompts")

    # VAE round trip of held-out digits, read by the judge
    with torch.no_grad():
        rec = pipe.vae.decode(pipe.vae.encode(held32).latent_dist.mean).sample.clamp(-1, 1)
    res["vae_roundtrip_judge"] = (judge_predict(judge, rec) == y_held).float().mean().item()
    log(f"judge on VAE reconstructions of the held-out digits: {100 * res['vae_roundtrip_judge']:.1f}%")

    def accuracy(frames, n, cfg, grid=None):
        prompts = [fill(f, d) for f in frames for d in range(10)]
        x = sampler(prompts, n, cfg).view(len(frames), 10, n, 1, 32, 32)
        pred = judge_predict(judge, x.flatten(0, 2)).view(len(frames), 10, n)
        ok = pred == torch.arange(10).view(1, 10, 1)
        return x, ok

    # 2. CFG sweep (a subset: one training phrasing, one held-out phrasing)
    if args.sweep:
        sweep_frames = [SEEN_FRAMES[2], HELD_OUT_FRAMES[0]]
        res["cfg_sweep"] = {}
        for cfg in [float(v) for v in args.sweep.split(",")]:
            x, ok = accuracy(sweep_frames, args.sweep_n, cfg)
            xs = x[0]  # "a handwritten {w}"
            div = np.mean([pairwise_mean(xs[d]) / pairwise_mean(held32[y_held == d]) for d in range(10)])
            res["cfg_sweep"][str(cfg)] = {"accuracy": ok.float().mean().item(), "diversity": div,
                                          "per_phrasing": ok.float().mean((1, 2)).tolist()}
            log(f"sweep cfg {cfg:g}: accuracy {100 * ok.float().mean().item():.1f}% "
                f"(per phrasing {', '.join(f'{100 * v:.0f}' for v in ok.float().mean((1, 2)).tolist())}), "
                f"diversity {div:.3f}")

    # 1. prompt accuracy at the default settings
    frames = SEEN_FRAMES + HELD_OUT_FRAMES
    x, ok = accuracy(frames, args.n, args.cfg)
    save_grid(x[SEEN_FRAMES.index("a handwritten {w}")].clone(), Path(args.grid_dir) / "a-handwritten-word.png")
    save_grid(x[len(SEEN_FRAMES)].clone(), Path(args.grid_dir) / "held-out-frame-0.png")
    per_phr = {f: ok[i].float().mean().item() for i, f in enumerate(frames)}
    per_digit = ok.float().mean((0, 2)).tolist()
    seen_acc = ok[:len(SEEN_FRAMES)].float().mean().item()
    unseen_acc = ok[len(SEEN_FRAMES):].float().mean().item()
    res["accuracy"] = {"all": ok.float().mean().item(), "seen_phrasings": seen_acc, "held_out_phrasings": unseen_acc,
                       "per_phrasing": per_phr, "per_digit": per_digit,
                       "per_digit_seen": ok[:len(SEEN_FRAMES)].float().mean((0, 2)).tolist(),
                       "per_digit_held_out": ok[len(SEEN_FRAMES):].float().mean((0, 2)).tolist(),
                       "samples": int(ok.numel())}
    log(f"accuracy at cfg {args.cfg:g}, {args.steps} DDIM steps, {ok.numel()} images: {100 * res['accuracy']['all']:.1f}% "
        f"(training phrasings {100 * seen_acc:.1f}%, held-out phrasings {100 * unseen_acc:.1f}%)")
    for f, v in per_phr.items():
        log(f"  {100 * v:5.1f}%  {f!r}  (e.g. {fill(f, 7)!r})")
    log("  per digit: " + " ".join(f"{d}:{100 * v:.0f}" for d, v in enumerate(per_digit)))

    # 3. diversity, over every phrasing's samples of a digit (each phrasing separately)
    divs = np.array([[pairwise_mean(x[i, d]) / pairwise_mean(held32[y_held == d]) for d in range(10)]
                     for i in range(len(frames))])
    res["diversity"] = {"mean": float(divs.mean()), "per_digit": divs.mean(0).tolist(),
                        "per_phrasing": divs.mean(1).tolist()}
    log(f"diversity ratio (pairwise L2 of {args.n} samples / of the 50 held-out real digits): {divs.mean():.3f}; "
        f"per digit {' '.join(f'{v:.2f}' for v in divs.mean(0))}")

    # 4. negative prompt
    xg = sampler(["a handwritten digit"], args.n_negative, args.cfg)[0]
    xn = sampler(["a handwritten digit"], args.n_negative, args.cfg, negative="seven")[0]
    k = min(100, args.n_negative) // 10 * 10
    if k:
        save_grid(xg[:k].view(k // 10, 10, 1, 32, 32), Path(args.grid_dir) / "generic.png")
        save_grid(xn[:k].view(k // 10, 10, 1, 32, 32), Path(args.grid_dir) / "generic-neg-seven.png")
    hist_g = torch.bincount(judge_predict(judge, xg), minlength=10)
    hist_n = torch.bincount(judge_predict(judge, xn), minlength=10)

    def div_all(x):
        return pairwise_mean(x) / pairwise_mean(held32)

    res["negative"] = {"n": args.n_negative, "without": hist_g.tolist(), "with_negative_seven": hist_n.tolist(),
                       "sevens_without": hist_g[7].item() / args.n_negative,
                       "sevens_with": hist_n[7].item() / args.n_negative,
                       "diversity_without": div_all(xg), "diversity_with": div_all(xn)}
    log(f"'a handwritten digit', {args.n_negative} images: sevens {hist_g[7].item()} without a negative prompt, "
        f"{hist_n[7].item()} with negative_prompt='seven'; digits without {hist_g.tolist()}, with {hist_n.tolist()}; "
        f"diversity (vs all held-out digits) {res['negative']['diversity_without']:.3f} / "
        f"{res['negative']['diversity_with']:.3f}")

    # 5. thickness: n_thick samples for seven, n for the other digits
    x7 = sampler(["a thick seven", "a thin seven"], args.n_thick, args.cfg)
    others = [d for d in range(10) if d != 7]
    xo = sampler([f"a thick {NUMBER_WORDS[d]}" for d in others] + [f"a thin {NUMBER_WORDS[d]}" for d in others],
                 args.n, args.cfg)
    thick_x = {7: x7[0], **{d: xo[i] for i, d in enumerate(others)}}
    thin_x = {7: x7[1], **{d: xo[len(others) + i] for i, d in enumerate(others)}}
    save_grid(torch.stack([x7[0, :20], x7[1, :20]]), Path(args.grid_dir) / "thick-thin-seven.png")
    ink_thick = torch.stack([ink(thick_x[d]).mean() for d in range(10)])
    ink_thin = torch.stack([ink(thin_x[d]).mean() for d in range(10)])
    acc_t = [(judge_predict(judge, thick_x[d]) == d).float().mean().item() for d in range(10)]
    acc_n = [(judge_predict(judge, thin_x[d]) == d).float().mean().item() for d in range(10)]
    real_ratio = []
    for d in range(10):
        a = ink(held32[y_held == d])
        lo, hi = torch.quantile(a, torch.tensor([1 / 3, 2 / 3]))
        real_ratio.append((a[a >= hi].mean() / a[a <= lo].mean()).item())
    ratio = (ink_thick / ink_thin).tolist()
    res["thickness"] = {"n_seven": args.n_thick, "n_other": args.n, "ratio_seven": ratio[7], "thick_seven_accuracy": acc_t[7],
                        "thin_seven_accuracy": acc_n[7], "ratio_per_digit": ratio, "thick_accuracy": acc_t,
                        "thin_accuracy": acc_n, "ink_thick": ink_thick.tolist(), "ink_thin": ink_thin.tolist(),
                        "real_tercile_ratio": real_ratio}
    log(f"'a thick seven' vs 'a thin seven' ({args.n_thick} each): mean ink {ink_thick[7]:.4f} / {ink_thin[7]:.4f} = "
        f"{ratio[7]:.2f}x; read as 7: {100 * acc_t[7]:.0f}% / {100 * acc_n[7]:.0f}%")
    log("  every digit, ink ratio thick/thin: " + " ".join(f"{d}:{r:.2f}" for d, r in enumerate(ratio)) +
        f" (real top/bottom tercile of the held-out digits: {np.mean(real_ratio):.2f} on average)")
    log(f"  accuracy thick {100 * np.mean(acc_t):.1f}%, thin {100 * np.mean(acc_n):.1f}%")

    res["time"] = {"sampling_s": sampler.seconds, "images": sampler.images, "total_s": time.time() - t_start}
    log(f"{sampler.images} images in {sampler.seconds:.0f} s ({sampler.seconds / max(1, sampler.images):.3f} s/image); "
        f"total {time.time() - t_start:.0f} s")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "w") as f:
        json.dump(res, f, indent=1)
    log(f"wrote {args.json}")


if __name__ == "__main__":
    main()

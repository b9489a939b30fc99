#!/usr/bin/env python3
"""Evaluate the shipped digit models the way the engine will be judged (dev-only, PyTorch).

    /work/venv/bin/python tools/eval_digits.py [--weights weights] [--quick]

Protocol (per sampler): for each digit D in 0-9, 20 samples of class D (Euler-a, DDPM
and Euler: 10, they are the cheap extra checks); the U-Net is the shipped one, float16 weights on
disk computed in float32; the scheduler is diffusers' XScheduler.from_config(
weights/digits/scheduler_config.json); initial noise N(0, 1) * init_noise_sigma from a
seeded torch.Generator; every step runs one batched U-Net call on [uncond ; cond]
(uncond = the null class 10) and combines guided = uncond + 3 * (cond - uncond).
The samples are read by the shipped classifier (weights/digit-classifier) and by an
independent check classifier (a different ReLU/max-pool CNN trained here on clean digits
only; not shipped) and the accuracy is the fraction read as the requested digit.

Also reported: the shipped classifier on the 500 held-out digits (clean, noisy, blurred,
and as x0-estimates of the U-Net at t = 300/500/700), and the samples' diversity against
real digits (mean pairwise L2 within a class, nearest-training-digit distance, total
variation).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import (NULL_CLASS, alphas_cumprod, gaussian_blur, load_classifier, load_digits,  # noqa: E402
                          load_unet, make_unet, random_affine, set_seeds, x0_from_output)

SAMPLERS = {
    # name: (diffusers class name, steps, samples per digit)
    "ddim50": ("DDIMScheduler", 50, 20),
    "dpmpp2m20": ("DPMSolverMultistepScheduler", 20, 20),
    "euler_a30": ("EulerAncestralDiscreteScheduler", 30, 10),
    "ddpm50": ("DDPMScheduler", 50, 10),
    "euler30": ("EulerDiscreteScheduler", 30, 10),
}
CFG_SCALE = 3.0
CHECK_CACHE = "/tmp/diffsteer-digits-check-classifier.pt"


@torch.no_grad()
def sample(unet, sched_config, cls_name, steps, labels, guidance=CFG_SCALE, seed=1234):
    import diffusers

    sched = getattr(diffusers, cls_name).from_config(sched_config)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    x = torch.randn(n, 1, 28, 28, generator=g) * sched.init_noise_sigma
    null = torch.full_like(labels, NULL_CLASS)
    lab = torch.cat([null, labels])
    for t in sched.timesteps:
        xin = sched.scale_model_input(x, t)
        eps = unet(torch.cat([xin, xin]), t.expand(2 * n), class_labels=lab).sample
        eu, ec = eps[:n], eps[n:]
        x = sched.step(eu + guidance * (ec - eu), t, x, generator=g).prev_sample
    return x


def check_classifier(xtr, ytr, log=print):
    """An independent digit reader for the samples: different architecture (ReLU, 5x5 convs,
    max pooling, dropout) trained on clean digits with small affine jitter only."""
    net = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(64 * 7 * 7, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, 10))
    if os.path.exists(CHECK_CACHE):
        net.load_state_dict(torch.load(CHECK_CACHE))
        net.eval()
        return net
    set_seeds(99)
    g = torch.Generator().manual_seed(99)
    epochs, bs = 8, 128
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * ((len(xtr) + bs - 1) // bs)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.2)
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            loss = F.cross_entropy(net(random_affine(xtr[idx], g)), ytr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sch.step()
    net.eval()
    torch.save(net.state_dict(), CHECK_CACHE)
    log("  check classifier trained and cached at " + CHECK_CACHE)
    return net


@torch.no_grad()
def predict(net, x, bs=500):
    net.eval()
    return torch.cat([net(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])


def pairwise_mean(x):
    f = x.flatten(1)
    d = torch.cdist(f, f)
    n = len(f)
    return (d.sum() / (n * (n - 1))).item()


def nn_dist(x, ref):
    return torch.cdist(x.flatten(1), ref.flatten(1)).min(1).values


def total_variation(x):
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) +
            (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3)))


def save_grid(x, rows, path, scale=2):
    from PIL import Image

    x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()[:, 0]
    cols = len(x) // rows
    pad = 2
    H = rows * (28 + pad) + pad
    W = cols * (28 + pad) + pad
    img = np.full((H, W), 60, dtype=np.uint8)
    for i in range(len(x)):
        r, c = divmod(i, cols)
        img[pad + r * 30: pad + r * 30 + 28, pad + c * 30: pad + c * 30 + 28] = x[i]
    im = Image.fromarray(img).resize((W * scale, H * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    im.save(path)


@torch.no_grad()
def heldout_robustness(net, unet, xho, yho, log):
    g = torch.Generator().manual_seed(7)
    res = {"clean": (predict(net, xho) == yho).float().mean().item()}
    for s in (0.3, 0.6):
        res[f"noise_sigma{s}"] = (predict(net, xho + s * torch.randn(xho.shape, generator=g)) == yho).float().mean().item()
    for s in (1.0, 1.5):
        res[f"blur_sigma{s}"] = (predict(net, gaussian_blur(xho, torch.full((len(xho),), s))) == yho).float().mean().item()
    if unet is not None:
        ac = alphas_cumprod()
        for t in (300, 500, 700):
            a = ac[t]
            noise = torch.randn(xho.shape, generator=g)
            xt = a.sqrt() * xho + (1 - a).sqrt() * noise
            tt = torch.full((len(xho),), t)
            for mode in ("cond", "uncond"):
                lab = yho if mode == "cond" else torch.full_like(yho, NULL_CLASS)
                eps = torch.cat([unet(xt[i:i + 250], tt[i:i + 250], class_labels=lab[i:i + 250]).sample
                                 for i in range(0, len(xho), 250)])
                x0 = x0_from_output(eps, xt, a).clamp(-1, 1)
                res[f"x0hat_{mode}_t{t}"] = (predict(net, x0) == yho).float().mean().item()
    return res


def run_eval(weights, log=print, quick=False, unet_ckpt=None, grid_path=None, out_json=None, samplers=None):
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if grid_path is None:
        grid_path = os.path.join(root, "docs", "digits-python-grid.png")
    if out_json is None:
        out_json = "/tmp/diffsteer-digits-eval.json"
    xtr, ytr, xho, yho = load_digits()
    with open(os.path.join(weights, "digits", "scheduler_config.json")) as f:
        sched_config = json.load(f)
    if unet_ckpt:
        unet = make_unet()
        unet.load_state_dict(torch.load(unet_ckpt, weights_only=False)["ema"])
        unet = unet.half().float().eval()  # the f16 rounding the shipped file gets
        log(f"U-Net: EMA weights of {unet_ckpt}, f16-rounded")
    else:
        unet = load_unet(os.path.join(weights, "digits"))
    cls = load_classifier(os.path.join(weights, "digit-classifier"))
    check = check_classifier(xtr, ytr, log)
    results = {"protocol": "per digit 0-9: N samples, CFG 3 (uncond = class 10), one [uncond; cond] batch, "
                           "noise N(0,1)*init_noise_sigma, seed 1234, f16-rounded weights, "
                           "XScheduler.from_config(scheduler_config.json)",
               "check_classifier_heldout_clean": (predict(check, xho) == yho).float().mean().item(),
               "samplers": {}}
    if samplers is None:
        samplers = ["dpmpp2m20", "ddim50"] if quick else list(SAMPLERS)
    per_class_real = {}
    for c in range(10):
        r = xho[yho == c]
        per_class_real[c] = {"pairwise": pairwise_mean(r[:20]), "pairwise_all": pairwise_mean(r),
                             "nn_train": nn_dist(r, xtr[ytr == c]).mean().item()}
    for name in samplers:
        cls_name, steps, per = SAMPLERS[name]
        labels = torch.arange(10).repeat_interleave(per)
        t = time.time()
        x = sample(unet, sched_config, cls_name, steps, labels)
        dt = time.time() - t
        pa = predict(cls, x)
        pb = predict(check, x)
        r = {"scheduler": cls_name, "steps": steps, "samples": len(labels),
             "acc_shipped_classifier": (pa == labels).float().mean().item(),
             "acc_check_classifier": (pb == labels).float().mean().item(),
             "per_digit_shipped": [(pa[labels == c] == c).float().mean().item() for c in range(10)],
             "per_digit_check": [(pb[labels == c] == c).float().mean().item() for c in range(10)],
             "nan": bool(torch.isnan(x).any()), "min": x.min().item(), "max": x.max().item(),
             "seconds": round(dt, 1)}
        div, nnd = [], []
        for c in range(10):
            xs = x[labels == c]
            div.append(pairwise_mean(xs) / per_class_real[c]["pairwise"])
            nnd.append(nn_dist(xs.clamp(-1, 1), xtr[ytr == c]).mean().item() / per_class_real[c]["nn_train"])
        r["diversity_ratio_per_digit"] = div
        r["diversity_ratio_mean"] = float(np.mean(div))
        r["nn_train_dist_ratio_mean"] = float(np.mean(nnd))
        r["min_nn_train_dist"] = nn_dist(x.clamp(-1, 1), xtr).min().item()
        r["tv_ratio"] = (total_variation(x.clamp(-1, 1)).mean() / total_variation(xho).mean()).item()
        results["samplers"][name] = r
        log(f"  {name}: shipped-classifier acc {r['acc_shipped_classifier']:.4f}, check-classifier acc "
            f"{r['acc_check_classifier']:.4f}, diversity ratio {r['diversity_ratio_mean']:.3f}, "
            f"NN-dist ratio {r['nn_train_dist_ratio_mean']:.3f}, TV ratio {r['tv_ratio']:.3f}, "
            f"range [{r['min']:.2f}, {r['max']:.2f}], {dt:.0f} s")
        log(f"    per digit (check): {' '.join(f'{v:.2f}' for v in r['per_digit_check'])}")
        if name == "ddim50":
            save_grid(x, 10, grid_path)
            log(f"    grid -> {grid_path}")
        else:
            save_grid(x, 10, f"/tmp/diffsteer-digits-grid-{name}.png")
    save_grid(torch.cat([xho[yho == c][:20] for c in range(10)]), 10, "/tmp/diffsteer-digits-grid-real.png")
    results["real_heldout"] = {"pairwise_l2_20_per_class": [per_class_real[c]["pairwise"] for c in range(10)],
                               "nn_train_dist_per_class": [per_class_real[c]["nn_train"] for c in range(10)]}
    if not quick:
        results["classifier_heldout"] = heldout_robustness(cls, unet, xho, yho, log)
        results["check_classifier_heldout"] = heldout_robustness(check, None, xho, yho, log)
        log(f"  shipped classifier on held-out digits: {json.dumps({k: round(v, 4) for k, v in results['classifier_heldout'].items()})}")
        log(f"  check classifier on held-out digits: {json.dumps({k: round(v, 4) for k, v in results['check_classifier_heldout'].items()})}")
    with open(out_json, "w") as f:
        json.dump(results, f, indent=1)
    log(f"  results -> {out_json}")
    return results


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.path.join(root, "weights"))
    ap.add_argument("--quick", action="store_true", help="DPM++2M-20 and DDIM-50 only, no held-out tests")
    ap.add_argument("--unet-ckpt", help="evaluate the EMA weights of a training state instead of weights/digits")
    ap.add_argument("--grid", help="where the DDIM-50 grid goes (default docs/digits-python-grid.png)")
    ap.add_argument("--out-json")
    ap.add_argument("--samplers", help="comma-separated subset of " + ",".join(SAMPLERS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - t0) / 60:5.1f}m] {msg}", flush=True)

    run_eval(args.weights, log=log, quick=args.quick, unet_ckpt=args.unet_ckpt, grid_path=args.grid,
             out_json=args.out_json, samplers=args.samplers.split(",") if args.samplers else None)


if __name__ == "__main__":
    main()

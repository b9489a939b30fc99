#!/usr/bin/env python3
"""Train the realism discriminator behind `--reward realism` (dev-only; PyTorch on CPU).

    /work/venv/bin/python tools/train_realism.py --fakes /tmp/realism/fakes --out weights/realism

Discriminator guidance (Kim et al., ICML 2023) corrects a sampler by the gradient of a
discriminator's log-odds log d/(1-d), d = P(real | x_t, t), trained to tell the forward-
diffused real data from the forward-diffused samples of the model itself: where the model's
samples differ from real data, the log-odds points from one to the other. The engine guides
on the model's x0-estimate x0_hat, not on x_t, so this discriminator reads x0_hat:

  real      the 4,500 training digits of train_digits.load_digits() (the 500 held-out ones
            are only measured on), noised to x_t = sqrt(abar) x0 + sqrt(1-abar) eps at
            --t-per-real stratified random t in 0..999 and mapped by the shipped U-Net to
            x0_hat, exactly as the engine maps its own x_t;
  fake      the engine's own DDIM-50 samples (`diffsteer generate`, PNGs under --fakes:
            cfg3/D/*.png made with `--class D --cfg 3`, uncond/*.png with `--class none`),
            noised and mapped the same way at --t-per-fake t each.

x0_hat is taken the two ways the engine forms it: the null class (unconditional sampling)
and class-free guidance at scale 3 with the image's class (class CFG 3 sampling: v_u + 3 (v_c
- v_u)); for the unconditional samples, whose class is unknown, the null class only.

Input: 2 channels, x0_hat and a constant plane of sqrt(1 - abar) (the share of noise in x_t),
so the time conditioning fits the engine's diffsteer-classifier/1 layer list and its hand-
written backward runs it unchanged. Output: 2 logits (0 = fake, 1 = real); the reward is
l_real - l_fake = log d/(1-d). Trained with class-balanced cross-entropy (each batch half
real, half fake) and random +-1 px shifts; --adv-frac > 0 adds L2 adversarial perturbations
as the reward classifier uses (tried: --adv-frac 0.5 --adv-eps 1 --epochs 4 left the
discriminator at 57% held-out accuracy, against 62% without). Measured per noise band on the
held-out real digits and the held-out samples.
"""
import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import NULL_CLASS, LayerListNet, alphas_cumprod, load_digits, load_unet, set_seeds  # noqa: E402
from train_digits import dump_classifier_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BANDS = [(0, 250), (250, 500), (500, 750), (750, 1000)]
CFG_SCALE = 3.0
UNKNOWN = -1


def layers_for(widths=(16, 32, 32), hidden=64):
    c1, c2, c3 = widths
    return [
        {"type": "conv2d", "name": "conv1", "in_channels": 2, "out_channels": c1, "kernel": 3, "stride": 1, "padding": 1},
        {"type": "silu"},
        {"type": "avg_pool2d", "kernel": 2},
        {"type": "conv2d", "name": "conv2", "in_channels": c1, "out_channels": c2, "kernel": 3, "stride": 1, "padding": 1},
        {"type": "silu"},
        {"type": "avg_pool2d", "kernel": 2},
        {"type": "conv2d", "name": "conv3", "in_channels": c2, "out_channels": c3, "kernel": 3, "stride": 1, "padding": 1},
        {"type": "silu"},
        {"type": "flatten"},
        {"type": "linear", "name": "fc1", "in_features": c3 * 7 * 7, "out_features": hidden},
        {"type": "silu"},
        {"type": "linear", "name": "fc2", "in_features": hidden, "out_features": 2},
    ]


def config_for(layers):
    return {
        "format": "diffsteer-classifier/1",
        "input": {"channels": 2, "height": 28, "width": 28, "range": [-1, 1]},
        "num_classes": 2,
        "layers": layers,
    }


def load_pngs(folder):
    from PIL import Image

    files = sorted(glob.glob(os.path.join(folder, "*.png")))
    x = np.stack([np.asarray(Image.open(f).convert("L"), dtype=np.float32) for f in files])
    return torch.from_numpy(x / 127.5 - 1.0).view(-1, 1, 28, 28)


def load_fakes(root):
    xs, ys = [], []
    for d in range(10):
        folder = os.path.join(root, "cfg3", str(d))
        if os.path.isdir(folder):
            x = load_pngs(folder)
            xs.append(x)
            ys.append(torch.full((len(x),), d, dtype=torch.long))
    folder = os.path.join(root, "uncond")
    if os.path.isdir(folder):
        x = load_pngs(folder)
        xs.append(x)
        ys.append(torch.full((len(x),), UNKNOWN, dtype=torch.long))
    if not xs:
        sys.exit(f"no PNGs under {root}/cfg3/D or {root}/uncond")
    return torch.cat(xs), torch.cat(ys)


def stratified_t(n, k, g):
    edges = torch.arange(k).float() * (1000 / k)
    t = edges.view(1, k) + torch.rand(n, k, generator=g) * (1000 / k)
    return t.floor().long().clamp(0, 999)


@torch.no_grad()
def x0hat(unet, x0, y, t, g, bs=200):
    """x0_hat of x_t = sqrt(abar) x0 + sqrt(1-abar) eps: with the null class where y is
    UNKNOWN or a coin says so, else with CFG 3 towards class y (v-prediction)."""
    ac = alphas_cumprod()
    out, used_cfg = [], []
    for i in range(0, len(x0), bs):
        xb, yb, tb = x0[i:i + bs], y[i:i + bs], t[i:i + bs]
        B = len(xb)
        a = ac[tb].view(B, 1, 1, 1)
        xt = a.sqrt() * xb + (1 - a).sqrt() * torch.randn(xb.shape, generator=g)
        cfg = (yb != UNKNOWN) & (torch.rand(B, generator=g) < 0.5)
        null = torch.full_like(yb, NULL_CLASS)
        v = unet(xt, tb, class_labels=null).sample
        if cfg.any():
            sel = cfg.nonzero().flatten()
            vc = unet(xt[sel], tb[sel], class_labels=yb[sel]).sample
            v[sel] = v[sel] + CFG_SCALE * (vc - v[sel])
        out.append(a.sqrt() * xt - (1 - a).sqrt() * v)
        used_cfg.append(cfg)
    return torch.cat(out), torch.cat(used_cfg)


def build_set(path, unet, x, y, k, seed, log):
    if os.path.exists(path):
        d = torch.load(path)
        if d["k"] == k and d["n"] == len(x) and d["seed"] == seed:
            log(f"  cache {path}: {len(d['x0hat'])} x0-estimates")
            return d["x0hat"], d["t"], d["cfg"]
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    t = stratified_t(len(x), k, g).flatten()
    idx = torch.arange(len(x)).repeat_interleave(k)
    xh, cfg = x0hat(unet, x[idx], y[idx], t, g)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"x0hat": xh, "t": t, "cfg": cfg, "k": k, "n": len(x), "seed": seed}, path)
    log(f"  cache {path}: {len(xh)} x0-estimates made in {time.time() - t0:.0f} s")
    return xh, t, cfg


def with_level(x, t):
    """The discriminator's input: x0_hat and a plane of sqrt(1 - abar_t)."""
    ac = alphas_cumprod()
    level = (1 - ac[t]).sqrt().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)
    return torch.cat([x, level], 1)


def random_shift(x, g, max_px=1):
    """Shifts each image by up to max_px pixels, filling with the background (-1)."""
    B = len(x)
    pad = F.pad(x, (max_px,) * 4, value=-1.0)
    dx = torch.randint(0, 2 * max_px + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * max_px + 1, (B,), generator=g)
    return torch.stack([pad[i, :, dy[i]:dy[i] + 28, dx[i]:dx[i] + 28] for i in range(B)])


def pgd_l2(net, x, t, y, eps, steps, g):
    """An L2 attack of radius eps on the image channel (the level plane is left alone)."""
    if eps <= 0 or steps <= 0:
        return x
    delta = torch.randn(x.shape, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps * 0.5
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(net(with_level(x + delta, t)), y)
        (grad,) = torch.autograd.grad(loss, delta)
        grad = grad / (grad.flatten(1).norm(dim=1).view(-1, 1, 1, 1) + 1e-12)
        delta = delta.detach() + 2.5 * eps / steps * grad
        norm = delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = delta * torch.clamp(eps / (norm + 1e-12), max=1.0)
    return (x + delta).detach()


def train(net, real, fake, args, log):
    """real/fake: (x0_hat, t). Batches hold equal numbers of each."""
    g = torch.Generator().manual_seed(args.seed)
    half = args.batch // 2
    steps_per_epoch = max(len(real[0]), len(fake[0])) // half
    total = steps_per_epoch * args.epochs
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    t0 = time.time()
    for step in range(total):
        ir = torch.randint(0, len(real[0]), (half,), generator=g)
        jf = torch.randint(0, len(fake[0]), (half,), generator=g)
        x = torch.cat([real[0][ir], fake[0][jf]])
        t = torch.cat([real[1][ir], fake[1][jf]])
        y = torch.cat([torch.ones(half, dtype=torch.long), torch.zeros(half, dtype=torch.long)])
        x = random_shift(x, g, args.shift)
        if args.adv_frac > 0:
            n_adv = int(len(x) * args.adv_frac)
            sel = torch.randperm(len(x), generator=g)[:n_adv]
            net.eval()
            x[sel] = pgd_l2(net, x[sel], t[sel], y[sel], args.adv_eps, args.adv_steps, g)
            net.train()
        loss = F.cross_entropy(net(with_level(x, t)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == total - 1:
            log(f"  step {step}/{total} loss {loss.item():.4f} ({time.time() - t0:.0f} s)")
    net.eval()


@torch.no_grad()
def logits_of(net, x, t, bs=1000):
    return torch.cat([net(with_level(x[i:i + bs], t[i:i + bs])) for i in range(0, len(x), bs)])


def measure(net, real, fake):
    """Accuracy and mean log-odds per noise band, real and fake held-out x0_hat."""
    rows = []
    lr = logits_of(net, *real)
    lf = logits_of(net, *fake)
    odds_r = lr[:, 1] - lr[:, 0]
    odds_f = lf[:, 1] - lf[:, 0]
    for lo, hi in BANDS + [(0, 1000)]:
        mr = (real[1] >= lo) & (real[1] < hi)
        mf = (fake[1] >= lo) & (fake[1] < hi)
        acc = 0.5 * ((odds_r[mr] > 0).float().mean() + (odds_f[mf] < 0).float().mean())
        rows.append({"t": f"{lo}-{hi - 1}", "accuracy": round(acc.item(), 4),
                     "log_odds_real": round(odds_r[mr].mean().item(), 3),
                     "log_odds_fake": round(odds_f[mf].mean().item(), 3),
                     "n_real": int(mr.sum()), "n_fake": int(mf.sum())})
    return rows


def save(net, out_dir, layers):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    tmp = os.path.join(out_dir, "model.safetensors.tmp")
    save_file(sd, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(dump_classifier_config(config_for(layers)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fakes", default="/tmp/realism/fakes", help="PNG folders cfg3/0..9 and uncond")
    ap.add_argument("--out", default=os.path.join(ROOT, "weights", "realism"))
    ap.add_argument("--cache-dir", default="/tmp/diffsteer-realism-cache")
    ap.add_argument("--t-per-real", type=int, default=1)
    ap.add_argument("--t-per-fake", type=int, default=6)
    ap.add_argument("--t-per-held", type=int, default=2, help="t per held-out real digit (8 per held-out sample)")
    ap.add_argument("--held-fake-frac", type=float, default=0.1)
    ap.add_argument("--widths", default="16,32,32")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--shift", type=int, default=1)
    ap.add_argument("--adv-eps", type=float, default=1.0)
    ap.add_argument("--adv-steps", type=int, default=2)
    ap.add_argument("--adv-frac", type=float, default=0.0, help="share of each batch made adversarial (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the measurements here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    set_seeds(args.seed)
    log = lambda m: print(m, flush=True)  # noqa: E731

    unet = load_unet(os.path.join(ROOT, "weights", "digits"))
    xtr, ytr, xho, yho = load_digits()
    xf, yf = load_fakes(args.fakes)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(xf), generator=g)
    n_held = int(len(xf) * args.held_fake_frac)
    held_f, train_f = perm[:n_held], perm[n_held:]
    log(f"real: {len(xtr)} training + {len(xho)} held-out digits; fake: {len(train_f)} training + "
        f"{n_held} held-out samples ({int((yf == UNKNOWN).sum())} unconditional in all)")

    c = args.cache_dir
    real_tr = build_set(f"{c}/real-train.pt", unet, xtr, ytr, args.t_per_real, 1, log)
    fake_tr = build_set(f"{c}/fake-train.pt", unet, xf[train_f], yf[train_f], args.t_per_fake, 2, log)
    real_ho = build_set(f"{c}/real-held.pt", unet, xho, yho, args.t_per_held, 3, log)
    fake_ho = build_set(f"{c}/fake-held.pt", unet, xf[held_f], yf[held_f], 8, 4, log)

    layers = layers_for(tuple(int(w) for w in args.widths.split(",")), args.hidden)
    net = LayerListNet(layers)
    n_params = sum(p.numel() for p in net.parameters())
    log(f"discriminator: {n_params} parameters")
    t0 = time.time()
    train(net, real_tr[:2], fake_tr[:2], args, log)
    log(f"trained in {time.time() - t0:.0f} s")
    rows = measure(net, real_ho[:2], fake_ho[:2])
    log("held-out (accuracy = mean of the real and the fake recall; log-odds = l_real - l_fake):")
    for r in rows:
        log(f"  t {r['t']:>8}: accuracy {100 * r['accuracy']:.1f}%  mean log-odds real {r['log_odds_real']:+.3f}"
            f" / fake {r['log_odds_fake']:+.3f}  ({r['n_real']} real, {r['n_fake']} fake)")
    save(net, args.out, layers)
    log(f"wrote {args.out}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "parameters": n_params, "held_out": rows}, f, indent=1)


if __name__ == "__main__":
    main()

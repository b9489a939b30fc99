#!/usr/bin/env python3
"""Train the reward classifier for reward-gradient guidance (dev-only; PyTorch on CPU).

    /work/venv/bin/python tools/train_reward_classifier.py            # train + measure + guidance check
    /work/venv/bin/python tools/train_reward_classifier.py --eval-only weights/digit-classifier

The engine steers the UNCONDITIONAL sampling of weights/digits (null class 10) toward a
digit D: at every denoising step it takes the model's x0-estimate
    x0_hat = sqrt(abar) * x_t - sqrt(1 - abar) * v          (v from the null class)
and shifts it along grad log p(D | x0_hat) under weights/digit-classifier; it also uses
log p(D | x0_hat) as the potential of Feynman-Kac particle resampling. So the classifier
is queried on x0_hat of every noise level, and on x0_hat that guidance has already pushed.
This script trains it for exactly that:

  data      the 4,500 training digits of train_digits.load_digits() (the 500 held-out ones
            are only used for the measurements). 10% of the training digits (seeded) are a
            validation split for the temperature fit; the classifier trains on the rest.
            Inputs: the U-Net's null-class x0_hat of x_t = sqrt(abar) x0 + sqrt(1-abar) eps
            for --t-per-digit stratified random t in 0..999 per digit (cached under
            --cache-dir), plus clean digits; +-2 px random shifts on everything.
  loss      cross-entropy with the true digit (a proper scoring rule: at large t, where
            x0_hat no longer shows the digit, the best answer is an uncertain one), on
            inputs made adversarial by an L2 PGD attack (--adv-eps, --adv-steps) for
            perceptually aligned input gradients.
  calib     one temperature fitted on the validation split, folded into the last layer.

Then it measures, on the held-out digits: clean accuracy; accuracy and mean max-probability
of x0_hat by t band; expected calibration error; and a guidance check that mimics the
engine (DDIM-50 trailing, eta 0, null class, no CFG, x0_hat shifted along the normalised
gradient, v re-derived), read by this classifier and by the independent check classifier of
tools/eval_digits.py. --compare DIR runs the same protocol on another classifier.
"""
import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import (NULL_CLASS, LayerListNet, alphas_cumprod, classifier_config,  # noqa: E402
                          load_classifier, load_digits, load_unet, save_classifier, set_seeds)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GUIDE = "rho=0.8,norm=unit,lo=0,hi=999,inner=1,schedule=sigma"  # the recommended engine default
BANDS = [(0, 250), (250, 500), (500, 750), (750, 1000)]


def layers_for(widths=(16, 32, 32), hidden=64):
    c1, c2, c3 = widths
    return [
        {"type": "conv2d", "name": "conv1", "in_channels": 1, "out_channels": c1, "kernel": 3, "stride": 1, "padding": 1},
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
        {"type": "linear", "name": "fc2", "in_features": hidden, "out_features": 10},
    ]


def layers_mlp(hidden=(256, 128)):
    """A fully connected reward model: a different architecture from the CNN, for ensembles
    (adversarial directions of one rarely transfer to the other)."""
    h1, h2 = hidden
    return [
        {"type": "flatten"},
        {"type": "linear", "name": "fc1", "in_features": 784, "out_features": h1},
        {"type": "silu"},
        {"type": "linear", "name": "fc2", "in_features": h1, "out_features": h2},
        {"type": "silu"},
        {"type": "linear", "name": "fc3", "in_features": h2, "out_features": 10},
    ]


def layers_strided(widths=(24, 48, 64), hidden=64):
    """A CNN without pooling: 5x5 convolutions, downsampling by stride 2 (14x14, 7x7, 4x4)."""
    c1, c2, c3 = widths
    return [
        {"type": "conv2d", "name": "conv1", "in_channels": 1, "out_channels": c1, "kernel": 5, "stride": 2, "padding": 2},
        {"type": "silu"},
        {"type": "conv2d", "name": "conv2", "in_channels": c1, "out_channels": c2, "kernel": 5, "stride": 2, "padding": 2},
        {"type": "silu"},
        {"type": "conv2d", "name": "conv3", "in_channels": c2, "out_channels": c3, "kernel": 3, "stride": 2, "padding": 1},
        {"type": "silu"},
        {"type": "flatten"},
        {"type": "linear", "name": "fc1", "in_features": c3 * 4 * 4, "out_features": hidden},
        {"type": "silu"},
        {"type": "linear", "name": "fc2", "in_features": hidden, "out_features": 10},
    ]


def forward_flops(layers):
    """Multiply-adds x 2 of one 1x28x28 forward pass."""
    h = w = 28
    fl = 0
    for l in layers:
        if l["type"] == "conv2d":
            h = (h + 2 * l["padding"] - l["kernel"]) // l["stride"] + 1
            w = (w + 2 * l["padding"] - l["kernel"]) // l["stride"] + 1
            fl += 2 * h * w * l["out_channels"] * l["in_channels"] * l["kernel"] ** 2
        elif l["type"] == "avg_pool2d":
            h, w = h // l["kernel"], w // l["kernel"]
        elif l["type"] == "linear":
            fl += 2 * l["in_features"] * l["out_features"]
    return fl


# ---------------------------------------------------------------------------------------
# x0-estimates of the U-Net (null class), cached
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def x0hat_null(unet, x0, t, g, bs=250):
    """x0_hat of the null class for x_t = sqrt(abar) x0 + sqrt(1-abar) eps, t per sample."""
    ac = alphas_cumprod()
    out = []
    for i in range(0, len(x0), bs):
        xb, tb = x0[i:i + bs], t[i:i + bs]
        a = ac[tb].view(-1, 1, 1, 1)
        xt = a.sqrt() * xb + (1 - a).sqrt() * torch.randn(xb.shape, generator=g)
        v = unet(xt, tb, class_labels=torch.full_like(tb, NULL_CLASS)).sample
        out.append(a.sqrt() * xt - (1 - a).sqrt() * v)
    return torch.cat(out)


def stratified_t(n, k, g):
    """k timesteps per item, one in each of k equal strata of 0..999 (random within)."""
    edges = torch.arange(k).float() * (1000 / k)
    t = edges.view(1, k) + torch.rand(n, k, generator=g) * (1000 / k)
    return t.floor().long().clamp(0, 999)


def build_cache(path, unet, x, seed, k, log):
    if os.path.exists(path):
        d = torch.load(path)
        if d["k"] == k and d["n"] == len(x) and d["seed"] == seed:
            log(f"  cache {path}: {len(d['x0hat'])} x0-estimates")
            return d["x0hat"], d["t"], d["idx"]
    t0 = time.time()
    g = torch.Generator().manual_seed(seed)
    t = stratified_t(len(x), k, g).flatten()
    idx = torch.arange(len(x)).repeat_interleave(k)
    xh = x0hat_null(unet, x[idx], t, g)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({"x0hat": xh, "t": t, "idx": idx, "k": k, "n": len(x), "seed": seed}, path)
    log(f"  cache {path}: {len(xh)} x0-estimates made in {time.time() - t0:.0f} s")
    return xh, t, idx


# ---------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------
def random_shift(x, g, max_px=2):
    """Integer shifts of -max_px..max_px per sample, background (-1) filled in."""
    B = x.shape[0]
    p = max_px
    xp = F.pad(x, (p, p, p, p), value=-1.0)
    dx = torch.randint(0, 2 * p + 1, (B,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (B,), generator=g)
    rows = (dy.view(B, 1) + torch.arange(28).view(1, 28))  # B x 28
    cols = (dx.view(B, 1) + torch.arange(28).view(1, 28))
    bi = torch.arange(B).view(B, 1, 1)
    return xp[bi, 0, rows.view(B, 28, 1), cols.view(B, 1, 28)].unsqueeze(1)


def pgd_l2(net, x, y, eps, steps, g):
    """L2 PGD (random start) that maximises the cross-entropy of the true label."""
    if eps <= 0 or steps <= 0:
        return x
    B = x.shape[0]
    was_training = net.training
    net.eval()
    delta = torch.randn(x.shape, generator=g)
    delta = delta / delta.flatten(1).norm(dim=1).view(B, 1, 1, 1) * eps * torch.rand(B, 1, 1, 1, generator=g)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(net(x + delta), y)
        (grad,) = torch.autograd.grad(loss, delta)
        gn = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(B, 1, 1, 1)
        delta = delta.detach() + alpha * grad / gn
        dn = delta.flatten(1).norm(dim=1).view(B, 1, 1, 1)
        delta = delta * (eps / dn.clamp(min=eps))
    net.train(was_training)
    return (x + delta).detach()


def train(net, data, args, log):
    """data: dict with x0hat, y_hat (cache), x_clean, y_clean."""
    g = torch.Generator().manual_seed(args.seed + 1)
    xh, yh, xc, yc = data["x0hat"], data["y_hat"], data["x_clean"], data["y_clean"]
    n_hat, n_clean = len(xh), len(xc)
    bs = args.batch
    # one epoch = every cached x0-estimate once + clean digits at --clean-frac of the batch
    n_clean_b = int(round(bs * args.clean_frac))
    n_hat_b = bs - n_clean_b
    steps_per_epoch = n_hat // n_hat_b
    total = args.epochs * steps_per_epoch
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.wd)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=0.15)
    step = 0
    t0 = time.time()
    for ep in range(args.epochs):
        net.train()
        perm = torch.randperm(n_hat, generator=g)
        tot = cnt = 0.0
        for i in range(steps_per_epoch):
            ih = perm[i * n_hat_b:(i + 1) * n_hat_b]
            ic = torch.randint(0, n_clean, (n_clean_b,), generator=g)
            xb = torch.cat([xh[ih], xc[ic]])
            yb = torch.cat([yh[ih], yc[ic]])
            xb = random_shift(xb, g, args.shift)
            if args.noise_std > 0:
                s = args.noise_std * torch.rand(len(xb), 1, 1, 1, generator=g)
                xb = xb + s * torch.randn(xb.shape, generator=g)
            if args.adv_eps > 0 and args.adv_frac > 0:
                na = int(round(len(xb) * args.adv_frac))
                sel = torch.randperm(len(xb), generator=g)[:na]
                xb[sel] = pgd_l2(net, xb[sel], yb[sel], args.adv_eps, args.adv_steps, g)
            loss = F.cross_entropy(net(xb), yb, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += loss.item()
            cnt += 1
            if step % 100 == 0:
                log(f"    step {step}/{total}: loss {tot / cnt:.4f}  ({time.time() - t0:.0f} s)")
        log(f"  epoch {ep + 1}/{args.epochs}: loss {tot / cnt:.4f}  ({time.time() - t0:.0f} s)")
    net.eval()
    return time.time() - t0


@torch.no_grad()
def logits_of(net, x, bs=1000):
    net.eval()
    return torch.cat([net(x[i:i + bs]) for i in range(0, len(x), bs)])


def fit_temperature(logits, y):
    """The temperature T minimising the NLL of softmax(logits / T) (golden-section on log T)."""
    def nll(lt):
        return F.cross_entropy(logits / math.exp(lt), y).item()
    a, b = math.log(0.25), math.log(4.0)
    r = (math.sqrt(5) - 1) / 2
    c, d = b - r * (b - a), a + r * (b - a)
    for _ in range(40):
        if nll(c) < nll(d):
            b = d
        else:
            a = c
        c, d = b - r * (b - a), a + r * (b - a)
    return math.exp((a + b) / 2)


def fold_temperature(net, T):
    last = [l for l in net.spec if l["type"] == "linear"][-1]["name"]
    m = getattr(net, last)
    with torch.no_grad():
        m.weight.div_(T)
        m.bias.div_(T)


# ---------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------
def ece(probs, y, bins=15):
    conf, pred = probs.max(1)
    acc = (pred == y).float()
    e = 0.0
    edges = torch.linspace(0, 1, bins + 1)
    for i in range(bins):
        m = (conf > edges[i]) & (conf <= edges[i + 1])
        if m.any():
            e += m.float().mean().item() * abs(acc[m].mean().item() - conf[m].mean().item())
    return e


def measure_heldout(net, xho, yho, hx, ht, hidx):
    """Clean accuracy; per t band accuracy, mean max-prob, mean p(true), NLL; ECE."""
    r = {}
    lc = logits_of(net, xho)
    r["clean_acc"] = (lc.argmax(1) == yho).float().mean().item()
    r["clean_ece"] = ece(lc.softmax(1), yho)
    lh = logits_of(net, hx)
    yh = yho[hidx]
    ph = lh.softmax(1)
    r["bands"] = {}
    for lo, hi in BANDS:
        m = (ht >= lo) & (ht < hi)
        r["bands"][f"{lo}-{hi}"] = {
            "acc": (ph[m].argmax(1) == yh[m]).float().mean().item(),
            "mean_max_prob": ph[m].max(1).values.mean().item(),
            "mean_p_true": ph[m].gather(1, yh[m].view(-1, 1)).mean().item(),
            "nll": F.cross_entropy(lh[m], yh[m]).item(),
            "ece": ece(ph[m], yh[m]),
        }
    r["x0hat_ece"] = ece(ph, yh)
    r["x0hat_nll"] = F.cross_entropy(lh, yh).item()
    return r


def fmt_heldout(name, r):
    lines = [f"{name}: clean acc {r['clean_acc']:.4f} (ECE {r['clean_ece']:.4f}); x0_hat ECE {r['x0hat_ece']:.4f}, "
             f"NLL {r['x0hat_nll']:.3f}"]
    for k, b in r["bands"].items():
        lines.append(f"    t {k:>8}: acc {b['acc']:.3f}  mean max-prob {b['mean_max_prob']:.3f}  "
                     f"mean p(true) {b['mean_p_true']:.3f}  NLL {b['nll']:.3f}  ECE {b['ece']:.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# guidance check: what the engine does, in Python
# ---------------------------------------------------------------------------------------
def ddim_trailing(steps, T=1000):
    return (np.round(np.arange(T, 0, -T / steps)) - 1).astype(np.int64)


def guided_sample(unet, cls, labels, rho, window=(0, 999), norm="unit", inner=1, steps=50, seed=1234,
                  schedule="const", bs=200):
    """Unconditional DDIM (trailing, eta 0, null class, no CFG) steered toward `labels`.

    At every step t in `window` (inclusive): x0_hat += rho_t * step(grad log p(D | x0_hat)),
    repeated `inner` times (gradient re-evaluated at the shifted x0_hat, rho_t / inner each);
    step = g / ||g|| * sqrt(784) for norm "unit" (per-pixel RMS rho_t), g for "raw".
    rho_t = rho for schedule "const", rho * sqrt(1 - abar_t) for "sigma".
    Then eps' = (x_t - sqrt(abar) x0_hat') / sqrt(1 - abar), v' = sqrt(abar) eps' - sqrt(1-abar) x0_hat',
    and the DDIM step uses (x0_hat', eps')."""
    ac = alphas_cumprod().double()
    ts = ddim_trailing(steps)
    g = torch.Generator().manual_seed(seed)
    x_all = torch.randn(len(labels), 1, 28, 28, generator=g)
    outs = []
    for s in range(0, len(labels), bs):
        x = x_all[s:s + bs].double()
        lab = labels[s:s + bs]
        n = len(lab)
        null = torch.full((n,), NULL_CLASS)
        for i, t in enumerate(ts):
            a = ac[t]
            a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
            with torch.no_grad():
                v = unet(x.float(), torch.full((n,), int(t)), class_labels=null).sample.double()
            x0 = a.sqrt() * x - (1 - a).sqrt() * v
            if rho > 0 and window[0] <= t <= window[1]:
                r_t = rho * ((1 - a).sqrt().item() if schedule == "sigma" else 1.0)
                for _ in range(inner):
                    xi = x0.float().detach().requires_grad_(True)
                    lp = F.log_softmax(cls(xi), 1).gather(1, lab.view(-1, 1)).sum()
                    (gr,) = torch.autograd.grad(lp, xi)
                    gr = gr.double()
                    if norm == "unit":
                        gr = gr / gr.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1) * 28.0
                    x0 = x0 + (r_t / inner) * gr
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
        outs.append(x.float())
    return torch.cat(outs)


def pairwise_mean(x):
    f = x.flatten(1)
    d = torch.cdist(f, f)
    n = len(f)
    return (d.sum() / (n * (n - 1))).item()


def total_variation(x):
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3)) +
            (x[..., :, 1:] - x[..., :, :-1]).abs().mean((1, 2, 3)))


@torch.no_grad()
def judge(x, labels, guide, check, xho, yho, xtr, ytr):
    """Share read as the requested digit by the guiding and the check classifier; diversity and
    TV ratios as eval_digits.py (vs 20 held-out digits per class / all held-out digits) and as
    classify_pngs.py (vs the training digits of the class, PNG-quantised samples)."""
    xc = x.clamp(-1, 1)
    xq = ((xc + 1) * 127.5).round() / 127.5 - 1  # what a PNG round trip gives
    pa = logits_of(guide, xq).argmax(1)
    pb = logits_of(check, xq).argmax(1)
    div_e, div_p, tv_p = [], [], []
    for c in range(10):
        xs = xq[labels == c]
        if len(xs) < 2:
            continue
        div_e.append(pairwise_mean(x[labels == c]) / pairwise_mean(xho[yho == c][:20]))
        real = xtr[ytr == c]
        div_p.append(pairwise_mean(xs) / pairwise_mean(real))
        tv_p.append(total_variation(xs).mean().item() / total_variation(real).mean().item())
    return {
        "guide": (pa == labels).float().mean().item(),
        "check": (pb == labels).float().mean().item(),
        "per_digit_check": [round((pb[labels == c] == c).float().mean().item(), 2) for c in range(10)],
        "div_ratio_eval": float(np.mean(div_e)),
        "tv_ratio_eval": (total_variation(xc).mean() / total_variation(xho).mean()).item(),
        "div_ratio_pngs": float(np.mean(div_p)),
        "tv_ratio_pngs": float(np.mean(tv_p)),
        "range": [x.min().item(), x.max().item()],
    }


def fmt_judge(r):
    return (f"guide {r['guide']:.3f}  check {r['check']:.3f}  gap {r['guide'] - r['check']:+.3f}  "
            f"div {r['div_ratio_eval']:.2f}/{r['div_ratio_pngs']:.2f}  TV {r['tv_ratio_eval']:.2f}/{r['tv_ratio_pngs']:.2f}  "
            f"per-digit check {' '.join(f'{v:.2f}' for v in r['per_digit_check'])}")


def parse_setting(s):
    """'rho=0.3,norm=unit,lo=0,hi=999,inner=1,schedule=const'"""
    d = {"rho": 0.3, "norm": "unit", "lo": 0, "hi": 999, "inner": 1, "schedule": "const"}
    for kv in s.split(","):
        k, v = kv.split("=")
        d[k] = type(d[k])(v) if not isinstance(d[k], str) else v
    return d


def setting_name(d):
    return f"rho={d['rho']},norm={d['norm']},lo={d['lo']},hi={d['hi']},inner={d['inner']},schedule={d['schedule']}"


def guidance_check(unet, classifiers, check, settings, per_digit, data, log, grid_prefix=None):
    xho, yho, xtr, ytr = data
    labels = torch.arange(10).repeat_interleave(per_digit)
    results = []
    for s in settings:
        d = parse_setting(s) if isinstance(s, str) else s
        for cname, cls in classifiers.items():
            t0 = time.time()
            x = guided_sample(unet, cls, labels, d["rho"], (d["lo"], d["hi"]), d["norm"], d["inner"],
                              schedule=d["schedule"])
            r = judge(x, labels, cls, check, xho, yho, xtr, ytr)
            r.update({"classifier": cname, "setting": setting_name(d), "samples": len(labels),
                      "seconds": round(time.time() - t0, 1)})
            results.append(r)
            log(f"  [{cname:>3}] {setting_name(d)}: {fmt_judge(r)}  ({r['seconds']:.0f} s)")
            if grid_prefix:
                import eval_digits
                path = f"{grid_prefix}-{cname}-{setting_name(d).replace(',', '_').replace('=', '')}.png"
                eval_digits.save_grid(x, 10, path)
    return results


# ---------------------------------------------------------------------------------------
def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.path.join(ROOT, "weights"))
    ap.add_argument("--out", help="classifier output folder (default <weights>/digit-classifier)")
    ap.add_argument("--cache-dir", default="/tmp/diffsteer-reward-cache")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--t-per-digit", type=int, default=8, help="cached x0-estimates per training digit")
    ap.add_argument("--arch", default="cnn", choices=["cnn", "mlp", "strided"],
                    help="cnn: the shipped layout (--widths, --hidden); mlp: 784-256-128-10; "
                         "strided: 5x5 stride-2 convolutions, no pooling")
    ap.add_argument("--widths", default="16,32,32")
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--wd", type=float, default=1e-4)
    ap.add_argument("--clean-frac", type=float, default=0.2, help="share of each batch that is clean digits")
    ap.add_argument("--shift", type=int, default=2, help="random shifts up to this many pixels")
    ap.add_argument("--noise-std", type=float, default=0.0, help="Gaussian input noise, std U(0, this)")
    ap.add_argument("--label-smoothing", type=float, default=0.0)
    ap.add_argument("--adv-eps", type=float, default=1.5, help="L2 radius of the PGD attack (0: off)")
    ap.add_argument("--adv-steps", type=int, default=2)
    ap.add_argument("--adv-frac", type=float, default=0.5, help="share of each batch made adversarial")
    ap.add_argument("--no-temperature", action="store_true")
    ap.add_argument("--eval-only", help="skip training; measure this classifier folder")
    ap.add_argument("--compare", default=None, help="also measure this classifier folder (e.g. the old one)")
    ap.add_argument("--guide", action="append", help="guidance settings to check, "
                    "'rho=0.3,norm=unit,lo=0,hi=999,inner=1,schedule=const' (repeatable)")
    ap.add_argument("--guide-per-digit", type=int, default=20)
    ap.add_argument("--no-guide", action="store_true")
    ap.add_argument("--grid-prefix", default="/tmp/diffsteer-reward-grid")
    ap.add_argument("--json", default="/tmp/diffsteer-reward-results.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - t_start) / 60:5.1f}m] {msg}", flush=True)

    log(f"args: {vars(args)}  torch {torch.__version__}")
    xtr, ytr, xho, yho = load_digits()
    unet = load_unet(os.path.join(args.weights, "digits"))
    results = {"args": vars(args)}

    # held-out x0-estimates: 8 per held-out digit, stratified over t (2 per band)
    hx, ht, hidx = build_cache(os.path.join(args.cache_dir, "heldout.pt"), unet, xho, 7777, 8, log)

    classifiers = {}
    if args.eval_only:
        classifiers["new"] = load_classifier(args.eval_only)
    else:
        # validation split (for the temperature) out of the TRAINING digits
        g = torch.Generator().manual_seed(args.seed + 100)
        perm = torch.randperm(len(xtr), generator=g)
        n_val = len(xtr) // 10
        val, trn = perm[:n_val].sort().values, perm[n_val:].sort().values
        t0 = time.time()
        cx, ct, cidx = build_cache(os.path.join(args.cache_dir, f"train_k{args.t_per_digit}.pt"), unet, xtr,
                                   args.seed + 200, args.t_per_digit, log)
        results["cache_seconds"] = time.time() - t0
        in_trn = torch.zeros(len(xtr), dtype=torch.bool)
        in_trn[trn] = True
        m = in_trn[cidx]
        data = {"x0hat": cx[m], "y_hat": ytr[cidx[m]], "x_clean": xtr[trn], "y_clean": ytr[trn]}
        set_seeds(args.seed)
        if args.arch == "mlp":
            layers = layers_mlp()
        elif args.arch == "strided":
            layers = layers_strided()
        else:
            layers = layers_for(tuple(int(w) for w in args.widths.split(",")), args.hidden)
        net = LayerListNet(layers)
        log(f"classifier: {sum(p.numel() for p in net.parameters())} parameters, "
            f"{forward_flops(layers) / 1e6:.1f} MFLOP per forward; {len(data['x0hat'])} x0-estimates + "
            f"{len(data['x_clean'])} clean digits for training, {n_val} digits for validation")
        results["train_seconds"] = train(net, data, args, log)
        log(f"training took {results['train_seconds']:.0f} s")
        vm = ~m
        vx = torch.cat([cx[vm], xtr[val]])
        vy = torch.cat([ytr[cidx[vm]], ytr[val]])
        lv = logits_of(net, vx)
        T = fit_temperature(lv, vy)
        log(f"validation: acc {(lv.argmax(1) == vy).float().mean().item():.4f}, NLL {F.cross_entropy(lv, vy).item():.4f}"
            f" -> temperature {T:.3f}: NLL {F.cross_entropy(lv / T, vy).item():.4f}")
        results["temperature"] = T
        results["before_temperature"] = measure_heldout(net, xho, yho, hx, ht, hidx)
        log(fmt_heldout("before temperature", results["before_temperature"]))
        if not args.no_temperature:
            fold_temperature(net, T)
        out = args.out or os.path.join(args.weights, "digit-classifier")
        save_classifier(net, out)
        net = load_classifier(out)  # what ships
        log(f"saved to {out}")
        classifiers["new"] = net
    if args.compare:
        classifiers["old"] = load_classifier(args.compare)

    results["heldout"] = {}
    for name, net in classifiers.items():
        r = measure_heldout(net, xho, yho, hx, ht, hidx)
        results["heldout"][name] = r
        log(fmt_heldout(f"[{name}] held-out", r))

    if not args.no_guide:
        import eval_digits
        check = eval_digits.check_classifier(xtr, ytr, log)
        settings = args.guide or [DEFAULT_GUIDE]
        results["guidance"] = guidance_check(unet, classifiers, check, settings, args.guide_per_digit,
                                             (xho, yho, xtr, ytr), log, grid_prefix=args.grid_prefix)
    results["wall_seconds"] = time.time() - t_start
    with open(args.json, "w") as f:
        json.dump(results, f, indent=1)
    log(f"results -> {args.json}; total wall time {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Reward-guidance experiments in Python (dev-only): the engine's guided DDIM step mirrored
in PyTorch, with the variants the engine may adopt, judged by the independent readers of
tools/readers.py (never by the reward model that steers).

The step mirrored (src/guidance/reward.rs, default x0 form): DDIM trailing (999, 979, ..., 19,
then abar = 1), eta 0; v = U-Net(x_t, t, class); x0_hat = sqrt(abar) x_t - sqrt(1-abar) v;
on guided steps x0_hat += rho_t * g / rms(g) (g = d r / d x0_hat); eps' = (x_t - sqrt(abar)
x0_hat) / sqrt(1-abar); x_prev = sqrt(abar_prev) x0_hat + sqrt(1-abar_prev) eps'.
With class CFG, v = v_null + cfg (v_class - v_null) before the x0 estimate.

    python tools/guide_lab.py SETTING [SETTING ...] [--per-digit 20] [--mode targets|avoid|cfg]

SETTING is comma-separated key=value (defaults in DEFAULTS), e.g.
    rho=0.4,stop=45                            the engine's default before this work
    rho=0.6,sched=sigma,stop=45                the engine's default now
    rho=0.4,stop=45,gate=1                     step x (1 - p): stops where confident
    clf=weights/digit-classifier+/tmp/mlp,rho=0.4   an ensemble (mean log-probability)
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import NULL_CLASS, alphas_cumprod, load_classifier, load_unet  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULTS = {
    "clf": os.path.join(ROOT, "weights", "digit-classifier"),  # '+'-separated ensemble members
    "rho": 0.4,          # RMS x0 change per pixel per guided step
    "start": 0,          # guided steps start..stop-1
    "stop": 45,
    "sched": "const",    # const | sigma (rho sqrt(1-abar)) | ramp (DAS-like tempering: rho * step/stop)
    "gate": 0.0,         # step x (1 - e^r)^gate (0: off)
    "shifts": 0,         # gradient averaged over this many random +-1 px shifts (0: off)
    "blur": 0.0,         # Gaussian blur (sigma, px) of the gradient
    "noise": 0.0,        # gradient averaged over 4 draws of x0_hat + this * N(0, 1)
    "raw": 0,            # 1: no RMS normalisation (rho multiplies the raw gradient)
    "cfg": 3.0,          # class CFG scale (mode cfg)
    "disc": "",          # discriminator folder for a realism term
    "dw": 0.0,           # its weight
    "reward": "logp",    # logp | avoid
}


def parse(s):
    d = dict(DEFAULTS)
    if s:
        for kv in s.split(","):
            k, v = kv.split("=", 1)
            d[k] = type(DEFAULTS[k])(v) if k in DEFAULTS else v
    return d


def name(d):
    return ",".join(f"{k}={v}" for k, v in d.items() if DEFAULTS.get(k) != v) or "defaults"


def ddim_trailing(steps, T=1000):
    return (np.round(np.arange(T, 0, -T / steps)) - 1).astype(np.int64)


def shift1(x, dx, dy):
    """Integer shift with background (-1) fill."""
    xp = F.pad(x, (1, 1, 1, 1), value=-1.0)
    return xp[..., 1 + dy:29 + dy, 1 + dx:29 + dx]


def blur(g, sigma):
    r = max(1, int(round(3 * sigma)))
    ax = torch.arange(-r, r + 1, dtype=g.dtype)
    k = torch.exp(-0.5 * (ax / sigma) ** 2)
    k = k / k.sum()
    g = F.conv2d(F.pad(g, (r, r, 0, 0)), k.view(1, 1, 1, -1))
    return F.conv2d(F.pad(g, (0, 0, r, r)), k.view(1, 1, -1, 1))


class Lab:
    def __init__(self):
        torch.set_num_threads(1)  # faster than 2 on a shared 2-core machine
        self.unet = load_unet(os.path.join(ROOT, "weights", "digits"))
        self.clfs = {}

    def clf(self, path):
        if path not in self.clfs:
            self.clfs[path] = load_classifier(path)
        return self.clfs[path]

    def reward(self, d, x, targets, abar):
        """Per-sample reward r(x) (differentiable) and the gate's log-probability."""
        members = [self.clf(p) for p in d["clf"].split("+")]
        lps = []
        for m in members:
            ls = F.log_softmax(m(x), 1)
            lp = ls.gather(1, targets.view(-1, 1))[:, 0]
            if d["reward"] == "avoid":
                lp = torch.log1p(-lp.exp().clamp(max=1 - 1e-7))
            lps.append(lp)
        r = torch.stack(lps).mean(0)
        gate_lp = r
        if d["disc"] and d["dw"] != 0:
            disc = self.clf(d["disc"])
            r = r + d["dw"] * disc_logodds(disc, x, abar)
        return r, gate_lp

    def grad(self, d, x0, targets, abar):
        """d r / d x0 (float64 out), with the smoothing variants, and the gate value."""
        x = x0.float()
        views = [(0, 0)]
        if d["shifts"] > 0:
            g = torch.Generator().manual_seed(int(abar * 1e6))
            views = [tuple(int(v) for v in torch.randint(-1, 2, (2,), generator=g)) for _ in range(d["shifts"])]
        noises = [None]
        if d["noise"] > 0:
            noises = [torch.randn(x.shape) * d["noise"] for _ in range(4)]
        total = torch.zeros_like(x)
        gate_lp = None
        for dx, dy in views:
            for nz in noises:
                xi = x.detach().requires_grad_(True)
                xv = shift1(xi, dx, dy) if (dx, dy) != (0, 0) else xi
                if nz is not None:
                    xv = xv + nz
                r, glp = self.reward(d, xv, targets, abar)
                (gr,) = torch.autograd.grad(r.sum(), xi)
                total += gr
                if gate_lp is None:
                    gate_lp = glp.detach()
        g = total.double() / (len(views) * len(noises))
        if d["blur"] > 0:
            g = blur(g, d["blur"])
        return g, gate_lp.double()

    @torch.no_grad()
    def sample(self, d, targets, mode, seed=1234, bs=100, steps=50):
        """mode: 'uncond' (null class, reward guided), 'cfg' (class labels = targets, CFG)."""
        ac = alphas_cumprod().double()
        ts = ddim_trailing(steps)
        gen = torch.Generator().manual_seed(seed)
        x_all = torch.randn(len(targets), 1, 28, 28, generator=gen)
        outs = []
        for s in range(0, len(targets), bs):
            x = x_all[s:s + bs].double()
            tg = targets[s:s + bs]
            n = len(tg)
            null = torch.full((n,), NULL_CLASS)
            for i, t in enumerate(ts):
                a = ac[t]
                a_prev = ac[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
                tt = torch.full((n,), int(t))
                if mode == "cfg" and d["cfg"] != 1:
                    v2 = self.unet(torch.cat([x, x]).float(), torch.cat([tt, tt]),
                                   class_labels=torch.cat([null, tg])).sample.double()
                    v = v2[:n] + d["cfg"] * (v2[n:] - v2[:n])
                else:
                    v = self.unet(x.float(), tt, class_labels=tg if mode == "cond" else null).sample.double()
                x0 = a.sqrt() * x - (1 - a).sqrt() * v
                guided = d["rho"] > 0 and d["start"] <= i < d["stop"] and (mode != "cfg" or d["dw"] != 0)
                if guided:
                    with torch.enable_grad():
                        g, glp = self.grad(d, x0, tg, a.item())
                    rho = d["rho"]
                    if d["sched"] == "sigma":
                        rho *= (1 - a).sqrt().item()
                    elif d["sched"] == "ramp":
                        rho *= (i + 1) / d["stop"]
                    if not d["raw"]:
                        g = g / g.flatten(1).pow(2).mean(1).sqrt().clamp(min=1e-30).view(-1, 1, 1, 1)
                    step = rho * g
                    if d["gate"] > 0:
                        step = step * (1 - glp.exp()).clamp(min=0).pow(d["gate"]).view(-1, 1, 1, 1)
                    x0 = x0 + step
                eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
            outs.append(x.float())
        return torch.cat(outs)


def disc_logodds(disc, x, abar):
    """A realism discriminator's log-odds (its config's noise channel carries sqrt(1 - abar))."""
    sig = torch.full_like(x, float(np.sqrt(1 - abar)))
    logits = disc(torch.cat([x, sig], 1))
    return logits[:, 1] - logits[:, 0]


def quantise(x):
    return ((x.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("settings", nargs="*", default=[""])
    ap.add_argument("--per-digit", type=int, default=20)
    ap.add_argument("--mode", default="targets", choices=["targets", "avoid", "cfg", "uncond"])
    ap.add_argument("--avoid", type=int, default=7)
    ap.add_argument("--count", type=int, default=300, help="avoid/uncond mode: samples")
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--grids", default="/tmp/guide-lab")
    ap.add_argument("--json", default="/tmp/guide-lab.jsonl")
    args = ap.parse_args()
    from eval_digits import save_grid
    from readers import Readers, fmt, frechet, gaussian

    readers = Readers()
    lab = Lab()
    os.makedirs(args.grids, exist_ok=True)
    for s in args.settings:
        d = parse(s)
        t0 = time.time()
        if args.mode in ("targets", "cfg"):
            targets = torch.arange(10).repeat_interleave(args.per_digit)
            x = quantise(lab.sample(d, targets, "uncond" if args.mode == "targets" else "cfg", args.seed))
            preds = readers.predict(x)
            y = targets.numpy()
            acc = {k: float((v == y).mean()) for k, v in preds.items()}
            guide = [float((F.log_softmax(lab.clf(p)(x), 1).argmax(1).numpy() == y).mean())
                     for p in d["clf"].split("+")]
            fd = readers.fd(x)
            r = {"samples": len(x), "acc": acc, "acc_mean": float(np.mean(list(acc.values()))),
                 "acc_min": float(min(acc.values())), "fd": fd[0], "fd_hog": fd[1], "guide": guide}
            line = fmt(r) + f"  guide {' '.join(f'{100 * g:.1f}%' for g in guide)}"
        else:
            targets = torch.full((args.count,), args.avoid)
            dd = dict(d)
            if args.mode == "uncond":
                dd["rho"] = 0.0
            else:
                dd["reward"] = "avoid"
            x = quantise(lab.sample(dd, targets, "uncond", args.seed))
            preds = readers.predict(x)
            hist = {k: np.bincount(v, minlength=10).tolist() for k, v in preds.items()}
            fd = readers.fd(x)
            r = {"samples": len(x), "histogram": hist, "fd": fd[0], "fd_hog": fd[1],
                 "avoided_share": {k: h[args.avoid] / len(x) for k, h in hist.items()},
                 "min_other_share": {k: min(h[c] for c in range(10) if c != args.avoid) / len(x)
                                     for k, h in hist.items()}}
            line = fmt(r)
        r.update({"setting": name(d), "mode": args.mode, "seconds": round(time.time() - t0)})
        print(f"[{args.mode}] {name(d)} ({r['seconds']} s): {line}", flush=True)
        with open(args.json, "a") as f:
            f.write(json.dumps(r) + "\n")
        save_grid(x, 10 if args.mode in ("targets", "cfg") else 15,
                  os.path.join(args.grids, f"{args.mode}-{name(d).replace('/', '_')}.png"))


if __name__ == "__main__":
    main()

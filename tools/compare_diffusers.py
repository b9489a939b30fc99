#!/usr/bin/env python3
"""End-to-end comparison of `diffsteer generate` with diffusers + PyTorch (CPU) on
the same weights, scheduler, steps, batch, CFG and thread count: speed AND output.

Dev-only (needs torch, diffusers, safetensors, pillow, numpy; default venv /work/venv).

    /work/venv/bin/python tools/compare_diffusers.py --count 16 --steps 50
    /work/venv/bin/python tools/compare_diffusers.py --count 1 --steps 20 --json out.json

What it does:
1. Speed. diffusers: the sampling loop alone (model already loaded, one warm-up run,
   then the median of --runs runs). diffsteer: the whole process (`diffsteer --threads
   N generate ... --quiet`, wall time around subprocess.run, includes loading the
   weights and writing PNGs; median of --runs runs). Both with N threads; the runs
   of the two sides alternate. Peak resident memory of both processes is reported.
2. Output. The engine's noise is Philox4x32-10 + Box-Muller (src/rng.rs), reproduced
   here in numpy, so diffusers starts from the engine's own x_T (seed + i for image i,
   stream 0, channels-last element order). Only deterministic schedulers are
   compared (DDIM with eta 0, DPM-Solver++ 2M, Euler): no other noise is drawn. The
   final x0 is mapped to 8 bit as src/image.rs `from_model_space` does
   (round((v/2 + 0.5).clamp(0, 1) * 255) in f32, ties away from zero) and compared
   with the engine's PNGs. Exit 1 if more than --max-share (0.5%) of the pixels differ
   by more than 1 level.
3. A table (machine, versions, settings, s/image, ratio); --json FILE writes the same.

Conventions (weights/README.md): class of image i = i mod (num_class_embeds - 1), the
null class num_class_embeds - 1 (10 for digits) is the unconditional half of CFG,
guided = u + cfg * (c - u).
"""
import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

# ---------------------------------------------------------------- Philox (src/rng.rs)
PHILOX_M0 = np.uint64(0xD2511F53)
PHILOX_M1 = np.uint64(0xCD9E8D57)
PHILOX_W0 = 0x9E3779B9
PHILOX_W1 = 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)


def philox4x32_10(counter, key):
    """Vectorised Philox4x32-10. counter: 4 arrays (or ints) of u32, key: 2 ints."""
    c = [np.asarray(x, dtype=np.uint64) & MASK32 for x in counter]
    c = np.broadcast_arrays(*c)
    c = [x.copy() for x in c]
    k0, k1 = key[0] & 0xFFFFFFFF, key[1] & 0xFFFFFFFF
    for rnd in range(10):
        if rnd > 0:
            k0 = (k0 + PHILOX_W0) & 0xFFFFFFFF
            k1 = (k1 + PHILOX_W1) & 0xFFFFFFFF
        p0 = PHILOX_M0 * c[0]  # < 2^64, no overflow
        p1 = PHILOX_M1 * c[2]
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c = [hi1 ^ c[1] ^ np.uint64(k0), lo1, hi0 ^ c[3] ^ np.uint64(k1), lo0]
    return [x.astype(np.uint32) for x in c]


def normal_vec(seed, stream, length):
    """Normals 0..length of (seed, stream), as rng::normal_vec (f32)."""
    blocks = np.arange((length + 3) // 4, dtype=np.uint64)
    w = philox4x32_10(
        [blocks & MASK32, blocks >> np.uint64(32), stream & 0xFFFFFFFF, stream >> 32],
        [seed & 0xFFFFFFFF, seed >> 32],
    )
    u = [(x.astype(np.float64) + 0.5) * (1.0 / 4294967296.0) for x in w]
    out = np.empty((len(blocks), 4), dtype=np.float32)
    for pair in range(2):
        radius = np.sqrt(-2.0 * np.log(u[2 * pair]))
        angle = 2.0 * np.pi * u[2 * pair + 1]
        out[:, 2 * pair] = (radius * np.cos(angle)).astype(np.float32)
        out[:, 2 * pair + 1] = (radius * np.sin(angle)).astype(np.float32)
    return out.reshape(-1)[:length]


def check_philox():
    """The Random123 known-answer vectors of src/rng.rs's tests."""
    kats = [
        ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
        ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
        (
            [0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
            [0xA4093822, 0x299F31D0],
            [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1],
        ),
    ]
    for counter, key, want in kats:
        got = [int(x) for x in philox4x32_10(counter, key)]
        if got != want:
            sys.exit(f"Philox known-answer test failed: {[hex(g) for g in got]} != {[hex(x) for x in want]}")
    v = normal_vec(1, 0, 200_000).astype(np.float64)
    if abs(v.mean()) > 0.01 or abs(v.var() - 1.0) > 0.01:
        sys.exit(f"Philox normals have wrong moments: mean {v.mean()}, var {v.var()}")


def initial_noise(seed, channels, height, width):
    """x_T of one sample, NCHW-ready [C, H, W] from the engine's channels-last order."""
    v = normal_vec(seed, 0, height * width * channels)
    return v.reshape(height, width, channels).transpose(2, 0, 1).copy()


def to_8bit(x):
    """src/image.rs from_model_space: f32 math, Rust round() = ties away from zero
    (values are >= 0 after the clamp, so floor(y + 0.5))."""
    y = (np.clip(x.astype(np.float32) / np.float32(2.0) + np.float32(0.5), 0.0, 1.0) * np.float32(255.0)).astype(np.float32)
    return np.floor(y.astype(np.float64) + 0.5).astype(np.uint8)


# ---------------------------------------------------------------- helpers
def cpu_model():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="weights/digits")
    ap.add_argument("--binary", default=str(ROOT / "target/release/diffsteer"))
    ap.add_argument("--count", type=int, default=16, help="images (= engine --batch, so 2×count rows per forward with CFG)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--scheduler", choices=["ddim", "dpm++2m", "euler"], default="ddim")
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="timed runs of each side (median)")
    ap.add_argument("--max-share", type=float, default=0.005, help="fail above this share of pixels off by > 1 level")
    ap.add_argument("--guidance", choices=["cfg", "apg", "cfg-zero-star"], default="cfg",
                    help="the guider, as diffusers' guiders compute it (tools/guiders.py)")
    ap.add_argument("--apg-eta", type=float, default=1.0)
    ap.add_argument("--apg-norm-threshold", type=float, default=15.0)
    ap.add_argument("--apg-momentum", type=float, default=0.0)
    ap.add_argument("--zero-init-steps", type=int, default=1)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()

    import torch
    import diffusers
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, UNet2DModel
    from guiders import Guider
    from PIL import Image

    schedulers = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler, "euler": EulerDiscreteScheduler}
    torch.set_num_threads(args.threads)
    check_philox()

    model = Path(args.model)
    if not model.is_absolute():
        model = (Path.cwd() / model) if (Path.cwd() / model).exists() else ROOT / model
    binary = Path(args.binary)
    if not binary.exists():
        sys.exit(f"{binary} not found: run `cargo build --release` first")
    version = subprocess.run([str(binary), "--version"], capture_output=True, text=True, check=True).stdout.strip()

    # ---------------------------------------------------------------- diffusers
    unet = UNet2DModel.from_pretrained(str(model)).float().eval()
    cfg = unet.config
    h, w = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else tuple(cfg.sample_size)
    ch = cfg.in_channels
    with open(model / "scheduler_config.json") as f:
        sched_config = json.load(f)
    n = args.count
    classes = cfg.num_class_embeds
    null = classes - 1 if classes else None
    x_t = torch.from_numpy(np.stack([initial_noise(args.seed + i, ch, h, w) for i in range(n)]))
    labels = None
    if classes:
        cond = torch.arange(n) % null
        labels = torch.cat([torch.full((n,), null), cond])

    guider_settings = dict(kind=args.guidance.replace("-", "_"))
    if args.guidance == "apg":
        guider_settings.update(apg_eta=args.apg_eta, apg_norm_threshold=args.apg_norm_threshold,
                               apg_momentum=args.apg_momentum)
    if args.guidance == "cfg-zero-star":
        guider_settings.update(zero_init_steps=args.zero_init_steps)

    def sample():
        sched = schedulers[args.scheduler].from_config(sched_config)
        sched.set_timesteps(args.steps)
        lat = x_t * sched.init_noise_sigma
        guider = Guider(batch=n, **guider_settings)
        for i, t in enumerate(sched.timesteps):
            if classes and (args.cfg != 1.0 or guider.zeroes(i)):
                inp = sched.scale_model_input(torch.cat([lat, lat]), t)
                u, c = unet(inp, t, class_labels=labels).sample.chunk(2)
                guided = guider(i, args.cfg != 1.0, u, c, [args.cfg] * n)
            else:
                inp = sched.scale_model_input(lat, t)
                guided = unet(inp, t, class_labels=labels[n:] if classes else None).sample
            lat = sched.step(guided, t, lat).prev_sample
        return lat

    # ------------------------------------------------- both, runs interleaved
    # One run of each side in turn, so that a change in the machine's load (a shared
    # VM drifts by ±15%) hits both sides alike.
    engine_times, torch_times = [], []
    with torch.inference_mode(), tempfile.TemporaryDirectory(prefix="compare-diffusers-") as tmp:
        out = Path(tmp) / "out"
        cmd = [
            str(binary), "--threads", str(args.threads), "generate", "--model", str(model),
            "--count", str(args.count), "--batch", str(args.count), "--steps", str(args.steps),
            "--scheduler", args.scheduler, "--cfg", str(args.cfg), "--seed", str(args.seed),
            "--out", str(out), "--overwrite", "--quiet", "--guidance", args.guidance,
        ]
        if args.guidance == "apg":
            cmd += ["--apg-eta", str(args.apg_eta), "--apg-norm-threshold", str(args.apg_norm_threshold),
                    "--apg-momentum", str(args.apg_momentum)]
        if args.guidance == "cfg-zero-star":
            cmd += ["--zero-init-steps", str(args.zero_init_steps)]
        # /usr/bin/time reports the engine's own peak RSS (a child forked from
        # this process would count torch's pages until it execs).
        rss_file = Path(tmp) / "rss"
        gnu_time = Path("/usr/bin/time")
        measured = ([str(gnu_time), "-o", str(rss_file), "-f", "%M"] if gnu_time.exists() else []) + cmd
        final = sample()  # warm-up, and the output that is compared
        engine_rss_kib = []
        for _ in range(args.runs):
            t = time.perf_counter()
            subprocess.run(measured, check=True)
            engine_times.append(time.perf_counter() - t)
            if rss_file.exists():
                engine_rss_kib.append(int(rss_file.read_text().split()[-1]))
            t = time.perf_counter()
            sample()
            torch_times.append(time.perf_counter() - t)
        pngs = sorted(out.glob("*.png"))
        if len(pngs) != args.count:
            sys.exit(f"expected {args.count} PNGs in {out}, found {len(pngs)}")
        engine_px = np.stack([np.asarray(Image.open(p)) for p in pngs])
    # Peak resident memory of each whole process: the engine's largest run, and
    # this Python process with torch, diffusers and the model (ru_maxrss is KiB).
    engine_rss_mib = max(engine_rss_kib) / 1024 if engine_rss_kib else float("nan")
    torch_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    ref_px = to_8bit(final.permute(0, 2, 3, 1).numpy())  # [N, H, W, C]
    if engine_px.ndim == 3:
        engine_px = engine_px[..., None]
    diff = np.abs(ref_px.astype(np.int32) - engine_px.astype(np.int32))
    max_diff = int(diff.max())
    share_diff = float((diff > 0).mean())
    share_over1 = float((diff > 1).mean())
    agree = share_over1 <= args.max_share

    ours = statistics.median(engine_times) / n
    theirs = statistics.median(torch_times) / n
    result = {
        "machine": {"cpu": cpu_model(), "logical_cpus": os.cpu_count(), "threads": args.threads},
        "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__, "diffsteer": version, "python": platform.python_version()},
        "settings": {
            "model": args.model, "scheduler": args.scheduler, "steps": args.steps, "count": n, "batch": n,
            "rows_per_forward": 2 * n if classes and args.cfg != 1.0 else n, "cfg": args.cfg, "seed": args.seed, "runs": args.runs,
        },
        "diffsteer_s_per_image": ours,
        "diffusers_s_per_image": theirs,
        "diffsteer_runs_s": engine_times,
        "diffusers_runs_s": torch_times,
        "ratio_diffusers_over_diffsteer": theirs / ours,
        "peak_rss_mib": {"diffsteer": engine_rss_mib, "diffusers": torch_rss_mib},
        "timing": "diffsteer: whole process (load + sample + PNGs); diffusers: sampling loop only, after a warm-up",
        "agreement": {
            "max_abs_diff_levels": max_diff, "share_pixels_differing": share_diff,
            "share_pixels_over_1_level": share_over1, "max_share_allowed": args.max_share, "pass": agree,
        },
    }

    s = result["settings"]
    rows = [
        ("machine", f"{result['machine']['cpu']} ({os.cpu_count()} logical CPUs), {args.threads} threads"),
        ("versions", f"torch {torch.__version__}, diffusers {diffusers.__version__}, {version}"),
        ("settings", f"{args.model}, {args.scheduler} {args.steps} steps, {n} images at batch {n} "
                     f"({s['rows_per_forward']} rows/forward), cfg {args.cfg:g}, seed {args.seed}, median of {args.runs}"),
        ("diffsteer", f"{ours:.4f} s/image  (whole process; runs {', '.join(f'{x:.2f}' for x in engine_times)} s)"),
        ("diffusers", f"{theirs:.4f} s/image  (sampling loop; runs {', '.join(f'{x:.2f}' for x in torch_times)} s)"),
        ("ratio", f"{theirs / ours:.2f}x  (diffusers time / diffsteer time)"),
        ("peak RSS", f"diffsteer {engine_rss_mib:.0f} MiB (whole process), diffusers {torch_rss_mib:.0f} MiB (whole Python process)"),
        ("outputs", f"max |diff| {max_diff} levels, {100 * share_diff:.3f}% pixels differ, "
                    f"{100 * share_over1:.3f}% by > 1 level -> {'AGREE' if agree else 'DISAGREE'}"),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    sys.exit(0 if agree else 1)


if __name__ == "__main__":
    main()

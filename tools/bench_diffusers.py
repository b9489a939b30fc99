#!/usr/bin/env python3
"""The peer measurement for `diffsteer bench`: the same model, batch and sampling
loop in diffusers + PyTorch on the CPU, with the same thread count.

Dev-only (needs torch and diffusers). tools/compare_speed.sh runs this and
`diffsteer bench` back to back and prints the ratios.

    python tools/bench_diffusers.py --model weights/digits --batch 32 --steps 20 --threads 2
"""
import argparse
import json
import statistics
import time

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

SCHEDULERS = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler}


def median_time(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="weights/digits")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    unet = UNet2DModel.from_pretrained(args.model).float().eval()
    cfg = unet.config
    h, w = (cfg.sample_size, cfg.sample_size) if isinstance(cfg.sample_size, int) else cfg.sample_size
    classes = cfg.num_class_embeds
    x = torch.randn(args.batch, cfg.in_channels, h, w)
    t = torch.tensor([(999 - 37 * i) % 1000 for i in range(args.batch)], dtype=torch.float32)
    labels = torch.arange(args.batch) % classes if classes else None

    with torch.inference_mode():
        # The same large f32 GEMM that `diffsteer bench` takes as its ceiling.
        gm, gk, gn = 4096, 1024, 1024
        ga, gb = torch.randn(gm, gk), torch.randn(gk, gn)
        gemm_s = median_time(lambda: torch.matmul(ga, gb), args.iters)
        gemm_gflops = 2 * gm * gk * gn / gemm_s / 1e9
        forward_s = median_time(lambda: unet(x, t, class_labels=labels).sample, args.iters)

        with open(f"{args.model}/scheduler_config.json") as f:
            sched_config = json.load(f)
        images = max(args.batch // 2, 1)
        null = classes - 1 if classes else None

        def sample():
            sched = SCHEDULERS[args.scheduler].from_config(sched_config)
            sched.set_timesteps(args.steps)
            lat = torch.randn(images, cfg.in_channels, h, w) * sched.init_noise_sigma
            cond = torch.arange(images) % null if classes else None
            both = torch.cat([torch.full((images,), null), cond]) if classes else None
            for step_t in sched.timesteps:
                inp = sched.scale_model_input(torch.cat([lat, lat]), step_t)
                out = unet(inp, step_t, class_labels=both).sample
                u, c = out.chunk(2)
                lat = sched.step(u + 3.0 * (c - u), step_t, lat).prev_sample
            return lat

        sample_s = median_time(sample, min(args.iters, 3))

    print(f"diffusers {torch.__version__}/{__import__('diffusers').__version__}, {args.threads} threads")
    print(f"gemm {gm}×{gk}×{gn} f32 (torch.matmul) {gemm_s * 1e3:9.2f} ms  {gemm_gflops:7.1f} GFLOP/s")
    print(f"unet forward, batch {args.batch:<4}         {forward_s * 1e3:9.2f} ms")
    print(f"sample {images} images, {args.steps} {args.scheduler} steps, cfg 3 {sample_s:7.2f} s   {sample_s / images:7.3f} s/image")
    print(json.dumps({"forward_ms": forward_s * 1e3, "sample_s": sample_s, "images": images,
                      "gemm_gflops": gemm_gflops}))


if __name__ == "__main__":
    main()

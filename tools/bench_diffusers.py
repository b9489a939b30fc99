#!/usr/bin/env python3
"""The peer measurement for `diffsteer bench`: the same model, batch and sampling
loop in diffusers + PyTorch on the CPU, with the same thread count.

Dev-only (needs torch and diffusers). tools/compare_speed.sh runs this and
`diffsteer bench` back to back and prints the ratios.

    python tools/bench_diffusers.py --model weights/digits --batch 32 --steps 20 --threads 2

With `--model sd15-shape` it times what `diffsteer bench --model sd15-shape` does:
a whole text-to-image generation through diffusers' StableDiffusionPipeline built
from Stable Diffusion 1.5's configs with random weights (nothing downloaded; the
tokenizer is the CLIP vocabulary in tests/fixtures/clip-tokenizer), per stage:

    python tools/bench_diffusers.py --model sd15-shape --size 32 --batch 1 --steps 10 --iters 2 --threads 2

`--size` is the latent size (32: 256×256 images); `--batch` is images per run (the
U-Net sees twice as many rows with CFG, as in diffsteer's `--batch`).
"""
import argparse
import json
import statistics
import time

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, UNet2DModel

SCHEDULERS = {"ddim": DDIMScheduler, "dpm++2m": DPMSolverMultistepScheduler}

# The configs of `diffsteer bench --model sd15-shape` (src/model/preset.rs,
# src/model/clip/preset.rs, src/model/vae/preset.rs): Stable Diffusion 1.5's.
SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280],
    center_input_sample=False, cross_attention_dim=768,
    down_block_types=["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"], downsample_padding=1,
    flip_sin_to_cos=True, freq_shift=0, in_channels=4, layers_per_block=2,
    mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    up_block_types=["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
)
SD15_TEXT = dict(
    hidden_act="quick_gelu", hidden_size=768, intermediate_size=3072, layer_norm_eps=1e-5,
    max_position_embeddings=77, num_attention_heads=12, num_hidden_layers=12,
    projection_dim=768, vocab_size=49408,
)
SD15_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4, in_channels=3, latent_channels=4,
    layers_per_block=2, norm_num_groups=32, out_channels=3, sample_size=512,
    scaling_factor=0.18215, up_block_types=["UpDecoderBlock2D"] * 4,
)
SD15_SCHEDULER = dict(
    beta_end=0.012, beta_schedule="scaled_linear", beta_start=0.00085, clip_sample=False,
    num_train_timesteps=1000, prediction_type="epsilon", set_alpha_to_one=False,
    steps_offset=1, timestep_spacing="leading",
)
PROMPT = "a photograph of an astronaut riding a horse"


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def bench_sd15_pipeline(args):
    """A whole StableDiffusionPipeline run per iteration, timed per stage."""
    import os

    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    size = args.size or 64
    t = time.perf_counter()
    unet = UNet2DConditionModel(sample_size=size, **SD15_UNET).float().eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).float().eval()
    vae = AutoencoderKL(**SD15_VAE).float().eval()
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    tokenizer = CLIPTokenizer.from_pretrained(os.path.join(root, "tests/fixtures/clip-tokenizer"))
    scheduler = SCHEDULERS[args.scheduler](**SD15_SCHEDULER)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    print(f"sd15-shape: diffusers StableDiffusionPipeline, random weights, built in {time.perf_counter() - t:.1f} s")

    # Stage clocks: the text encoder's forward (prompt and negative prompt) and
    # vae.decode; sampling is the rest of the pipeline call (U-Net loop with CFG,
    # scheduler steps, latent set-up).
    clock = {"text": 0.0, "decode": 0.0}

    def timed(obj, name, key):
        inner = getattr(obj, name)

        def wrapper(*a, **k):
            t0 = time.perf_counter()
            out = inner(*a, **k)
            clock[key] += time.perf_counter() - t0
            return out

        setattr(obj, name, wrapper)

    timed(text_encoder, "forward", "text")
    timed(vae, "decode", "decode")

    def run(steps):
        clock["text"] = clock["decode"] = 0.0
        t0 = time.perf_counter()
        image = pipe(
            PROMPT, negative_prompt="", height=8 * size, width=8 * size,
            num_inference_steps=steps, guidance_scale=3.0, num_images_per_prompt=args.batch,
            generator=torch.Generator().manual_seed(0), output_type="np",
        ).images
        total = time.perf_counter() - t0
        assert image.shape == (args.batch, 8 * size, 8 * size, 3), image.shape
        return {"text_encode_s": clock["text"], "vae_decode_s": clock["decode"],
                "sampling_s": total - clock["text"] - clock["decode"], "total_s": total}

    with torch.inference_mode():
        run(min(args.steps, 2))  # warm-up, as diffsteer's
        runs = [run(args.steps) for _ in range(args.iters)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"diffusers {torch.__version__}/{__import__('diffusers').__version__}, {args.threads} threads, {cpu_name()}")
    print(f"whole text-to-image runs (medians of {args.iters}), {args.batch} images of {8 * size}×{8 * size}, "
          f"{args.steps} {args.scheduler} steps, cfg 3:")
    print(f"  text enc {med['text_encode_s'] * 1e3:.1f} ms, sampling {med['sampling_s']:.2f} s, "
          f"vae decode {med['vae_decode_s']:.2f} s, total {med['total_s']:.2f} s, "
          f"{med['total_s'] / args.batch:.2f} s/image")
    print(json.dumps({"model": "sd15-shape", "size": size, "batch": args.batch, "steps": args.steps,
                      "threads": args.threads, "cpu": cpu_name(), "runs": runs, "median": med}))


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
    ap.add_argument("--size", type=int, default=None, help="latent size (sd15-shape only; default 64)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.model == "sd15-shape":
        return bench_sd15_pipeline(args)
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

#!/usr/bin/env python3
"""The shipped text-to-image model (weights/digits-text) through diffsteer and through
diffusers' own `StableDiffusionPipeline`, from the same initial latents (dev-only).

    /work/venv/bin/python tools/compare_digits_text.py                 # compare, print a table
    /work/venv/bin/python tools/compare_digits_text.py --write-fixture # also the test fixtures

For every case (prompt, negative prompt, scheduler, CFG), the engine's binary writes its
PNGs (`generate --model weights/digits-text --prompt ... --seed S --count N`), and
diffusers runs `StableDiffusionPipeline.from_pretrained(model)` with the scheduler class the
engine names and `latents=` the engine's Philox noise for seeds S .. S+N-1
(tools/engine_noise.py); both are rounded to 8 bits as the PNGs are and compared pixel by
pixel. The run fails when more than --max-share of the pixels differ by more than one level.

--write-fixture writes tests/fixtures/text/digits_text__<scheduler>.safetensors in the
format of tools/make_text_fixtures.py's reference runs (images in [0, 1] NHWC, final
latents, timesteps, prompts and settings as metadata), which tests/text_to_image.rs checks
the engine against on every CI run.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
from engine_noise import pipeline_latents  # noqa: E402

# (engine scheduler name, diffusers class)
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm++2m": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
}
# Fixture file names use the names of tools/make_text_fixtures.py.
FIXTURE_NAMES = {"ddim": "ddim", "dpm++2m": "dpmpp2m", "euler": "euler"}

# Prompts of the fixtures: a numeral, a word in a sentence, a negative prompt, the empty prompt.
FIXTURE_RUN = {
    "prompts": ["a handwritten seven", "the digit 3", "a handwritten digit", ""],
    "negative_prompts": ["", "", "seven", ""],
    "seeds": [0, 1, 2, 3],
}


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path), dtype=np.float32) / 255.0


def engine_images(binary, model, prompt, negative, seed, count, steps, cfg, scheduler):
    with tempfile.TemporaryDirectory() as out:
        cmd = [binary, "generate", "--model", str(model), "--prompt", prompt, "--seed", str(seed),
               "--count", str(count), "--steps", str(steps), "--cfg", str(cfg), "--scheduler", scheduler,
               "--out", out]
        if negative:
            cmd += ["--negative-prompt", negative]
        subprocess.run(cmd, check=True, capture_output=True)
        return np.stack([read_png(Path(out) / f"{i:06}.png") for i in range(count)])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(ROOT / "weights/digits-text"))
    ap.add_argument("--binary", default=str(ROOT / "target/release/diffsteer"))
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--cfg", type=float, default=3.0)
    ap.add_argument("--count", type=int, default=8, help="images per prompt (seeds seed .. seed+count-1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--schedulers", default="ddim,dpm++2m,euler")
    ap.add_argument("--max-share", type=float, default=0.005)
    ap.add_argument("--write-fixture", action="store_true")
    ap.add_argument("--fixture-steps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "tests/fixtures"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_pretrained(args.model, dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    base_config = dict(pipe.scheduler.config)
    cases = [("a handwritten seven", ""), ("please draw the number 4 for me", ""),
             ("a handwritten digit", "seven"), ("a thick eight", "")]
    worst = 0.0
    for sched in args.schedulers.split(","):
        pipe.scheduler = getattr(diffusers, SCHEDULERS[sched]).from_config(base_config)
        for prompt, negative in cases:
            ours = engine_images(args.binary, args.model, prompt, negative, args.seed, args.count, args.steps,
                                 args.cfg, sched)
            with torch.no_grad():
                theirs = pipe([prompt], negative_prompt=[negative] if negative else None,
                              num_images_per_prompt=args.count, guidance_scale=args.cfg,
                              num_inference_steps=args.steps, latents=pipeline_latents(pipe, args.seed, args.count),
                              output_type="np").images
            theirs = np.round(theirs[..., 0] * 255.0) / 255.0
            levels = np.abs(np.round(ours * 255) - np.round(theirs * 255))
            share = float((levels > 1).mean())
            worst = max(worst, share)
            print(f"{sched:8} cfg {args.cfg:g} {args.steps} steps {prompt!r} (negative {negative!r}): "
                  f"{args.count} images, max {int(levels.max())} levels, {100 * share:.3f}% of pixels off by > 1")
    print(f"worst share off by > 1 level: {100 * worst:.3f}% (limit {100 * args.max_share:.1f}%)")

    if args.write_fixture:
        write_fixtures(pipe, base_config, args)
    if worst > args.max_share:
        sys.exit(1)


def write_fixtures(pipe, base_config, args):
    import diffusers
    from make_text_fixtures import nhwc, save_safetensors, scheduler_config_json

    run = FIXTURE_RUN
    for sched, cls_name in SCHEDULERS.items():
        pipe.scheduler = getattr(diffusers, cls_name).from_config(base_config)
        noise = torch.cat([pipeline_latents(pipe, s, 1) for s in run["seeds"]])

        def call(output_type):
            with torch.no_grad():
                return pipe(prompt=run["prompts"], negative_prompt=run["negative_prompts"],
                            num_inference_steps=args.fixture_steps, guidance_scale=args.cfg,
                            latents=noise.clone(), output_type=output_type).images

        images = torch.from_numpy(np.ascontiguousarray(call("np"))).float().contiguous()
        final_latents = call("latent")
        pipe.scheduler.set_timesteps(args.fixture_steps)
        size = pipe.unet.config.sample_size * pipe.vae_scale_factor
        tensors = {
            "initial_noise": noise.permute(0, 2, 3, 1).contiguous(),
            "final_latents": nhwc(final_latents),
            "images": images,
            "timesteps": pipe.scheduler.timesteps.to(torch.float32),
        }
        meta = {
            "pipeline": "weights/digits-text",
            "prompts": json.dumps(run["prompts"]),
            "negative_prompts": json.dumps(run["negative_prompts"]),
            "seeds": json.dumps(run["seeds"]),
            "num_inference_steps": str(args.fixture_steps),
            "guidance_scale": str(args.cfg),
            "height": str(size),
            "width": str(size),
            "scheduler_class": cls_name,
            "scheduler_config": scheduler_config_json(pipe.scheduler),
            "init_noise_sigma": str(float(pipe.scheduler.init_noise_sigma)),
            "diffusers_version": diffusers.__version__,
        }
        path = Path(args.out) / "text" / f"digits_text__{FIXTURE_NAMES[sched]}.safetensors"
        save_safetensors(tensors, path, meta)
        print(f"wrote {path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()

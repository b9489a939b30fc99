#!/usr/bin/env python3
"""Reference trajectories of the SHIPPED digits model (weights/digits) from diffusers,
so the Rust tests check the engine on the real model, with its real scheduler config,
exactly as `diffsteer generate` runs it (dev-only; needs torch + diffusers).

    /work/venv/bin/python tools/make_digits_fixture.py

Writes tests/fixtures/trajectories/digits__<scheduler>.safetensors in the format of
tools/make_model_fixtures.py (see tests/fixtures/README.md): two samples of classes 3
and 7, CFG 3 with the null class 10 as uncond in one batch, 20 steps, the scheduler
built by `XScheduler.from_config(weights/digits/scheduler_config.json)`, noise stored
as f16 and fed to the stochastic schedulers. Deterministic.
"""
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import NoiseFeeder, randn_f16_exact, save_safetensors  # noqa: E402
from guiders import Guider  # noqa: E402

import diffusers  # noqa: E402
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module  # noqa: E402
from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler,  # noqa: E402
                       EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, UNet2DModel)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
STEPS = 20
CLASSES = [3, 7]
NULL = 10
CFG = 3.0
CASES = {
    "ddim": (DDIMScheduler, False),
    "ddpm": (DDPMScheduler, True),
    "euler": (EulerDiscreteScheduler, False),
    "euler_a": (EulerAncestralDiscreteScheduler, True),
    "dpmpp2m": (DPMSolverMultistepScheduler, False),
}
# The modern CFG family on the shipped model: (scheduler case, CFG scale, guider).
GUIDED = {
    "ddim_apg": ("ddim", 5.0, dict(kind="apg", apg_eta=0.0, apg_norm_threshold=6.0, apg_momentum=-0.5)),
    "dpmpp2m_apg": ("dpmpp2m", 5.0, dict(kind="apg", apg_eta=0.0, apg_norm_threshold=6.0, apg_momentum=-0.5)),
    "ddim_cfg_zero_star": ("ddim", 3.0, dict(kind="cfg_zero_star", zero_init_steps=1)),
    "euler_a_cfg_zero_star": ("euler_a", 3.0, dict(kind="cfg_zero_star", zero_init_steps=1)),
}


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    model = UNet2DModel.from_pretrained(os.path.join(ROOT, "weights/digits")).float().eval()
    with open(os.path.join(ROOT, "weights/digits/scheduler_config.json")) as f:
        config = json.load(f)
    c, h, w = model.config.in_channels, model.config.sample_size, model.config.sample_size
    out_dir = os.path.join(ROOT, "tests/fixtures/trajectories")
    runs = [(name, name, CFG, dict(kind="cfg")) for name in CASES]
    runs += [(name, base, scale, guider) for name, (base, scale, guider) in GUIDED.items()]
    for name, base, scale, settings in runs:
        cls, stochastic = CASES[base]
        guider = Guider(batch=2, **settings)
        sched = cls.from_config(config)
        sched.set_timesteps(STEPS)
        initial = randn_f16_exact((2, c, h, w), f"digits/{name}/initial_noise")
        step_noise = randn_f16_exact((STEPS, 2, c, h, w), f"digits/{name}/step_noise") if stochastic else None
        labels = torch.tensor([NULL, NULL] + CLASSES)
        feeder = NoiseFeeder()
        module = {DDPMScheduler: ddpm_module, EulerAncestralDiscreteScheduler: euler_a_module}.get(cls)
        saved = module.randn_tensor if module else None
        if module:
            module.randn_tensor = feeder
        try:
            x = initial * sched.init_noise_sigma
            first = None
            for i, t in enumerate(sched.timesteps):
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                u, cnd = model(inp, t, class_labels=labels).sample.chunk(2)
                feeder.noise, feeder.used = (step_noise[i] if stochastic else None), False
                x = sched.step(guider(i, True, u, cnd, [scale, scale]), t, x).prev_sample
                first = x.clone() if i == 0 else first
        finally:
            if module:
                module.randn_tensor = saved
        tensors = {
            "initial_noise": initial.to(torch.float16),
            "guidance_scale": torch.tensor([scale, scale]),
            "class_labels_cond": torch.tensor(CLASSES),
            "class_labels_uncond": torch.tensor([NULL, NULL]),
            "timesteps": sched.timesteps.to(torch.float32).contiguous(),
            "first_step_output": first.contiguous(),
            "output": x.contiguous(),
        }
        if stochastic:
            tensors["step_noise"] = step_noise.to(torch.float16)
        metadata = {
            "model": "digits",
            "scheduler_class": cls.__name__,
            "scheduler_config": json.dumps(config, sort_keys=True),
            "num_steps": str(STEPS),
            "eta": "0.0",
            "guidance_rescale": "0.0",
            "interval_start": "0",
            "interval_stop": str(STEPS),
            "stochastic": "true" if stochastic else "false",
            "diffusers_version": diffusers.__version__,
            **guider.metadata(),
        }
        path = os.path.join(out_dir, f"digits__{name}.safetensors")
        save_safetensors(tensors, path, metadata)
        print(f"{path}: output range [{x.min():.3f}, {x.max():.3f}]")


if __name__ == "__main__":
    main()

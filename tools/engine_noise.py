"""The engine's initial noise as a diffusers `latents=` argument (dev-only).

The engine's convention (src/rng.rs; tools/compare_diffusers.py reimplements it in numpy):
the initial latent of image i of a request with seed S is

    x_T[i] = init_noise_sigma * normal_vec(seed = S + i, stream = 0, C * H * W)

with the normals in channels-last order (H, W, C), i.e. element (h, w, c) is normal number
(h * W + w) * C + c. `engine_latents` returns the normals only, reordered to NCHW, NOT
multiplied by init_noise_sigma: diffusers' pipelines do that themselves. In diffusers
0.42.1, `StableDiffusionPipeline.__call__` first calls `retrieve_timesteps` (the
scheduler's `set_timesteps`, which is what EulerDiscreteScheduler's init_noise_sigma
depends on) and then `prepare_latents`, which for a given `latents` does
`latents.to(device)` (no dtype cast, so pass the pipeline's dtype) and then
`latents * self.scheduler.init_noise_sigma`. So

    pipe(prompt, num_images_per_prompt=n, latents=engine_latents(S, n, C, H, W))

starts from exactly the engine's x_T for seed S (DDIM and DPM-Solver++: sigma 1; Euler:
sqrt(sigma_max^2 + 1) of the current timesteps). For a list of P prompts with
num_images_per_prompt n, diffusers' batch is prompt-major, so pass
`engine_latents(S, n, ...).repeat(P, 1, 1, 1)` to give every prompt seeds S .. S+n-1, as
P separate engine requests with seed S would.
"""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_diffusers import check_philox, initial_noise  # noqa: E402

_checked = False


def engine_latents(seed, count, channels, height, width, dtype=None):
    """[count, channels, height, width] torch tensor: image i holds the engine's Philox
    normals of (seed + i, stream 0), element order (H, W, C), transposed to NCHW."""
    import torch

    global _checked
    if not _checked:
        check_philox()  # Random123 known answers: the numpy Philox is the engine's
        _checked = True
    x = np.stack([initial_noise(seed + i, channels, height, width) for i in range(count)])
    return torch.from_numpy(x).to(dtype or torch.float32)


def pipeline_latents(pipe, seed, count, height=None, width=None):
    """engine_latents for a StableDiffusionPipeline's latent shape and dtype."""
    h = (height or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    w = (width or pipe.unet.config.sample_size * pipe.vae_scale_factor) // pipe.vae_scale_factor
    return engine_latents(seed, count, pipe.unet.config.in_channels, h, w, dtype=pipe.unet.dtype)

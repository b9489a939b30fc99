#!/usr/bin/env python3
"""Writes the scheduler reference data under tests/fixtures/schedulers/ (dev only).

Every case builds one of diffusers' own scheduler classes with
`Class.from_config(config)` (so missing fields take that class's defaults, as in
the Rust engine), calls `set_timesteps(num_steps)`, and records

* the timesteps, sigmas, `init_noise_sigma` and `scale_model_input` factors;
* single `step()` calls at a few step indices (always the first and the last) on a
  random sample and model output, with the noise fed in (DDIM takes
  `variance_noise`; for DDPM and Euler ancestral `randn_tensor` is replaced in the
  scheduler's module by a function returning our noise);
* for DPM-Solver++ a whole trajectory of consecutive steps, so the multistep history
  is exercised: step i's sample is step i-1's output.

Output: `cases.json` (one entry per case: name, scheduler, the config given to
`from_config` as JSON text (Python writes -Infinity there, as diffusers'
`save_config` does), num_steps, eta, karras option) and one safetensors file per
scheduler with tensors named `<case>/<what>`:

    timesteps         f64 [n]        what diffusers feeds the model
    sigmas            f32 [n+1]      Euler, Euler ancestral, DPM-Solver++ only
    init_noise_sigma  f32 [1]
    input_scales      f32 [n]        scale_model_input(ones) at every step
    sigmas_exact      f32 [n+1]      (some cases) the sigmas computed with the training
                                     schedule in float64
    step_info         i64 [k, 2]     (step index, 1 if the step takes noise)
    steps             f32 [k, 4, E]  (sample, model output, noise, diffusers' output);
                                     noise is zeros where the step takes none
    dpm_sample        f32 [E]        DPM only: the sample of step 0
    dpm_steps         f32 [n, 2, E]  DPM only: (model output, output) of each step
    exact_index       i64 [j]        (some cases) rows of steps / dpm_steps ...
    exact             f32 [j, E]     ... and diffusers' step() on them run in float64

The exact references measure the float32 rounding diffusers itself commits:
torch's float32 sqrt on CPU goes through MKL and is not correctly rounded (off by
one ulp for ~20% of inputs on the machine these fixtures come from), and some
computations amplify that, e.g. x0 = (x - sqrt(1-a) eps) / sqrt(a) near t = 999
(~150x). They are stored where diffusers' own error exceeds 2e-7. Where the Rust
result differs from diffusers by more than 1e-6, the test accepts it only if its
error against the exact reference is at most twice diffusers' own (the 2x rule of
DESIGN.md for limited-precision kernels).

Usage: /work/venv/bin/python tools/make_scheduler_fixtures.py
"""

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_ddpm, scheduling_euler_ancestral_discrete

diffusers.utils.logging.set_verbosity_error()

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "schedulers"
SHAPE = (1, 2, 3, 4)  # E = 24 elements per sample
CLASSES = {
    "ddpm": DDPMScheduler,
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++2m": DPMSolverMultistepScheduler,
}
CLASS_DEFAULT_SPACING = {
    "ddpm": "leading",
    "ddim": "leading",
    "euler": "linspace",
    "euler-a": "linspace",
    "dpm++2m": "linspace",
}

BETAS = {
    "linear": {},
    "scaled": {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012},
    "cos": {"beta_schedule": "squaredcos_cap_v2"},
}
SPACINGS = {
    "linspace": {"timestep_spacing": "linspace"},
    "leading": {"timestep_spacing": "leading"},
    "leading1": {"timestep_spacing": "leading", "steps_offset": 1},
    "trailing": {"timestep_spacing": "trailing"},
}
PREDICTIONS = {"eps": "epsilon", "v": "v_prediction"}
STEP_COUNTS = [1, 7, 20, 50]

# The Stable Diffusion 1.5 scheduler config (a PNDMScheduler), to check that foreign
# fields are ignored and missing ones take each class's defaults.
SD15 = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}


def rotating(options, index):
    """A deterministic pick that is spread over the grid."""
    return options[(index * 7 + index // len(options)) % len(options)]


def base_grid(kind, extras):
    """prediction x beta schedule x spacing x step count, with `extras(i)` adding
    scheduler-specific fields that rotate over the grid."""
    cases = []
    i = 0
    for pred_name, pred in PREDICTIONS.items():
        for beta_name, beta in BETAS.items():
            for sp_name, spacing in SPACINGS.items():
                for n in STEP_COUNTS:
                    config = dict(beta)
                    if pred != "epsilon":
                        config["prediction_type"] = pred
                    # Leave the class default out half of the time so that defaults
                    # are exercised too.
                    for k, v in spacing.items():
                        if k == "timestep_spacing" and v == CLASS_DEFAULT_SPACING[kind] and i % 2 == 0:
                            continue
                        config[k] = v
                    extra_name, extra_cfg, opts = extras(i)
                    config.update(extra_cfg)
                    name = f"{kind}-{pred_name}-{beta_name}-{sp_name}-n{n}" + (f"-{extra_name}" if extra_name else "")
                    cases.append(dict(name=name, kind=kind, config=config, num_steps=n, **opts))
                    i += 1
    return cases


def ddpm_cases():
    combos = [
        ("small", {"variance_type": "fixed_small"}),
        ("smalllog", {"variance_type": "fixed_small_log"}),
        ("large", {"variance_type": "fixed_large"}),
        ("smallnoclip", {"clip_sample": False}),
        ("largeclip2", {"variance_type": "fixed_large", "clip_sample_range": 2.0}),
        ("smalllognoclip", {"variance_type": "fixed_small_log", "clip_sample": False}),
    ]
    cases = base_grid("ddpm", lambda i: (*rotating(combos, i), {}))
    for n in (7, 20):
        cases.append(dict(name=f"ddpm-sample-n{n}", kind="ddpm", num_steps=n,
                          config={"prediction_type": "sample", "clip_sample_range": 1.5}))
    cases.append(dict(name="ddpm-laplace-n20", kind="ddpm", num_steps=20, config={"beta_schedule": "laplace"}))
    cases.append(dict(name="ddpm-zerosnr-v-trailing-n20", kind="ddpm", num_steps=20,
                      config={"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                              "timestep_spacing": "trailing", "clip_sample": False}))
    cases.append(dict(name="ddpm-1000steps", kind="ddpm", num_steps=1000, config={}, steps=[0, 500, 998, 999]))
    return cases


def ddim_cases():
    combos = []
    for eta in (0.0, 0.7):
        for one in (True, False):
            for clip in (True, False):
                combos.append((f"eta{eta}-one{int(one)}-clip{int(clip)}",
                               {"set_alpha_to_one": one, "clip_sample": clip}, {"eta": eta}))
    cases = base_grid("ddim", lambda i: rotating(combos, i))
    for n in (7, 20):
        cases.append(dict(name=f"ddim-sample-n{n}", kind="ddim", num_steps=n, eta=0.3,
                          config={"prediction_type": "sample", "clip_sample_range": 1.5}))
    cases.append(dict(name="ddim-zerosnr-v-trailing-n20", kind="ddim", num_steps=20, eta=0.0,
                      config={"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                              "timestep_spacing": "trailing", "clip_sample": False}))
    cases.append(dict(name="ddim-eta1-n20", kind="ddim", num_steps=20, eta=1.0, config={"clip_sample": False}))
    cases.append(dict(name="ddim-trailing-n1000", kind="ddim", num_steps=1000, config={"timestep_spacing": "trailing"},
                      steps=[0, 1, 998, 999]))
    return cases


def euler_cases():
    combos = [
        ("", {}, {}),
        ("karras", {"use_karras_sigmas": True}, {}),
        ("finalmin", {"final_sigmas_type": "sigma_min"}, {}),
        ("karras-finalmin", {"use_karras_sigmas": True, "final_sigmas_type": "sigma_min"}, {}),
        ("optkarras", {}, {"karras": True}),
    ]
    cases = base_grid("euler", lambda i: rotating(combos, i))
    cases += [
        dict(name="euler-karras-minmax-n20", kind="euler", num_steps=20,
             config={"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 80.0}),
        dict(name="euler-karras-optoff-n20", kind="euler", num_steps=20,
             config={"use_karras_sigmas": True}, karras=False),
        dict(name="euler-continuous-v-n20", kind="euler", num_steps=20,
             config={"timestep_type": "continuous", "prediction_type": "v_prediction"}),
        dict(name="euler-continuous-eps-n20", kind="euler", num_steps=20,
             config={"timestep_type": "continuous"}),
        dict(name="euler-sample-n20", kind="euler", num_steps=20, config={"prediction_type": "sample"}),
        dict(name="euler-original-sample-n7", kind="euler", num_steps=7,
             config={"prediction_type": "original_sample", "use_karras_sigmas": True}),
        dict(name="euler-zerosnr-v-trailing-n20", kind="euler", num_steps=20,
             config={"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                     "timestep_spacing": "trailing"}),
        dict(name="euler-zerosnr-karras-n20", kind="euler", num_steps=20,
             config={"rescale_betas_zero_snr": True, "use_karras_sigmas": True, **BETAS["scaled"]}),
    ]
    return cases


def euler_a_cases():
    cases = base_grid("euler-a", lambda i: ("", {}, {}))
    cases.append(dict(name="euler-a-zerosnr-v-trailing-n20", kind="euler-a", num_steps=20,
                      config={"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                              "timestep_spacing": "trailing"}))
    return cases


def dpm_cases():
    combos = [
        ("", {}, {}),
        ("karras", {"use_karras_sigmas": True}, {}),
        ("heun", {"solver_type": "heun"}, {}),
        # With Karras sigmas the last sigma is sigma_min; final_sigmas_type="sigma_min"
        # then makes the last step h = 0, which diffusers' Heun update turns into NaN
        # with 15 or more steps. So Heun + Karras runs with final sigma zero here.
        ("karras-heun", {"use_karras_sigmas": True, "solver_type": "heun"}, {}),
        ("nolof-finalmin", {"lower_order_final": False, "final_sigmas_type": "sigma_min"}, {}),
        ("eulerfinal-finalmin", {"euler_at_final": True, "final_sigmas_type": "sigma_min"}, {}),
        ("finalmin", {"final_sigmas_type": "sigma_min"}, {}),
        ("optkarras", {}, {"karras": True}),
    ]
    cases = base_grid("dpm++2m", lambda i: rotating(combos, i))
    cases += [
        dict(name="dpm++2m-sample-n20", kind="dpm++2m", num_steps=20, config={"prediction_type": "sample"}),
        dict(name="dpm++2m-sample-karras-n7", kind="dpm++2m", num_steps=7,
             config={"prediction_type": "sample", "use_karras_sigmas": True}),
        dict(name="dpm++2m-lambdaclip-cos-n20", kind="dpm++2m", num_steps=20,
             config={"lambda_min_clipped": -5.1, **BETAS["cos"]}),
        dict(name="dpm++2m-zerosnr-v-trailing-n20", kind="dpm++2m", num_steps=20,
             config={"rescale_betas_zero_snr": True, "prediction_type": "v_prediction",
                     "timestep_spacing": "trailing"}),
        dict(name="dpm++2m-karras-minmax-n20", kind="dpm++2m", num_steps=20,
             config={"use_karras_sigmas": True, "sigma_min": 0.03, "sigma_max": 80.0}),
        dict(name="dpm++2m-karras-heun-finalmin-n12", kind="dpm++2m", num_steps=12,
             config={"use_karras_sigmas": True, "solver_type": "heun", "final_sigmas_type": "sigma_min",
                     **BETAS["scaled"]}),
        dict(name="dpm++2m-deis-logrho-n16", kind="dpm++2m", num_steps=16,
             config={"algorithm_type": "deis", "solver_type": "logrho", "final_sigmas_type": "sigma_min"}),
    ]
    return cases


def shared_cases():
    """Configs written by other classes, the empty config, trained betas."""
    cases = []
    rs = np.random.RandomState(7)
    trained = np.linspace(0.0002, 0.06, 200) * (1 + 0.1 * rs.uniform(-1, 1, 200))
    euler_saved = {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": "0.30.0",
        "timestep_spacing": "linspace",
        "use_karras_sigmas": False,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        # Saved by Euler with its default spacing: other classes use their own.
        "_use_default_values": ["timestep_spacing"],
        "lambda_min_clipped": float("-inf"),
    }
    for kind in CLASSES:
        cases.append(dict(name=f"{kind}-sd15-n20", kind=kind, num_steps=20, config=dict(SD15)))
        cases.append(dict(name=f"{kind}-empty-n10", kind=kind, num_steps=10, config={}))
        cases.append(dict(name=f"{kind}-eulersaved-n12", kind=kind, num_steps=12, config=dict(euler_saved)))
        cases.append(dict(name=f"{kind}-trained-n15", kind=kind, num_steps=15,
                          config={"trained_betas": [float(f"{b:.6g}") for b in trained], "num_train_timesteps": 200},
                          eta=0.5 if kind == "ddim" else 0.0))
        cases.append(dict(name=f"{kind}-ntrain100-n9", kind=kind, num_steps=9,
                          config={"num_train_timesteps": 100, "beta_end": 0.05, "timestep_spacing": "trailing"}))
    return cases


def diffusers_config(case):
    config = dict(case["config"])
    if case.get("karras") is not None:
        config["use_karras_sigmas"] = case["karras"]
    return config


def make_scheduler(case):
    return CLASSES[case["kind"]].from_config(diffusers_config(case))


def exact_betas(s, config):
    """The training betas of scheduler `s` evaluated in float64 (same formulas)."""
    c = s.config
    if c.trained_betas is not None:
        betas = torch.tensor(c.trained_betas, dtype=torch.float64)
    elif c.beta_schedule == "linear":
        betas = torch.linspace(c.beta_start, c.beta_end, c.num_train_timesteps, dtype=torch.float64)
    elif c.beta_schedule == "scaled_linear":
        betas = torch.linspace(c.beta_start**0.5, c.beta_end**0.5, c.num_train_timesteps, dtype=torch.float64) ** 2
    else:
        if c.beta_schedule == "squaredcos_cap_v2":
            def alpha_bar(t):
                return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        else:  # laplace
            def alpha_bar(t):
                lmb = -0.5 * math.copysign(1, 0.5 - t) * math.log(1 - 2 * math.fabs(0.5 - t) + 1e-6)
                return math.sqrt(math.exp(lmb) / (1 + math.exp(lmb)))
        n = c.num_train_timesteps
        betas = torch.tensor([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                             dtype=torch.float64)
    if c.rescale_betas_zero_snr:
        betas = scheduling_ddpm.rescale_zero_terminal_snr(betas)
    return betas


def exact_sigmas(case):
    """diffusers' sigmas with the training schedule evaluated in float64 (the
    float32 schedule's own rounding error sets the tolerance of the sigma check)."""
    s = make_scheduler(case)
    ac = torch.cumprod(1.0 - exact_betas(s, case["config"]), dim=0)
    if s.config.rescale_betas_zero_snr:
        ac[-1] = 2**-24
    s.alphas_cumprod = ac
    s.set_timesteps(case["num_steps"])
    return s.sigmas.to(torch.float32)


def to_exact(s):
    """Switches scheduler `s` to float64 arithmetic on its (float32) schedule, so that
    its step() gives the exact value of diffusers' formula for the same inputs."""
    for attr in ("alphas_cumprod", "sigmas", "one", "final_alpha_cumprod"):
        if isinstance(getattr(s, attr, None), torch.Tensor):
            setattr(s, attr, getattr(s, attr).to(torch.float64))
    return s


# Exact references are stored only where diffusers' own float32 error exceeds this:
# below it, two faithful float32 implementations agree to 1e-6 anyway.
OWN_ERROR_WORTH_STORING = 2e-7


def store_exact(tensors, name, index, rows):
    if rows:
        tensors[f"{name}/exact_index"] = torch.tensor(index, dtype=torch.int64)
        tensors[f"{name}/exact"] = torch.stack(rows)


def own_error(out, exact):
    """Relative L2 error of diffusers' float32 output against the float64 one."""
    exact = exact.double()
    return float((out.double() - exact).norm() / exact.norm())


def rand(gen, scale=1.0):
    return torch.randn(SHAPE, generator=gen, dtype=torch.float32) * scale


def run_case(case, gen):
    kind = case["kind"]
    n = case["num_steps"]
    eta = case.get("eta", 0.0)
    s = make_scheduler(case)
    s.set_timesteps(n)
    assert len(s.timesteps) == n, (case["name"], len(s.timesteps))
    tensors = {}
    name = case["name"]
    tensors[f"{name}/timesteps"] = s.timesteps.to(torch.float64)
    if hasattr(s, "sigmas") and kind != "ddpm" and kind != "ddim":
        tensors[f"{name}/sigmas"] = s.sigmas.to(torch.float32)
        exact = exact_sigmas(case)
        own = (s.sigmas.double() - exact.double()).abs() / exact.double().abs().clamp(min=1e-30)
        if float(own.max()) > OWN_ERROR_WORTH_STORING:
            tensors[f"{name}/sigmas_exact"] = exact
    tensors[f"{name}/init_noise_sigma"] = torch.tensor([float(s.init_noise_sigma)], dtype=torch.float32)

    scales = []
    for i, t in enumerate(s.timesteps):
        if kind in ("euler", "euler-a"):
            s._step_index = i
        scales.append(s.scale_model_input(torch.ones(1), t)[0])
    tensors[f"{name}/input_scales"] = torch.stack(scales).to(torch.float32)

    if kind == "dpm++2m":
        s = make_scheduler(case)
        s.set_timesteps(n)
        s.set_begin_index(0)
        s64 = to_exact(make_scheduler(case))
        s64.set_timesteps(n)
        s64 = to_exact(s64)
        s64.set_begin_index(0)
        x = rand(gen, float(s.init_noise_sigma))
        tensors[f"{name}/dpm_sample"] = x.flatten().clone()
        rows, exact_index, exact_rows = [], [], []
        for t in s.timesteps:
            m = rand(gen)
            out = s.step(m, t, x).prev_sample
            exact = s64.step(m.double(), t, x.double()).prev_sample
            rows.append(torch.stack([m.flatten(), out.flatten()]))
            if own_error(out, exact) > OWN_ERROR_WORTH_STORING:
                exact_index.append(len(rows) - 1)
                exact_rows.append(exact.flatten().float())
            x = out
        tensors[f"{name}/dpm_steps"] = torch.stack(rows)
        store_exact(tensors, name, exact_index, exact_rows)
        return tensors

    indices = case.get("steps")
    if indices is None:
        indices = sorted({0, n // 2, max(n - 2, 0), n - 1})
    info, rows, exact_index, exact_rows = [], [], [], []
    def one_step(s, i, x, m, z):
        t = s.timesteps[i]
        if kind == "ddpm":
            scheduling_ddpm.randn_tensor = lambda *a, **k: z.clone()
            return s.step(m, t, x).prev_sample
        if kind == "ddim":
            return s.step(m, t, x, eta=eta, variance_noise=z.clone()).prev_sample
        s._step_index = i
        if kind == "euler-a":
            scheduling_euler_ancestral_discrete.randn_tensor = lambda *a, **k: z.clone()
        return s.step(m, t, x).prev_sample

    for i in indices:
        s = make_scheduler(case)
        s.set_timesteps(n)
        t = s.timesteps[i]
        sigma = float(s.sigmas[i]) if kind in ("euler", "euler-a") else 1.0
        x = rand(gen, math.sqrt(sigma * sigma + 1.0))
        m = rand(gen)
        z = rand(gen)
        needs = {"ddpm": int(t) > 0, "ddim": eta > 0, "euler": False, "euler-a": True}[kind]
        if not needs:
            z = torch.zeros(SHAPE)
        out = one_step(s, i, x, m, z)
        s64 = make_scheduler(case)
        s64.set_timesteps(n)
        exact = one_step(to_exact(s64), i, x.double(), m.double(), z.double())
        info.append([i, int(needs)])
        rows.append(torch.stack([x.flatten(), m.flatten(), z.flatten(), out.flatten()]))
        if own_error(out, exact) > OWN_ERROR_WORTH_STORING:
            exact_index.append(len(rows) - 1)
            exact_rows.append(exact.flatten().float())
    tensors[f"{name}/step_info"] = torch.tensor(info, dtype=torch.int64)
    tensors[f"{name}/steps"] = torch.stack(rows).to(torch.float32)
    store_exact(tensors, name, exact_index, exact_rows)
    return tensors


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    cases = ddpm_cases() + ddim_cases() + euler_cases() + euler_a_cases() + dpm_cases() + shared_cases()
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    gen = torch.Generator().manual_seed(20240611)
    per_kind = {k: {} for k in CLASSES}
    index = []
    for case in cases:
        per_kind[case["kind"]].update(run_case(case, gen))
        entry = {
            "name": case["name"],
            "scheduler": case["kind"],
            # A JSON text, as a scheduler_config.json would hold it (with -Infinity).
            "config": json.dumps(case["config"], allow_nan=True),
            "num_steps": case["num_steps"],
            "eta": case.get("eta", 0.0),
            "karras": case.get("karras"),
        }
        index.append(entry)
    for kind, tensors in per_kind.items():
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, OUT / f"{kind}.safetensors",
                  # One key only: safetensors writes metadata in hash order.
                  metadata={"generator": f"tools/make_scheduler_fixtures.py, diffusers {diffusers.__version__}, "
                                         f"torch {torch.__version__}"})
    with open(OUT / "cases.json", "w") as f:
        json.dump({"diffusers": diffusers.__version__, "torch": torch.__version__,
                   "numpy": np.__version__, "cases": index}, f, indent=1, allow_nan=False)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"{len(index)} cases, {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    sys.exit(main())

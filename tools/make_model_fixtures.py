#!/usr/bin/env python3
"""Reference fixtures for diffsteer's U-Net models and sampling trajectories.

Creates tiny random diffusers U-Nets, their forward outputs, and whole 20-step
classifier-free-guided sampling runs with several diffusers schedulers, and saves
everything as safetensors under tests/fixtures/ (see tests/fixtures/README.md).

    /work/venv/bin/python tools/make_model_fixtures.py [--out tests/fixtures]

Deterministic: every random draw comes from a torch.Generator seeded from a fixed
string (crc32), all reference maths is float32 on CPU with one thread, so running it
twice gives byte-identical files.

Dev-only (see DESIGN.md): CI never runs this; the outputs are committed.
"""

import argparse
import contextlib
import inspect
import io
import json
import os
import struct
import sys
import zlib

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import torch  # noqa: E402

import diffusers  # noqa: E402
from diffusers import (  # noqa: E402
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
    UNet2DModel,
)
import diffusers.schedulers.scheduling_ddpm as ddpm_module  # noqa: E402
import diffusers.schedulers.scheduling_euler_ancestral_discrete as euler_a_module  # noqa: E402
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

with contextlib.redirect_stderr(io.StringIO()):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from guiders import Guider  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

H, W = 16, 24  # non-square on purpose (catches H/W transpositions)
SEQ = 7  # encoder_hidden_states length
NUM_STEPS = 20
GUIDANCE = [3.0, 5.5]  # per-sample CFG scale of the 2 trajectory samples
PERTURB = 0.1  # p += PERTURB * randn * (p.std() or 1)


def gen(tag: str) -> torch.Generator:
    """A CPU generator seeded from a fixed string, independent of call order."""
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(tag.encode()))
    return g


def randn(shape, tag):
    return torch.randn(shape, generator=gen(tag), dtype=torch.float32)


def randn_f16_exact(shape, tag):
    """f32 normal noise rounded to f16 and back: stored as f16, exact in f32."""
    return randn(shape, tag).to(torch.float16).to(torch.float32)


def save_safetensors(tensors, path, metadata):
    """Write a safetensors file with a byte-deterministic header.

    safetensors' own save_file serialises the metadata map in hash order, which
    changes from run to run; here metadata keys and tensors are written sorted by
    name, the header is compact JSON padded with spaces to a multiple of 8 bytes (as
    the format allows), and tensor data follows in the same order. Written to a temp
    file and renamed, then read back with the safetensors library as a check."""
    dtypes = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}
    header = {"__metadata__": {k: metadata[k] for k in sorted(metadata)}}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    hjson = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    hjson += b" " * (-len(hjson) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)
    with safe_open(path, framework="pt") as f:
        assert f.metadata() == metadata
    back = load_file(path)
    assert sorted(back) == sorted(tensors)
    for k, v in tensors.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k


# --------------------------------------------------------------------------- models

MODELS = {
    "unet2d_class": dict(
        cls=UNet2DModel,
        dtype=torch.float32,
        kwargs=dict(
            sample_size=(H, W),
            in_channels=3,
            out_channels=3,
            block_out_channels=(16, 32, 32),
            layers_per_block=2,
            down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
            norm_num_groups=8,
            attention_head_dim=8,
            num_class_embeds=11,  # label 10 = null class
            flip_sin_to_cos=False,  # non-default on purpose
            freq_shift=1,  # non-default on purpose
        ),
    ),
    "unet_cond": dict(  # SD-1.x style
        cls=UNet2DConditionModel,
        dtype=torch.float16,
        kwargs=dict(
            sample_size=(H, W),
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            attention_head_dim=[2, 4],  # a LIST: in diffusers this is the number of heads
            norm_num_groups=8,
            use_linear_projection=False,
        ),
    ),
    "unet_cond_linear": dict(  # SD-2.x style
        cls=UNet2DConditionModel,
        dtype=torch.bfloat16,
        kwargs=dict(
            sample_size=(H, W),
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=24,
            attention_head_dim=4,  # an INT
            norm_num_groups=8,
            use_linear_projection=True,
            upcast_attention=True,
        ),
    ),
}


def build_model(name, spec, out_dir):
    """Construct, perturb, save in the storage dtype; return the saved weights as f32."""
    torch.manual_seed(zlib.crc32(("init/" + name).encode()))
    model = spec["cls"](**spec["kwargs"])
    g = gen("perturb/" + name)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            std = p.std().item() if p.numel() > 1 else 0.0
            scale = std if std > 0 else 1.0
            delta = PERTURB * scale * torch.randn(p.shape, generator=g, dtype=p.dtype)
            if std == 0:
                # Constant-initialised (norm weights = 1, zero biases): keep every
                # entry at least 0.01 away so that it stays off the default value
                # even after rounding to bf16 (spacing 2^-8 just below 1).
                delta = delta.sign() * delta.abs().clamp(min=0.01)
            p.add_(delta)
    model = model.to(spec["dtype"]).eval()
    mdir = os.path.join(out_dir, name)
    if os.path.isdir(mdir):
        for f in ("config.json", "diffusion_pytorch_model.safetensors"):
            if os.path.exists(os.path.join(mdir, f)):
                os.remove(os.path.join(mdir, f))
    model.save_pretrained(mdir, safe_serialization=True)
    # The reference is what a loader gets from disk: stored-dtype weights upcast to f32.
    ref = spec["cls"].from_pretrained(mdir, torch_dtype=torch.float32).eval()
    stored = load_file(os.path.join(mdir, "diffusion_pytorch_model.safetensors"))
    for k, v in ref.state_dict().items():
        assert stored[k].dtype == spec["dtype"], (k, stored[k].dtype)
        assert torch.equal(stored[k].to(torch.float32), v), k
        # Nothing is left at a default value a loader could silently fake.
        if k.endswith("bias"):
            assert (v != 0).all(), k
        if "norm" in k and k.endswith("weight"):
            assert (v != 1).all(), k
    assert stored.keys() == ref.state_dict().keys()
    os.chmod(os.path.join(mdir, "diffusion_pytorch_model.safetensors"), 0o644)
    ref.requires_grad_(False)
    return ref


def call_unet(model, name, x, t, cond):
    """cond: class labels (class model) or encoder_hidden_states (cond models)."""
    if MODELS[name]["cls"] is UNet2DModel:
        return model(x, t, class_labels=cond).sample
    return model(x, t, encoder_hidden_states=cond).sample


def is_class_model(name):
    return MODELS[name]["cls"] is UNet2DModel


def cond_dim(model):
    return model.config.cross_attention_dim


def forward_fixture(name, model, mdir):
    C = model.config.in_channels
    sample = randn((3, C, H, W), f"forward/{name}/sample")
    timestep = torch.tensor([999.0, 500.5, 3.0], dtype=torch.float32)
    tensors = {"sample": sample, "timestep": timestep}
    if is_class_model(name):
        cond = torch.tensor([4, 10, 0], dtype=torch.int64)
        tensors["class_labels"] = cond
    else:
        cond = randn((3, SEQ, cond_dim(model)), f"forward/{name}/ehs")
        tensors["encoder_hidden_states"] = cond
    with torch.no_grad():
        out = call_unet(model, name, sample, timestep, cond)
        # Per-sample timesteps really are per sample: each row equals a batch-of-1 call.
        for b in range(3):
            single = call_unet(model, name, sample[b : b + 1], timestep[b : b + 1], cond[b : b + 1])
            err = ((single[0] - out[b]).norm() / out[b].norm()).item()
            assert err < 1e-5, (name, b, err)
        # ...and a fractional timestep is not truncated (500.5 != 500).
        o500 = call_unet(model, name, sample[1:2], torch.tensor([500.0]), cond[1:2])
        assert not torch.allclose(o500[0], out[1]), name
    assert torch.isfinite(out).all()
    tensors["output"] = out.contiguous()
    path = os.path.join(mdir, "forward.safetensors")
    save_safetensors(tensors, path, {"model": name, "diffusers_version": diffusers.__version__})
    return out


# ----------------------------------------------------------------------- schedulers

def base_sched_config(model_name, prediction_type):
    """The per-model base scheduler config (then filtered per scheduler class)."""
    cfg = {"num_train_timesteps": 1000, "prediction_type": prediction_type}
    if model_name == "unet2d_class":
        cfg.update(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, clip_sample=False)
    elif model_name == "unet_cond":
        cfg.update(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            timestep_spacing="leading",
            steps_offset=1,
            clip_sample=False,
            set_alpha_to_one=False,
        )
    elif model_name == "unet_cond_linear":
        cfg.update(beta_schedule="squaredcos_cap_v2", timestep_spacing="trailing", clip_sample=False)
    else:
        raise ValueError(model_name)
    return cfg


def accepted_keys(cls):
    return set(inspect.signature(cls.__init__).parameters) - {"self"}


# short name -> (class, extra config, eta, stochastic)
SCHEDULERS = {
    "ddpm": (DDPMScheduler, {}, 0.0, True),
    "ddim_eta0": (DDIMScheduler, {}, 0.0, False),
    "ddim_eta0.6": (DDIMScheduler, {}, 0.6, True),
    "euler": (EulerDiscreteScheduler, {}, 0.0, False),
    "euler_a": (EulerAncestralDiscreteScheduler, {}, 0.0, True),
    "dpmpp2m": (DPMSolverMultistepScheduler, {}, 0.0, False),
    "dpmpp2m_karras": (DPMSolverMultistepScheduler, {"use_karras_sigmas": True}, 0.0, False),
}
PRED = {"eps": "epsilon", "v": "v_prediction"}


def make_cases():
    cases = []
    for model_name in MODELS:
        for sname in SCHEDULERS:
            for pshort, ptype in PRED.items():
                cases.append(dict(model=model_name, sched=sname, pred=ptype,
                                  name=f"{model_name}__{sname}_{pshort}"))
    # Extras on unet_cond.
    cases += [
        dict(model="unet_cond", sched="ddim_eta0", pred="v_prediction", rescale=0.7,
             name="unet_cond__ddim_eta0_v_rescale0.7"),
        dict(model="unet_cond", sched="euler", pred="epsilon", rescale=0.7,
             name="unet_cond__euler_eps_rescale0.7"),
        dict(model="unet_cond", sched="dpmpp2m", pred="epsilon", interval=(3, 14),
             name="unet_cond__dpmpp2m_eps_interval3-14"),
        dict(model="unet_cond", sched="ddpm", pred="epsilon", extra={"clip_sample": True},
             name="unet_cond__ddpm_eps_clip"),
    ]
    # The modern CFG family (diffusers' guiders), on every fixture model. An "auto"
    # norm threshold is the median update norm of the run without one, so the cap
    # acts on about half the steps.
    for model_name in MODELS:
        cases += [
            dict(model=model_name, sched="ddim_eta0", pred="epsilon", name=f"{model_name}__ddim_eta0_eps_apg",
                 guider=dict(kind="apg", apg_eta=0.0, apg_norm_threshold="auto", apg_momentum=-0.5)),
            dict(model=model_name, sched="dpmpp2m", pred="v_prediction", name=f"{model_name}__dpmpp2m_v_apg_eta0.3",
                 guider=dict(kind="apg", apg_eta=0.3, apg_norm_threshold="auto", apg_momentum=0.0)),
            dict(model=model_name, sched="euler_a", pred="epsilon", name=f"{model_name}__euler_a_eps_cfg_zero_star",
                 guider=dict(kind="cfg_zero_star", zero_init_steps=1)),
            dict(model=model_name, sched="ddim_eta0", pred="v_prediction", rescale=0.7, interval=(0, 16),
                 name=f"{model_name}__ddim_eta0_v_cfg_zero_star2_rescale0.7_interval0-16",
                 guider=dict(kind="cfg_zero_star", zero_init_steps=2)),
        ]
    return cases


class NoiseFeeder:
    """Stands in for diffusers' randn_tensor inside a scheduler module: returns the
    stored noise of the current step, at most once per step."""

    def __init__(self):
        self.noise = None
        self.used = False

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None, **kw):
        assert self.noise is not None and not self.used, "randn_tensor called twice in one step"
        assert tuple(shape) == tuple(self.noise.shape), (shape, self.noise.shape)
        self.used = True
        return self.noise.to(dtype=dtype or torch.float32)


def run_case(case, model, perturb=False, norms=None):
    """Run one trajectory case. With perturb=True every model output is multiplied by
    (1 + 1e-6 * randn) (a conditioning probe: how much f32-level differences in the
    forward move the final sample); nothing is saved from such a run. `norms`, when
    given, collects the CFG update's norm per sample and step (for "auto" APG
    thresholds)."""
    settings = dict(case.get("guider", {"kind": "cfg"}))
    if settings.get("apg_norm_threshold") == "auto":
        probe = dict(case, guider=dict(settings, apg_norm_threshold=0.0))
        collected = []
        run_case(probe, model, norms=collected)
        settings["apg_norm_threshold"] = float(torch.tensor(collected).median())
    name, model_name = case["name"], case["model"]
    cls, sextra, eta, stochastic = SCHEDULERS[case["sched"]]
    rescale = float(case.get("rescale", 0.0))
    i_start, i_stop = case.get("interval", (0, NUM_STEPS))

    cfg = base_sched_config(model_name, case["pred"])
    cfg.update(sextra)
    cfg.update(case.get("extra", {}))
    cfg = {k: v for k, v in sorted(cfg.items()) if k in accepted_keys(cls)}
    sched = cls.from_config(cfg)
    sched.set_timesteps(NUM_STEPS)
    assert len(sched.timesteps) == NUM_STEPS
    if hasattr(sched, "set_begin_index"):
        # Step i uses sigma i. diffusers otherwise finds the first step's index by
        # searching timesteps for t and, when t occurs more than once, starts at the
        # SECOND match (its img2img convention). Karras sigmas on squaredcos_cap_v2
        # round to [998]*9 + ..., which would then skip a step and run off the end.
        # With distinct timesteps this call changes nothing.
        sched.set_begin_index(0)

    C = model.config.in_channels
    B = 2
    initial_noise = randn_f16_exact((B, C, H, W), f"traj/{name}/initial_noise")
    step_noise = randn_f16_exact((NUM_STEPS, B, C, H, W), f"traj/{name}/step_noise") if stochastic else None
    s = torch.tensor(GUIDANCE, dtype=torch.float32)
    tensors = {"initial_noise": initial_noise.to(torch.float16), "guidance_scale": s}
    if step_noise is not None:
        tensors["step_noise"] = step_noise.to(torch.float16)
    if is_class_model(model_name):
        cond = torch.tensor([3, 7], dtype=torch.int64)
        uncond = torch.tensor([10, 10], dtype=torch.int64)
        tensors["class_labels_cond"], tensors["class_labels_uncond"] = cond, uncond
    else:
        D = cond_dim(model)
        cond = randn((B, SEQ, D), f"traj/{name}/ehs_cond")
        uncond = randn((B, SEQ, D), f"traj/{name}/ehs_uncond")
        tensors["encoder_hidden_states_cond"] = cond
        tensors["encoder_hidden_states_uncond"] = uncond
    both = torch.cat([uncond, cond])  # uncond half first, cond half second

    guider = Guider(batch=B, **settings)
    feeder = NoiseFeeder()
    module = {DDPMScheduler: ddpm_module, EulerAncestralDiscreteScheduler: euler_a_module}.get(cls)
    saved_randn = module.randn_tensor if module is not None else None
    if module is not None:
        module.randn_tensor = feeder
    noise_steps = []
    first = None
    max_abs = 0.0
    try:
        x = initial_noise * sched.init_noise_sigma
        with torch.no_grad():
            for i, t in enumerate(sched.timesteps):
                use_cfg = i_start <= i < i_stop
                inp = sched.scale_model_input(torch.cat([x, x]), t)
                out = call_unet(model, model_name, inp, t, both)
                if perturb:
                    out = out * (1 + 1e-6 * randn(out.shape, f"probe/{name}/{i}"))
                unc, con = out.chunk(2)
                if norms is not None:
                    norms.extend((con - unc).flatten(1).norm(dim=1).tolist())
                guided = guider(i, use_cfg, unc, con, s)
                if use_cfg and rescale > 0 and not guider.zeroes(i):
                    guided = rescale_noise_cfg(guided, con, guidance_rescale=rescale)
                feeder.noise, feeder.used = (step_noise[i] if step_noise is not None else None), False
                if cls is DDIMScheduler:
                    kw = {"eta": eta}
                    if eta > 0:
                        kw["variance_noise"] = step_noise[i]
                        feeder.used = True
                    x = sched.step(guided, t, x, **kw).prev_sample
                else:
                    x = sched.step(guided, t, x).prev_sample
                if feeder.used:
                    noise_steps.append(i)
                assert x.dtype == torch.float32
                assert torch.isfinite(x).all(), (name, i)
                max_abs = max(max_abs, x.abs().max().item())
                if i == 0:
                    first = x.clone()
    finally:
        if module is not None:
            module.randn_tensor = saved_randn
    if stochastic:
        assert noise_steps, name
    else:
        assert not noise_steps, name

    tensors["timesteps"] = sched.timesteps.to(torch.float32).contiguous()
    tensors["first_step_output"] = first.contiguous()
    tensors["output"] = x.contiguous()
    metadata = {
        "model": model_name,
        "scheduler_class": cls.__name__,
        "scheduler_config": json.dumps(cfg, sort_keys=True),
        "num_steps": str(NUM_STEPS),
        "eta": repr(float(eta)),
        "guidance_rescale": repr(rescale),
        "interval_start": str(i_start),
        "interval_stop": str(i_stop),
        "stochastic": "true" if stochastic else "false",
        # Extras (informative): steps at which the scheduler consumed step_noise[i],
        # init_noise_sigma, and the scheduler's full resolved config (with defaults).
        "noise_steps": ",".join(map(str, noise_steps)),
        "init_noise_sigma": repr(float(sched.init_noise_sigma)),
        "scheduler_config_resolved": json.dumps(
            {k: v for k, v in dict(sched.config).items() if not k.startswith("_")}, sort_keys=True, default=str
        ),
        "diffusers_version": diffusers.__version__,
        **guider.metadata(),
    }
    return tensors, metadata, max_abs


# ------------------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--out", default=os.path.join(root, "tests", "fixtures"))
    ap.add_argument("--only", default=None, help="only trajectory cases whose name contains this")
    args = ap.parse_args()

    models_dir = os.path.join(args.out, "models")
    traj_dir = os.path.join(args.out, "trajectories")
    os.makedirs(models_dir, exist_ok=True)
    os.makedirs(traj_dir, exist_ok=True)

    models = {}
    for name, spec in MODELS.items():
        model = build_model(name, spec, models_dir)
        out = forward_fixture(name, model, os.path.join(models_dir, name))
        nparams = sum(p.numel() for p in model.parameters())
        print(f"model {name:18s} params={nparams:8d} stored={str(spec['dtype']):15s} "
              f"forward output std={out.std().item():.4f} max|.|={out.abs().max().item():.3f}")
        models[name] = model

    written = set()
    for case in make_cases():
        if args.only and args.only not in case["name"]:
            continue
        written.add(case["name"] + ".safetensors")
        tensors, metadata, max_abs = run_case(case, models[case["model"]])
        out = tensors["output"]
        probe, _, _ = run_case(case, models[case["model"]], perturb=True)
        cond = ((probe["output"] - out).norm() / out.norm()).item()
        # Finite and bounded; large magnitudes are inherent for epsilon prediction on a
        # random model (x0 = x_t / sqrt(alpha_bar) dominates; see README), so the real
        # test is that the run is well conditioned for a 1e-4 relative comparison.
        assert max_abs < 1e6, (case["name"], max_abs)
        assert cond < 1e-5, (case["name"], cond)
        save_safetensors(tensors, os.path.join(traj_dir, case["name"] + ".safetensors"), metadata)
        print(f"traj {case['name']:42s} output std={out.std().item():10.4f} "
              f"max|x_t|={max_abs:10.3f} init_sigma={float(metadata['init_noise_sigma']):9.3f} "
              f"probe(1e-6)={cond:.2e}", flush=True)
    if not args.only:  # drop fixtures of cases that no longer exist
        for f in sorted(os.listdir(traj_dir)):
            if f.endswith(".safetensors") and f not in written:
                print("removing stale", f)
                os.remove(os.path.join(traj_dir, f))


if __name__ == "__main__":
    main()

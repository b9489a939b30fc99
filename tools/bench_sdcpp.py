#!/usr/bin/env python3
"""The stable-diffusion.cpp peer of `diffsteer bench --model sd15-shape`: the same
Stable Diffusion 1.5 architecture with random f32 weights, the same image size and
thread count, timed through stable-diffusion.cpp (ggml on the CPU).

Dev-only. Two steps, each in its own Python environment:

1. `make` (needs torch + diffusers, e.g. /work/venv): builds SD 1.5's U-Net, CLIP
   text encoder and VAE from their configs with random weights (the configs of
   tools/bench_diffusers.py; nothing downloaded), renames every tensor to the
   original single-file (LDM / CompVis) layout that stable-diffusion.cpp reads, and
   writes one f32 safetensors file (about 4.3 GB; keep it out of the repo):

       /work/venv/bin/python tools/bench_sdcpp.py make --out /tmp/sd15-shape-f32.safetensors

2. `time` (needs `stable-diffusion-cpp-python`, built from source for this CPU, e.g.
   `CMAKE_ARGS="-DGGML_NATIVE=ON" pip install stable-diffusion-cpp-python` in its
   own venv): loads that file with wtype f32 (nothing quantised), runs text-to-image
   at 256×256 (a 32×32 latent), one image with CFG 3 (a prompt and an empty
   negative prompt), Euler with the discrete schedule, and prints
   stable-diffusion.cpp's own per-stage times (text encoding, sampling, VAE decode),
   the sampling step time (the wall time between the ends of consecutive steps,
   from its progress callback; step 1 is left out as it also allocates the U-Net's
   buffers) and the process's peak RSS:

       /work/venv-sdcpp/bin/python tools/bench_sdcpp.py time \\
           --model /tmp/sd15-shape-f32.safetensors --threads 2 --steps 4

What differs from diffsteer's run: stable-diffusion.cpp keeps every Conv2d weight
as f16 whatever the wtype (its Conv2d block fixes the type), so its convolutions
multiply f16 im2col patches by f16 weights; linears, attention and norms run in
f32. With CFG it makes two U-Net calls of batch 1 per step (conditional, then
unconditional), where diffsteer makes one call on 2 rows.

tools/compare_sdcpp.sh alternates this, in one run, with
`diffsteer --threads 2 bench --model sd15-shape --size 32 --batch 1 --steps 1`
(its "unet forward, batch 2" and the sampling ms/step).
"""
import argparse
import json
import re
import resource
import statistics
import sys
import time

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
PROMPT = "a photograph of an astronaut riding a horse"


# ---------------------------------------------------------------------------
# diffusers names -> original (LDM) single-file names
# ---------------------------------------------------------------------------

def _replace_prefix(name, pairs):
    """The first (diffusers prefix, LDM prefix) pair that starts `name` applied, and
    the rest of the name after the prefix; (None, None) if none does."""
    for new, old in pairs:
        if name.startswith(new):
            return old + name[len(new):], name[len(new):]
    return None, None


# Inside a U-Net resnet block: diffusers name -> LDM name (ResBlock's Sequentials).
UNET_RESNET_PARTS = [
    ("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
    ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection."),
]


def unet_block_prefixes():
    """(diffusers prefix, LDM prefix) for every block of SD 1.5's U-Net.

    LDM numbers the encoder's blocks in one flat `input_blocks` list (conv_in first,
    then per level two resnet(+attention) blocks and a downsampler), the decoder's in
    `output_blocks` (three per level, the last holding the upsampler), and the middle
    as resnet, attention, resnet.
    """
    pairs = [("conv_in.", "input_blocks.0.0."), ("time_embedding.linear_1.", "time_embed.0."),
             ("time_embedding.linear_2.", "time_embed.2."), ("conv_norm_out.", "out.0."),
             ("conv_out.", "out.2."), ("mid_block.resnets.0.", "middle_block.0."),
             ("mid_block.attentions.0.", "middle_block.1."), ("mid_block.resnets.1.", "middle_block.2.")]
    levels = len(SD15_UNET["block_out_channels"])
    per_level = SD15_UNET["layers_per_block"]
    for level in range(levels):
        has_attention = SD15_UNET["down_block_types"][level].startswith("CrossAttn")
        for j in range(per_level):
            flat = 1 + level * (per_level + 1) + j
            pairs.append((f"down_blocks.{level}.resnets.{j}.", f"input_blocks.{flat}.0."))
            if has_attention:
                pairs.append((f"down_blocks.{level}.attentions.{j}.", f"input_blocks.{flat}.1."))
        if level < levels - 1:
            flat = (level + 1) * (per_level + 1)
            pairs.append((f"down_blocks.{level}.downsamplers.0.conv.", f"input_blocks.{flat}.0.op."))
    for level in range(levels):
        has_attention = SD15_UNET["up_block_types"][level].startswith("CrossAttn")
        for j in range(per_level + 1):
            flat = level * (per_level + 1) + j
            pairs.append((f"up_blocks.{level}.resnets.{j}.", f"output_blocks.{flat}.0."))
            if has_attention:
                pairs.append((f"up_blocks.{level}.attentions.{j}.", f"output_blocks.{flat}.1."))
        if level < levels - 1:
            flat = level * (per_level + 1) + per_level
            slot = 2 if has_attention else 1
            pairs.append((f"up_blocks.{level}.upsamplers.0.", f"output_blocks.{flat}.{slot}."))
    return pairs


def unet_to_ldm(state):
    pairs = unet_block_prefixes()
    out = {}
    for name, tensor in state.items():
        ldm, rest = _replace_prefix(name, pairs)
        if ldm is None:
            raise KeyError(f"no LDM name for U-Net tensor {name}")
        if ".resnets." in name:
            inner, _ = _replace_prefix(rest, UNET_RESNET_PARTS)
            if inner is None:
                raise KeyError(f"no LDM name for U-Net resnet tensor {name}")
            ldm = ldm[: len(ldm) - len(rest)] + inner
        out["model.diffusion_model." + ldm] = tensor
    return out


VAE_ATTENTION_PARTS = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."),
                       ("to_out.0.", "proj_out.")]


def vae_to_ldm(state):
    """AutoencoderKL -> LDM's Encoder/Decoder names. The decoder's levels run in the
    opposite order in LDM (`up.3` is the first one applied), and the mid-block
    attention's projections are 1×1 convolutions there, linears in diffusers."""
    levels = len(SD15_VAE["block_out_channels"])
    pairs = [("encoder.conv_norm_out.", "encoder.norm_out."), ("decoder.conv_norm_out.", "decoder.norm_out.")]
    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.mid_block.resnets.0.", f"{side}.mid.block_1."),
                  (f"{side}.mid_block.resnets.1.", f"{side}.mid.block_2."),
                  (f"{side}.mid_block.attentions.0.", f"{side}.mid.attn_1.")]
    for level in range(levels):
        pairs.append((f"encoder.down_blocks.{level}.resnets.", f"encoder.down.{level}.block."))
        pairs.append((f"encoder.down_blocks.{level}.downsamplers.0.", f"encoder.down.{level}.downsample."))
        ldm_level = levels - 1 - level
        pairs.append((f"decoder.up_blocks.{level}.resnets.", f"decoder.up.{ldm_level}.block."))
        pairs.append((f"decoder.up_blocks.{level}.upsamplers.0.", f"decoder.up.{ldm_level}.upsample."))
    out = {}
    for name, tensor in state.items():
        ldm, rest = _replace_prefix(name, pairs)
        if ldm is None:  # conv_in, conv_out, quant_conv, post_quant_conv: same names
            ldm, rest = name, ""
        if ".mid.attn_1." in ldm:
            inner, _ = _replace_prefix(rest, VAE_ATTENTION_PARTS)
            if inner is None:
                raise KeyError(f"no LDM name for VAE attention tensor {name}")
            ldm = ldm[: len(ldm) - len(rest)] + inner
            if tensor.dim() == 2:
                tensor = tensor[:, :, None, None]
        ldm = ldm.replace(".conv_shortcut.", ".nin_shortcut.")
        out["first_stage_model." + ldm] = tensor
    return out


def text_to_ldm(state):
    """CLIPTextModel -> `cond_stage_model.transformer.text_model.*`. Older transformers
    name the tensors `text_model.*` already, 5.x without that level."""
    out = {}
    for name, tensor in state.items():
        if name.endswith("position_ids"):
            continue
        if not name.startswith("text_model."):
            name = "text_model." + name
        out["cond_stage_model.transformer." + name] = tensor
    return out


def make(args):
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    t = time.perf_counter()
    tensors = {}
    unet = UNet2DConditionModel(sample_size=64, **SD15_UNET).float()
    tensors.update(unet_to_ldm(unet.state_dict()))
    del unet
    vae = AutoencoderKL(**SD15_VAE).float()
    tensors.update(vae_to_ldm(vae.state_dict()))
    del vae
    text = CLIPTextModel(CLIPTextConfig(**SD15_TEXT)).float()
    tensors.update(text_to_ldm(text.state_dict()))
    del text
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    count = sum(v.numel() for v in tensors.values())
    save_file(tensors, args.out)
    print(f"wrote {args.out}: {len(tensors)} tensors, {count / 1e6:.1f}M f32 parameters, "
          f"{time.perf_counter() - t:.0f} s")


# ---------------------------------------------------------------------------
# timing through stable-diffusion.cpp
# ---------------------------------------------------------------------------

# stable-diffusion.cpp's own per-stage log lines.
STAGE_PATTERNS = {
    "text_encode_s": re.compile(r"get_learned_condition completed, taking ([0-9.]+) ?(ms|s)"),
    "sampling_s": re.compile(r"sampling completed, taking ([0-9.]+) ?(ms|s)"),
    "vae_decode_s": re.compile(r"decode_first_stage completed, taking ([0-9.]+) ?(ms|s)"),
}


def time_sdcpp(args):
    from importlib.metadata import version

    from stable_diffusion_cpp import StableDiffusion

    log = []

    def on_log(level, text):
        log.append(text.decode() if isinstance(text, bytes) else str(text))
        if args.verbose:
            sys.stderr.write(log[-1])

    t = time.perf_counter()
    sd = build(StableDiffusion, args, on_log)
    load_s = time.perf_counter() - t
    weight_lines = [line for line in "".join(log).splitlines()
                    if any(k in line for k in ("Version:", "type stat", "params memory"))]

    def run(steps):
        """One generation; the wall-clock moment each sampling step ended (from
        stable-diffusion.cpp's progress callback) and its own per-stage times."""
        log.clear()
        reports = []  # (step, steps, seconds since the call began) per progress report
        step_ends = {}  # step -> when the callback first reported it

        def on_step(step, total, _seconds):
            now = time.perf_counter()
            reports.append((step, total, now - t0))
            if total == steps:
                step_ends.setdefault(step, now)

        t0 = time.perf_counter()
        images = sd.generate_image(
            prompt=PROMPT, negative_prompt="", width=8 * args.size, height=8 * args.size,
            sample_steps=steps, cfg_scale=3.0, sample_method=args.sampler, scheduler="discrete",
            seed=0, batch_count=1, vae_tiling=False, progress_callback=on_step,
        )
        wall = time.perf_counter() - t0
        if len(images) != 1 or images[0].size != (8 * args.size, 8 * args.size):
            raise RuntimeError(f"stable-diffusion.cpp returned {images}")
        if any(k not in step_ends for k in range(1, steps + 1)):
            raise RuntimeError(f"step callbacks for steps {sorted(step_ends)} of {steps}")
        text = "".join(log)
        stages = {"wall_s": wall, "progress_reports": reports}
        for key, pattern in STAGE_PATTERNS.items():
            found = pattern.findall(text)
            if not found:
                raise RuntimeError(f"no '{key}' timing in stable-diffusion.cpp's log:\n{text}")
            stages[key] = sum(float(v) / (1000 if unit == "ms" else 1) for v, unit in found)
        # Step 1 also allocates the U-Net's compute buffers; steps 2.. are the
        # steady state: the time between consecutive step ends.
        stages["step_s"] = [step_ends[k] - step_ends[k - 1] for k in range(2, steps + 1)]
        stages["per_step_s"] = statistics.median(stages["step_s"])
        return stages

    rounds = [run(args.steps) for _ in range(args.iters)]
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    print(f"stable-diffusion.cpp (stable-diffusion-cpp-python {version('stable-diffusion-cpp-python')}), "
          f"{args.threads} threads, {cpu_name()}, model loaded in {load_s:.1f} s")
    for line in weight_lines:
        print("  load log: " + line.strip())
    print(f"one {8 * args.size}×{8 * args.size} image, {args.steps} {args.sampler} steps, cfg 3, "
          f"prompt + empty negative prompt; medians of {args.iters}:")
    print(f"  text enc {med('text_encode_s') * 1e3:.0f} ms, sampling {med('sampling_s'):.2f} s, "
          f"vae decode {med('vae_decode_s'):.2f} s, wall {med('wall_s'):.2f} s")
    each = "; ".join(", ".join(f"{s * 1e3:.0f}" for s in r["step_s"]) for r in rounds)
    print(f"  sampling step (steps 2..{args.steps}, median): {med('per_step_s') * 1e3:.0f} ms [{each}]")
    print(f"  peak RSS {peak_mib:.0f} MiB")
    print(json.dumps({"peer": "stable-diffusion.cpp", "version": version("stable-diffusion-cpp-python"),
                      "threads": args.threads, "size": args.size, "sampler": args.sampler,
                      "steps": args.steps, "cpu": cpu_name(), "load_s": load_s, "rounds": rounds,
                      "per_step_ms": med("per_step_s") * 1e3, "peak_rss_mib": peak_mib}))


def build(StableDiffusion, args, on_log):
    """The binding's constructor: wtype "f32" (no quantisation; stable-diffusion.cpp
    still keeps every Conv2d weight as f16, fixed in its Conv2d block), no flash
    attention, only the VAE's decoder (as the engine's bench), all on the CPU."""
    from stable_diffusion_cpp import stable_diffusion_cpp as raw

    callback = raw.sd_log_callback(lambda level, text, data: on_log(level, text))
    raw.sd_set_log_callback(callback, None)
    build.keep_alive = callback  # the C side holds only a raw pointer to it
    return StableDiffusion(model_path=args.model, n_threads=args.threads, wtype="f32",
                           vae_decode_only=True, verbose=True)


def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    mk = sub.add_parser("make", help="write the random-weight SD 1.5 checkpoint (torch + diffusers)")
    mk.add_argument("--out", default="/tmp/sd15-shape-f32.safetensors")
    tm = sub.add_parser("time", help="time it through stable-diffusion.cpp")
    tm.add_argument("--model", default="/tmp/sd15-shape-f32.safetensors")
    tm.add_argument("--threads", type=int, default=2)
    tm.add_argument("--size", type=int, default=32, help="latent size (32: 256×256 images)")
    tm.add_argument("--steps", type=int, default=4, help="sampling steps per run (at least 2)")
    tm.add_argument("--iters", type=int, default=1, help="generations timed (the median is reported)")
    tm.add_argument("--sampler", default="euler", help="stable-diffusion.cpp's sample method")
    tm.add_argument("--verbose", action="store_true", help="echo stable-diffusion.cpp's log")
    args = ap.parse_args()
    if args.cmd == "make":
        make(args)
    else:
        if args.steps < 2:
            ap.error("--steps must be at least 2 (the first step also allocates buffers)")
        time_sdcpp(args)


if __name__ == "__main__":
    main()

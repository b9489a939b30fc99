#!/usr/bin/env python3
"""The PyTorch side of the GPU comparisons: what diffusers + PyTorch do on the same
GPU, for `diffsteer`'s CUDA backend to be judged against.

Dev-only (needs torch with CUDA, and diffusers for the U-Net part; no weights: the
U-Net is randomly initialised with a fixed seed). It measures:

1. U-Net step. diffusers' UNet2DConditionModel with Stable Diffusion 1.5's config
   (320/640/1280/1280 channels, 2 layers per block, cross-attention dim 768, 8 heads,
   4 latent channels), PyTorch SDPA attention (AttnProcessor2_0), one forward on
   latents [B, 4, S, S], B timesteps and text states [B, 77, 768], under
   torch.inference_mode(), for each --batch and --dtype. Median of --iters timed
   forwards after --warmup untimed ones, each timed with CUDA events.
2. Attention. torch.nn.functional.scaled_dot_product_attention on [b, h, l, d]
   (default [2, 8, 4096, 80], non-causal, q/k/v random), in bf16 and f16, through
   each SDPA backend asked for (auto = PyTorch's own choice, flash, cudnn,
   efficient); an unavailable backend is reported, not fatal. TFLOP/s counts
   4·b·h·lq·lk·d FLOPs.
3. Matrix ceilings. torch.matmul n×n×n (default 8192) on random data in bf16, f16
   and f32 with TF32 off; TFLOP/s = 2n³/t. The bf16 figure is the "measured bf16
   matrix ceiling": the project's attention kernel targets >= 50% of it.

A compact table goes to stdout; --json FILE writes everything (and torch/diffusers
versions, GPU name, CUDA version), rewritten after each measurement so that a run cut
short still leaves what it got. Exit 0 on success; 2 if CUDA is unavailable; 3 if
diffusers cannot be imported; 1 if any measurement failed (the rest still run).

On the GPU machine (python3 there holds torch, but not diffusers: carry the wheels in
.whl/, see the device README; name `.whl` in the run's `carry`):

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \\
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; \\
    PYTHONUNBUFFERED=1 python3 tools/bench_torch_gpu.py --batch 1,2,8 --dtype f16,bf16 \\
        --json $OUT/torch_gpu.json

Expected to take well under 90 s on an H200 with these options (estimate, not yet
measured there). Local smoke test on the CPU venv:

    /work/venv/bin/python tools/bench_torch_gpu.py --device cpu --dtype f32 --batch 1 \\
        --size 16 --iters 1 --warmup 1 --attn-shapes 1x2x256x80 --matmul-size 256
"""
import argparse
import json
import platform
import statistics
import sys
import time

UNET_CONFIG = dict(  # Stable Diffusion 1.5 (runwayml/stable-diffusion-v1-5, unet/config.json)
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,
)
TEXT_TOKENS = 77

DTYPE_NAMES = {"f16": "float16", "fp16": "float16", "float16": "float16", "half": "float16",
               "bf16": "bfloat16", "bfloat16": "bfloat16",
               "f32": "float32", "fp32": "float32", "float32": "float32", "float": "float32"}
SHORT = {"float16": "f16", "bfloat16": "bf16", "float32": "f32"}

DIFFUSERS_HINT = (
    "diffusers cannot be imported ({err}).\n"
    "On the GPU machine, carry the wheels: here, `echo /.whl/ >> .git/info/exclude` and\n"
    "`python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 ... -d .whl\n"
    "diffusers==0.42.1 importlib_metadata lazy-importer` (see /work/.library/device/README.md);\n"
    "there, name `.whl` in carry and start the command with\n"
    "`python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade\n"
    "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit;`.\n"
    "Or pass --skip-unet to measure only attention and matmul."
)


def csv(kind):
    def parse(text):
        return [kind(x) for x in text.split(",") if x.strip()]
    return parse


def dtype_name(text):
    key = text.strip().lower()
    if key not in DTYPE_NAMES:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r} (f16, bf16, f32)")
    return DTYPE_NAMES[key]


def attn_shape(text):
    parts = text.lower().split("x")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"attention shape {text!r}: want BxHxLxD, e.g. 2x8x4096x80")
    return tuple(int(p) for p in parts)


class Timer:
    """Median seconds of `iters` calls of fn after `warmup` untimed ones. On CUDA each call
    sits between two events on the current stream (so launch gaps count, as they do for
    a caller waiting on the result); elsewhere perf_counter around the call."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, iters, warmup):
        torch = self.torch
        for _ in range(warmup):
            fn()
        self.sync()
        if self.cuda:
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(iters)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            times = [start.elapsed_time(end) / 1e3 for start, end in events]
        else:
            times = []
            for _ in range(iters):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        return {"median_ms": statistics.median(times) * 1e3, "min_ms": min(times) * 1e3,
                "max_ms": max(times) * 1e3, "runs": len(times)}


class Report:
    def __init__(self, path):
        self.path = path
        self.data = {"env": {}, "settings": {}, "unet": [], "attention": [], "matmul": [],
                     "errors": [], "unavailable": []}

    def add(self, section, row):
        self.data[section].append(row)
        self.save()

    def error(self, what, exc):
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"  FAILED {what}: {msg}", flush=True)
        self.data["errors"].append({"what": what, "error": msg})
        self.save()

    def unavailable(self, what, exc):
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"  unavailable: {what} ({msg[:100]})", flush=True)
        self.data["unavailable"].append({"what": what, "error": msg})
        self.save()

    def save(self):
        if self.path:
            with open(self.path, "w") as f:
                json.dump(self.data, f, indent=1)
                f.write("\n")


def environment(torch, device, diffusers_version):
    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers_version,
        "cuda": torch.version.cuda,
        "device": str(device),
        "host_cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update({
            "gpu": props.name,
            "capability": f"{props.major}.{props.minor}",
            "sm_count": props.multi_processor_count,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "cudnn": torch.backends.cudnn.version(),
        })
    else:
        env["threads"] = torch.get_num_threads()
    return env


def bench_unet(torch, device, args, timer, report):
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from diffusers.utils import logging as diffusers_logging

    config = dict(UNET_CONFIG, sample_size=args.size)
    if args.block_channels:
        config["block_out_channels"] = tuple(args.block_channels)
    report.data["settings"]["unet_config"] = config
    for dtype_key in args.dtype:
        dtype = getattr(torch, dtype_key)
        try:
            t0 = time.perf_counter()
            torch.manual_seed(args.seed)  # the same weights for every dtype
            try:  # initialise straight on the device: quicker than 860 M parameters on the CPU
                with torch.device(device):
                    unet = UNet2DConditionModel(**config)
            except Exception as exc:  # noqa: BLE001
                print(f"  unet built on the CPU instead ({type(exc).__name__}: {exc})", flush=True)
                torch.manual_seed(args.seed)
                unet = UNet2DConditionModel(**config).to(device)
            quiet = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()  # the "keep in float32: []" note on .to()
            unet = unet.to(dtype=dtype).eval()
            diffusers_logging.set_verbosity(quiet)
            unet.set_attn_processor(AttnProcessor2_0())
            timer.sync()
            build_s = time.perf_counter() - t0
            params = sum(p.numel() for p in unet.parameters())
        except Exception as exc:  # noqa: BLE001 - report and go on
            report.error(f"unet build {SHORT[dtype_key]}", exc)
            continue
        print(f"  unet {SHORT[dtype_key]}: {params / 1e6:.1f} M parameters, built in {build_s:.1f} s", flush=True)
        for batch in args.batch:
            what = f"unet {SHORT[dtype_key]} batch {batch}"
            try:
                gen = torch.Generator(device=device).manual_seed(args.seed + batch)
                lat = torch.randn(batch, config["in_channels"], args.size, args.size,
                                  generator=gen, device=device, dtype=dtype)
                ts = torch.tensor([(999 - 37 * i) % 1000 for i in range(batch)], device=device)
                text = torch.randn(batch, TEXT_TOKENS, config["cross_attention_dim"],
                                   generator=gen, device=device, dtype=dtype)
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                out = {}

                def forward():
                    out["y"] = unet(lat, ts, encoder_hidden_states=text, return_dict=False)[0]

                with torch.inference_mode():
                    t = timer(forward, args.iters, args.warmup)
                row = {"dtype": SHORT[dtype_key], "batch": batch, "size": args.size, **t,
                       "ms_per_sample": t["median_ms"] / batch,
                       "output_finite": bool(torch.isfinite(out["y"]).all().item()),
                       "params_m": round(params / 1e6, 1),
                       "attn_processor": type(unet.attn_processors[next(iter(unet.attn_processors))]).__name__}
                if device.type == "cuda":
                    row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                report.add("unet", row)
                print(f"unet sd1.5 {row['dtype']:<4} batch {batch:<3} {args.size}x{args.size} "
                      f"{t['median_ms']:9.2f} ms/forward  {row['ms_per_sample']:8.2f} ms/sample  "
                      f"(min {t['min_ms']:.2f}, {t['runs']} runs{'' if row['output_finite'] else ', NON-FINITE output'})",
                      flush=True)
                del lat, text, out
            except Exception as exc:  # noqa: BLE001
                report.error(what, exc)
        del unet
        if device.type == "cuda":
            torch.cuda.empty_cache()


def bench_attention(torch, device, args, timer, report):
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
    for b, h, l, d in args.attn_shapes:
        for dtype_key in args.attn_dtype:
            dtype = getattr(torch, dtype_key)
            gen = torch.Generator(device=device).manual_seed(args.seed)
            q, k, v = (torch.randn(b, h, l, d, generator=gen, device=device, dtype=dtype) for _ in range(3))
            flops = 4 * b * h * l * l * d
            for name in args.attn_backends:
                what = f"sdpa {name} {SHORT[dtype_key]} [{b},{h},{l},{d}]"
                try:
                    if name == "auto":
                        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
                    else:
                        backend = getattr(SDPBackend, backends[name])

                        def fn():
                            with sdpa_kernel(backend):
                                return F.scaled_dot_product_attention(q, k, v)
                    with torch.inference_mode():
                        t = timer(fn, args.micro_iters, args.warmup)
                    row = {"backend": name, "dtype": SHORT[dtype_key], "shape": [b, h, l, d], **t,
                           "tflops": flops / (t["median_ms"] / 1e3) / 1e12}
                    report.add("attention", row)
                    print(f"sdpa {name:<9} {row['dtype']:<4} [{b},{h},{l},{d}] {t['median_ms']:9.3f} ms  "
                          f"{row['tflops']:7.1f} TFLOP/s", flush=True)
                except Exception as exc:  # noqa: BLE001
                    if name == "auto":
                        report.error(what, exc)
                    else:  # a backend that does not take this shape/dtype/GPU: noted, not a failure
                        report.unavailable(what, exc)
            del q, k, v


def bench_matmul(torch, device, args, timer, report):
    n = args.matmul_size
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype_key in args.matmul_dtype:
            dtype = getattr(torch, dtype_key)
            what = f"matmul {SHORT[dtype_key]} {n}^3"
            try:
                gen = torch.Generator(device=device).manual_seed(args.seed)
                a = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
                b = torch.randn(n, n, generator=gen, device=device, dtype=dtype)
                c = torch.empty(n, n, device=device, dtype=dtype)
                with torch.inference_mode():
                    t = timer(lambda: torch.matmul(a, b, out=c), args.micro_iters, args.warmup)
                row = {"dtype": SHORT[dtype_key], "n": n, **t, "tflops": 2 * n**3 / (t["median_ms"] / 1e3) / 1e12,
                       "tf32": bool(torch.backends.cuda.matmul.allow_tf32)}
                report.add("matmul", row)
                print(f"matmul {row['dtype']:<4} {n}x{n}x{n}{'':9} {t['median_ms']:9.3f} ms  "
                      f"{row['tflops']:7.1f} TFLOP/s{' (TF32 off)' if dtype_key == 'float32' else ''}", flush=True)
                del a, b, c
            except Exception as exc:  # noqa: BLE001
                report.error(what, exc)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", help="cuda (default) or cpu (smoke tests only)")
    ap.add_argument("--batch", type=csv(int), default=[1, 2, 8], help="U-Net batches, comma list (default 1,2,8)")
    ap.add_argument("--dtype", type=csv(dtype_name), default=["float16"], help="U-Net dtypes: f16,bf16,f32 (default f16)")
    ap.add_argument("--size", type=int, default=64, help="latent height = width (default 64, i.e. 512x512 images)")
    ap.add_argument("--block-channels", type=csv(int), default=None,
                    help="override block_out_channels (smoke tests only; default SD1.5's 320,640,1280,1280)")
    ap.add_argument("--iters", type=int, default=10, help="timed U-Net forwards per point (median)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls before each timing")
    ap.add_argument("--micro-iters", type=int, default=20, help="timed calls per attention/matmul point")
    ap.add_argument("--attn-shapes", type=csv(attn_shape), default=[(2, 8, 4096, 80)],
                    help="BxHxLxD comma list (default 2x8x4096x80; SD1.5 at 64x64 itself has "
                         "4096x40, 1024x80 and 256x160 with 8 heads, B = 2x images with CFG)")
    ap.add_argument("--attn-dtype", type=csv(dtype_name), default=["bfloat16", "float16"])
    ap.add_argument("--attn-backends", type=csv(str), default=["auto", "flash", "cudnn", "efficient"],
                    help="auto,flash,cudnn,efficient,math (default all but math)")
    ap.add_argument("--matmul-size", type=int, default=8192)
    ap.add_argument("--matmul-dtype", type=csv(dtype_name), default=["bfloat16", "float16", "float32"])
    ap.add_argument("--no-cudnn-benchmark", action="store_true",
                    help="leave torch.backends.cudnn.benchmark off (default: on, autotuned in warm-up)")
    ap.add_argument("--skip-unet", action="store_true")
    ap.add_argument("--skip-attention", action="store_true")
    ap.add_argument("--skip-matmul", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    for name in args.attn_backends:
        if name not in ("auto", "flash", "cudnn", "efficient", "math"):
            ap.error(f"unknown attention backend {name!r}")

    try:
        import torch
    except ImportError as exc:
        sys.exit(f"error: torch cannot be imported ({exc})")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"error: CUDA is not available to torch {torch.__version__} (built for CUDA {torch.version.cuda}); "
              "run this on the GPU machine, or pass --device cpu for a smoke test", file=sys.stderr)
        sys.exit(2)
    diffusers_version = None
    if not args.skip_unet:
        try:
            import diffusers
            diffusers_version = diffusers.__version__
        except Exception as exc:  # noqa: BLE001 - ImportError, or a missing dependency of it
            print("error: " + DIFFUSERS_HINT.format(err=f"{type(exc).__name__}: {exc}"), file=sys.stderr)
            sys.exit(3)

    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not args.no_cudnn_benchmark
    report = Report(args.json)
    report.data["env"] = environment(torch, device, diffusers_version)
    report.data["settings"] = {k: v for k, v in vars(args).items() if k != "json"}
    report.data["settings"]["cudnn_benchmark"] = bool(torch.backends.cudnn.benchmark)
    report.save()
    env = report.data["env"]
    print(f"torch {env['torch']} (CUDA {env['cuda']}), diffusers {env['diffusers']}, python {env['python']}, "
          f"{env.get('gpu', env['device'])}" + (f", {env['sm_count']} SMs" if "sm_count" in env else ""),
          flush=True)

    timer = Timer(torch, device)
    t0 = time.perf_counter()
    if not args.skip_unet:
        bench_unet(torch, device, args, timer, report)
    if not args.skip_attention:
        bench_attention(torch, device, args, timer, report)
    if not args.skip_matmul:
        bench_matmul(torch, device, args, timer, report)

    bf16 = [r for r in report.data["matmul"] if r["dtype"] == "bf16"]
    if bf16:
        ceiling = bf16[0]["tflops"]
        report.data["bf16_matmul_ceiling_tflops"] = ceiling
        report.data["attention_target_tflops"] = ceiling / 2
        print(f"bf16 matrix ceiling {ceiling:.1f} TFLOP/s; attention target (50%) {ceiling / 2:.1f} TFLOP/s")
    report.data["wall_s"] = round(time.perf_counter() - t0, 1)
    report.save()
    errors = report.data["errors"]
    print(f"done in {report.data['wall_s']} s" + (f", {len(errors)} FAILED: " + "; ".join(e["what"] for e in errors)
                                                   if errors else "") + (f"; wrote {args.json}" if args.json else ""))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()

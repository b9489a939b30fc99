#!/usr/bin/env python3
"""Reference fixtures for diffsteer's reward models (src/reward/).

Builds a tiny randomly initialised classifier in the diffsteer-classifier/1 format that
uses every layer type (conv2d with stride 1 and 2, with and without padding and bias;
relu; silu; avg_pool2d on a size it does not divide; flatten; two linears), runs it in
PyTorch through `LayerListNet` of tools/train_digits.py (the same class that defines
the shipped classifier), and saves the logits, log-probabilities of given classes and
torch-autograd input gradients. See tests/fixtures/README.md, section "Reward models".

    /work/venv/bin/python tools/make_reward_fixtures.py [--out tests/fixtures/rewards]

Deterministic (seeded generators, float32 on one CPU thread, byte-stable safetensors
headers): two runs give byte-identical files. Dev-only: CI never runs this.
"""

import argparse
import json
import os
import sys
import zlib

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import save_safetensors  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_digits import LayerListNet, dump_classifier_config, load_classifier  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

C, H, W = 3, 11, 13  # non-square, odd: the pool drops a row and a column
NUM_CLASSES = 7
LAYERS = [
    {"type": "conv2d", "name": "conv_a", "in_channels": 3, "out_channels": 8, "kernel": 3, "stride": 1, "padding": 1},
    {"type": "relu"},
    {"type": "avg_pool2d", "kernel": 2},                       # 11x13 -> 5x6 (drops a row and a column)
    {"type": "conv2d", "name": "conv_b", "in_channels": 8, "out_channels": 4, "kernel": 3, "stride": 1, "padding": 1,
     "bias": False},
    {"type": "silu"},
    {"type": "conv2d", "name": "conv_c", "in_channels": 4, "out_channels": 6, "kernel": 3, "stride": 2, "padding": 1},
    {"type": "silu"},                                          # 5x6 -> 3x3 (stride 2 leaves a column)
    {"type": "conv2d", "name": "conv_d", "in_channels": 6, "out_channels": 4, "kernel": 2, "stride": 2, "padding": 2},
    {"type": "silu"},                                          # 3x3 -> 3x3 (padding >= kernel: the corner
    {"type": "flatten"},                                       # outputs see only padding)
    {"type": "linear", "name": "fc1", "in_features": 36, "out_features": 12},
    {"type": "relu"},
    {"type": "linear", "name": "fc2", "in_features": 12, "out_features": NUM_CLASSES},
]
BATCH = 4
CLASSES = [0, 3, 6, 2]


def gen(tag):
    g = torch.Generator(device="cpu")
    g.manual_seed(zlib.crc32(tag.encode()))
    return g


def nhwc(t):
    """[n, c, h, w] -> [n, h, w, c] with plain row-major strides (also for c = 1)."""
    n, c, h, w = t.shape
    return t.detach().permute(0, 2, 3, 1).reshape(-1).view(n, h, w, c)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "rewards"))
    args = ap.parse_args()
    cls_dir = os.path.join(args.out, "classifier")
    os.makedirs(cls_dir, exist_ok=True)

    torch.manual_seed(zlib.crc32(b"reward-classifier-init"))
    net = LayerListNet(LAYERS)
    with torch.no_grad():
        for name, p in sorted(net.named_parameters()):
            # Larger-than-default weights so activations spread over both sides of the
            # ReLU/SiLU knee and the softmax is far from uniform; then round to f16,
            # the storage dtype, so the f32 reference uses exactly the stored values.
            p.mul_(3.0).add_(0.1 * torch.randn(p.shape, generator=gen("perturb:" + name)))
            p.copy_(p.to(torch.float16).to(torch.float32))
    net.eval()

    config = {
        "format": "diffsteer-classifier/1",
        "input": {"channels": C, "height": H, "width": W, "range": [-1, 1]},
        "num_classes": NUM_CLASSES,
        "layers": LAYERS,
    }
    with open(os.path.join(cls_dir, "config.json"), "w") as f:
        f.write(dump_classifier_config(config))
    save_safetensors({k: v.to(torch.float16) for k, v in net.state_dict().items()},
                     os.path.join(cls_dir, "model.safetensors"), {"format": "pt"})

    x = torch.randn((BATCH, C, H, W), generator=gen("reward-inputs"))
    x.requires_grad_(True)
    logits = net(x)
    classes = torch.tensor(CLASSES, dtype=torch.int64)
    log_probs = F.log_softmax(logits, dim=1).gather(1, classes.view(-1, 1)).view(-1)
    (grad,) = torch.autograd.grad(log_probs.sum(), x)

    # Sanity: the fixture is not degenerate (every layer passes signal, the softmax is
    # not flat, no ReLU input sits on its kink where the gradient is ill-defined).
    acts = x.detach()
    for l in LAYERS:
        if l["type"] == "relu":
            assert acts.abs().min() > 1e-4, "an input of a ReLU sits on its kink"
            frac = (acts > 0).float().mean().item()
            assert 0.2 < frac < 0.8, frac
        with torch.no_grad():
            acts = getattr(net, l["name"])(acts) if "name" in l else LayerListNet([l])(acts)
    assert logits.std().item() > 0.7, logits.std().item()
    assert grad.abs().max().item() > 1e-2

    save_safetensors(
        {
            "x": nhwc(x),
            "classes": classes,
            "logits": logits.detach().contiguous(),
            "log_probs": log_probs.detach().contiguous(),
            "grad": nhwc(grad),
        },
        os.path.join(args.out, "classifier_reference.safetensors"),
        {"torch_version": torch.__version__, "layout": "x and grad NHWC [batch, H, W, C]"},
    )
    print(f"fixture classifier: logits std {logits.std().item():.3f}; log_probs {[round(v, 3) for v in log_probs.tolist()]}; "
          f"|grad| max {grad.abs().max().item():.3f}")

    shipped_reference(args.out)


def shipped_reference(out):
    """The SHIPPED classifier (weights/digit-classifier) on two digits the shipped U-Net
    made (the final samples of tests/fixtures/trajectories/digits__ddim.safetensors,
    classes 3 and 7), each scored for its own class and for another one."""
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    net = load_classifier(os.path.join(root, "weights", "digit-classifier"))
    digits = load_file(os.path.join(root, "tests", "fixtures", "trajectories", "digits__ddim.safetensors"))["output"]
    x = torch.cat([digits, digits]).clone().requires_grad_(True)  # [4, 1, 28, 28]
    classes = torch.tensor([3, 7, 8, 1], dtype=torch.int64)
    logits = net(x)
    assert logits[:2].argmax(1).tolist() == [3, 7], logits[:2].argmax(1)
    log_probs = F.log_softmax(logits, dim=1).gather(1, classes.view(-1, 1)).view(-1)
    (grad,) = torch.autograd.grad(log_probs.sum(), x)
    save_safetensors(
        {"x": nhwc(x), "classes": classes, "logits": logits.detach().contiguous(),
         "log_probs": log_probs.detach().contiguous(), "grad": nhwc(grad)},
        os.path.join(out, "shipped_reference.safetensors"),
        {"torch_version": torch.__version__, "layout": "x and grad NHWC [batch, H, W, C]",
         "classifier": "weights/digit-classifier"},
    )
    print(f"shipped classifier: log_probs {[round(v, 4) for v in log_probs.tolist()]}; "
          f"|grad| max {grad.abs().max().item():.3f}")


if __name__ == "__main__":
    main()

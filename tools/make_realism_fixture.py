#!/usr/bin/env python3
"""Reference values of the shipped realism discriminator (weights/realism) for
tests/rewards_realism.rs: its log-odds log d/(1-d) = l_real - l_fake and the torch-autograd
gradient with respect to the image, on two digits the shipped U-Net made (the final samples
of tests/fixtures/trajectories/digits__ddim.safetensors), each at two noise levels.

    /work/venv/bin/python tools/make_realism_fixture.py [--out tests/fixtures/rewards]

The discriminator reads 2 channels: the image and a constant plane of sqrt(1 - abar).
Deterministic (float32 on one CPU thread, byte-stable safetensors headers). Dev-only.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import save_safetensors  # noqa: E402
from make_reward_fixtures import nhwc  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from train_digits import load_classifier  # noqa: E402

torch.set_num_threads(1)
torch.use_deterministic_algorithms(True)

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
ALPHA_BARS = [1.0, 0.02, 0.5, 0.9]  # digit 3 at the first two, digit 7 at the others


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "rewards"))
    args = ap.parse_args()
    net = load_classifier(os.path.join(ROOT, "weights", "realism"))
    digits = load_file(os.path.join(ROOT, "tests", "fixtures", "trajectories", "digits__ddim.safetensors"))["output"]
    x = torch.cat([digits[:1], digits[:1], digits[1:2], digits[1:2]]).clone().requires_grad_(True)
    alpha_bars = torch.tensor(ALPHA_BARS, dtype=torch.float32)
    level = (1 - alpha_bars).clamp(min=0).sqrt().view(-1, 1, 1, 1).expand(-1, 1, 28, 28)
    logits = net(torch.cat([x, level], 1))
    log_odds = logits[:, 1] - logits[:, 0]
    (grad,) = torch.autograd.grad(log_odds.sum(), x)
    assert grad.abs().max().item() > 1e-3, grad.abs().max().item()
    save_safetensors(
        {"x": nhwc(x), "alpha_bars": alpha_bars, "log_odds": log_odds.detach().contiguous(), "grad": nhwc(grad)},
        os.path.join(args.out, "realism_reference.safetensors"),
        {"torch_version": torch.__version__, "layout": "x and grad NHWC [batch, H, W, C]",
         "discriminator": "weights/realism"},
    )
    print(f"realism: log-odds {[round(v, 4) for v in log_odds.tolist()]}; |grad| max {grad.abs().max().item():.4f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Real-digit feature statistics for `diffsteer eval --methods` (its realism column) and
the reference fixture that checks the engine's features and Fréchet distance.

1. weights/digit-classifier/real-features.safetensors: the mean (`mean`, [F]) and the
   covariance (`cov`, [F, F], np.cov: divided by N - 1) of the shipped digit
   classifier's penultimate features -- the input of its last layer, i.e. every layer
   of the config but the last, run by `LayerListNet` of tools/train_digits.py -- over
   the 4,500 real training digits of train_digits.load_digits() (float32 on disk,
   accumulated in float64).
2. tests/fixtures/frechet/reference.safetensors:
   - `digits` [4, 28, 28, 1]: the first held-out digit of classes 0-3 (channels-last),
     and `features` [4, F]: their penultimate features in PyTorch;
   - `a` [40, 6] and `b` [25, 6]: two seeded Gaussian samples (b shifted and
     correlated), and `fd` [1]: their Fréchet distance by scipy.linalg.sqrtm, as
     tools/readers.py computes it, in float64 from the float32 values stored.

    /work/venv/bin/python tools/make_digit_feature_stats.py

Deterministic: byte-identical files on every run. Dev-only: CI never runs this.
"""
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_model_fixtures import save_safetensors  # noqa: E402
from readers import frechet, gaussian  # noqa: E402
from train_digits import load_classifier, load_digits  # noqa: E402

torch.set_num_threads(1)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def penultimate(net, x):
    """Every layer of the net's layer list but the last."""
    with torch.no_grad():
        for spec in net.spec[:-1]:
            t = spec["type"]
            if t in ("conv2d", "linear"):
                x = getattr(net, spec["name"])(x)
            elif t == "silu":
                x = F.silu(x)
            elif t == "relu":
                x = F.relu(x)
            elif t == "avg_pool2d":
                x = F.avg_pool2d(x, spec["kernel"], stride=spec["kernel"])
            elif t == "flatten":
                x = x.flatten(1)
    return x


def main():
    net = load_classifier(os.path.join(ROOT, "weights", "digit-classifier"))
    xtr, _, xho, yho = load_digits()
    feats = torch.cat([penultimate(net, xtr[i:i + 500]) for i in range(0, len(xtr), 500)]).double().numpy()
    mean, cov = gaussian(feats)
    stats = os.path.join(ROOT, "weights", "digit-classifier", "real-features.safetensors")
    save_safetensors(
        {"mean": torch.from_numpy(mean).float(), "cov": torch.from_numpy(cov).float()},
        stats,
        {"digits": str(len(xtr)), "source": "tools/make_digit_feature_stats.py"},
    )
    print(f"{stats}: {feats.shape[1]} features of {len(xtr)} training digits")

    picks = [int(np.nonzero(yho.numpy() == c)[0][0]) for c in range(4)]
    digits = xho[picks]
    fixture_dir = os.path.join(ROOT, "tests", "fixtures", "frechet")
    os.makedirs(fixture_dir, exist_ok=True)
    rng = np.random.RandomState(20261203)
    a = rng.randn(40, 6).astype(np.float32)
    mix = (np.eye(6) + 0.4 * rng.randn(6, 6)).astype(np.float32)
    b = (rng.randn(25, 6).astype(np.float32) @ mix + 0.7).astype(np.float32)
    fd = frechet(gaussian(a.astype(np.float64)), gaussian(b.astype(np.float64)))
    save_safetensors(
        {
            "digits": digits.reshape(len(picks), 28, 28, 1).clone(),  # one channel: NCHW = NHWC
            "features": penultimate(net, digits).float(),
            "a": torch.from_numpy(a),
            "b": torch.from_numpy(b),
            "fd": torch.tensor([fd], dtype=torch.float32),
        },
        os.path.join(fixture_dir, "reference.safetensors"),
        {"source": "tools/make_digit_feature_stats.py"},
    )
    print(f"fixture: FD(a, b) = {fd:.6f}")


if __name__ == "__main__":
    main()

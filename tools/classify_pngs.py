#!/usr/bin/env python3
"""Read digit PNGs written by `diffsteer generate` and report how many read as the
requested digit (dev-only, PyTorch). This is the issue's acceptance protocol run on
the ENGINE's output, with two readers: the shipped classifier
(weights/digit-classifier) and the independent check classifier of
tools/eval_digits.py (a different CNN trained on clean digits only, never shipped).

    tools/check_digits.sh            # generates OUT/0..9 with the engine, then runs this
    python tools/classify_pngs.py OUT   # OUT/D/*.png must be samples of digit D

Also reported, against the real digits of each class: the mean pairwise L2 distance
within a class (diversity; ratio 1.0 = as diverse as real digits) and the mean total
variation (speckle; ratio 1.0 = as smooth as real digits).
"""
import argparse
import json
import os
import sys

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eval_digits import check_classifier, pairwise_mean, predict, total_variation  # noqa: E402
from train_digits import load_classifier, load_digits  # noqa: E402


def load_folder(path):
    files = sorted(f for f in os.listdir(path) if f.endswith(".png"))
    arrays = [np.asarray(Image.open(os.path.join(path, f)).convert("L"), dtype=np.float32) for f in files]
    x = torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1.0
    return x


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", help="folder with subfolders 0..9 of PNGs")
    ap.add_argument("--weights", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "weights"))
    ap.add_argument("--json", help="also write the numbers here")
    args = ap.parse_args()
    torch.set_num_threads(2)

    shipped = load_classifier(os.path.join(args.weights, "digit-classifier"))
    data = load_digits()
    xtr, ytr = data[0], data[1]
    check = check_classifier(xtr, ytr)

    total = correct_shipped = correct_check = 0
    per_digit = {}
    div_ratios, tv_ratios = [], []
    for d in range(10):
        folder = os.path.join(args.out, str(d))
        if not os.path.isdir(folder):
            continue
        x = load_folder(folder)
        a = (predict(shipped, x) == d).sum().item()
        b = (predict(check, x) == d).sum().item()
        real = xtr[ytr == d]
        div = pairwise_mean(x) / pairwise_mean(real)
        tv = total_variation(x).mean().item() / total_variation(real).mean().item()
        per_digit[d] = {"n": len(x), "shipped": a / len(x), "check": b / len(x), "diversity_ratio": div, "tv_ratio": tv}
        total += len(x)
        correct_shipped += a
        correct_check += b
        div_ratios.append(div)
        tv_ratios.append(tv)
        print(f"digit {d}: {len(x)} samples, shipped classifier {a}/{len(x)}, check classifier {b}/{len(x)}, "
              f"diversity {div:.2f}, total variation {tv:.2f} (x real)")
    summary = {
        "samples": total,
        "acc_shipped_classifier": correct_shipped / total,
        "acc_check_classifier": correct_check / total,
        "diversity_ratio_mean": float(np.mean(div_ratios)),
        "tv_ratio_mean": float(np.mean(tv_ratios)),
        "per_digit": per_digit,
    }
    print(f"overall: {total} samples, shipped classifier {correct_shipped / total:.3f}, "
          f"check classifier {correct_check / total:.3f}, diversity {summary['diversity_ratio_mean']:.2f}, "
          f"total variation {summary['tv_ratio_mean']:.2f} (x real)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)


if __name__ == "__main__":
    main()

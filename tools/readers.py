#!/usr/bin/env python3
"""Independent digit readers and a realism measure for judging reward guidance
(dev-only; never shipped, never used by the engine or CI).

Guidance is tuned against these, never against the reward model it steers by. Every
reader is trained here on the 4,500 training digits of train_digits.load_digits() (clean
digits only: none of them ever sees an x0-estimate, a sample of the U-Net or a reward
model's gradient) and measured on the 500 held-out real digits. They are of different
kinds, so that a direction that fools the reward CNN rarely fools all of them:

  hog-svm   non-neural: histograms of oriented gradients (our own numpy HOG: 4x4-px cells,
            9 unsigned orientations, 2x2-cell blocks, L2-Hys) + an RBF support vector machine
  pix-svm   non-neural: raw pixels -> PCA (50) -> RBF support vector machine
  knn       non-neural: 3 nearest neighbours in pixel space (L2)
  mlp       a fully connected network on pixels (784-512-256-10, GELU, dropout), trained
            with small affine jitter
  cnn-bn    a CNN trained differently from every CNN of the project: batch norm, GELU,
            strided 3x3 convolutions, global average pooling, elastic + affine augmentation,
            label smoothing 0.1

Realism is a Frechet distance to real digits ("FD"): the 64-d penultimate features of
cnn-bn (after its global average pooling and a 64-unit layer), a Gaussian fitted to the
samples and one to the 4,500 real training digits, FD = |mu1 - mu2|^2 +
tr(S1 + S2 - 2 (S1 S2)^(1/2)). A second one, "FD-hog", uses the 1,296 HOG features
projected to their first 64 principal components (fitted on the real digits) to check that
a change is not specific to one feature network. Baselines (printed by --train):
real-vs-real, 200 or 300 held-out digits (class-balanced) vs the training digits.

    /work/venv/bin/python tools/readers.py --train      # train (cached in /tmp), print accuracies
    /work/venv/bin/python tools/readers.py --judge OUT  # OUT/D/*.png (target D) or OUT/*.png

--judge reads PNGs written by `diffsteer generate`: with subfolders 0..9 each is a target
(share read as the target by every reader, FD over all of them); a flat folder is judged as
unconditional samples (class histogram per reader, FD). --avoid D also reports the share
read as D.
"""
import argparse
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_digits import load_digits, random_affine, set_seeds  # noqa: E402

CACHE = os.environ.get("DIFFSTEER_READERS_CACHE", "/tmp/diffsteer-readers")
READERS = ["hog-svm", "pix-svm", "knn", "mlp", "cnn-bn"]


# ---------------------------------------------------------------------------------------
# HOG (numpy)
# ---------------------------------------------------------------------------------------
def hog(x, cell=4, bins=9, block=2):
    """x: N x 28 x 28 in [0, 1]. Returns N x features (L2-Hys normalised blocks)."""
    x = x.astype(np.float64)
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    gx[:, :, 1:-1] = x[:, :, 2:] - x[:, :, :-2]
    gy[:, 1:-1, :] = x[:, 2:, :] - x[:, :-2, :]
    mag = np.hypot(gx, gy)
    ang = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    n, h, w = x.shape
    ch, cw = h // cell, w // cell
    pos = ang / (180.0 / bins)
    lo = np.floor(pos).astype(int) % bins
    hi = (lo + 1) % bins
    frac = pos - np.floor(pos)
    hist = np.zeros((n, ch, cw, bins))
    for cy in range(ch):
        for cx in range(cw):
            sl = (slice(None), slice(cy * cell, (cy + 1) * cell), slice(cx * cell, (cx + 1) * cell))
            m, l, u, f = mag[sl].reshape(n, -1), lo[sl].reshape(n, -1), hi[sl].reshape(n, -1), frac[sl].reshape(n, -1)
            for b in range(bins):
                hist[:, cy, cx, b] = (m * (1 - f) * (l == b)).sum(1) + (m * f * (u == b)).sum(1)
    feats = []
    for by in range(ch - block + 1):
        for bx in range(cw - block + 1):
            v = hist[:, by:by + block, bx:bx + block].reshape(n, -1)
            v = v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-6)
            v = np.minimum(v, 0.2)
            v = v / np.sqrt((v ** 2).sum(1, keepdims=True) + 1e-6)
            feats.append(v)
    return np.concatenate(feats, 1).astype(np.float32)


def to01(x):
    """torch N x 1 x 28 x 28 in [-1, 1] -> numpy N x 28 x 28 in [0, 1] (clamped)."""
    return ((x.clamp(-1, 1) + 1) / 2)[:, 0].numpy()


# ---------------------------------------------------------------------------------------
# neural readers
# ---------------------------------------------------------------------------------------
class CnnBN(nn.Module):
    def __init__(self):
        super().__init__()

        def block(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.GELU())

        self.body = nn.Sequential(block(1, 32, 1), block(32, 32, 1), block(32, 64, 2), block(64, 64, 1),
                                  block(64, 128, 2), block(128, 128, 1))
        self.feat = nn.Sequential(nn.Linear(128, 64), nn.GELU())
        self.head = nn.Linear(64, 10)

    def features(self, x):
        return self.feat(self.body(x).mean((2, 3)))

    def forward(self, x):
        return self.head(self.features(x))


class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), nn.GELU(), nn.Dropout(0.2),
                                 nn.Linear(512, 256), nn.GELU(), nn.Dropout(0.2), nn.Linear(256, 10))

    def forward(self, x):
        return self.net(x)


def elastic(x, g, alpha=34.0, sigma=4.0):
    """Elastic distortion (random smooth displacement fields), background stays -1."""
    B = x.shape[0]
    d = torch.rand(B, 2, 28, 28, generator=g) * 2 - 1
    r = int(3 * sigma)
    ax = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (ax / sigma) ** 2)
    k = k / k.sum()
    d = F.conv2d(d.view(-1, 1, 28, 28), k.view(1, 1, 1, -1), padding=(0, r))
    d = F.conv2d(d, k.view(1, 1, -1, 1), padding=(r, 0)).view(B, 2, 28, 28) * alpha
    ys, xs = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    gx = (xs + d[:, 0]) / 13.5 - 1
    gy = (ys + d[:, 1]) / 13.5 - 1
    grid = torch.stack([gx, gy], -1)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=True) - 1


def train_net(net, xtr, ytr, epochs, lr, seed, aug, log, smoothing=0.0, bs=128):
    set_seeds(seed)
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=5e-4)
    steps = epochs * ((len(xtr) + bs - 1) // bs)
    sch = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.2)
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), bs):
            idx = perm[i:i + bs]
            xb = aug(xtr[idx], g)
            loss = F.cross_entropy(net(xb), ytr[idx], label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sch.step()
    net.eval()
    log(f"  trained {type(net).__name__} in {time.time() - t0:.0f} s")
    return net


def aug_cnn(x, g):
    x = random_affine(x, g, max_rot_deg=12.0, scale=(0.85, 1.15), max_shift_px=2.5)
    m = (torch.rand(len(x), generator=g) < 0.5).view(-1, 1, 1, 1)
    return torch.where(m, elastic(x, g), x)


def aug_mlp(x, g):
    return random_affine(x, g, max_rot_deg=8.0, scale=(0.9, 1.1), max_shift_px=1.5)


# ---------------------------------------------------------------------------------------
# the reader set
# ---------------------------------------------------------------------------------------
class Readers:
    def __init__(self, log=print, retrain=False):
        import pickle

        from sklearn.decomposition import PCA
        from sklearn.neighbors import KNeighborsClassifier
        from sklearn.svm import SVC

        torch.set_num_threads(2)
        os.makedirs(CACHE, exist_ok=True)
        xtr, ytr, xho, yho = load_digits()
        self.xtr, self.ytr, self.xho, self.yho = xtr, ytr, xho, yho
        path = os.path.join(CACHE, "sklearn.pkl")
        if os.path.exists(path) and not retrain:
            with open(path, "rb") as f:
                self.hog_svm, self.pca, self.pix_svm, self.knn, self.hog_pca = pickle.load(f)
        else:
            t0 = time.time()
            p = to01(xtr)
            h = hog(p)
            self.hog_svm = SVC(C=10, gamma="scale").fit(h, ytr.numpy())
            self.pca = PCA(50, random_state=0).fit(p.reshape(len(p), -1))
            self.pix_svm = SVC(C=10, gamma="scale").fit(self.pca.transform(p.reshape(len(p), -1)), ytr.numpy())
            self.knn = KNeighborsClassifier(3).fit(p.reshape(len(p), -1), ytr.numpy())
            self.hog_pca = PCA(64, random_state=0).fit(h)
            with open(path, "wb") as f:
                pickle.dump((self.hog_svm, self.pca, self.pix_svm, self.knn, self.hog_pca), f)
            log(f"  sklearn readers trained in {time.time() - t0:.0f} s")
        self.cnn = self._net(CnnBN(), "cnn-bn.pt", 14, 3e-3, 11, aug_cnn, 0.1, retrain, log)
        self.mlp = self._net(Mlp(), "mlp.pt", 20, 2e-3, 12, aug_mlp, 0.0, retrain, log)
        self._ref = None

    def _net(self, net, name, epochs, lr, seed, aug, smoothing, retrain, log):
        path = os.path.join(CACHE, name)
        if os.path.exists(path) and not retrain:
            net.load_state_dict(torch.load(path))
            net.eval()
            return net
        train_net(net, self.xtr, self.ytr, epochs, lr, seed, aug, log, smoothing)
        torch.save(net.state_dict(), path)
        return net

    @torch.no_grad()
    def predict(self, x):
        """x: torch N x 1 x 28 x 28 in model space. Returns {reader: numpy labels}."""
        x = x.clamp(-1, 1)
        p = to01(x)
        flat = p.reshape(len(p), -1)
        out = {
            "hog-svm": self.hog_svm.predict(hog(p)),
            "pix-svm": self.pix_svm.predict(self.pca.transform(flat)),
            "knn": self.knn.predict(flat),
            "mlp": torch.cat([self.mlp(x[i:i + 500]) for i in range(0, len(x), 500)]).argmax(1).numpy(),
            "cnn-bn": torch.cat([self.cnn(x[i:i + 500]) for i in range(0, len(x), 500)]).argmax(1).numpy(),
        }
        return out

    @torch.no_grad()
    def features(self, x):
        x = x.clamp(-1, 1)
        return torch.cat([self.cnn.features(x[i:i + 500]) for i in range(0, len(x), 500)]).double().numpy()

    def hog_features(self, x):
        return self.hog_pca.transform(hog(to01(x))).astype(np.float64)

    def reference(self):
        if self._ref is None:
            self._ref = (gaussian(self.features(self.xtr)), gaussian(self.hog_features(self.xtr)))
        return self._ref

    def fd(self, x):
        """(FD on cnn-bn features, FD on HOG-PCA features) of samples x to the training digits."""
        ref_cnn, ref_hog = self.reference()
        return frechet(gaussian(self.features(x)), ref_cnn), frechet(gaussian(self.hog_features(x)), ref_hog)


def gaussian(f):
    return f.mean(0), np.cov(f, rowvar=False)


def frechet(a, b):
    from scipy import linalg

    (m1, s1), (m2, s2) = a, b
    covmean = linalg.sqrtm(s1 @ s2)
    covmean = covmean.real
    return float(((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def load_pngs(folder):
    from PIL import Image

    files = sorted(f for f in os.listdir(folder) if f.endswith(".png") and not f.startswith("grid"))
    arrays = [np.asarray(Image.open(os.path.join(folder, f)).convert("L"), dtype=np.float32) for f in files]
    return torch.from_numpy(np.stack(arrays))[:, None] / 127.5 - 1.0


def balanced_heldout(readers, per_class, seed=0):
    rng = np.random.RandomState(seed)
    idx = np.concatenate([rng.choice(np.nonzero(readers.yho.numpy() == c)[0], per_class, replace=False)
                          for c in range(10)])
    return readers.xho[idx], readers.yho[idx]


def judge_targets(readers, out):
    xs, ys = [], []
    for d in range(10):
        f = os.path.join(out, str(d))
        if os.path.isdir(f):
            x = load_pngs(f)
            xs.append(x)
            ys.append(torch.full((len(x),), d))
    x, y = torch.cat(xs), torch.cat(ys).numpy()
    preds = readers.predict(x)
    acc = {k: float((v == y).mean()) for k, v in preds.items()}
    per_digit = {k: [float((v[y == d] == d).mean()) for d in range(10) if (y == d).any()] for k, v in preds.items()}
    fd_cnn, fd_hog = readers.fd(x)
    return {"samples": len(x), "acc": acc, "acc_mean": float(np.mean(list(acc.values()))),
            "acc_min": float(min(acc.values())), "per_digit": per_digit, "fd": fd_cnn, "fd_hog": fd_hog}


def judge_flat(readers, out, avoid=None):
    x = load_pngs(out)
    preds = readers.predict(x)
    hist = {k: np.bincount(v, minlength=10).tolist() for k, v in preds.items()}
    fd_cnn, fd_hog = readers.fd(x)
    r = {"samples": len(x), "histogram": hist, "fd": fd_cnn, "fd_hog": fd_hog}
    if avoid is not None:
        r["avoided_share"] = {k: float((v == avoid).mean()) for k, v in preds.items()}
        r["min_other_share"] = {k: float(min(np.bincount(v, minlength=10)[c] for c in range(10) if c != avoid)
                                         / len(v)) for k, v in preds.items()}
    return r


def fmt(r):
    if "acc" in r:
        return (f"{r['samples']} samples: " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in r["acc"].items())
                + f"  | mean {100 * r['acc_mean']:.1f}% min {100 * r['acc_min']:.1f}%  FD {r['fd']:.2f}  FD-hog {r['fd_hog']:.2f}")
    s = f"{r['samples']} samples: FD {r['fd']:.2f}  FD-hog {r['fd_hog']:.2f}\n"
    for k, h in r["histogram"].items():
        s += f"  {k:>8}: {h}"
        if "avoided_share" in r:
            s += f"  avoided {100 * r['avoided_share'][k]:.2f}%  min other {100 * r['min_other_share'][k]:.1f}%"
        s += "\n"
    return s.rstrip()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", action="store_true", help="(re)train the readers and print their held-out numbers")
    ap.add_argument("--judge", nargs="*", default=[], help="folders of PNGs to judge")
    ap.add_argument("--avoid", type=int, help="flat folders: also report the share read as this digit")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    readers = Readers(retrain=args.train)
    results = {}
    if args.train:
        preds = readers.predict(readers.xho)
        acc = {k: float((v == readers.yho.numpy()).mean()) for k, v in preds.items()}
        print("held-out real digits (500): " + "  ".join(f"{k} {100 * v:.1f}%" for k, v in acc.items()))
        results["heldout_acc"] = acc
        for n in (20, 30):
            fds = [readers.fd(balanced_heldout(readers, n, seed)[0]) for seed in range(5)]
            m = np.mean(fds, 0)
            print(f"real vs real ({10 * n} held-out digits vs the 4,500 training digits, 5 draws): "
                  f"FD {m[0]:.2f} (range {min(f[0] for f in fds):.2f}-{max(f[0] for f in fds):.2f}), "
                  f"FD-hog {m[1]:.2f}")
            results[f"fd_real_{10 * n}"] = m.tolist()
    for out in args.judge:
        sub = [d for d in range(10) if os.path.isdir(os.path.join(out, str(d)))]
        r = judge_targets(readers, out) if sub else judge_flat(readers, out, args.avoid)
        print(f"{out}: {fmt(r)}")
        results[out] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()

"""How far can a weight-free nucleus-vs-background decision go on MoNuSeg? (evidence for issue 3)

For each of the 13 MoNuSeg training tiles, pixel Dice of the foreground (any nucleus) of:

* ``default``: the default ``sst.pp.segment`` (watershed) result, rasterised;
* ``best_threshold``: the best single threshold of the hematoxylin top-hat *chosen with the
  truth* of that image (an oracle no real method has);
* ``pixel_clf_within``: a gradient-boosted pixel classifier on 26 multi-scale handcrafted features
  (optical densities, H/E at 4 scales, LoG, gradient, Hessian eigenvalues, top-hat, local std),
  trained on the *true* labels of the left half of the same image, scored on the right half;
* ``pixel_clf_loo``: the same classifier trained on the other 12 images (leave one image out).

If even the supervised classifiers stay near the default, handcrafted features are the limit and
a better foreground needs a learned deep model (weights), not more tuning.

Usage: python benchmarks/segmentation_ceiling.py [--shared ../shared] [--pixels 20000]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import cv2
import numpy as np
import tifffile
from sklearn.ensemble import HistGradientBoostingClassifier

import scellst as sst
from scellst.segmentation.stains import hematoxylin_eosin, optical_density
from scellst.segmentation.watershed import WatershedSegmenter

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATASET = Path("data") / "nuclei" / "monuseg_train"


def features(rgb: np.ndarray, mpp: float) -> np.ndarray:
    """(h, w, 26) handcrafted per-pixel features, scales in µm."""
    od = optical_density(rgb)
    h, e = hematoxylin_eosin(rgb)
    out = [cv2.GaussianBlur(od[..., c], (0, 0), 0.5 / mpp) for c in range(3)]
    for s in (0.5, 1, 2, 4):
        out += [cv2.GaussianBlur(h, (0, 0), s / mpp), cv2.GaussianBlur(e, (0, 0), s / mpp)]
    for s in (1, 2, 3):
        hs, px = cv2.GaussianBlur(h, (0, 0), s / mpp), s / mpp
        gx, gy = cv2.Sobel(hs, cv2.CV_32F, 1, 0), cv2.Sobel(hs, cv2.CV_32F, 0, 1)
        dxx, dyy = cv2.Sobel(hs, cv2.CV_32F, 2, 0), cv2.Sobel(hs, cv2.CV_32F, 0, 2)
        dxy = cv2.Sobel(hs, cv2.CV_32F, 1, 1)
        tr, disc = dxx + dyy, np.sqrt((dxx - dyy) ** 2 + 4 * dxy**2)
        out += [
            -tr * px**2,
            np.hypot(gx, gy) * px,
            (tr + disc) / 2 * px**2,
            (tr - disc) / 2 * px**2,
        ]
    out.append(WatershedSegmenter()._tophat(rgb, mpp))
    m, m2 = cv2.GaussianBlur(h, (0, 0), 2 / mpp), cv2.GaussianBlur(h * h, (0, 0), 2 / mpp)
    out.append(np.sqrt(np.maximum(m2 - m * m, 0)))
    out.append(cv2.GaussianBlur(h, (0, 0), 0.5 / mpp) - cv2.GaussianBlur(h, (0, 0), 10 / mpp))
    return np.stack(out, -1).astype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(a.sum() + b.sum(), 1))


def best_threshold_dice(score: np.ndarray, truth: np.ndarray) -> float:
    qs = np.quantile(score, np.linspace(0.5, 0.99, 50))
    return max(dice(score > q, truth) for q in qs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", type=Path, default=SHARED)
    p.add_argument("--pixels", type=int, default=20000, help="training pixels per image")
    args = p.parse_args()
    root = args.shared / DATASET
    if not (root / "manifest.csv").is_file():
        raise SystemExit(f"MoNuSeg not found at {root} (pass --shared)")
    rng = np.random.default_rng(0)
    data = []
    for row in csv.DictReader(open(root / "manifest.csv", newline="")):
        mpp = float(row["mpp_um_per_px"] or 0.25)
        rgb = np.ascontiguousarray(tifffile.imread(root / row["image"])[..., :3])
        truth = tifffile.imread(root / row["label"]) > 0
        sdata = sst.io.read_image(root / row["image"], microns_per_pixel=mpp)
        sst.pp.segment(sdata, progress=False)
        default = sst.pp.rasterize_cells(sdata) > 0
        data.append((Path(row["image"]).stem, rgb, mpp, truth, default, features(rgb, mpp)))

    def sample(x, y):
        idx = rng.choice(y.size, min(args.pixels, y.size), replace=False)
        return x.reshape(-1, x.shape[-1])[idx], y.ravel()[idx]

    print(f"{'image':<28} {'default':>8} {'best_thr':>8} {'clf_in':>8} {'clf_loo':>8}")
    rows = []
    for i, (name, _rgb, _mpp, truth, default, x) in enumerate(data):
        half = truth.shape[1] // 2
        clf = HistGradientBoostingClassifier(max_iter=200, random_state=0)
        clf.fit(*sample(x[:, :half], truth[:, :half]))
        right = clf.predict(x[:, half:].reshape(-1, x.shape[-1])).reshape(truth[:, half:].shape)
        train = [sample(d[5], d[3]) for j, d in enumerate(data) if j != i]
        clf = HistGradientBoostingClassifier(max_iter=200, random_state=0)
        clf.fit(np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train]))
        loo = clf.predict(x.reshape(-1, x.shape[-1])).reshape(truth.shape)
        r = (
            dice(default, truth),
            best_threshold_dice(x[..., -3], truth),
            dice(right.astype(bool), truth[:, half:]),
            dice(loo.astype(bool), truth),
        )
        rows.append(r)
        print(f"{name:<28} " + " ".join(f"{v:8.3f}" for v in r), flush=True)
    print(f"{'mean':<28} " + " ".join(f"{v:8.3f}" for v in np.mean(rows, 0)))


if __name__ == "__main__":
    main()

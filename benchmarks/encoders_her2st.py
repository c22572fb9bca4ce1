"""Cells per second of every encoder on a whole her2st section, and self-supervised training time.

The section (default C2: 9274 x 9911 px at 0.688 µm/px, ~31k watershed nuclei) is read lazily
and segmented once. Then, each timed separately (wall, CPU of all threads, peak RSS):

- ``train``: ``sst.tl.train_encoder`` with its defaults (MoCo v3, small ResNet, 48-px inputs)
  on ``--cells`` cells of the section for ``--epochs`` epochs;
- ``embed`` of every nucleus with ``morphology`` (handcrafted), the trained SSL encoder, and
  torchvision ``resnet18`` / ``resnet50`` loaded through the pretrained-model path from a
  local weights file (random weights written by this script: no download is possible here, and
  the speed does not depend on the values).

Embedding times include reading and decoding the slide and cutting the crops.

Usage: python benchmarks/encoders_her2st.py [--sample C2] [--shared ../shared]
       [--cells 6000] [--epochs 5] [--encoders morphology ssl resnet18 resnet50]
       [--device cpu] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sample", default="C2")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--cells", type=int, default=6000, help="cells drawn for SSL training")
    p.add_argument("--epochs", type=int, default=5, help="SSL training epochs")
    p.add_argument("--encoders", nargs="+", default=["morphology", "ssl", "resnet18", "resnet50"])
    p.add_argument("--device", default="auto", help="torch device of the CNN encoders")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    import torch
    import torchvision

    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"CUDA: {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}; "
        f"load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    r: dict = {}
    sdata = sst.io.read_hest(root, args.sample)
    with measure(r, "segment"):
        sst.pp.segment(sdata, progress=False)
    n = sdata["sst_cells_table"].n_obs
    print(f"{args.sample}: {n} nuclei", flush=True)
    tmp = Path(tempfile.mkdtemp())
    out: dict = {"sample": args.sample, "n_cells": n, "load_start": os.getloadavg()[0]}
    ssl = None
    if "ssl" in args.encoders:
        with measure(r, "train"):
            ssl = sst.tl.train_encoder(
                sdata, max_cells=args.cells, epochs=args.epochs, device=args.device,
                progress=False,
            )  # fmt: skip
        c = ssl.config
        views = 2 * c["n_cells"] * c["epochs"]
        print(
            f"RESULT train_encoder: {c['n_cells']} cells x {c['epochs']} epochs "
            f"({c['steps']} steps of {c['batch_size']}) in {r['train']['seconds']:.1f} s wall, "
            f"{r['train']['cpu_seconds']:.1f} s CPU: {views / r['train']['seconds']:.0f} "
            f"augmented views/s; final loss {ssl.history['loss'][-1]:.3f}",
            flush=True,
        )
        out["train"] = {**r["train"], "n_cells": c["n_cells"], "epochs": c["epochs"]}
    for name in args.encoders:
        if name == "ssl":
            encoder = ssl
        elif name == "morphology":
            encoder = "morphology"
        else:  # a torchvision CNN through the pretrained (local weights) path
            torch.manual_seed(0)
            weights = tmp / f"{name}.pth"
            torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
            encoder = sst.tl.pretrained_encoder(name, weights=weights, device=args.device)
        with measure(r, name):
            sst.tl.embed(sdata, encoder=encoder, key_added=f"emb_{name}", progress=False)
        dim = sdata[f"emb_{name}"].obsm["X_sst"].shape[1]
        s = r[name]["seconds"]
        print(
            f"RESULT embed {name}: {n} cells x {dim} features in {s:.1f} s wall "
            f"({n / s:,.0f} cells/s), {r[name]['cpu_seconds']:.1f} s CPU, "
            f"peak RSS {r[name]['peak_rss_gb']:.2f} GB; load average {os.getloadavg()[0]:.2f}",
            flush=True,
        )
        out[name] = {**r[name], "cells_per_s": n / s, "dim": dim}
    out["load_end"] = os.getloadavg()[0]
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"total {time.perf_counter() - t0:.0f} s")

"""The bundled ImageNet EfficientNet-Lite0 (``encoder="efficientnet_lite0"``) on her2st patient C.

Same protocol as ``context_her2st.py`` (leave-one-section-out on C2-C5, ``sst.tl.fit``
defaults, 50 HVGs, per-section Pearson mean over genes, the spot-mean ridge on the same
features in the same run). To fit in the shared 2-core machine, only the cells inside the
kept spots (the only ones training and scoring use; without context a cell's features do
not depend on the others) are embedded with the CNN; the other rows stay zero. Views
(``--views``, ``UM:PX``): the crop side in µm fed to the network and its size in pixels, e.g.
``12:48`` (the paper's 12 µm nucleus crop at 0.25 µm/px) and ``40:64`` (a 40 µm view of the
cell's surroundings at 0.625 µm/px, near the slides' 0.69 µm/px). Embedding speed is printed
in cells/s with the load average.

Usage: python benchmarks/lite0_her2st.py [--shared ../shared] [--cache /tmp/sst_feat/cache]
       [--views 12:48 40:64] [--torch-threads 2] [--held-out C2 C5] [--json out.json]
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from context_her2st import SECTIONS, her2st_parser, her2st_sections, own_features, run_setting
from mil_her2st import BAG_KW

import scellst as sst
from scellst._sdata import image_level0
from scellst.constants import UNS_KEY
from scellst.embedding.crops import iter_crops
from scellst.io._scale import microns_per_pixel
from scellst.mil.spots import slide_bags


def embed_spot_cells(sdata, encoder) -> tuple[np.ndarray, int, float]:
    """CNN features of the cells in kept spots (zeros elsewhere), their count, seconds."""
    info = sdata["sst_embedding"].uns[UNS_KEY]["embedding"]
    _, _, xy_um = own_features(sdata)
    mpp = microns_per_pixel(sdata, info["image_key"])
    rows = np.sort(slide_bags(sdata, **BAG_KW).cell_index)
    out = np.zeros((len(xy_um), encoder.dim), np.float32)
    t = time.perf_counter()
    for batch in iter_crops(
        image_level0(sdata, info["image_key"]), mpp, xy_um[rows] / mpp,
        crop_size_um=encoder.crop_size_um, crop_mpp=encoder.crop_mpp, masks=False,
        channel_stats=info["channel_stats"], progress=False,
    ):  # fmt: skip
        out[rows[batch.index]] = encoder.encode(batch)
    return out, len(rows), time.perf_counter() - t


def main() -> None:
    p = her2st_parser()
    p.add_argument("--views", nargs="+", default=["12:48", "40:64"])
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--held-out", nargs="+", default=SECTIONS, help="folds to run")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.torch_threads)
    slides = her2st_sections(args)
    rows: list[dict] = []
    for view in args.views:
        um, px = (float(v) for v in view.split(":"))
        enc = sst.tl.bundled_encoder(
            "efficientnet_lite0", input_size_um=um, crop_size_um=um, input_px=int(px),
            crop_mpp=um / px, batch_size=128,
        )  # fmt: skip
        raw = {}
        for n in SECTIONS:
            load = os.getloadavg()[0]
            feats, n_cells, sec = embed_spot_cells(slides[n], enc)
            print(
                f"lite0 {view}: {n} {n_cells} cells in {sec:.0f} s = {n_cells / sec:.0f} cells/s "
                f"(load {load:.1f} -> {os.getloadavg()[0]:.1f})",
                flush=True,
            )
            _, _, xy = own_features(slides[n])
            raw[n] = (feats, enc.feature_names(), xy)
        run_setting(slides, raw, [], [], 50, rows, label=f"lite0 {view}", held_out=args.held_out)
        if args.json:
            pd.DataFrame(rows).to_json(args.json, orient="records", indent=1)
    print(pd.DataFrame(rows).groupby("context")[["mil_pearson", "ridge_pearson"]].mean().round(3))
    print(f"load average at the end {os.getloadavg()}")


if __name__ == "__main__":
    main()

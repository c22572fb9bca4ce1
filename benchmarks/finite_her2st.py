"""Finite, in-range predictions and flagged debris on the five whole her2st sections.

A model trained with the ``sst.tl.fit`` defaults on C2-C5 (50 HVGs; or ``--model DIR``, saved
with ``--save DIR``) predicts every cell of each of C2, C3, C4, C5 and B4. Per section it prints
the number of cells, those off the whole-slide tissue mask (``on_tissue`` of
``scellst.segmentation.tissue``, computed here on the cached segmentation of
``benchmarks/her2st_protocol.py``), those out of the training distribution
(``out_of_distribution`` of ``sst.tl.predict``), the largest predicted value (bound:
log1p(10,000) = 9.21) and whether every value is finite. A check independent of the mask:
"isolated" cells, whose 5th nearest other cell is more than ``--isolated-um`` (300 µm) away
(the dust specks of C3 lie up to 2 mm off the tissue), and how many of them the mask flags.

Usage: python benchmarks/finite_her2st.py [--shared ../shared] [--cache /tmp/sst_her2st_cache]
       [--model DIR | --save DIR] [--embed-kwargs '{}'] [--isolated-um 300]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

sys.path.insert(0, str(Path(__file__).parent))
from her2st_protocol import prepare

import scellst as sst
from scellst.constants import ON_TISSUE_COLUMN, OOD_COLUMN
from scellst.io._scale import microns_per_pixel
from scellst.mil.model import MAX_LOG_NORMALIZED
from scellst.segmentation.tissue import slide_tissue_mask

SECTIONS = ["C2", "C3", "C4", "C5", "B4"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--cache", type=Path, default=Path("/tmp/sst_her2st_cache"))
    p.add_argument("--model", type=Path, default=None, help="a saved MILModel to use")
    p.add_argument("--save", type=Path, default=None, help="save the trained model here")
    p.add_argument("--embed-kwargs", default="{}", help="JSON passed to sst.tl.embed")
    p.add_argument("--isolated-um", type=float, default=300.0)
    args = p.parse_args()
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"load average {os.getloadavg()}", flush=True)
    slides = {n: prepare(root, n, json.loads(args.embed_kwargs), args.cache)[0] for n in SECTIONS}
    if args.model is not None:
        model = sst.tl.MILModel.load(args.model)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        model = sst.tl.fit([slides[n] for n in SECTIONS[:4]], genes="hvg:50", progress=False)
        print(f"fit on C2-C5: {time.perf_counter() - t0:.0f} s wall, "
              f"{time.process_time() - c0:.0f} s CPU", flush=True)  # fmt: skip
        if args.save is not None:
            model.save(args.save, overwrite=True)
    print(f"ceiling per gene: {min(model.ceiling):.2f}..{max(model.ceiling):.2f}; OOD threshold "
          f"{model.config['ood']['threshold']:.2f}")  # fmt: skip
    ok = True
    for name, sdata in slides.items():
        cells = sdata["sst_cells_table"]
        mpp = microns_per_pixel(sdata, "he")
        xy = np.asarray(cells.obsm["spatial"])
        if ON_TISSUE_COLUMN not in cells.obs:  # segmented before the mask existed
            cells.obs[ON_TISSUE_COLUMN] = slide_tissue_mask(sdata, "he", mpp).contains(xy)
        sst.tl.predict(sdata, model, overwrite=True)
        table = sdata["sst_expression"]
        X = np.asarray(table.X)
        finite = bool(np.isfinite(X).all() and np.isfinite(table.layers["spread"]).all())
        top = float(X.max())
        off = ~table.obs[ON_TISSUE_COLUMN].to_numpy()
        ood = table.obs[OOD_COLUMN].to_numpy()
        d5 = cKDTree(xy).query(xy, k=6)[0][:, 5] * mpp
        isolated = d5 > args.isolated_um
        ok &= finite and top <= MAX_LOG_NORMALIZED and bool(off[isolated].all())
        far = ""
        if off.any():
            tree = cKDTree(xy[~off])
            far = f", farthest off-tissue cell {tree.query(xy[off])[0].max() * mpp:.0f} µm away"
        print(
            f"{name}: {len(X)} cells, {int(off.sum())} off tissue{far}, {int(ood.sum())} OOD "
            f"({int((ood & off).sum())} of them off tissue), isolated {int(isolated.sum())} "
            f"(flagged off tissue: {int(off[isolated].sum())}), max predicted {top:.3f}, "
            f"all finite: {finite}",
            flush=True,
        )
    print(f"all sections finite, <= log1p(1e4) and isolated cells flagged: {ok}; load "
          f"{os.getloadavg()}")  # fmt: skip


if __name__ == "__main__":
    main()

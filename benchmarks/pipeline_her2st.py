"""Wall time and peak memory of each stage on a whole her2st section (real H&E + legacy ST).

Usage: python benchmarks/pipeline_her2st.py [--sample C2] [--shared ../shared] [--out /tmp/x.zarr]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sample", default="C2")
    p.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared")
    p.add_argument("--genes", default="hvg:50")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--n-jobs", type=int, default=None, help="segmentation worker threads")
    p.add_argument("--segment-only", action="store_true", help="stop after segmentation")
    args = p.parse_args()
    root = args.shared / "data" / "her2st"
    if not root.is_dir():
        sys.exit(f"her2st data not found at {root}; pass --shared")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; sample {args.sample}"
    )
    r: dict = {}
    with measure(r, "read_hest"):
        sdata = sst.io.read_hest(root, args.sample)
    h, w = sdata["he"]["scale0"]["image"].shape[1:]
    with measure(r, "segment"):
        sst.pp.segment(sdata, progress=False, n_jobs=args.n_jobs)
    n = sdata["sst_cells_table"].n_obs
    if args.segment_only:
        s = r["segment"]["seconds"]
        print(f"{n} nuclei; {w * h / 1e6 / s:.1f} Mpx/s, {n / s:.0f} cells/s (wall)")
        return
    with measure(r, "assign_cells"):
        sst.pp.assign_cells(sdata)
    with measure(r, "embed"):
        sst.tl.embed(sdata, progress=False)
    with measure(r, "fit"):
        model = sst.tl.fit(sdata, genes=args.genes, progress=False)
    with measure(r, "predict"):
        sst.tl.predict(sdata, model)
    out = args.out or Path(tempfile.mkdtemp()) / f"{args.sample}.zarr"
    with measure(r, "write_zarr"):
        sst.io.write_zarr(sdata, out, overwrite=True)
    total = sum(v["seconds"] for v in r.values())
    spots = sdata["sst_cells_table"].obs["spot"]
    print(
        f"image {w}x{h} px ({w * h / 1e6:.0f} Mpx); {n} nuclei ({n / r['segment']['seconds']:.0f} cells/s "
        f"segmentation, {w * h / 1e6 / r['segment']['seconds']:.1f} Mpx/s); "
        f"{int((spots >= 0).sum())} cells in {spots[spots >= 0].nunique()} spots "
        f"(median {np.median(spots[spots >= 0].value_counts()):.0f}/spot); "
        f"fit {model.config['epochs_run']} epochs; total {total:.0f} s"
    )


if __name__ == "__main__":
    main()

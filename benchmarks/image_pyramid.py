"""Coarse views of a whole her2st section freshly read with ``read_hest``: the cost of the pyramid.

Times, on section C2 (9274 × 9911 px, pyramidal JPEG TIFF with a stored 4× level):

1. ``sst.pl.cells(sdata, image=True, save=...)`` of the whole section (the background comes
   from the coarsest level that fits 2000 px), twice, and once without the image for reference;
2. ``slide_channel_stats`` of the slide's levels with the nucleus centroids (as ``sst.tl.embed``
   calls it), twice, and once with a 6 Mpx budget (the stored 4× level is 5.7 Mpx);
3. ``sst.io.write_zarr`` of the image alone (every level is written).

The section is segmented once (``sst.pp.segment``, default watershed) to have cells to plot.

Usage: python benchmarks/image_pyramid.py [--shared ../shared] [--sample C2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
from spatialdata import SpatialData

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst
from scellst._sdata import image_levels
from scellst.embedding.crops import slide_channel_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shared", type=Path, default=Path(__file__).parents[2] / "shared")
    parser.add_argument("--sample", default="C2")
    args = parser.parse_args()
    print(f"scellst from {sst.__file__}", flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict = {}
    out = Path(tempfile.mkdtemp(prefix="image_pyramid_"))

    with measure(results, "read_hest"):
        sdata = sst.io.read_hest(args.shared / "data" / "her2st", args.sample)
    levels = image_levels(sdata, "he")
    print(f"{'':>14}  levels {[tuple(lv.shape[1:]) for lv in levels]}", flush=True)
    with measure(results, "segment"):
        sst.pp.segment(sdata, progress=False)

    for run in ("first call", "again"):
        plt.close("all")
        with measure(results, f"pl.cells image, {run}"):
            sst.pl.cells(sdata, image=True, show=False, save=out / "cells.png")
    plt.close("all")
    with measure(results, "pl.cells no image"):
        sst.pl.cells(sdata, image=False, show=False, save=out / "cells_no_image.png")
    plt.close("all")

    centroids = np.asarray(sdata["sst_cells_table"].obsm["spatial"])
    for run in ("first call", "again"):
        with measure(results, f"channel stats, {run}"):
            stats = slide_channel_stats(levels[0], points_xy=centroids)
        print(f"{'':>14}  {stats['source']}, mean {np.round(stats['mean'], 4)}", flush=True)
    with measure(results, "channel stats, 6 Mpx"):
        stats = slide_channel_stats(levels[0], points_xy=centroids, max_pixels=6_000_000)
    print(f"{'':>14}  {stats['source']}, mean {np.round(stats['mean'], 4)}", flush=True)

    with measure(results, "write_zarr image"):
        sst.io.write_zarr(SpatialData(images={"he": sdata.images["he"]}), out / "he.zarr")
    print(f"load average after: {os.getloadavg()}; figures in {out}", flush=True)


if __name__ == "__main__":
    main()

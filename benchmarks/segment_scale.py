"""Throughput and peak memory of sst.pp.segment on a large lazy (dask) image.

The image is a synthetic H&E patch tiled into a dask array of the requested size (nothing of
that size is ever held in memory), segmented with the default watershed (``--method learned``: the shipped nucleus network).

Usage: python benchmarks/segment_scale.py [--size 40960] [--patch 4096] [--tile-size 2048]
       [--method watershed]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import dask.array as da
import numpy as np
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst
from scellst.constants import MICRONS_CS
from scellst.io._scale import microns_scale


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=40960)
    p.add_argument("--patch", type=int, default=4096)
    p.add_argument("--tile-size", type=int, default=2048)
    p.add_argument("--method", default="watershed", help="sst.pp.segment's method")
    args = p.parse_args()
    patch = np.asarray(sst.datasets.synthetic(shape=(args.patch, args.patch), seed=0)["he"].data)
    reps = int(np.ceil(args.size / args.patch))
    lazy = da.tile(da.from_array(patch, chunks=(3, 512, 512)), (1, reps, reps))[
        :, : args.size, : args.size
    ]
    image = Image2DModel.parse(
        lazy,
        dims=("c", "y", "x"),
        transformations={"global": Identity(), MICRONS_CS: microns_scale(0.5)},
    )
    sdata = sd.SpatialData(images={"he": image})
    mpx = args.size**2 / 1e6
    print(
        f"{args.size}x{args.size} lazy image ({mpx:.0f} Mpx, {3 * mpx / 1e3:.1f} GB if loaded), {os.cpu_count()} cores"
    )
    r: dict = {}
    t0 = time.perf_counter()
    with measure(r, "segment"):
        sst.pp.segment(sdata, method=args.method, tile_size=args.tile_size, progress=False)
    n = len(sdata["sst_cells"])
    dt = time.perf_counter() - t0
    print(
        f"{n} nuclei; {mpx / dt:.1f} Mpx/s, {n / dt:.0f} cells/s; peak RSS {r['segment']['peak_rss_gb']:.2f} GB"
    )


if __name__ == "__main__":
    main()

"""Time ``sst.pl.cells`` on large views, from the call to a written PNG (150 dpi).

Each view is plotted twice (the first call also reads the image and imports on first use).

1. A whole her2st section (C2, ~31k nuclei after the default watershed segmentation, coloured
   by nucleus area): polygons, with and without the H&E background (read from the TIFF's
   stored 4x level since ``read_hest`` uses the file's pyramid; see ``image_pyramid.py``).
2. A synthetic slide of ``--n-cells`` square nuclei (8 µm sides, jittered grid, 0.5 µm/px,
   plain background image) coloured by a random value: the default (discs beyond 50,000 cells)
   and, for comparison, polygons forced with ``max_polygons``.

Usage: python benchmarks/plot_cells.py [--n-cells 150000] [--shared ../shared] [--skip-her2st]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import geopandas as gpd
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shapely
from matplotlib.collections import EllipseCollection
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

sys.path.insert(0, str(Path(__file__).parent))
from _measure import measure

import scellst as sst


def synthetic_cells(n: int, mpp: float = 0.5, side_um: float = 8.0) -> SpatialData:
    """``n`` square nuclei on a jittered 15 µm grid, over a uniform pink image (stored 4x
    coarser than the cells' pixels: it is only a background)."""
    rng = np.random.default_rng(0)
    per_row = int(np.ceil(np.sqrt(n)))
    pitch = 15.0 / mpp
    grid = np.stack(np.divmod(np.arange(n), per_row), 1)[:, ::-1] * pitch + pitch
    centres = grid + rng.uniform(-2, 2, (n, 2))
    half = side_um / mpp / 2
    squares = shapely.box(*(centres - half).T, *(centres + half).T)
    coarse = 4
    size = int((per_row + 2) * pitch) // coarse
    rgb = np.empty((3, size, size), np.uint8)
    rgb[:] = np.array([230, 190, 220], np.uint8)[:, None, None]
    image = Image2DModel.parse(
        rgb, dims=("c", "y", "x"), transformations={"global": Scale([coarse, coarse], ("x", "y"))}
    )
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=squares), transformations={"global": Identity()}
    )
    obs = pd.DataFrame(
        {"cell_id": np.arange(n), "region": pd.Categorical(["sst_cells"] * n)},
        index=[str(i) for i in range(n)],
    )
    obs["score"] = rng.normal(size=n)
    table = TableModel.parse(
        ad.AnnData(obs=obs, obsm={"spatial": centres}),
        region="sst_cells",
        region_key="region",
        instance_key="cell_id",
    )
    sdata = SpatialData(
        images={"he": image}, shapes={"sst_cells": shapes}, tables={"sst_cells_table": table}
    )
    sst.io.set_microns_per_pixel(sdata, "sst_cells", mpp)
    sst.io.set_microns_per_pixel(sdata, "he", mpp * coarse)
    return sdata


def timed(results: dict, name: str, sdata: SpatialData, out: Path, **kwargs) -> None:
    """Two calls: the first also pays for reading the image and first-use imports."""
    for run in ("first call", "again"):
        plt.close("all")
        with measure(results, f"{name}, {run}"):
            ax = sst.pl.cells(sdata, show=False, save=out / f"{name}.png", **kwargs)
    coll = ax.collections[0]
    n = len(coll.get_offsets()) if isinstance(coll, EllipseCollection) else len(coll.get_paths())
    size = (out / f"{name}.png").stat().st_size / 1e6
    print(f"{'':>14}  {type(coll).__name__}, {n} cells, {size:.1f} MB PNG", flush=True)
    plt.close("all")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n-cells", type=int, default=150_000)
    parser.add_argument("--shared", type=Path, default=Path(__file__).parents[2] / "shared")
    parser.add_argument("--skip-her2st", action="store_true")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()}", flush=True)
    results: dict = {}
    out = Path(tempfile.mkdtemp(prefix="plot_cells_"))
    if not args.skip_her2st:
        sdata = sst.io.read_hest(args.shared / "data" / "her2st", "C2")
        sst.pp.segment(sdata, progress=False)
        timed(results, "her2st C2", sdata, out, color="area_um2")
        timed(results, "her2st C2 no image", sdata, out, color="area_um2", image=False)
    sdata = synthetic_cells(args.n_cells)
    timed(results, "discs", sdata, out, color="score")
    timed(results, "polygons", sdata, out, color="score", max_polygons=10**9)
    print(f"load average after: {os.getloadavg()}; figures in {out}", flush=True)


if __name__ == "__main__":
    main()

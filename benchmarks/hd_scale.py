"""Time and memory of ``sst.tl.fit`` on a whole-slide-sized Visium HD problem (synthetic).

No image is rendered (an 11,000² H&E and its segmentation would take far longer than the fit
itself, and fit never reads pixels): the cells, their embedding and the bins are built directly.

- ``--bins`` 8 µm square bins on a square grid (500,000: a 5.7 x 5.7 mm capture area);
- cells on a jittered lattice of ``--cell-spacing-um`` (11 µm) over the whole area, each an
  elliptic nucleus polygon (radii 2.5-5 µm, 16 vertices) of one of 4 types;
- an embedding of ``--dim`` features per cell (type signal + noise);
- counts: each cell's expected expression (a type profile of ``--genes`` genes, 200 counts per
  cell) spread over the bins by the fraction of the cell (nucleus dilated by 3 µm) in each bin
  (``scellst.mil.bins.overlap_matrix``), Poisson draws.

Then ``sst.tl.fit`` with each ``--poolings`` (``centroid``; ``overlap`` with
``cell_dilation_um=3``) for ``--epochs`` epochs of ``--batch-size`` bins per batch (1024, as
in ``hd_synthetic.py``; patience disabled, so every epoch runs), timed
with wall time, CPU time and peak RSS of the process (``benchmarks/_measure.py``). The bags
(assignment or overlap weights) are built inside ``fit`` and timed with it; ``slide_bags`` is
also timed alone.

Usage: python benchmarks/hd_scale.py [--bins 500000] [--dim 30] [--epochs 3] [--batch-size 1024]
       [--poolings centroid overlap] [--torch-threads 2]
"""

from __future__ import annotations

import argparse
import os
import time

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
import psutil
import scipy.sparse as sp
import shapely
import torch
from _measure import measure
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

import scellst as sst
from scellst.mil.bins import BinGrid, overlap_matrix
from scellst.mil.spots import slide_bags

MPP = 0.5  # µm per pixel of the (virtual) image


def build(n_bins: int, dim: int, n_genes: int, spacing_um: float, seed: int) -> SpatialData:
    rng = np.random.default_rng(seed)
    side = int(np.ceil(np.sqrt(n_bins)))
    bin_px = 8.0 / MPP
    grid = BinGrid(origin=(0.0, 0.0), size=bin_px)
    rows, cols = np.divmod(np.arange(side * side), side)
    rc = np.column_stack([rows, cols])[:n_bins]
    extent = side * bin_px
    # cells: jittered lattice, elliptic nuclei
    step = spacing_um / MPP
    g = np.arange(step / 2, extent - step / 2, step)
    xy = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2) + rng.normal(0, step * 0.15, (g.size**2, 2))
    xy = xy[grid.bin_of(xy)[:, 0] * side + grid.bin_of(xy)[:, 1] < n_bins]
    n = len(xy)
    cell_type = rng.integers(0, 4, n)
    a = rng.uniform(2.5, 5.0, n) / MPP
    b = a * rng.uniform(0.5, 1.0, n)
    t = np.linspace(0, 2 * np.pi, 16, endpoint=False)
    angle = rng.uniform(0, np.pi, n)[:, None]
    ex, ey = a[:, None] * np.cos(t), b[:, None] * np.sin(t)
    ring = np.stack(
        [
            xy[:, :1] + ex * np.cos(angle) - ey * np.sin(angle),
            xy[:, 1:] + ex * np.sin(angle) + ey * np.cos(angle),
        ],
        -1,
    )
    nuclei = shapely.polygons(ring)
    # embedding: type signal + noise
    centres = rng.normal(0, 1, (4, dim)).astype(np.float32)
    features = centres[cell_type] + rng.normal(0, 1, (n, dim)).astype(np.float32)
    # expression: type profiles, markers 30x higher in their type; counts through the overlaps
    profile = rng.lognormal(0, 0.8, (4, n_genes))
    for k in range(4):
        profile[k, k * 5 : (k + 1) * 5] *= 30
    profile *= 200 / profile.sum(1, keepdims=True)
    w = overlap_matrix(nuclei, grid, rc, dilation=3.0 / MPP)
    mu = np.asarray(w.T @ profile[cell_type])
    counts = sp.csr_matrix(rng.poisson(mu).astype(np.int32))

    frame = {"global": Identity(), "microns": Scale([MPP, MPP], axes=("x", "y"))}
    ids = np.arange(1, n + 1)
    sdata = SpatialData(
        shapes={
            "sst_cells": ShapesModel.parse(
                gpd.GeoDataFrame(geometry=nuclei, index=pd.Index(ids)), transformations=frame
            ),
            "bins": ShapesModel.parse(
                gpd.GeoDataFrame(geometry=grid.squares(rc), index=pd.RangeIndex(n_bins)),
                transformations=dict(frame),
            ),
        }
    )
    obs = pd.DataFrame(
        {"cell_id": ids, "region": pd.Categorical(["sst_cells"] * n)}, index=ids.astype(str)
    )
    sdata["sst_cells_table"] = TableModel.parse(
        ad.AnnData(obs=obs, obsm={"spatial": xy}),
        region="sst_cells", region_key="region", instance_key="cell_id",
    )  # fmt: skip
    emb = ad.AnnData(obs=obs.copy(), obsm={"X_sst": features, "spatial": xy})
    emb.uns["scellst"] = {"embedding": {"cells_key": "sst_cells", "encoder": "synthetic"}}
    sdata["sst_embedding"] = TableModel.parse(
        emb, region="sst_cells", region_key="region", instance_key="cell_id"
    )
    table = ad.AnnData(
        X=counts,
        obs=pd.DataFrame(
            {
                "spot_id": np.arange(n_bins),
                "region": pd.Categorical(["bins"] * n_bins),
                "array_row": rc[:, 0],
                "array_col": rc[:, 1],
            },
            index=[f"b{i}" for i in range(n_bins)],
        ),
        var=pd.DataFrame(index=[f"G{i:03d}" for i in range(n_genes)]),
    )
    table.uns["scellst"] = {"spot_shape": "square", "spot_size_um": 8.0, "bin_grid": grid.to_dict()}
    sdata["bins_table"] = TableModel.parse(
        table, region="bins", region_key="region", instance_key="spot_id"
    )
    return sdata


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--bins", type=int, default=500_000)
    p.add_argument("--dim", type=int, default=30)
    p.add_argument("--genes", type=int, default=50)
    p.add_argument("--cell-spacing-um", type=float, default=11.0)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=1024, help="bins per batch")
    p.add_argument("--poolings", nargs="+", default=["centroid", "overlap"])
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(args.torch_threads)
    print(f"load average {os.getloadavg()}, torch threads {torch.get_num_threads()}", flush=True)
    results: dict = {}
    with measure(results, "build"):
        sdata = build(args.bins, args.dim, args.genes, args.cell_spacing_um, args.seed)
    n_cells = sdata["sst_cells_table"].n_obs
    print(f"{args.bins} bins of 8 µm, {n_cells} cells, {args.dim} features", flush=True)
    genes = list(sdata["bins_table"].var_names)
    for pooling in args.poolings:
        kw = {"pooling": pooling, "cell_dilation_um": 3.0 if pooling == "overlap" else 0.0}
        rss = psutil.Process().memory_info().rss / 1e9
        with measure(results, f"bags {pooling}"):
            bags = slide_bags(
                sdata, cells_key="sst_cells", embedding_key="sst_embedding", spots_key=None,
                min_counts=20, **kw,
            )  # fmt: skip
        print(
            f"  {pooling}: {bags.spots.n_obs} bins kept, {len(bags.bag)} (cell, bin) pairs, "
            f"{len(bags.features)} cells; RSS before {rss:.2f} GB",
            flush=True,
        )
        del bags
        t = time.perf_counter()
        with measure(results, f"fit {pooling}"):
            model = sst.tl.fit(
                sdata, genes=genes, max_epochs=args.epochs, patience=args.epochs + 1,
                progress=False, device="cpu", batch_size=args.batch_size, **kw,
            )  # fmt: skip
        seconds = time.perf_counter() - t
        print(
            f"  {pooling}: {model.config['epochs_run']} epochs, {model.config['n_train_spots']} "
            f"training bins, {seconds:.0f} s; load average {os.getloadavg()}",
            flush=True,
        )
    print(f"load average {os.getloadavg()}")


if __name__ == "__main__":
    main()

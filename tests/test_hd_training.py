"""Training on Visium HD square bins: assignment by centroid in the square, overlap-aware pooling
(weighted (cell, bin) pairs), coarsened bins, and the steps after fit (predict, evaluate,
pl.spots) on a small synthetic HD slide."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
import torch
from matplotlib.collections import EllipseCollection, PolyCollection
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity, Scale

import scellst as sst
from scellst.constants import (
    ARRAY_COL,
    ARRAY_ROW,
    BIN_GRID_KEY,
    EMBEDDING_OBSM,
    NO_SPOT,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_SHAPE_KEY,
    SPOT_SIZE_KEY,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    UNS_KEY,
)
from scellst.mil.bins import BinGrid, coarsen_bins
from scellst.mil.pooling import aggregate
from scellst.mil.spots import slide_bags

FIT = dict(max_epochs=15, patience=5, progress=False, seed=0)


@pytest.fixture(scope="module")
def hd():
    """A 512² synthetic slide with 8 µm bins on a grid turned by 3°, segmented and embedded."""
    sdata = sst.datasets.synthetic(shape=(512, 512), seed=3, bins_um=8, bins_angle_deg=3.0)
    sst.pp.segment(sdata, progress=False)
    sst.tl.embed(sdata, progress=False)
    return sdata


def _bags(sdata, **kw):
    return slide_bags(
        sdata, cells_key="sst_cells", embedding_key="sst_embedding", spots_key=None,
        min_counts=kw.pop("min_counts", 1), **kw,
    )  # fmt: skip


def test_assign_cells_on_squares(hd):
    sst.pp.assign_cells(hd, overwrite=True)  # the squares are found without spots_key
    cells = hd["sst_cells_table"]
    spot = cells.obs[SPOT_COLUMN].to_numpy()
    assert cells.uns[UNS_KEY]["assignment"]["spots_key"] == SPOTS_KEY
    # independent check: the square polygon (shapely) that contains each centroid
    squares = hd[SPOTS_KEY]
    points = shapely.points(np.asarray(cells.obsm[SPATIAL_OBSM]))
    tree = shapely.STRtree(squares.geometry.values)
    cell_i, square_i = tree.query(points, predicate="within")
    expected = np.full(len(points), NO_SPOT)
    expected[cell_i] = squares.index.to_numpy()[square_i]
    np.testing.assert_array_equal(spot, expected)
    assert 0.9 < (spot != NO_SPOT).mean() <= 1.0
    # bins in another frame than the cells: a scale of 2 on the squares (and their grid)
    moved = SpatialData(shapes={"sst_cells": hd["sst_cells"]}, tables={})
    half = shapely.transform(squares.geometry.values, lambda xy: xy / 2)
    moved["bins"] = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=half, index=squares.index),
        transformations={"global": Scale([2.0, 2.0], axes=("x", "y"))},
    )
    table = hd[SPOTS_TABLE_KEY].copy()
    grid = BinGrid.from_dict(table.uns[UNS_KEY][BIN_GRID_KEY])
    table.uns[UNS_KEY][BIN_GRID_KEY] = BinGrid(grid.origin / 2, matrix=grid.matrix / 2).to_dict()
    table.obs["region"] = pd.Categorical(["bins"] * table.n_obs)
    del table.uns["spatialdata_attrs"]
    moved["bins_table"] = TableModel.parse(
        table, region="bins", region_key="region", instance_key="spot_id"
    )
    moved["sst_cells_table"] = cells.copy()
    sst.pp.assign_cells(moved, spots_key="bins", overwrite=True)
    np.testing.assert_array_equal(moved["sst_cells_table"].obs[SPOT_COLUMN], spot)


def _toy(mpp: float = 1.0) -> SpatialData:
    """Four 10 px bins (rows 0-1, cols 0-1) and three cells: A straddles the four bins, B lies in
    bin (0, 0), C is half in bin (0, 1) and half in a bin that is not listed."""
    frame = {"global": Identity(), "microns": Scale([mpp, mpp], axes=("x", "y"))}
    cells = [shapely.box(5, 5, 15, 15), shapely.box(0, 0, 8, 10), shapely.box(15, 0, 25, 10)]
    ids = np.array([1, 2, 3])
    rc = np.array([[0, 0], [0, 1], [1, 0], [1, 1]])
    grid = BinGrid(origin=(0.0, 0.0), size=10.0)
    sdata = SpatialData(
        shapes={
            "sst_cells": ShapesModel.parse(
                gpd.GeoDataFrame(geometry=cells, index=pd.Index(ids)), transformations=frame
            ),
            "bins": ShapesModel.parse(
                gpd.GeoDataFrame(geometry=grid.squares(rc), index=pd.RangeIndex(4)),
                transformations=dict(frame),
            ),
        }
    )
    centroids = shapely.get_coordinates(shapely.centroid(np.asarray(cells, dtype=object)))
    cells_table = ad.AnnData(
        obs=pd.DataFrame(
            {"cell_id": ids, "region": pd.Categorical(["sst_cells"] * 3)},
            index=ids.astype(str),
        ),
        obsm={SPATIAL_OBSM: centroids},
    )
    sdata["sst_cells_table"] = TableModel.parse(
        cells_table, region="sst_cells", region_key="region", instance_key="cell_id"
    )
    emb = ad.AnnData(obs=cells_table.obs.copy(), obsm={EMBEDDING_OBSM: np.eye(3, 4)})
    emb.uns[UNS_KEY] = {"embedding": {"cells_key": "sst_cells", "encoder": "toy"}}
    sdata["sst_embedding"] = TableModel.parse(
        emb, region="sst_cells", region_key="region", instance_key="cell_id"
    )
    counts = ad.AnnData(
        X=sp.csr_matrix(np.full((4, 2), 30, dtype=np.int32)),
        obs=pd.DataFrame(
            {
                "spot_id": np.arange(4),
                "region": pd.Categorical(["bins"] * 4),
                ARRAY_ROW: rc[:, 0],
                ARRAY_COL: rc[:, 1],
            },
            index=[f"b{i}" for i in range(4)],
        ),
        var=pd.DataFrame(index=["G1", "G2"]),
    )
    counts.uns[UNS_KEY] = {
        SPOT_SHAPE_KEY: "square",
        SPOT_SIZE_KEY: 10.0 * mpp,
        BIN_GRID_KEY: grid.to_dict(),
    }
    sdata["bins_table"] = TableModel.parse(
        counts, region="bins", region_key="region", instance_key="spot_id"
    )
    return sdata


def _weights(bags) -> np.ndarray:
    """Dense cells x bins weights of overlap-aware bags (cells of the embedding, bins kept)."""
    out = np.zeros((3, bags.spots.n_obs))
    out[bags.cell_index[bags.pair_cell], bags.bag] = bags.weight
    return out


def test_overlap_weights_are_the_cells_area_fractions():
    sdata = _toy()
    bags = _bags(sdata, pooling="overlap", cell_dilation_um=0.0)
    np.testing.assert_array_equal(bags.instance, [0, 1, 2, 3])
    # by hand: A a quarter in each bin; B all in (0, 0); C half in (0, 1), half unlisted
    want = np.array([[0.25, 0.25, 0.25, 0.25], [1.0, 0, 0, 0], [0, 0.5, 0, 0]])
    np.testing.assert_allclose(_weights(bags), want, atol=1e-12)
    assert (_weights(bags).sum(1) <= 1 + 1e-12).all()
    np.testing.assert_allclose(bags.cells_per_spot, [1.25, 0.75, 0.25, 0.25])
    assert _bags(sdata).pooling["pooling"] == "overlap"  # "auto" on square bins
    # B (8 x 10 px) dilated by 1 µm = 1 px: area 8*10 + 2*(8 + 10) + pi (rounded corners), of
    # which x in [0, 9], y in [0, 10] (90 px²) lies in bin (0, 0)
    grown = _weights(_bags(sdata, pooling="overlap", cell_dilation_um=1.0))
    assert grown[1, 0] == pytest.approx(90 / (116 + np.pi), rel=1e-3)
    assert (grown.sum(1) <= 1 + 1e-12).all() and grown[1].sum() < 1  # some of it off the bins
    # the same µm dilation at another pixel size gives the same fractions
    regrown = _weights(_bags(_toy(mpp=0.5), pooling="overlap", cell_dilation_um=0.5))
    np.testing.assert_allclose(regrown, grown, atol=1e-12)
    # centroid pooling: A's centroid (10, 10) is in bin (1, 1); C's (20, 5) in no listed bin
    cent = _bags(sdata, pooling="centroid")
    assert cent.weight is None
    np.testing.assert_array_equal(cent.instance[cent.bag], [0, 3])
    np.testing.assert_array_equal(cent.cell_index, [1, 0])
    # coarsened to 20 px: one bin holding all three cells, counts summed
    coarse = _bags(sdata, pooling="overlap", cell_dilation_um=0.0, bin_um=20.0)
    assert coarse.spots.n_obs == 1 and coarse.spots.X.toarray().tolist() == [[120, 120]]
    np.testing.assert_allclose(_weights(coarse)[:, 0], [1.0, 1.0, 0.5])
    with pytest.raises(ValueError, match="whole multiple"):
        _bags(sdata, bin_um=15.0)
    with pytest.raises(ValueError, match="pooling must be"):
        _bags(sdata, pooling="area")


def test_weighted_aggregate():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    bag = torch.tensor([0, 0, 1])
    w = torch.tensor([0.5, 0.25, 0.1])
    np.testing.assert_allclose(aggregate(x, bag, 2, "sum", w), [[1.25, 2.0], [0.5, 0.6]])
    np.testing.assert_allclose(
        aggregate(x, bag, 2, "mean", w), [[1.25 / 0.75, 2.0 / 0.75], [5.0, 6.0]], rtol=1e-6
    )
    ones = torch.ones(3)
    for how in ("sum", "mean"):
        np.testing.assert_allclose(aggregate(x, bag, 2, how, ones), aggregate(x, bag, 2, how))


def test_fit_predict_evaluate_on_hd_bins(hd, tmp_path):
    genes = list(hd["truth_expression"].var_names)
    centroid = sst.tl.fit(hd, genes=genes, pooling="centroid", **FIT)
    overlap = sst.tl.fit(hd, genes=genes, **FIT)  # default on bins: overlap, nuclei + 3 µm
    assert centroid.config["bags"]["spot_shape"] == "square"
    assert overlap.config["bags"]["pooling"] == "overlap"
    assert overlap.config["bags"]["cell_dilation_um"] == 3.0
    # overlap-aware bags keep the bins that only part of a cell reaches
    n = {m: m.config["n_train_spots"] + m.config["n_val_spots"] for m in (centroid, overlap)}
    assert n[overlap] > n[centroid]
    overlap.save(tmp_path / "m")
    loaded = sst.tl.MILModel.load(tmp_path / "m")
    assert loaded.config["bags"] == overlap.config["bags"]

    # spot level: pooled as in training, from the model or from predict's table, the same
    by_model = sst.tl.evaluate(hd, loaded, level="spot")
    assert by_model.attrs["n_spots"] == n[overlap]
    sst.tl.predict(hd, overlap, overwrite=True)
    by_table = sst.tl.evaluate(hd, level="spot")
    np.testing.assert_allclose(by_table["pearson"], by_model["pearson"], atol=1e-5)
    as_centroid = sst.tl.evaluate(hd, level="spot", pooling="centroid")
    assert as_centroid.attrs["n_spots"] < by_table.attrs["n_spots"]
    cell = sst.tl.evaluate(hd, level="cell")
    assert np.isfinite(cell["pearson"]).all() and cell.attrs["matched_fraction"] > 0.9
    assert np.isfinite(hd["sst_expression"].X).all()

    # coarsened bins: 8 µm -> 16 µm, the counts of the bins summed
    coarse = sst.tl.fit(hd, genes=genes, pooling="centroid", bin_um=16, **FIT)
    table = hd[SPOTS_TABLE_KEY]
    pooled = coarsen_bins(table.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy(), 2, table.X)
    assert coarse.config["bags"]["coarsening_factor"] == 2
    b16 = _bags(hd, pooling="centroid", bin_um=16, min_counts=20)
    assert b16.spots.n_obs == coarse.config["n_train_spots"] + coarse.config["n_val_spots"]
    row = {tuple(rc): i for i, rc in enumerate(pooled.bins)}
    idx = [row[(r, c)] for r, c in b16.spots.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy()]
    np.testing.assert_array_equal(b16.spots.X.toarray(), pooled.counts[idx].toarray())
    assert np.isfinite(sst.tl.evaluate(hd, coarse, level="spot")["pearson"]).all()

    # pooling options are for square bins only
    visium = sst.datasets.synthetic(shape=(512, 512), seed=3)
    for key in ("sst_cells", "sst_embedding", "sst_cells_table"):
        visium[key] = hd[key]
    with pytest.raises(ValueError, match="square bins"):
        sst.tl.fit(visium, genes=genes, pooling="overlap", **FIT)
    assert _bags(visium).weight is None and _bags(visium).pooling["pooling"] == "centroid"


def test_pl_spots_draws_squares(hd):
    genes = list(hd["truth_expression"].var_names)
    model = sst.tl.fit(hd, genes=genes, pooling="overlap", bin_um=16, **FIT)
    sst.tl.predict(hd, model, overwrite=True)
    gene = genes[0]
    fig = sst.pl.spots(hd, gene, show=False)
    collections = [c for a in fig.axes[:2] for c in a.collections]  # measured, predicted
    squares = [c for c in collections if isinstance(c, PolyCollection)]
    assert len(squares) == 2 and not any(isinstance(c, EllipseCollection) for c in collections)
    scores = sst.tl.evaluate(hd, level="spot")
    n = scores.attrs["n_spots"]
    assert all(len(c.get_paths()) == n for c in squares)
    # 16 µm squares, in µm
    corners = squares[0].get_paths()[0].vertices[:4]
    sides = np.linalg.norm(np.diff(np.vstack([corners, corners[:1]]), axis=0), axis=1)
    np.testing.assert_allclose(sides, 16.0, rtol=1e-6)
    assert f"r = {scores.loc[gene, 'pearson']:.2f}" in fig.axes[1].get_title()
    plt.close(fig)

"""Bad input gives an error that names the problem and the fix."""

import anndata as ad
import numpy as np
import pytest
import spatialdata as sd
from spatialdata.models import Image2DModel, TableModel
from spatialdata.transformations import Identity

import scellst as sst


def test_no_image():
    with pytest.raises(ValueError, match="no image element.*read_image"):
        sst.pp.segment(sd.SpatialData())


def test_image_without_scale():
    img = Image2DModel.parse(
        np.full((3, 64, 64), 200, np.uint8),
        dims=("c", "y", "x"),
        transformations={"global": Identity()},
    )
    sdata = sd.SpatialData(images={"he": img})
    with pytest.raises(ValueError, match=r"no physical scale.*set_microns_per_pixel"):
        sst.pp.segment(sdata)
    sst.io.set_microns_per_pixel(sdata, "he", 0.5)
    assert sst.io.microns_per_pixel(sdata) == 0.5
    with pytest.raises(ValueError, match="overwrite=True"):
        sst.io.set_microns_per_pixel(sdata, "he", 0.25)
    with pytest.raises(ValueError, match="positive"):
        sst.io.set_microns_per_pixel(sdata, "he", -1, overwrite=True)


def test_spots_off_the_image(embedded):
    sdata = sd.SpatialData(
        images={"he": embedded["he"]},
        shapes={"sst_cells": embedded["sst_cells"]},
        tables={"sst_cells_table": embedded["sst_cells_table"].copy()},
    )
    spots = embedded["spots"].copy()
    spots.geometry = spots.geometry.translate(-1e5, 0)
    sdata["spots"] = spots
    with pytest.raises(ValueError, match="None of the .* spots .* overlaps image"):
        sst.pp.assign_cells(sdata, overwrite=True)


def test_unknown_genes(embedded):
    with pytest.raises(KeyError, match=r"2 of the requested genes.*'NOPE1', 'NOPE2'"):
        sst.tl.fit(embedded, genes=["EPCAM", "NOPE1", "NOPE2"], progress=False)
    with pytest.raises(ValueError, match="hvg:N"):
        sst.tl.fit(embedded, genes="top:5", progress=False)


def test_table_not_linked_to_shapes(embedded):
    sdata = sd.SpatialData(
        images={"he": embedded["he"]},
        shapes={"spots": embedded["spots"], "sst_cells": embedded["sst_cells"]},
        tables={k: embedded[k].copy() for k in ("sst_cells_table", "sst_embedding")},
    )
    counts = embedded["spots_table"]
    sdata["loose_counts"] = TableModel.parse(
        ad.AnnData(counts.X, obs=counts.obs[["spot_id"]].copy(), var=counts.var)
    )
    with pytest.raises(ValueError, match="No table annotates element 'spots'.*TableModel.parse"):
        sst.tl.fit(sdata, genes=["EPCAM"], progress=False)


def test_normalised_counts_are_refused(embedded):
    sdata = sd.SpatialData(
        shapes={"spots": embedded["spots"], "sst_cells": embedded["sst_cells"]},
        tables={k: embedded[k].copy() for k in ("sst_cells_table", "sst_embedding")},
    )
    table = embedded["spots_table"].copy()
    table.X = np.log1p(table.X.toarray())
    sdata["spots_table"] = table
    with pytest.raises(ValueError, match="raw counts"):
        sst.tl.fit(sdata, genes=["EPCAM"], progress=False)


def test_missing_steps_say_what_to_run(synthetic_small):
    sdata = sd.SpatialData(images={"he": synthetic_small["he"]})
    with pytest.raises(KeyError, match="sst.pp.segment"):
        sst.tl.embed(sdata)
    with pytest.raises(KeyError, match="sst.tl.embed"):
        sst.tl.fit(sdata, genes=["EPCAM"])


def test_model_and_embedding_mismatch(fitted):
    sdata, model = fitted
    n = sdata["sst_embedding"].obsm["X_sst"].shape[1]  # 30 own + 60 neighbourhood features
    with pytest.raises(ValueError, match=rf"expects {n} features.*sst.tl.embed\(sdata, encoder="):
        model.predict_cells(np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match="Invalid key_added"):
        sst.tl.predict(sdata, model, key_added="bad key!")

"""Training options, evaluation and cross-validation of the MIL model (issue: the MIL model at the
paper's level): svg genes, held-out validation slides, leave-one-slide-out, sst.tl.evaluate,
prediction units and what a saved model carries."""

from __future__ import annotations

import inspect
import subprocess
import sys

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import spatialdata as sd

import scellst as sst
from scellst.mil.evaluate import log_normalized, match_truth_cells
from scellst.mil.options import TRAINING_OPTIONS, training_options
from scellst.mil.spots import slide_bags


def _part(embedded, mask, boost: str | None = None) -> sd.SpatialData:
    """A 'slide' made of a subset of the spots of the embedded fixture (cells shared)."""
    table = embedded["spots_table"][mask].copy()
    if boost is not None:  # a slide-wide 20x shift of one gene: not a spatial pattern
        X = table.X.toarray()
        X[:, table.var_names.get_loc(boost)] *= 20
        table.X = sp.csr_matrix(X)
    return sd.SpatialData(
        shapes={"spots": embedded["spots"][mask], "sst_cells": embedded["sst_cells"]},
        tables={
            "spots_table": table,
            "sst_cells_table": embedded["sst_cells_table"].copy(),
            "sst_embedding": embedded["sst_embedding"],
        },
    )


def _stripes(embedded, n: int) -> list[np.ndarray]:
    x = embedded["spots"].geometry.x.to_numpy()
    edges = np.quantile(x, np.linspace(0, 1, n + 1))
    band = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n - 1)
    return [band == i for i in range(n)]


def _markers(sdata) -> list[str]:
    return [g for genes in sdata["truth_expression"].uns["marker_genes"].values() for g in genes]


def _kw():
    return dict(cells_key="sst_cells", embedding_key="sst_embedding", spots_key=None, min_counts=20)


def test_svg_selects_patterned_genes_per_slide(embedded):
    """svg:N = Moran's I per slide: the marker genes (they follow the tissue regions), and not a
    gene that is merely shifted on one slide (which a pooled computation ranks first)."""
    model = sst.tl.fit(embedded, genes="svg:10", max_epochs=1, progress=False)
    assert sum(g in _markers(embedded) for g in model.genes) >= 9
    assert model.config["gene_selection"] == "svg:10"
    left, right = _stripes(embedded, 2)
    a, b = _part(embedded, left), _part(embedded, right, boost="GENE_010")
    model = sst.tl.fit([a, b], genes="svg:10", max_epochs=1, progress=False)
    assert "GENE_010" not in model.genes  # pooled Moran's I: 0.60, first of all genes
    assert sum(g in _markers(embedded) for g in model.genes) >= 9


def test_evaluate_perfect_and_shuffled_spot_predictions(fitted):
    sdata, model = fitted
    sst.tl.predict(sdata, model, key_added="test_perfect", overwrite=True)
    try:
        table = sdata["test_perfect"]
        bags = slide_bags(sdata, **_kw())
        measured = log_normalized(
            bags.spots[:, model.genes].X, np.asarray(bags.spots.X.sum(1)).ravel()
        )
        X = np.zeros(table.shape, np.float32)
        X[bags.cell_index] = measured[bags.bag]  # every cell = its spot: a perfect spot mean
        table.X = X
        perfect = sst.tl.evaluate(sdata, table_key="test_perfect")
        assert perfect.attrs["level"] == "spot" and perfect.attrs["n_spots"] == bags.spots.n_obs
        np.testing.assert_allclose(perfect["pearson"], 1.0, atol=1e-5)
        np.testing.assert_allclose(perfect["spearman"], 1.0, atol=1e-5)
        assert perfect.attrs["mean_pearson"] == pytest.approx(1.0, abs=1e-5)
        shuffled_spots = np.random.default_rng(0).permutation(bags.spots.n_obs)
        X[bags.cell_index] = measured[shuffled_spots][bags.bag]
        table.X = X
        shuffled = sst.tl.evaluate(sdata, table_key="test_perfect")
        assert abs(shuffled.attrs["mean_pearson"]) < 0.1
        assert shuffled["pearson"].abs().max() < 0.45
        table.X = np.broadcast_to(measured.mean(0), table.shape).astype(np.float32)
        constant = sst.tl.evaluate(sdata, table_key="test_perfect")
        assert constant["pearson"].isna().all()  # undefined for a constant prediction, not 0
        assert (constant["mse"] > 0).all()
        # the validation spots of the training slide, as recorded by fit
        held = sst.tl.evaluate(sdata, model, spots=model.config["validation_spots"][0])
        assert held.attrs["n_spots"] == model.config["n_val_spots"] > 0
        with pytest.raises(KeyError, match="not scored"):
            sst.tl.evaluate(sdata, model, spots=[10**9])
    finally:
        del sdata.tables["test_perfect"]


def test_evaluate_cell_level_against_truth_and_a_matched_table(fitted):
    sdata, model = fitted
    scores = sst.tl.evaluate(sdata, model, level="cell")  # the synthetic truth, by label
    assert scores.attrs["level"] == "cell" and scores.attrs["matched_fraction"] > 0.95
    assert scores.loc[_markers(sdata), "pearson"].mean() > 0.8
    # a table of measured cells (e.g. Xenium): integer counts, matched by nearest centroid
    # (here placed 0.5 px from the segmented centroids). Cells predicted as exactly their
    # measured expression score 1; with shuffled positions, ~0.
    sst.tl.predict(sdata, model, key_added="test_cells", overwrite=True)
    try:
        table = sdata["test_cells"]
        rows, truth_rows = match_truth_cells(sdata, "test_cells")
        truth = sdata["truth_expression"]
        measured = ad.AnnData(
            X=np.round(truth.layers["rate"][truth_rows] * 5).astype(np.float32),
            var=truth.var[[]],
            obsm={"spatial": table.obsm["spatial"][rows] + 0.5},
        )
        values = log_normalized(measured.X, measured.X.sum(1))
        X = np.zeros(table.shape, np.float32)
        X[rows] = values[:, measured.var_names.get_indexer(table.var_names)]
        table.X = X
        perfect = sst.tl.evaluate(sdata, level="cell", truth=measured, table_key="test_cells")
        assert perfect.attrs["matched_fraction"] > 0.95
        np.testing.assert_allclose(perfect["pearson"], 1.0, atol=1e-5)
        shuffled = measured.copy()
        shuffled.obsm["spatial"] = np.random.default_rng(0).permutation(measured.obsm["spatial"])
        away = sst.tl.evaluate(sdata, level="cell", truth=shuffled, table_key="test_cells")
        assert abs(away.attrs["mean_pearson"]) < 0.1
    finally:
        del sdata.tables["test_cells"]


def test_leave_one_slide_out_trains_on_the_other_slides(embedded):
    parts = dict(zip("abc", (_part(embedded, m) for m in _stripes(embedded, 3)), strict=True))
    kept = {k: slide_bags(v, **_kw()).spots.n_obs for k, v in parts.items()}
    cv = sst.tl.leave_one_slide_out(parts, genes="hvg:8", held_out=["a", "c"], max_epochs=3)
    assert list(cv.summary.index) == ["a", "c"]
    assert cv.summary.loc["a", "train"] == "b,c" and cv.summary.loc["c", "train"] == "a,b"
    for test, model in cv.models.items():
        others = sum(n for k, n in kept.items() if k != test)
        assert model.config["n_train_spots"] + model.config["n_val_spots"] == others
        assert model.config["training_slides"] == [k for k in "abc" if k != test]
        assert len(model.genes) == 8
        assert cv.summary.loc[test, "n_test_spots"] == kept[test]
    assert set(cv.per_gene["held_out"]) == {"a", "c"} and len(cv.per_gene) == 16
    with pytest.raises(TypeError, match="Unknown training settings"):
        sst.tl.leave_one_slide_out(parts, genes=["EPCAM"], epochs=3)


def test_validation_slide_and_per_slide_scaling(embedded):
    a, b = (_part(embedded, m) for m in _stripes(embedded, 2))
    n_b = slide_bags(b, **_kw()).spots.n_obs
    model = sst.tl.fit(
        a, genes=["EPCAM", "CD68"], validation=b, scale_targets="slide", max_epochs=3,
        progress=False,
    )  # fmt: skip
    assert model.config["validation"] == "slides" and model.config["n_val_spots"] == n_b
    assert model.config["validation_spots"] == [[]]
    assert model.config["scale_targets"] == "slide"
    # unscaled MSE targets reach log1p values of ~8: the output layer must start finite there
    unscaled = sst.tl.fit(
        a, genes=["EPCAM", "CD68"], scale_targets=False, max_epochs=2, progress=False
    )
    assert np.isfinite(unscaled.history["train_loss"]).all()
    with pytest.raises(ValueError, match="also a training slide"):
        sst.tl.fit(a, genes=["EPCAM"], validation=a, progress=False)


def test_units_history_and_skipped_spots(embedded, tmp_path):
    genes = ["EPCAM", "PTPRC", "COL1A1"]
    slide = _part(embedded, np.ones(embedded["spots_table"].n_obs, bool))
    obs = slide["sst_cells_table"].obs
    emptied = obs.loc[obs["spot"] >= 0, "spot"].unique()[:3]
    obs.loc[obs["spot"].isin(emptied), "spot"] = -1  # three spots lose their cells
    model = sst.tl.fit(
        slide, genes=genes, loss="nb", aggregation="sum", max_epochs=4,
        progress=False,
    )  # fmt: skip
    assert model.config["epochs_run"] == 4
    pred = model.predict_cells(embedded["sst_embedding"].obsm["X_sst"])
    c = model.config
    n_med, depth = c["median_cells_per_spot"], c["median_total_counts"]
    np.testing.assert_allclose(
        pred["log_normalized"], np.log1p(pred["counts"] * n_med * 1e4 / depth), rtol=1e-4
    )
    # the spots without any segmented cell are counted and skipped, not silently lost
    assert c["slides"][0]["n_without_cells"] == 3
    assert c["n_train_spots"] + c["n_val_spots"] == c["slides"][0]["n_kept"]
    assert c["slides"][0]["n_kept"] <= c["slides"][0]["n_spots"] - 3
    # the prediction table carries the units, the settings and the loss curves
    he_only = sd.SpatialData(
        shapes={"sst_cells": embedded["sst_cells"]},
        tables={k: embedded[k] for k in ("sst_cells_table", "sst_embedding")},
    )
    sst.tl.predict(he_only, model)
    info = he_only["sst_expression"].uns["scellst"]["prediction"]
    assert info["units"] == "log1p(counts per 10,000)" and "counts" in info["counts_units"]
    assert len(info["model"]["history"]["train_loss"]) == 4
    assert info["model"]["slides"]["n_without_cells"] == [3]
    sst.io.write_zarr(he_only, tmp_path / "p.zarr")  # the uns entries are storable
    # a saved model keeps genes, preprocessing and the encoder reference
    model.save(tmp_path / "m")
    loaded = sst.tl.MILModel.load(tmp_path / "m")
    assert (
        loaded.config["encoder_info"]["encoder"]
        == embedded["sst_embedding"].uns["scellst"]["embedding"]["encoder"]
    )
    assert loaded.config["preprocessing"]["target_sum"] == 1e4
    np.testing.assert_allclose(
        loaded.predict_cells(embedded["sst_embedding"].obsm["X_sst"])["counts"], pred["counts"],
        rtol=1e-6,
    )  # fmt: skip


def test_training_options_are_fits_own():
    """fit, leave_one_slide_out and fit_slides share one list of training settings, with the
    defaults of fit's signature."""
    params = inspect.signature(sst.tl.fit).parameters
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in TRAINING_OPTIONS)
    options = training_options(lr=0.5)
    assert options == {k: 0.5 if k == "lr" else params[k].default for k in TRAINING_OPTIONS}
    with pytest.raises(TypeError, match="Unknown training settings"):
        training_options(epochs=3)
    with pytest.raises(ValueError, match="loss must be one of"):
        training_options(loss="l1")
    # reading fit's defaults must not bind the module `scellst.tl.fit` to `sst.tl.fit`
    code = (
        "import scellst as sst; from scellst.mil.options import training_options; "
        "training_options(); assert callable(sst.tl.fit), sst.tl.fit"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_spot_predictions_agree_from_model_and_from_table(fitted):
    """evaluate scores the same spot predictions from a model or from its prediction table."""
    sdata, model = fitted
    sst.tl.predict(sdata, model, key_added="test_agree", overwrite=True)
    try:
        from_table = sst.tl.evaluate(sdata, table_key="test_agree")
        from_model = sst.tl.evaluate(sdata, model)
        np.testing.assert_allclose(from_table["pearson"], from_model["pearson"], atol=1e-6)
        np.testing.assert_allclose(from_table["mse"], from_model["mse"], rtol=1e-5)
    finally:
        del sdata.tables["test_agree"]

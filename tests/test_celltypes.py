import anndata as ad
import numpy as np
import pandas as pd
import pytest
import spatialdata as sd

import scellst as sst
from scellst.mil.evaluate import match_truth_cells


def _table(X, genes):
    return ad.AnnData(X=np.asarray(X, np.float32), var=pd.DataFrame(index=genes))


def test_scores_are_mean_marker_z_scores_and_low_cells_unassigned():
    X = np.array([[5.0, 0.0, 1.0], [0.0, 4.0, 1.0], [1.0, 1.0, 1.0], [2.0, 1.0, 1.0]])
    sdata = sd.SpatialData(tables={"pred": _table(X, ["A", "B", "C"])})
    markers = {"a": ["A", "C", "NOT_PREDICTED"], "b": ["B"]}
    sst.tl.score_cell_types(sdata, markers, table_key="pred", key_added="ct", min_score=0.5)
    obs = sdata["pred"].obs
    z = (X - X.mean(0)) / np.where(X.std(0) > 0, X.std(0), 1)
    np.testing.assert_allclose(obs["ct_score_a"], (z[:, 0] + z[:, 2]) / 2, rtol=1e-6)
    np.testing.assert_allclose(obs["ct_score_b"], z[:, 1], rtol=1e-6)
    assert obs["ct"].tolist() == ["a", "b", "unassigned", "unassigned"]
    assert list(obs["ct"].cat.categories) == ["a", "b", "unassigned"]
    assert sdata["pred"].uns["scellst"]["cell_types"]["ct"]["markers"]["a"] == ["A", "C"]
    with pytest.raises(KeyError, match="overwrite=True"):
        sst.tl.score_cell_types(sdata, markers, table_key="pred", key_added="ct")
    sst.tl.score_cell_types(
        sdata, markers, table_key="pred", key_added="ct", min_score=-np.inf, overwrite=True
    )
    assert "unassigned" not in set(sdata["pred"].obs["ct"])
    with pytest.raises(ValueError, match=r"\['c'\]"):
        sst.tl.score_cell_types(sdata, {"c": ["Z"]}, table_key="pred", key_added="x")
    with pytest.raises(KeyError, match="predict"):
        sst.tl.score_cell_types(sdata, markers)


def test_score_cell_types_recovers_synthetic_types(fitted):
    sdata, model = fitted
    sdata = sd.SpatialData(
        images=dict(sdata.images), labels=dict(sdata.labels), shapes=dict(sdata.shapes),
        tables=dict(sdata.tables),
    )  # fmt: skip
    truth = sdata["truth_expression"]
    markers = dict(truth.uns["marker_genes"])
    # on the true expression of every cell: the known types come back
    lognorm = np.log1p(truth.X / truth.X.sum(1, keepdims=True) * 1e4)
    sdata.tables["truth_log"] = _table(lognorm, list(truth.var_names))
    sst.tl.score_cell_types(sdata, markers, table_key="truth_log", min_score=-np.inf)
    typed = sdata["truth_log"].obs["sst_cell_type"].astype(str).to_numpy()
    true = truth.obs["cell_type"].astype(str).to_numpy()
    assert (typed == true).mean() > 0.95
    # on the predicted cells, matched to the true nuclei: well above chance (4 types)
    sst.tl.predict(sdata, model, key_added="pred")
    sst.tl.score_cell_types(sdata, markers, table_key="pred")
    hit, rows = match_truth_cells(sdata, "pred")
    pred = sdata["pred"].obs["sst_cell_type"].astype(str).to_numpy()[hit]
    assigned = pred != "unassigned"
    assert assigned.mean() > 0.5
    assert (pred[assigned] == true[rows][assigned]).mean() > 0.7

"""The ensemble trainer (issue 12): the closed-form ridge is the linear special case, predictions
stay finite and in range under adversarial features, the spread and out-of-distribution flags
are written and documented, the tissue mask flags dust far from the tissue, robust colour
limits, and progress bars that end where the work did."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
import spatialdata as sd
import torch
from sklearn.linear_model import Ridge, RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import scellst as sst
from scellst import constants as C
from scellst.mil.model import MAX_LOG_NORMALIZED
from scellst.mil.ridge import ALPHAS, fit_linear_cells, spot_means
from scellst.mil.spots import measured_spots, slide_bags
from scellst.pl._color import color_limits
from scellst.segmentation.tissue import tissue_from_rgb

DOCS = Path(__file__).resolve().parents[1] / "docs"
GENES = ["EPCAM", "PTPRC", "COL1A1", "CD68"]


def _toy(seed=0, n_spots=120, d=6, genes=3):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 12, n_spots)
    bag = np.repeat(np.arange(n_spots), sizes)
    x = rng.normal(size=(len(bag), d)) * rng.uniform(0.5, 3, d) + rng.normal(size=d)
    Z = spot_means(x, bag, n_spots)
    Y = Z @ rng.normal(size=(d, genes)) + rng.normal(scale=0.5, size=(n_spots, genes))
    return x, bag, Z, Y


def test_linear_special_case_is_sklearn_ridge():
    """The per-cell linear model, mean-pooled over each spot, is ridge on spot-mean embeddings:
    same predictions as scikit-learn's StandardScaler + Ridge, for one penalty or one per gene,
    and the penalties chosen by leave-one-out are RidgeCV's."""
    x, bag, Z, Y = _toy()
    kw = dict(cell_mean=x.mean(0), cell_std=x.std(0))
    for alpha in (3.0, np.array([0.1, 10.0, 300.0])):
        lin = fit_linear_cells(Z, Y, alpha=alpha, **kw)
        pooled = spot_means(lin.predict(x), bag, len(Z))
        ref = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(Z, Y).predict(Z)
        np.testing.assert_allclose(pooled, ref, rtol=1e-8, atol=1e-8)
    # cells of one spot differ: it is a per-cell model, not a spot model
    assert np.ptp(lin.predict(x[bag == 0]), axis=0).min() > 0
    loo = fit_linear_cells(Z, Y, **kw)
    cv = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS, alpha_per_target=True)).fit(Z, Y)
    np.testing.assert_allclose(loo.alpha, cv[-1].alpha_)


def test_fit_ridge_alone_matches_sklearn_on_the_slide(embedded):
    """fit(blend="ridge") on a real pipeline slide: the model's cell outputs, averaged over each
    training spot, are sklearn's Ridge with the chosen per-gene penalties."""
    model = sst.tl.fit(
        embedded, genes=GENES, blend="ridge", members=1, aggregation_space="log",
        scale_targets=False, progress=False,
    )  # fmt: skip
    assert model.config["blend_weight"] == [0.0] * len(GENES)
    assert model.config["ensemble"]["choice_counts"]["ridge"] == len(GENES)
    bags = slide_bags(embedded, cells_key="sst_cells", embedding_key="sst_embedding",
                      spots_key=None, min_counts=20)  # fmt: skip
    train = ~np.isin(bags.instance, model.config["validation_spots"][0])
    Z = spot_means(bags.features, bags.bag, bags.spots.n_obs)
    Y = measured_spots(bags, GENES)
    alpha = model.ridges[0].alpha
    ref = make_pipeline(StandardScaler(), Ridge(alpha=alpha)).fit(Z[train], Y[train]).predict(Z)
    pooled = spot_means(model.cell_outputs(bags.features), bags.bag, bags.spots.n_obs)
    np.testing.assert_allclose(pooled, ref, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def ensemble(embedded):
    return sst.tl.fit(embedded, genes=GENES, max_epochs=8, progress=False, seed=0)


def test_ensemble_records_its_choice(ensemble):
    c = ensemble.config
    assert c["n_members"] == 3 == len(ensemble.members) == len(ensemble.ridges)
    ens = c["ensemble"]
    assert {"mlp", "ridge", "chosen per gene"} <= set(ens["validation_pearson"])
    assert sum(ens["choice_counts"].values()) == len(GENES)
    assert len(c["blend_weight"]) == len(GENES) and set(c["blend_weight"]) <= set(
        ens["weight_grid"]
    )
    assert [m["validation"] for m in ens["members"]] == [f"spatial split {k}" for k in range(3)]
    assert "threshold" in c["ood"] and np.isfinite(c["ood"]["threshold"])


def test_predictions_finite_and_in_range_under_adversarial_features(ensemble, embedded):
    X = np.asarray(embedded["sst_embedding"].obsm["X_sst"], np.float32)
    bad = np.repeat(X[:1], 6, axis=0)
    bad[0, :] = np.inf
    bad[1, :] = -np.inf
    bad[2, :] = np.nan
    bad[3, :] = 3e38
    bad[4, :] = -3e38
    bad[5, ::2] = 1e6
    pred = ensemble.predict_cells(np.vstack([X, bad]))
    for key in ("log_normalized", "spread"):
        assert np.isfinite(pred[key]).all()
    lo = pred["log_normalized"]
    assert (lo >= 0).all() and (lo <= ensemble.ceiling).all()
    assert (ensemble.ceiling <= MAX_LOG_NORMALIZED).all()
    distance, ood = ensemble.out_of_distribution(np.vstack([X, bad]))
    assert np.isfinite(distance).all()
    assert ood[-6:].all()  # every adversarial cell is flagged
    assert ood[: len(X)].mean() < 0.01  # and few of the slide's own cells
    # a count loss too
    nb = sst.tl.fit(embedded, genes=GENES, loss="nb", max_epochs=3, members=1, progress=False)
    out = nb.predict_cells(bad)
    assert all(np.isfinite(v).all() for v in out.values())
    assert (out["log_normalized"] <= nb.ceiling + 1e-5).all()


def test_predict_writes_spread_and_flags_and_they_are_documented(ensemble, embedded, tmp_path):
    sdata = sd.SpatialData(
        images={"he": embedded["he"]},
        shapes={"sst_cells": embedded["sst_cells"]},
        tables={k: embedded[k] for k in ("sst_cells_table", "sst_embedding")},
    )
    sst.tl.predict(sdata, ensemble)
    table = sdata["sst_expression"]
    spread = table.layers[C.SPREAD_LAYER]
    assert spread.shape == table.shape and np.isfinite(spread).all() and spread.max() > 0
    for col in (C.UNCERTAINTY_COLUMN, C.OOD_DISTANCE_COLUMN, C.OOD_COLUMN, C.ON_TISSUE_COLUMN):
        assert col in table.obs
    assert table.obs[C.OOD_COLUMN].dtype == bool
    np.testing.assert_allclose(
        table.obs[C.UNCERTAINTY_COLUMN],
        (spread / np.asarray(ensemble.config["target_sd"])).mean(1),
        rtol=1e-5,
    )
    doc = (DOCS / "data_model.md").read_text()
    for name in (C.SPREAD_LAYER, C.UNCERTAINTY_COLUMN, C.OOD_COLUMN, C.OOD_DISTANCE_COLUMN,
                 C.ON_TISSUE_COLUMN):  # fmt: skip
        assert f'"{name}"' in doc
    sst.io.write_zarr(sdata, tmp_path / "p.zarr")  # the new uns entries are storable
    # grey out the flagged cells in a plot
    ax = sst.pl.cells(sdata, color="EPCAM", mask=C.OOD_COLUMN, image=False, show=False)
    assert ax.collections[0].get_array().mask.sum() == table.obs[C.OOD_COLUMN].sum()


def test_ensemble_round_trip_and_old_models_load(ensemble, embedded, tmp_path):
    X = embedded["sst_embedding"].obsm["X_sst"]
    ensemble.save(tmp_path / "m")
    loaded = sst.tl.MILModel.load(tmp_path / "m")
    a, b = ensemble.predict_cells(X), loaded.predict_cells(X)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ensemble.out_of_distribution(X)[0], loaded.out_of_distribution(X)[0])
    # a model saved before the ensemble: one network, no ridge, no ceiling, no OOD statistics
    single = sst.tl.fit(embedded, genes=GENES, max_epochs=2, members=1, blend="mlp",
                        progress=False)  # fmt: skip
    single.save(tmp_path / "old")
    payload = json.loads((tmp_path / "old" / "config.json").read_text())
    for key in ("n_members", "ceiling", "blend_weight", "ood", "ensemble", "target_sd"):
        payload["config"].pop(key)
    (tmp_path / "old" / "config.json").write_text(json.dumps(payload))
    state = torch.load(tmp_path / "old" / "weights.pt", weights_only=True)
    torch.save({"module": state["module"]}, tmp_path / "old" / "weights.pt")
    old = sst.tl.MILModel.load(tmp_path / "old")
    np.testing.assert_allclose(
        old.predict_cells(X)["log_normalized"], single.predict_cells(X)["log_normalized"],
        rtol=1e-5,
    )  # fmt: skip
    assert np.isnan(old.out_of_distribution(X)[0]).all()


def test_tissue_mask_flags_a_dust_speck_far_from_the_tissue():
    """White glass, a large stained piece of tissue and a 20 µm speck 1.5 mm away."""
    mpp = 5.0  # a coarse level: 5 µm per pixel, 5 mm wide
    rng = np.random.default_rng(0)
    rgb = np.clip(rng.normal(235, 4, (1000, 1000, 3)), 0, 255)
    yy, xx = np.mgrid[:1000, :1000]
    tissue = (yy - 300) ** 2 + (xx - 300) ** 2 < 200**2
    rgb[tissue] = np.clip(rng.normal((200, 120, 180), 12, (tissue.sum(), 3)), 0, 255)
    rgb[tissue & (rng.random((1000, 1000)) < 0.05)] = 240  # white gaps (fat, tears)
    rgb[800:804, 800:804] = (120, 40, 110)  # the speck
    mask, threshold = tissue_from_rgb(rgb.astype(np.uint8), mpp)
    assert mask[300, 300] and mask[300, 120]  # tissue, and its edge (dilated by 50 µm)
    assert not mask[802, 802]  # the speck: far from the tissue, too small
    assert not mask[50, 900] and 0.03 <= threshold <= 0.15


def test_segment_records_on_tissue(embedded):
    obs = embedded["sst_cells_table"].obs
    assert obs[C.ON_TISSUE_COLUMN].dtype == bool and obs[C.ON_TISSUE_COLUMN].mean() > 0.95
    info = embedded["sst_cells_table"].uns["scellst"]["segmentation"]["tissue"]
    assert info["n_off_tissue"] == int((~obs[C.ON_TISSUE_COLUMN]).sum())


def test_robust_colour_limits(embedded):
    values = np.r_[np.linspace(0, 1, 1000), 1e4]
    lo, hi = color_limits(values, None, None, (1, 99))
    assert lo == pytest.approx(np.percentile(values, 1)) and hi < 1.1
    assert color_limits(values, -1.0, None, (1, 99))[0] == -1.0
    assert color_limits(np.ones(5), None, None, (1, 99)) == (None, None)
    sdata = sd.SpatialData(
        images={"he": embedded["he"]},
        shapes={"sst_cells": embedded["sst_cells"]},
        tables={"sst_cells_table": embedded["sst_cells_table"].copy()},
    )
    obs = sdata["sst_cells_table"].obs
    obs["score"] = np.linspace(0, 1, len(obs))
    obs.loc[obs.index[0], "score"] = 1e6  # one absurd cell
    clim = sst.pl.cells(sdata, color="score", image=False, show=False).collections[0].get_clim()
    assert clim[1] < 1.01
    clim = (
        sst.pl.cells(sdata, color="score", image=False, show=False, vmax=5.0)
        .collections[0]
        .get_clim()
    )
    assert clim[1] == 5.0


def test_progress_bars_end_where_the_work_did(embedded, capsys):
    sst.tl.fit(embedded, genes=GENES[:2], max_epochs=200, patience=2, members=1, progress=True)
    err = capsys.readouterr().err
    assert "stopped at epoch" in err and "best" in err
    cv = sst.tl.leave_one_slide_out(
        [embedded, embedded], genes=GENES[:2], held_out=["1"], max_epochs=1, members=1
    )
    err = capsys.readouterr().err
    assert "leave_one_slide_out" in err and "1: Pearson" in err
    assert len(cv.summary) == 1


def test_ood_uses_the_cells_own_features_not_their_context():
    from scellst.mil.ood import FeatureDistribution

    rng = np.random.default_rng(0)
    own, ctx = rng.normal(size=(5000, 6)), rng.normal(size=(5000, 1)) * np.ones((1, 6))
    train = np.hstack([own, ctx + 0.01 * rng.normal(size=(5000, 6))])  # near-degenerate context
    dist = FeatureDistribution.fit(train, n_used=6)
    new = np.hstack([rng.normal(size=(500, 6)), rng.normal(size=(500, 6))])  # a new arrangement
    assert dist.flag(new)[1].mean() < 0.02
    assert FeatureDistribution.fit(train).flag(new)[1].mean() > 0.9  # what all columns gave
    far = new.copy()
    far[:, :6] += 8.0  # the cells themselves unlike any training cell
    assert dist.flag(far)[1].all()
    back = FeatureDistribution.from_state(dist.state())
    assert back.n_used == 6
    np.testing.assert_allclose(back.distance(new), dist.distance(new))


def _slides_with_batch_effects(seed=0, n_slides=3, n_spots=80, d=4, genes=2):
    """Spots of three slides whose features and targets are both shifted per slide (a batch
    effect confounded with the features); within each slide, targets are linear in the spot
    mean features with coefficients ``coef``."""
    rng = np.random.default_rng(seed)
    coef = rng.normal(size=(d, genes)) * 0.3
    feats, bags, logn, slide = [], [], [], []
    for s in range(n_slides):
        sizes = rng.integers(3, 10, n_spots)
        bag = np.repeat(np.arange(n_spots), sizes)
        x = rng.normal(size=(len(bag), d)) + s  # the slide's features shifted
        Z = spot_means(x, bag, n_spots)
        y = 2.0 + (Z - s) @ coef + 0.8 * s + rng.normal(scale=0.02, size=(n_spots, genes))
        feats.append(x)
        bags.append(bag + s * n_spots)
        logn.append(y)
        slide.append(np.full(n_spots, s))
    return np.vstack(feats), np.concatenate(bags), np.vstack(logn), np.concatenate(slide), coef


def _tensors(feats, bag, logn, slide, val):
    from scellst.mil.training import _Tensors

    n = len(logn)
    data = _Tensors(feats, bag, np.expm1(logn), np.full(n, 1e4), val, slide,
                    torch.device("cpu"), logn=logn)  # fmt: skip
    data.finish({"scale_targets": "none", "median_total_counts": 1e4})
    return data


def test_slide_offsets_make_the_ridge_learn_within_slide_variation():
    """With a batch effect shared by the features and the targets, the pooled ridge learns the
    between-slide trend; with slide fixed effects (the default ``slide_offsets``) each member's
    ridge recovers the within-slide coefficients."""
    from scellst.mil.training import _fit_ridge

    feats, bag, logn, slide, coef = _slides_with_batch_effects()
    data = _tensors(feats, bag, logn, slide, val=slide == 2)
    errors = {}
    for offsets in (False, True):
        lin = _fit_ridge(data, slide_offsets=offsets)
        errors[offsets] = np.abs(lin.coef / lin.scale[:, None] - coef).max()
    assert errors[True] < 0.05 < errors[False]


def test_centred_validation_loss_ignores_a_slide_level_shift():
    """The validation loss with slide offsets is the MSE of residuals centred per slide: a
    per-slide, per-gene shift of the targets does not change it, and the offsets do not enter
    the model's predictions."""
    from scellst.mil.model import MILModel
    from scellst.mil.training import _batch_loss

    feats, bag, logn, slide, _ = _slides_with_batch_effects()
    config = {"genes": ["a", "b"], "n_features": feats.shape[1], "hidden": [8], "dropout": 0.0,
              "loss": "mse", "aggregation": "mean", "aggregation_space": "linear"}  # fmt: skip
    torch.manual_seed(0)
    model = MILModel.build(config)
    model.module.eval()
    spots = torch.arange(len(logn))
    shifted = logn + np.array([[0.0, 0.3], [1.0, -0.5], [2.0, 0.1]])[slide]
    losses = []
    for targets in (logn, shifted):
        data = _tensors(feats, bag, targets, slide, val=np.zeros(len(logn), bool))
        with torch.no_grad():
            losses.append(float(_batch_loss(model, data, spots, config, centred=True)))
            plain = float(_batch_loss(model, data, spots, config))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert plain > losses[1]  # the uncentred loss does see the shift

"""sst.pl: what is drawn (polygons, colours, spots, curves, crops, bars) matches the data."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata as sd
from matplotlib.collections import EllipseCollection, PathCollection, PolyCollection
from matplotlib.colors import Normalize, to_rgba_array
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

import scellst as sst
from scellst.pl._slide import nice_length

MPP = 0.5  # µm per pixel of the synthetic slides


@pytest.fixture(scope="module")
def predicted(fitted):
    """A new SpatialData holding the fitted slide's elements plus its predictions (the
    session fixture itself is left alone)."""
    base, model = fitted
    sdata = sd.SpatialData(
        images=dict(base.images),
        labels=dict(base.labels),
        shapes=dict(base.shapes),
        tables={k: v for k, v in base.tables.items() if k != "sst_expression"},
    )
    sst.tl.predict(sdata, model)
    return sdata, model


@pytest.fixture(autouse=True)
def _close():
    yield
    plt.close("all")


def _inside(sdata, box):
    xy = np.asarray(sdata["sst_cells_table"].obsm["spatial"]) * MPP
    x0, y0, x1, y1 = box
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def _scalebar_label(ax):
    bars = [a for a in ax.artists if isinstance(a, AnchoredSizeBar)]
    assert len(bars) == 1
    return bars[0].txt_label.get_text()


def test_cells_gene_in_region_with_scalebar(predicted, tmp_path):
    sdata, model = predicted
    gene, box = model.genes[1], (150, 100, 450, 350)
    ax = sst.pl.cells(sdata, color=gene, region=box, save=tmp_path / "c.png")
    assert (tmp_path / "c.png").stat().st_size > 10_000
    coll = ax.collections[0]
    inside = _inside(sdata, box)
    assert isinstance(coll, PolyCollection) and len(coll.get_paths()) == inside.sum()
    np.testing.assert_allclose(coll.get_array(), sdata["sst_expression"][:, gene].X.ravel()[inside])
    # every polygon is that cell's nucleus, in µm
    first = np.flatnonzero(inside)[0]
    poly = sdata.shapes["sst_cells"].geometry.iloc[first]
    ring = np.asarray(poly.exterior.coords) * MPP
    np.testing.assert_allclose(coll.get_paths()[0].vertices[: len(ring)], ring)
    assert _scalebar_label(ax) == "50 µm"  # a round length close to 300 / 5 µm
    assert ax.get_xlim() == (150, 450) and ax.get_ylim() == (350, 100)
    assert ax.figure.axes[-1].get_ylabel() == gene  # the colour bar


def test_nice_scale_bar_lengths():
    assert [nice_length(w) for w in (40, 100, 512, 2000, 10_000)] == [10, 20, 100, 500, 2000]


def test_cells_embedding_coordinate_and_cells_table_column(predicted):
    sdata, _ = predicted
    box = (0, 0, 300, 300)
    inside = _inside(sdata, box)
    ax = sst.pl.cells(sdata, color="X_sst:3", region=box, image=False, scalebar=False, show=False)
    assert not ax.images and not ax.artists
    expected = sdata["sst_embedding"].obsm["X_sst"][:, 3][inside]
    np.testing.assert_allclose(ax.collections[0].get_array(), expected, rtol=1e-6)
    # an obs column found in the cells table although the expression table is searched first
    ax = sst.pl.cells(
        sdata, color="mean_hematoxylin", table_key="sst_embedding", region=box, show=False
    )
    expected = sdata["sst_cells_table"].obs["mean_hematoxylin"].to_numpy()[inside]
    np.testing.assert_allclose(ax.collections[0].get_array(), expected)
    with pytest.raises(IndexError, match="from 0 to"):
        sst.pl.cells(sdata, color="X_sst:100000", show=False)
    with pytest.raises(KeyError, match="neither a gene.*X_sst:0"):
        sst.pl.cells(sdata, color="X_nope:1", show=False)


def test_cells_categories_follow_stored_colours_and_missing_cells(predicted):
    sdata, _ = predicted
    sdata = sd.SpatialData(
        images=dict(sdata.images), shapes=dict(sdata.shapes), tables=dict(sdata.tables)
    )
    table = sdata["sst_cells_table"].copy()
    kind = np.array(["a", "b", "c"])[np.arange(table.n_obs) % 3]
    table.obs["kind"] = pd.Categorical(kind)
    table.uns["kind_colors"] = ["#ff0000", "#00ff00", "#0000ff"]
    sdata.tables["sst_cells_table"] = table
    ax = sst.pl.cells(sdata, color="kind", alpha=1.0, show=False)
    face = ax.collections[0].get_facecolor()[:, :3]
    np.testing.assert_allclose(
        face, to_rgba_array(table.uns["kind_colors"])[:, :3][np.arange(table.n_obs) % 3]
    )
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["a", "b", "c"]
    # scanpy's palette without stored colours; a table holding some cells only: grey for the rest
    del table.uns["kind_colors"]
    sub = sdata["sst_expression"][::2].copy()
    sub.obs["kind"] = pd.Categorical(kind[::2])
    sdata.tables["sub"] = sub
    ax = sst.pl.cells(sdata, color="kind", table_key="sub", alpha=1.0, show=False)
    face = ax.collections[0].get_facecolor()[:, :3]
    from scanpy.plotting.palettes import default_20

    np.testing.assert_allclose(face[0], to_rgba_array(default_20[0])[0, :3])
    np.testing.assert_allclose(
        face[1::2], np.broadcast_to(to_rgba_array("lightgray")[0, :3], face[1::2].shape)
    )


def test_cells_large_view_draws_discs_of_nucleus_area(predicted):
    sdata, model = predicted
    ax = sst.pl.cells(sdata, color=model.genes[0], max_polygons=100, show=False)
    coll = ax.collections[0]
    assert isinstance(coll, EllipseCollection) and coll.get_rasterized()
    n = sdata["sst_cells_table"].n_obs
    assert len(coll.get_offsets()) == n
    np.testing.assert_allclose(coll.get_offsets(), sdata["sst_cells_table"].obsm["spatial"] * MPP)
    area = shapely.area(sdata.shapes["sst_cells"].geometry.to_numpy()) * MPP**2
    np.testing.assert_allclose(coll._widths, np.sqrt(area / np.pi))  # half-widths, µm
    np.testing.assert_allclose(
        coll.get_array(), sdata["sst_expression"][:, model.genes[0]].X.ravel()
    )


def test_cells_draws_into_given_axes_and_show_default(predicted, monkeypatch, tmp_path):
    sdata, model = predicted
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(1))
    fig, axes = plt.subplots(1, 2)
    out = sst.pl.cells(sdata, color=model.genes[0], region=(0, 0, 100, 100), ax=axes[1])
    assert out is axes[1] and len(axes[1].collections) == 1 and not axes[0].collections
    assert shown == []  # an ax was given: not shown
    # own figure, not saved: shown and nothing returned (scanpy's convention: Jupyter would
    # otherwise draw the returned figure a second time)
    assert sst.pl.cells(sdata, region=(0, 0, 100, 100)) is None
    assert shown == [1]
    assert sst.pl.spots(sdata, model.genes[0]) is None and shown == [1, 1]
    saved = sst.pl.cells(sdata, region=(0, 0, 100, 100), save=tmp_path / "x.png")
    assert isinstance(saved, plt.Axes) and shown == [1, 1]
    assert isinstance(sst.pl.spots(sdata, model.genes[0], show=False), plt.Figure)
    with pytest.raises(ValueError, match="x1 > x0"):
        sst.pl.cells(sdata, region=(100, 0, 0, 100), show=False)
    empty = sd.SpatialData(
        images=dict(sdata.images),
        shapes=dict(sdata.shapes),
        tables={"sst_cells_table": sdata["sst_cells_table"]},
    )
    with pytest.raises(KeyError, match="sst.tl.predict"):
        sst.pl.cells(empty, color="EPCAM", table_key="sst_expression", show=False)


def test_spots_measured_and_pooled_predictions(predicted, tmp_path):
    sdata, model = predicted
    genes = model.genes[:2]
    fig = sst.pl.spots(sdata, genes, save=tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 10_000
    panels = [
        a for a in fig.axes if a.collections and isinstance(a.collections[0], EllipseCollection)
    ]
    assert len(panels) == 4
    scores = sst.tl.evaluate(sdata)
    spots = sdata.shapes["spots"]
    counts = sdata["spots_table"]
    cells = sdata["sst_cells_table"].obs["spot"].to_numpy()
    emb = sdata["sst_embedding"].obsm["X_sst"]
    for row, gene in enumerate(genes):
        measured, predicted_ = (panels[2 * row + k].collections[0] for k in (0, 1))
        xy = measured.get_offsets() / MPP
        ids = [
            spots.index[np.argmin(np.hypot(spots.geometry.x - x, spots.geometry.y - y))]
            for x, y in xy
        ]
        # circles of the true spot radius, in µm
        np.testing.assert_allclose(measured._widths, spots.loc[ids, "radius"] * MPP)
        # measured: log1p of counts per 10,000 of the spot
        rows = pd.Index(counts.obs["spot_id"]).get_indexer(ids)
        X = np.asarray(counts.X.todense() if hasattr(counts.X, "todense") else counts.X, float)
        expect = np.log1p(X[rows, counts.var_names.get_loc(gene)] / X[rows].sum(1) * 1e4)
        np.testing.assert_allclose(measured.get_array(), expect, rtol=1e-5)
        # predicted: the model's own pooling of the spot's cells, from their embeddings
        j = model.genes.index(gene)
        bag = pd.Index(ids).get_indexer(cells)  # the drawn spot of each cell, -1: none
        expect = model.predict_spots(emb[bag >= 0], bag[bag >= 0], len(ids))[:, j]
        np.testing.assert_allclose(predicted_.get_array(), expect, rtol=1e-4, atol=1e-5)
        assert measured.get_clim() == predicted_.get_clim()
        assert (
            panels[2 * row + 1].get_title()
            == f"{gene} predicted (r = {scores.loc[gene, 'pearson']:.2f})"
        )


def test_spots_subset_ax_and_errors(predicted):
    sdata, model = predicted
    ids = model.config["validation_spots"][0]
    fig, axes = plt.subplots(1, 2)
    out = sst.pl.spots(sdata, model.genes[0], spots=ids, ax=axes, scalebar=False)
    assert out is fig and len(axes[0].collections[0].get_offsets()) == len(ids)
    r = sst.tl.evaluate(sdata, spots=ids).loc[model.genes[0], "pearson"]
    assert axes[1].get_title().endswith(f"(r = {r:.2f})")
    with pytest.raises(KeyError, match="not predicted"):
        sst.pl.spots(sdata, "NOT_A_GENE", show=False)
    with pytest.raises(ValueError, match="2 Axes"):
        sst.pl.spots(sdata, model.genes[0], ax=axes[0], show=False)
    no_pred = sd.SpatialData(
        shapes=dict(sdata.shapes),
        images=dict(sdata.images),
        tables={k: v for k, v in sdata.tables.items() if k != "sst_expression"},
    )
    with pytest.raises(KeyError, match="sst.tl.predict"):
        sst.pl.spots(no_pred, model.genes[0], show=False)


def test_training_curves_from_model_table_and_encoder(predicted):
    sdata, model = predicted
    ax = sst.pl.training(model, logy=True, show=False)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["train"].get_ydata(), model.history["train_loss"])
    np.testing.assert_allclose(lines["validation"].get_ydata(), model.history["val_loss"])
    best = model.config["best_epoch"]
    assert lines[f"best epoch ({best})"].get_xdata()[0] == best and ax.get_yscale() == "log"
    ax = sst.pl.training(sdata, show=False)
    np.testing.assert_allclose(ax.get_lines()[0].get_ydata(), model.history["train_loss"])
    import torch

    enc = sst.tl.SSLEncoder(
        torch.nn.Linear(3, 2),
        arch="tiny",
        config={},
        history={"loss": [3.0, 2.0, 1.5]},
        device="cpu",
    )
    ax = sst.pl.training(enc, show=False)
    assert [line.get_ydata().tolist() for line in ax.get_lines()] == [[3.0, 2.0, 1.5]]
    with pytest.raises(ValueError, match="no training history"):
        sst.pl.training(sdata["sst_cells_table"], show=False)
    with pytest.raises(TypeError, match="MILModel"):
        sst.pl.training(42, show=False)


def test_gallery_shows_the_top_cells(predicted):
    sdata, model = predicted
    gene = model.genes[0]
    fig = sst.pl.gallery(sdata, gene, n=6, show=False)
    values = sdata["sst_expression"][:, gene].X.ravel()
    top = np.argsort(-values, kind="stable")[:6]
    panels = [a for a in fig.axes if a.images]
    assert len(panels) == 6
    assert [p.get_title() for p in panels] == [f"#{i}: {values[i]:.3g}" for i in top]
    xy = sdata["sst_cells_table"].obsm["spatial"][top] * MPP
    for panel, (x, y) in zip(panels, xy, strict=True):
        assert panel.images[0].get_array().shape == (36, 36, 3)  # 18 µm at 0.5 µm/px
        x0, x1 = panel.get_xlim()
        y1, y0 = panel.get_ylim()
        assert x1 - x0 == pytest.approx(18) and y1 - y0 == pytest.approx(18)
        assert abs((x0 + x1) / 2 - x) < MPP and abs((y0 + y1) / 2 - y) < MPP
        assert len(panel.get_lines()) == 1  # the nucleus outline
    fig = sst.pl.gallery(
        sdata, "area_um2", n=3, ascending=True, ax=plt.figure().subfigures(1, 1), show=False
    )
    area = sdata["sst_expression"].obs["area_um2"].to_numpy()
    low = np.argsort(area, kind="stable")[:3]
    assert [a.get_title() for a in fig.axes if a.images] == [f"#{i}: {area[i]:.3g}" for i in low]
    with pytest.raises(ValueError, match="categorical"):
        sst.pl.gallery(sdata, "region", show=False)


def test_gene_scores_bars_and_violins(predicted, tmp_path):
    sdata, _ = predicted
    scores = sst.tl.evaluate(sdata)
    ax = sst.pl.gene_scores(scores, top=5, save=tmp_path / "g.png")
    assert (tmp_path / "g.png").stat().st_size > 5_000
    heights = [b.get_height() for b in ax.patches]
    best = scores["pearson"].sort_values(ascending=False).head(5)
    np.testing.assert_allclose(heights, best.to_numpy())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(best.index)
    mean = [line for line in ax.get_lines() if line.get_label().startswith("mean")][0]
    assert mean.get_ydata()[0] == pytest.approx(scores.attrs["mean_pearson"])
    ax = sst.pl.gene_scores({"all": scores, "half": scores.iloc[::2]}, kind="violin", show=False)
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert len(dots) == 2  # one strip of genes per violin
    assert [t.get_text().split("\n")[0] for t in ax.get_xticklabels()] == ["all", "half"]
    np.testing.assert_allclose(dots[1].get_offsets()[:, 1], scores["pearson"].iloc[::2].dropna())
    with pytest.raises(KeyError, match="No column 'r2'"):
        sst.pl.gene_scores(scores, metric="r2", show=False)
    with pytest.raises(ValueError, match="kind='bar' only"):
        sst.pl.gene_scores(scores, kind="violin", top=3, show=False)


def test_spatialdata_plot_snippet_runs(predicted, tmp_path):
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sdata, model = predicted
    gene = model.genes[0]
    (
        sdata.pl.render_images("he")
        .pl.render_shapes("sst_cells", color=gene, table_name="sst_expression")
        .pl.show(coordinate_systems="microns", save=tmp_path / "sdp.png")
    )
    assert (tmp_path / "sdp.png").stat().st_size > 10_000
    ax = plt.gcf().axes[0]
    assert ax.get_xlim()[1] == pytest.approx(2048 * MPP, rel=0.05)  # µm
    # one patch per cell, coloured by the gene through viridis
    (cells,) = [c for c in ax.collections if len(c.get_paths()) == len(sdata.shapes["sst_cells"])]
    values = sdata["sst_expression"][:, gene].X.ravel()
    expected = matplotlib.colormaps["viridis"](Normalize(values.min(), values.max())(values))
    np.testing.assert_allclose(cells.get_facecolor()[:, :3], expected[:, :3], atol=1e-6)

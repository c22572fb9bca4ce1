"""``sst.tl.evaluate``: per-gene accuracy of predictions at spot level or at cell level, and the
scoring against the synthetic per-cell truth."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree
from scipy.stats import rankdata
from spatialdata import SpatialData

from .._sdata import spot_shape
from .._sdata import spots_key as resolve_spots_key
from ..constants import (
    CELLS_KEY,
    EMBEDDING_KEY,
    EMBEDDING_OBSM,
    EXPRESSION_KEY,
    SPATIAL_OBSM,
    SPOT_SHAPE_SQUARE,
    TRUE_EXPRESSION_KEY,
    TRUE_LABELS_KEY,
    UNS_KEY,
)
from ..io._scale import element_microns_per_unit
from .model import spot_predictions
from .spots import BAG_DEFAULTS, SlideBags, log_normalized, measured_spots, slide_bags

log = logging.getLogger(__name__)


def evaluate(
    sdata: SpatialData,
    model=None,
    *,
    level: str = "spot",
    truth: str | ad.AnnData | None = None,
    spots: Sequence | None = None,
    genes: Sequence[str] | None = None,
    table_key: str = EXPRESSION_KEY,
    embedding_key: str = EMBEDDING_KEY,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    min_spot_counts: int = 20,
    max_distance_um: float = 4.0,
    pooling: str | None = None,
    cell_dilation_um: float | None = None,
    bin_um: float | None = None,
) -> pd.DataFrame:
    """Per-gene Pearson and Spearman correlation of predictions with measured expression.

    - ``level="spot"``: the cell predictions of each spot are aggregated as in training (mean or
      sum, in the model's units) and compared, across spots, with the spot's measured
      log-normalised expression (``log1p`` of counts per 10,000). Use it on a held-out slide, or
      on the validation spots of a training slide (``spots=model.config["validation_spots"][i]``).
      Visium HD bins are pooled as the model was trained (``pooling``, ``cell_dilation_um``,
      ``bin_um`` of :func:`scellst.tl.fit`) unless given here.
    - ``level="cell"``: predictions of the segmented cells are compared, across cells, with a
      cells × genes ground truth: the synthetic truth of :func:`scellst.datasets.synthetic`
      (matched through the true nucleus under each centroid), or any table of measured cells,
      e.g. Xenium, matched to the segmented cells by nearest centroid. Truth counts (integer
      ``X``) are log-normalised per cell (``log1p`` of counts per 10,000 of the panel).

    Parameters
    ----------
    sdata
        The slide, with predictions (:func:`scellst.tl.predict`) or with an embedding and
        ``model``.
    model
        A :class:`~scellst.tl.MILModel`; when given, predictions are computed from the embedding
        table and ``table_key`` is not needed.
    level
        ``"spot"`` or ``"cell"``.
    truth
        ``level="cell"``: key of a cells × genes table of ``sdata``, or an
        :class:`~anndata.AnnData`, whose ``obsm["spatial"]`` holds the cell centroids (x, y) in
        the pixel frame of the segmented cells (the H&E's full-resolution pixels). Default: the
        synthetic truth ``"truth_expression"``.
    spots
        ``level="spot"``: instance ids of the spots to score (default: every spot with cells and
        at least ``min_spot_counts`` counts).
    genes
        Genes to score (default: every predicted gene that is measured).
    table_key, embedding_key, cells_key, spots_key
        The prediction table, the embedding table, the cell shapes and the spot circles.
    min_spot_counts
        Spots with fewer counts are not scored.
    max_distance_um
        ``level="cell"`` with a table of measured cells: largest centroid distance of a match.
    pooling, cell_dilation_um, bin_um
        ``level="spot"`` on square bins: how to pool cells into bins (see
        :func:`scellst.tl.fit`); default: as the model was trained (circles: centroid).

    Returns
    -------
    pandas.DataFrame
        One row per gene: ``pearson``, ``spearman``, ``mse`` (on log-normalised values) and
        ``n`` (spots or cells scored). ``attrs`` holds ``level``, ``mean_pearson``,
        ``mean_spearman`` (means over genes, NaN for constant genes left out), ``n_spots`` or
        ``n_cells`` and ``matched_fraction``, and ``missing_genes`` (predicted but not measured).

    Examples
    --------
    >>> sst.tl.predict(held_out, model)
    >>> scores = sst.tl.evaluate(held_out)
    >>> scores.attrs["mean_pearson"], scores.sort_values("pearson").tail()
    """
    if level == "spot":
        return _evaluate_spots(
            sdata,
            model,
            spots=spots,
            genes=genes,
            table_key=table_key,
            embedding_key=embedding_key,
            cells_key=cells_key,
            spots_key=spots_key,
            min_spot_counts=min_spot_counts,
            bag_settings={
                "pooling": pooling,
                "cell_dilation_um": cell_dilation_um,
                "bin_um": bin_um,
            },
        )
    if level == "cell":
        return _evaluate_cells(
            sdata,
            model,
            truth=truth,
            genes=genes,
            table_key=table_key,
            embedding_key=embedding_key,
            cells_key=cells_key,
            max_distance_um=max_distance_um,
        )
    raise ValueError(f"level must be 'spot' or 'cell', got {level!r}")


def score_genes(pred: np.ndarray, measured: np.ndarray, genes: Sequence[str]) -> pd.DataFrame:
    """Per-gene Pearson, Spearman and MSE of two (samples × genes) arrays."""
    pred = np.asarray(pred, np.float64)
    measured = np.asarray(measured, np.float64)
    if pred.shape != measured.shape:
        raise ValueError(f"Shapes differ: {pred.shape} vs {measured.shape}")
    table = pd.DataFrame(
        {
            "pearson": pearson_per_gene(pred, measured),
            "spearman": pearson_per_gene(rankdata(pred, axis=0), rankdata(measured, axis=0)),
            "mse": np.mean((pred - measured) ** 2, axis=0),
            "n": len(pred),
        },
        index=pd.Index(list(genes), name="gene"),
    )
    table.attrs["mean_pearson"] = _nanmean(table["pearson"])
    table.attrs["mean_spearman"] = _nanmean(table["spearman"])
    return table


def _nanmean(x) -> float:
    x = np.asarray(x, np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def spot_subset(bags: SlideBags, spots: Sequence | None) -> np.ndarray:
    if spots is None:
        return np.ones(bags.spots.n_obs, bool)
    wanted = pd.Index(list(spots))
    instance = pd.Index(bags.instance)
    unknown = wanted.difference(instance)
    if len(unknown):
        raise KeyError(
            f"{len(unknown)} of the requested spots are not scored (unknown ids, or spots without "
            f"cells or with < min_spot_counts counts): {list(unknown[:10])}."
        )
    return instance.isin(wanted)


def _prediction_info(sdata: SpatialData, table_key: str) -> tuple[ad.AnnData, dict]:
    if table_key not in sdata.tables:
        raise KeyError(
            f"No prediction table {table_key!r}: run `sst.tl.predict(sdata, model)` first, or pass "
            "`model=` to evaluate."
        )
    table = sdata.tables[table_key]
    info = table.uns.get(UNS_KEY, {}).get("prediction")
    if not info or "model" not in info:
        raise ValueError(
            f"Table {table_key!r} was not written by this version of `sst.tl.predict` (no "
            "uns['scellst']['prediction']['model']); predict again, or pass `model=`."
        )
    return table, info


def _spot_predictions_from_table(table: ad.AnnData, info: dict, bags: SlideBags) -> np.ndarray:
    """Aggregate the per-cell predictions of a table back into spot predictions."""
    rows = bags.pairs(bags.cell_index)
    cells = {"log_normalized": table.X[rows]}
    if "counts" in table.layers:
        cells["counts"] = table.layers["counts"][rows]
    return spot_predictions(cells, bags.bag, bags.spots.n_obs, info["model"], bags.weight)


def slide_spot_predictions(
    sdata: SpatialData,
    model=None,
    *,
    table_key: str = EXPRESSION_KEY,
    embedding_key: str = EMBEDDING_KEY,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    min_spot_counts: int = 20,
    bag_settings: dict | None = None,
) -> tuple[SlideBags, np.ndarray, list[str]]:
    """The spots of a slide and their predictions, pooled from the cells as in training.

    From ``model`` (predicting the embedding's cells) or, without it, from the prediction
    table ``table_key`` of :func:`~scellst.tl.predict` with the model settings it stores
    (:func:`spot_predictions`). Returns the slide's bags (kept spots: with cells and
    ``min_spot_counts`` counts), the kept spots × predicted genes predictions and the
    predicted genes. Square bins are pooled with ``bag_settings`` (``pooling``,
    ``cell_dilation_um``, ``bin_um``; None entries: as the model was trained).
    """
    if model is None:
        table, info = _prediction_info(sdata, table_key)
        embedding_key = info.get("embedding_key", embedding_key)
        recorded = info["model"].get("bags", {})
    else:
        recorded = model.config.get("bags", {})
    bags = slide_bags(
        sdata,
        cells_key=cells_key,
        embedding_key=embedding_key,
        spots_key=spots_key,
        min_counts=min_spot_counts,
        **_bag_settings(sdata, spots_key, recorded, bag_settings or {}),
    )
    if model is not None:
        pred = model.predict_spots(
            bags.features, bags.bag, bags.spots.n_obs, cell=bags.pair_cell, weight=bags.weight
        )
        return bags, pred, model.genes
    if table.n_obs != len(sdata.tables[embedding_key]):
        raise ValueError(
            f"Table {table_key!r} has {table.n_obs} cells but the embedding has "
            f"{len(sdata.tables[embedding_key])}; predict again."
        )
    return bags, _spot_predictions_from_table(table, info, bags), list(table.var_names)


def _bag_settings(sdata: SpatialData, spots_key, recorded: dict, given: dict) -> dict:
    """The bag settings to evaluate with: those given, else those of training (square bins only;
    circles are always pooled by centroid)."""
    if spot_shape(sdata, resolve_spots_key(sdata, spots_key)) != SPOT_SHAPE_SQUARE:
        recorded = {}
    out = {}
    for key, default in BAG_DEFAULTS.items():
        value = given.get(key)
        out[key] = value if value is not None else recorded.get(key, default)
    return out


def _evaluate_spots(
    sdata,
    model,
    *,
    spots,
    genes,
    table_key,
    embedding_key,
    cells_key,
    spots_key,
    min_spot_counts,
    bag_settings=None,
) -> pd.DataFrame:
    bags, pred, predicted_genes = slide_spot_predictions(
        sdata,
        model,
        table_key=table_key,
        embedding_key=embedding_key,
        cells_key=cells_key,
        spots_key=spots_key,
        min_spot_counts=min_spot_counts,
        bag_settings=bag_settings,
    )
    keep_genes, missing = _genes_to_score(predicted_genes, bags.spots.var_names, genes)
    idx = [predicted_genes.index(g) for g in keep_genes]
    mask = spot_subset(bags, spots)
    result = score_genes(pred[mask][:, idx], measured_spots(bags, keep_genes)[mask], keep_genes)
    result.attrs.update(
        level="spot", n_spots=int(mask.sum()), missing_genes=missing, spots=bags.skipped()
    )
    return result


def _genes_to_score(predicted, measured, genes) -> tuple[list[str], list[str]]:
    measured = set(measured)
    if genes is not None:
        genes = list(genes)
        unknown = [g for g in genes if g not in predicted]
        if unknown:
            raise KeyError(f"Genes not predicted by the model: {unknown[:20]}.")
        predicted = genes
    missing = [g for g in predicted if g not in measured]
    if missing:
        log.warning("evaluate: %d predicted genes are not measured: %s", len(missing), missing[:10])
    keep = [g for g in predicted if g in measured]
    if not keep:
        raise ValueError("None of the predicted genes is measured: nothing to score.")
    return keep, missing


def _evaluate_cells(
    sdata, model, *, truth, genes, table_key, embedding_key, cells_key, max_distance_um
) -> pd.DataFrame:
    if model is None:
        table, _ = _prediction_info(sdata, table_key)
        pred, predicted_genes = np.asarray(table.X), list(table.var_names)
        xy = np.asarray(table.obsm[SPATIAL_OBSM])
        source, cells_key = table_key, table.uns[UNS_KEY]["prediction"]["cells_key"]
    else:
        if embedding_key not in sdata.tables:
            raise KeyError(f"No embedding table {embedding_key!r}: run `sst.tl.embed` first.")
        emb = sdata.tables[embedding_key]
        pred = model.predict_cells(emb.obsm[EMBEDDING_OBSM])["log_normalized"]
        predicted_genes, xy = model.genes, np.asarray(emb.obsm[SPATIAL_OBSM])
        source = embedding_key
        cells_key = emb.uns.get(UNS_KEY, {}).get("embedding", {}).get("cells_key", cells_key)
    synthetic = truth is None or (isinstance(truth, str) and truth == TRUE_EXPRESSION_KEY)
    if synthetic and TRUE_LABELS_KEY in sdata.labels and TRUE_EXPRESSION_KEY in sdata.tables:
        truth_table = sdata.tables[TRUE_EXPRESSION_KEY]
        rows, truth_rows = match_truth_cells(sdata, source)
        truth_values = truth_table.X
    else:
        if truth is None:
            raise ValueError(
                "No cell-level truth: pass `truth=` (a table key of sdata or an AnnData with "
                "cells × genes and obsm['spatial'] centroids in the cells' pixel frame)."
            )
        truth_table = sdata.tables[truth] if isinstance(truth, str) else truth
        if SPATIAL_OBSM not in truth_table.obsm:
            raise ValueError("The truth table needs obsm['spatial']: cell centroids (x, y) in px.")
        mpu = element_microns_per_unit(sdata, cells_key)
        rows, truth_rows = _match_nearest(
            xy, np.asarray(truth_table.obsm[SPATIAL_OBSM]), max_distance_um / mpu
        )
        truth_values = _truth_log_normalized(truth_table)
    matched = len(rows) / max(len(xy), 1)
    keep_genes, missing = _genes_to_score(predicted_genes, truth_table.var_names, genes)
    idx = [predicted_genes.index(g) for g in keep_genes]
    truth_idx = truth_table.var_names.get_indexer(keep_genes)
    tv = truth_values[truth_rows][:, truth_idx]
    tv = tv.toarray() if sp.issparse(tv) else np.asarray(tv)
    result = score_genes(np.asarray(pred)[rows][:, idx], tv, keep_genes)
    result.attrs.update(
        level="cell", n_cells=int(len(rows)), matched_fraction=float(matched), missing_genes=missing
    )
    return result


def _truth_log_normalized(table: ad.AnnData):
    X = table.X
    sample = X[: min(200, X.shape[0])]
    sample = sample.toarray() if sp.issparse(sample) else np.asarray(sample)
    if (sample >= 0).all() and np.allclose(sample, np.round(sample)) and sample.max() > 1:
        return log_normalized(X, np.asarray(X.sum(1)).ravel())
    return X


def _match_nearest(xy: np.ndarray, truth_xy: np.ndarray, max_distance: float):
    """One-to-one matches of predicted cells to truth cells by nearest centroid (closest wins)."""
    if len(xy) == 0 or len(truth_xy) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist, nearest = cKDTree(truth_xy).query(xy, k=1, distance_upper_bound=max_distance)
    hit = np.flatnonzero(np.isfinite(dist))
    order = hit[np.argsort(dist[hit], kind="stable")]
    _, first = np.unique(nearest[order], return_index=True)
    rows = np.sort(order[first])
    return rows, nearest[rows]


def match_truth_cells(
    sdata: SpatialData, table_key: str = EXPRESSION_KEY
) -> tuple[np.ndarray, np.ndarray]:
    """Rows of ``table_key`` whose centroid falls inside a true nucleus, and that nucleus' row
    in the truth table. Cells found in background (false detections) are left out."""
    table = sdata.tables[table_key]
    labels = np.asarray(sdata[TRUE_LABELS_KEY].data)
    xy = np.asarray(table.obsm[SPATIAL_OBSM])
    rows = np.clip(xy[:, 1].astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(xy[:, 0].astype(int), 0, labels.shape[1] - 1)
    ids = labels[rows, cols]
    truth = sdata.tables[TRUE_EXPRESSION_KEY]
    position = np.full(int(labels.max()) + 1, -1)
    position[truth.obs["cell_id"].to_numpy()] = np.arange(truth.n_obs)
    hit = np.flatnonzero(ids > 0)
    return hit, position[ids[hit]]


def pearson_per_gene(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of each column of ``a`` with the same column of ``b`` (NaN where
    either column is constant, up to rounding)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if len(a) == 0:
        return np.full(a.shape[1], np.nan)
    constant = _constant(a) | _constant(b)
    a = a - np.mean(a, 0)
    b = b - np.mean(b, 0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((denom > 0) & ~constant, (a * b).sum(0) / denom, np.nan)


def _constant(x: np.ndarray) -> np.ndarray:
    """Columns whose spread is at the level of floating-point rounding."""
    return np.ptp(x, 0) <= 1e-9 * np.abs(x).max(0)


def score_against_truth(sdata: SpatialData, table_key: str = EXPRESSION_KEY) -> dict:
    """Per-gene Pearson of predicted vs true cell expression on a synthetic slide.

    :func:`evaluate` at cell level (the predictions of table ``table_key``, written by
    :func:`scellst.tl.predict`), summarised: the mean over the marker genes, the
    morphology-linked genes and all genes, the fraction of predicted cells matched to a true
    nucleus, and the per-gene values.
    """
    scores = evaluate(sdata, level="cell", table_key=table_key)
    per_gene = scores["pearson"].to_dict()
    truth = sdata.tables[TRUE_EXPRESSION_KEY]
    markers = [g for genes in truth.uns["marker_genes"].values() for g in genes if g in per_gene]
    morphology = [g for g in truth.uns["morphology_genes"] if g in per_gene]
    return {
        "markers": _mean_of(per_gene, markers),
        "morphology": _mean_of(per_gene, morphology),
        "all": scores.attrs["mean_pearson"],
        "matched": scores.attrs["matched_fraction"],
        "per_gene": per_gene,
    }


def _mean_of(per_gene: dict, genes: list[str]) -> float:
    return float(np.mean([per_gene[g] for g in genes])) if genes else float("nan")

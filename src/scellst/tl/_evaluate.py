"""Scoring predictions against a per-cell truth (synthetic slides)."""

from __future__ import annotations

import numpy as np
from spatialdata import SpatialData

from ..constants import EXPRESSION_KEY, SPATIAL_OBSM, TRUE_EXPRESSION_KEY, TRUE_LABELS_KEY


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
    """Pearson correlation of each column of ``a`` with the same column of ``b``."""
    a = np.asarray(a, dtype=np.float64) - np.mean(a, 0)
    b = np.asarray(b, dtype=np.float64) - np.mean(b, 0)
    denom = np.sqrt((a * a).sum(0) * (b * b).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (a * b).sum(0) / denom, np.nan)


def score_against_truth(sdata: SpatialData, table_key: str = EXPRESSION_KEY) -> dict:
    """Per-gene Pearson of predicted vs true cell expression on a synthetic slide.

    Returns the mean over the marker genes, the morphology-linked genes and all genes, the
    fraction of predicted cells matched to a true nucleus, and the per-gene values.
    """
    pred, truth = sdata.tables[table_key], sdata.tables[TRUE_EXPRESSION_KEY]
    rows, truth_rows = match_truth_cells(sdata, table_key)
    r = pearson_per_gene(
        np.asarray(pred.X)[rows], np.asarray(truth[:, pred.var_names].X)[truth_rows]
    )
    per_gene = dict(zip(pred.var_names, r, strict=True))
    markers = [g for genes in truth.uns["marker_genes"].values() for g in genes if g in per_gene]
    morphology = [g for g in truth.uns["morphology_genes"] if g in per_gene]
    return {
        "markers": float(np.mean([per_gene[g] for g in markers])) if markers else float("nan"),
        "morphology": float(np.mean([per_gene[g] for g in morphology]))
        if morphology
        else float("nan"),
        "all": float(np.nanmean(r)),
        "matched": len(rows) / max(pred.n_obs, 1),
        "per_gene": per_gene,
    }

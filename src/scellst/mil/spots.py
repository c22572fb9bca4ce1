"""Training data of one slide: cell embeddings grouped into spot bags, and the spots' counts
and log-normalised targets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from spatialdata import SpatialData

from .._sdata import spots_key as resolve_spots_key
from .._sdata import table_for_element, table_link
from .._tables import cells_table
from ..constants import EMBEDDING_OBSM, NO_SPOT, SPOT_COLUMN, UNS_KEY
from ..io._scale import element_microns_per_unit

log = logging.getLogger(__name__)

#: Spot targets (sCellST): log1p of counts per TARGET_SUM of the spot (all genes).
TARGET_SUM = 1e4


@dataclass
class SlideBags:
    """Cells of the spots of one slide, ordered by spot, with the spots' measured counts."""

    features: np.ndarray  # (n_cells, D) embeddings of cells inside kept spots, grouped by spot
    bag: np.ndarray  # (n_cells,) index of the spot (0..n_spots-1) of each cell
    spots: ad.AnnData  # kept spots x all genes, raw counts; obs has 'x_um', 'y_um'
    feature_names: list[str]
    encoder: str
    cell_index: np.ndarray  # (n_cells,) row of each cell in the cells/embedding table
    spots_key: str = ""
    n_spots_total: int = 0  # spots in the table before filtering
    n_no_cells: int = 0  # spots skipped because no segmented cell lies in them
    n_low_counts: int = 0  # spots skipped because of fewer than min_counts counts
    encoder_info: dict | None = None  # the embedding's provenance (no slide-specific statistics)

    @property
    def total_counts(self) -> np.ndarray:
        """Total counts of each kept spot over all genes (the normalisation of the targets)."""
        return np.asarray(self.spots.X.sum(1), dtype=np.float64).ravel()

    @property
    def instance(self) -> np.ndarray:
        """Instance ids (spot circle index labels) of the kept spots, in bag order."""
        return self.spots.obs["_instance"].to_numpy()

    def skipped(self) -> dict:
        """Counts of spots dropped before training, for reports."""
        return {
            "spots_key": self.spots_key,
            "n_spots": int(self.n_spots_total),
            "n_kept": int(self.spots.n_obs),
            "n_without_cells": int(self.n_no_cells),
            "n_low_counts": int(self.n_low_counts),
        }


def slide_bags(
    sdata: SpatialData,
    *,
    cells_key: str,
    embedding_key: str,
    spots_key: str | None,
    min_counts: int,
) -> SlideBags:
    """Collect the bags of a slide (assigning cells to spots first when that was not done)."""
    if embedding_key not in sdata.tables:
        raise KeyError(
            f"No embedding table {embedding_key!r}: run `sst.tl.embed(sdata)` first (or pass "
            "`embedding_key`)."
        )
    emb = sdata.tables[embedding_key]
    info = emb.uns.get(UNS_KEY, {}).get("embedding", {})
    cells_key = info.get("cells_key", cells_key)
    cells = cells_table(sdata, cells_key)
    skey = resolve_spots_key(sdata, spots_key)
    assigned_to = cells.uns.get(UNS_KEY, {}).get("assignment", {}).get("spots_key")
    if SPOT_COLUMN not in cells.obs or assigned_to != skey:
        from .assign import assign_cells

        log.info("fit: assigning cells of %r to spots %r", cells_key, skey)
        assign_cells(sdata, cells_key, skey, overwrite=True)
    spot_of_cell = cells.obs[SPOT_COLUMN].to_numpy()
    if emb.n_obs != cells.n_obs:
        raise ValueError(
            f"Embedding table {embedding_key!r} has {emb.n_obs} cells but the cells table has "
            f"{cells.n_obs}; re-run sst.tl.embed after segmenting."
        )
    spots = _spots_table(sdata, skey)
    # order spots as the table; drop low-count spots and spots without any cell
    total = np.asarray(spots.X.sum(1)).ravel()
    _, instance_key = table_link(spots)
    instance = spots.obs[instance_key].to_numpy()
    has_cells = np.isin(instance, spot_of_cell[spot_of_cell != NO_SPOT])
    keep = has_cells & (total >= min_counts)
    if (~has_cells).any():
        log.warning(
            "%d of %d spots of %r contain no segmented cell and are skipped.",
            int((~has_cells).sum()),
            len(has_cells),
            skey,
        )
    if not keep.any():
        raise ValueError(
            f"No spot of {skey!r} has both a segmented cell and >= {min_counts} counts: check that "
            "the spots lie on the tissue and that segmentation found nuclei."
        )
    n_total = len(keep)
    n_low = int((has_cells & (total < min_counts)).sum())
    spots = spots[keep].copy()
    instance = instance[keep]
    spots.obs["_instance"] = instance
    pos = pd.Series(np.arange(len(instance)), index=instance)
    in_bag = np.isin(spot_of_cell, instance)
    cell_idx = np.flatnonzero(in_bag)
    bag = pos.loc[spot_of_cell[cell_idx]].to_numpy()
    order = np.argsort(bag, kind="stable")
    features = np.asarray(emb.obsm[EMBEDDING_OBSM], dtype=np.float32)[cell_idx[order]]
    # spot centres in µm, for spatially blocked validation splits
    gdf = sdata.shapes[skey].loc[instance]
    mpu = element_microns_per_unit(sdata, skey)
    spots.obs["x_um"] = gdf.geometry.x.to_numpy() * mpu
    spots.obs["y_um"] = gdf.geometry.y.to_numpy() * mpu
    return SlideBags(
        features=features,
        bag=bag[order],
        spots=spots,
        feature_names=list(info.get("feature_names", [])),
        encoder=info.get("encoder", "unknown"),
        cell_index=cell_idx[order],
        spots_key=skey,
        n_spots_total=n_total,
        n_no_cells=int((~has_cells).sum()),
        n_low_counts=n_low,
        encoder_info=encoder_reference(info),
    )


def log_normalized(counts, total: np.ndarray) -> np.ndarray:
    """``log1p`` of counts per TARGET_SUM (10,000) of ``total`` (dense float64)."""
    counts = counts.toarray() if sp.issparse(counts) else np.asarray(counts)
    return np.log1p(counts / np.maximum(np.asarray(total, np.float64), 1)[:, None] * TARGET_SUM)


def measured_spots(bags: SlideBags, genes: Sequence[str]) -> np.ndarray:
    """Measured log-normalised expression of the kept spots of a slide (the MSE targets)."""
    return log_normalized(bags.spots[:, list(genes)].X, bags.total_counts)


def encoder_reference(info: dict) -> dict:
    """What identifies the encoder of an embedding (its name, crop geometry, provenance).

    Slide-specific entries (colour statistics, keys of the slide's elements) are left out.
    """
    keep = ("encoder", "crop_size_um", "crop_mpp", "provenance", "context")
    return {k: _plain(info[k]) for k in keep if k in info}


def embedding_context(info: dict) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The neighbourhood context (radii in µm, statistics) of an embedding's ``uns`` entry or
    of a model's ``encoder_info``; ``((), ())`` when none is recorded (older embeddings)."""
    ctx = info.get("context") or {}
    radii = tuple(float(r) for r in np.atleast_1d(ctx.get("radii_um", [])))
    stats = tuple(str(s) for s in np.atleast_1d(ctx.get("stats", []))) if radii else ()
    return radii, stats


def check_embedding_context(info: dict, reference: dict, embedding_key: str) -> None:
    """Raise if the embedding (``info``: its ``uns["scellst"]["embedding"]``) was made with
    another neighbourhood context than ``reference`` (a model's ``config["encoder_info"]``)."""
    got, want = embedding_context(info), embedding_context(reference)
    if got != want:

        def say(ctx):
            return f"{list(ctx[0])} µm ({', '.join(ctx[1])})" if ctx[0] else "none"

        raise ValueError(
            f"The model was trained on embeddings with neighbourhood context {say(want)} but "
            f"{embedding_key!r} has context {say(got)}; re-embed this slide with "
            f"sst.tl.embed(sdata, context_um={list(want[0]) or 0}"
            + (f", context_stats={list(want[1])}" if want[0] else "")
            + ", overwrite=True)."
        )


def _plain(value):
    """JSON/zarr-friendly copy: numpy scalars and arrays to Python, None to ''."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return "" if value is None else value


def _spots_table(sdata: SpatialData, skey: str) -> ad.AnnData:
    tkey = table_for_element(sdata, skey)
    table = sdata.tables[tkey]
    table_link(table)
    X = table.X
    if X is None or X.shape[1] == 0:
        raise ValueError(f"Spots table {tkey!r} has no genes.")
    sample = X[: min(50, X.shape[0])]
    sample = sample.toarray() if sp.issparse(sample) else np.asarray(sample)
    if (sample < 0).any() or not np.allclose(sample, np.round(sample)):
        raise ValueError(
            f"Spots table {tkey!r} must hold raw counts in X (non-negative integers); it looks "
            "normalised. Put raw counts in X (e.g. from adata.layers['counts'])."
        )
    out = ad.AnnData(
        X=sp.csr_matrix(X, dtype=np.float32),
        obs=table.obs.copy(),
        var=table.var.copy(),
        uns={"spatialdata_attrs": table.uns["spatialdata_attrs"]},
    )
    out.var_names_make_unique()
    return out

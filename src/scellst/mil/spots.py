"""Training data of one slide: cell embeddings grouped into spot bags, and the spots' counts
and log-normalised targets.

A bag is the cells whose centroid lies in a spot (circle or square bin), or, with overlap-aware
pooling of square bins, every cell overlapping the bin with a weight: the fraction of the cell
(nucleus, optionally dilated) lying in the bin. The bags then hold (cell, bin, weight) pairs,
and the trainer's pooling is a weighted sum (:func:`scellst.mil.pooling.aggregate`).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from spatialdata import SpatialData

from .._sdata import spot_shape, table_for_element, table_link
from .._sdata import spots_key as resolve_spots_key
from .._tables import cells_table
from ..constants import (
    EMBEDDING_OBSM,
    NO_SPOT,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_SHAPE_SQUARE,
    UNS_KEY,
)
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
    # overlap-aware pooling (square bins): then ``features`` / ``cell_index`` have one row per
    # cell, and ``bag``, ``pair_cell``, ``weight`` one per (cell, bin) pair, grouped by bin:
    # bin ``bag[k]`` holds cell ``pair_cell[k]`` (a row of ``features``) with weight
    # ``weight[k]``. None for centroid pooling (one pair per cell, weight 1).
    pair_cell: np.ndarray | None = None
    weight: np.ndarray | None = None
    pooling: dict | None = None  # how the bags were made (bag_options + spot shape)
    grid: object = None  # square bins: the BinGrid (cells' pixels) and (row, col) of kept bins
    bins: np.ndarray | None = None
    cells_key: str = ""  # the cell shapes whose pixel frame ``grid`` is in

    @property
    def total_counts(self) -> np.ndarray:
        """Total counts of each kept spot over all genes (the normalisation of the targets)."""
        return np.asarray(self.spots.X.sum(1), dtype=np.float64).ravel()

    @property
    def instance(self) -> np.ndarray:
        """Instance ids (spot circle index labels) of the kept spots, in bag order."""
        return self.spots.obs["_instance"].to_numpy()

    def pairs(self, values: np.ndarray) -> np.ndarray:
        """Per-cell ``values`` (rows of ``features``) repeated for each (cell, bin) pair."""
        return values if self.pair_cell is None else values[self.pair_cell]

    @property
    def cells_per_spot(self) -> np.ndarray:
        """Cells of each kept spot (sum of the weights with overlap-aware pooling)."""
        w = None if self.weight is None else self.weight
        return np.bincount(self.bag, weights=w, minlength=self.spots.n_obs)

    def skipped(self) -> dict:
        """Counts of spots dropped before training, for reports."""
        return {
            "spots_key": self.spots_key,
            "n_spots": int(self.n_spots_total),
            "n_kept": int(self.spots.n_obs),
            "n_without_cells": int(self.n_no_cells),
            "n_low_counts": int(self.n_low_counts),
        }


#: Defaults of the bag-making settings of :func:`~scellst.tl.fit` (square bins only): on the
#: synthetic HD benchmark (BENCHMARKS.md, "Visium HD") overlap-aware pooling of nuclei dilated by
#: 3 µm recovered marker genes per cell best.
BAG_DEFAULTS = {"pooling": "auto", "cell_dilation_um": 3.0, "bin_um": None}
#: The dilation of the synthetic HD slides' cells is the same, so the benchmark favours it: on
#: real tissue it is an estimate of a cytoplasm rim, not a measured optimum.


def bag_options(
    pooling: str = BAG_DEFAULTS["pooling"],
    cell_dilation_um: float = BAG_DEFAULTS["cell_dilation_um"],
    bin_um: float | None = BAG_DEFAULTS["bin_um"],
) -> dict:
    """The bag-making settings, checked (see :func:`scellst.tl.fit`)."""
    from .hd import POOLINGS

    if pooling not in POOLINGS:
        raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
    dilation = float(cell_dilation_um)
    if not np.isfinite(dilation) or dilation < 0:
        raise ValueError(f"cell_dilation_um must be >= 0 µm, got {cell_dilation_um!r}")
    if bin_um is not None:
        bin_um = float(bin_um)
        if not np.isfinite(bin_um) or bin_um <= 0:
            raise ValueError(f"bin_um must be None or a positive number of µm, got {bin_um!r}")
    return {"pooling": pooling, "cell_dilation_um": dilation, "bin_um": bin_um}


def slide_bags(
    sdata: SpatialData,
    *,
    cells_key: str,
    embedding_key: str,
    spots_key: str | None,
    min_counts: int,
    pooling: str = BAG_DEFAULTS["pooling"],
    cell_dilation_um: float = BAG_DEFAULTS["cell_dilation_um"],
    bin_um: float | None = BAG_DEFAULTS["bin_um"],
) -> SlideBags:
    """Collect the bags of a slide (assigning cells to spots first when that was not done).

    ``pooling``, ``cell_dilation_um`` and ``bin_um`` (:func:`bag_options`) apply to square bins
    (``"auto"``: ``"overlap"`` there, ``"centroid"`` on circles): ``"overlap"`` weighs each cell by the fraction of it (nucleus dilated by
    ``cell_dilation_um``) in each bin, ``bin_um`` pools the bins into coarser ones first.
    """
    options = bag_options(pooling, cell_dilation_um, bin_um)
    if embedding_key not in sdata.tables:
        raise KeyError(
            f"No embedding table {embedding_key!r}: run `sst.tl.embed(sdata)` first (or pass "
            "`embedding_key`)."
        )
    emb = sdata.tables[embedding_key]
    info = emb.uns.get(UNS_KEY, {}).get("embedding", {})
    cells_key = info.get("cells_key", cells_key)
    cells = cells_table(sdata, cells_key)
    if emb.n_obs != cells.n_obs:
        raise ValueError(
            f"Embedding table {embedding_key!r} has {emb.n_obs} cells but the cells table has "
            f"{cells.n_obs}; re-run sst.tl.embed after segmenting."
        )
    skey = resolve_spots_key(sdata, spots_key)
    shape = spot_shape(sdata, skey)
    options["spot_shape"] = shape
    if options["pooling"] == "auto":
        options["pooling"] = "overlap" if shape == SPOT_SHAPE_SQUARE else "centroid"
    if shape != SPOT_SHAPE_SQUARE and (options["pooling"] != "centroid" or bin_um is not None):
        raise ValueError(
            f"pooling={options['pooling']!r} and bin_um apply to square bins (Visium HD, "
            f"`sst.io.read_visium_hd`); spots {skey!r} are circles: use pooling='centroid' and "
            "bin_um=None."
        )
    spots = _spots_table(sdata, skey)
    squares = None
    if shape == SPOT_SHAPE_SQUARE:
        from .hd import coarsening_factor, square_bins

        squares = square_bins(sdata, skey, cells_key)
        options["bin_size_um"] = squares.size_um
        if coarsening_factor(bin_um, squares.size_um) > 1 or options["pooling"] == "overlap":
            return _weighted_bags(sdata, emb, info, cells, cells_key, skey, spots, squares,
                                  options, min_counts)  # fmt: skip
    assigned_to = cells.uns.get(UNS_KEY, {}).get("assignment", {}).get("spots_key")
    if SPOT_COLUMN not in cells.obs or assigned_to != skey:
        from .assign import assign_cells

        log.info("fit: assigning cells of %r to spots %r", cells_key, skey)
        assign_cells(sdata, cells_key, skey, overwrite=True)
    spot_of_cell = cells.obs[SPOT_COLUMN].to_numpy()
    # order spots as the table; drop low-count spots and spots without any cell
    _, instance_key = table_link(spots)
    instance = spots.obs[instance_key].to_numpy()
    has_cells = np.isin(instance, spot_of_cell[spot_of_cell != NO_SPOT])
    keep = _kept_spots(spots, has_cells, min_counts, skey, sample_id(sdata, skey))
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
    centres = gdf.geometry if shape != SPOT_SHAPE_SQUARE else gdf.geometry.centroid
    mpu = element_microns_per_unit(sdata, skey)
    spots.obs["x_um"] = centres.x.to_numpy() * mpu
    spots.obs["y_um"] = centres.y.to_numpy() * mpu
    geometry = {}
    if squares is not None:
        row_of = pd.Index(squares.ids).get_indexer(instance)
        geometry = {"grid": squares.grid, "bins": squares.bins[row_of]}
    return SlideBags(
        features=features,
        bag=bag[order],
        spots=spots,
        feature_names=list(info.get("feature_names", [])),
        encoder=info.get("encoder", "unknown"),
        cell_index=cell_idx[order],
        spots_key=skey,
        n_spots_total=len(keep),
        n_no_cells=int((~has_cells).sum()),
        n_low_counts=int((has_cells & ~keep).sum()),
        encoder_info=encoder_reference(info),
        pooling=options,
        cells_key=cells_key,
        **geometry,
    )


def _kept_spots(
    spots: ad.AnnData, has_cells: np.ndarray, min_counts: int, skey: str, sample: str | None
):
    """Spots with a cell and at least ``min_counts`` counts (a warning for those without cells);
    ``sample`` (:func:`sample_id`) names the slide in the messages."""
    label = repr(sample or "?")
    total = np.asarray(spots.X.sum(1)).ravel()
    keep = has_cells & (total >= min_counts)
    if (~has_cells).any():
        log.warning(
            "%d of %d spots of %r (slide %s) contain no segmented cell and are skipped.",
            int((~has_cells).sum()),
            len(has_cells),
            skey,
            label,
        )
    if not keep.any():
        raise ValueError(
            f"No spot of {skey!r} (slide {label}) has both a segmented cell and >= {min_counts} "
            "counts: check that the spots lie on the tissue and that segmentation found nuclei."
        )
    return keep


def _weighted_bags(
    sdata, emb, info, cells, cells_key, skey, spots, squares, options, min_counts
) -> SlideBags:
    """Bags of square bins, possibly coarsened, as (cell, bin, weight) pairs."""
    from .hd import cell_weights, coarsen, coarsening_factor

    factor = coarsening_factor(options["bin_um"], squares.size_um)
    if factor > 1:
        # the table's bins in the order of squares (the table's order), summed into coarse bins
        squares, counts = coarsen(squares, factor, spots.X)
        spots = ad.AnnData(
            X=sp.csr_matrix(counts, dtype=np.float32),
            obs=pd.DataFrame(
                {"array_row": squares.bins[:, 0], "array_col": squares.bins[:, 1]},
                index=pd.Index([f"bin_{r}_{c}" for r, c in squares.bins]),
            ),
            var=spots.var.copy(),
        )
    spots.obs["_instance"] = squares.ids
    mpu = element_microns_per_unit(sdata, cells_key)
    polygons = None
    if options["pooling"] == "overlap":
        _, cell_instance = table_link(cells)
        shapes = sdata.shapes[cells_key]
        polygons = shapes.geometry.loc[cells.obs[cell_instance].to_numpy()].values
    weights = cell_weights(
        squares,
        np.asarray(cells.obsm[SPATIAL_OBSM]),
        polygons,
        pooling=options["pooling"],
        dilation_px=options["cell_dilation_um"] / mpu,
    )  # cells x bins
    by_bin = sparse_by_bin(weights)
    has_cells = np.diff(by_bin.indptr) > 0
    keep = _kept_spots(spots, has_cells, min_counts, skey, sample_id(sdata, skey))
    by_bin = by_bin[keep]
    cell_idx = np.unique(by_bin.indices)
    spots = spots[keep].copy()
    centres_um = squares.grid.centres(squares.bins[keep]) * mpu
    spots.obs["x_um"], spots.obs["y_um"] = centres_um[:, 0], centres_um[:, 1]
    return SlideBags(
        features=np.asarray(emb.obsm[EMBEDDING_OBSM], dtype=np.float32)[cell_idx],
        bag=np.repeat(np.arange(by_bin.shape[0]), np.diff(by_bin.indptr)),
        spots=spots,
        feature_names=list(info.get("feature_names", [])),
        encoder=info.get("encoder", "unknown"),
        cell_index=cell_idx,
        spots_key=skey,
        n_spots_total=len(keep),
        n_no_cells=int((~has_cells).sum()),
        n_low_counts=int((has_cells & ~keep).sum()),
        encoder_info=encoder_reference(info),
        pair_cell=np.searchsorted(cell_idx, by_bin.indices),
        weight=by_bin.data.astype(np.float32),
        pooling={**options, "coarsening_factor": factor},
        grid=squares.grid,
        bins=squares.bins[keep],
        cells_key=cells_key,
    )


def sparse_by_bin(weights) -> sp.csr_matrix:
    """A cells x bins weight matrix as bins x cells CSR, cells sorted within each bin, no zeros."""
    by_bin = sp.csr_matrix(weights.T)
    by_bin.eliminate_zeros()
    by_bin.sort_indices()
    return by_bin


def sample_id(sdata: SpatialData, spots_key: str) -> str | None:
    """The sample id the slide's reader recorded with its spots table (``"C3"``), else None."""
    try:
        uns = sdata.tables[table_for_element(sdata, spots_key)].uns.get(UNS_KEY, {})
    except (KeyError, ValueError):
        return None
    sample = uns.get("sample_id") if isinstance(uns, dict) else None
    return str(sample) if sample else None


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

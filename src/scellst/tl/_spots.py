"""Training data of one slide: cell embeddings grouped into spot bags, spot counts, genes."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import anndata as ad
import numpy as np
import pandas as pd
import scanpy as sc
import scipy.sparse as sp
from spatialdata import SpatialData

from .._sdata import spots_key as resolve_spots_key
from .._sdata import table_for_element, table_link
from ..constants import EMBEDDING_OBSM, NO_SPOT, SPOT_COLUMN, UNS_KEY
from ..io._scale import element_microns_per_unit
from ._tables import cells_table

log = logging.getLogger(__name__)


@dataclass
class SlideBags:
    """Cells of the spots of one slide, ordered by spot, with the spots' measured counts."""

    features: np.ndarray  # (n_cells, D) embeddings of cells inside kept spots, grouped by spot
    bag: np.ndarray  # (n_cells,) index of the spot (0..n_spots-1) of each cell
    spots: ad.AnnData  # kept spots x all genes, raw counts; obs has 'x_um', 'y_um'
    feature_names: list[str]
    encoder: str


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
        from ..pp.assign import assign_cells

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
            "fit: %d of %d spots of %r contain no segmented cell and are skipped.",
            int((~has_cells).sum()),
            len(has_cells),
            skey,
        )
    if not keep.any():
        raise ValueError(
            f"No spot of {skey!r} has both a segmented cell and >= {min_counts} counts: check that "
            "the spots lie on the tissue and that segmentation found nuclei."
        )
    spots = spots[keep].copy()
    instance = instance[keep]
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
    )


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


def select_genes(
    slides: list[SlideBags], genes, *, min_counts: int = 200, min_frac: float = 0.1
) -> list[str]:
    """Resolve ``genes`` (list, or ``"hvg:N"``) against the genes shared by all slides."""
    common = slides[0].spots.var_names
    for s in slides[1:]:
        common = common.intersection(s.spots.var_names, sort=False)
    if isinstance(genes, str):
        kind, _, n = genes.partition(":")
        if kind.lower() != "hvg" or not n.isdigit():
            raise ValueError(
                f"genes={genes!r}: use a list of gene names or 'hvg:N' (e.g. 'hvg:50')."
            )
        return _hvg(slides, list(common), int(n), min_counts, min_frac)
    genes = list(genes)
    if not genes:
        raise ValueError("The gene list is empty.")
    missing = [g for g in genes if g not in common]
    if missing:
        shown = ", ".join(map(repr, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise KeyError(
            f"{len(missing)} of the requested genes are not measured in every training slide: "
            f"{shown}. Check the spelling and var_names of the spots table(s)."
        )
    if len(set(genes)) != len(genes):
        raise ValueError("The gene list has duplicates.")
    return genes


def _hvg(slides, common, n, min_counts, min_frac) -> list[str]:
    adatas = [s.spots[:, common] for s in slides]
    joint = ad.concat(adatas, label="slide", index_unique="-")
    counts = np.asarray(joint.X.sum(0)).ravel()
    frac = np.asarray((joint.X > 0).mean(0)).ravel()
    mt = joint.var_names.str.upper().str.startswith("MT-")
    ok = (counts >= min_counts) & (frac >= min_frac) & ~mt
    if ok.sum() < n:
        ok = (counts > 0) & ~mt
    joint = joint[:, ok].copy()
    n = min(n, joint.n_vars)
    sc.pp.highly_variable_genes(
        joint,
        flavor="seurat_v3",
        n_top_genes=n,
        batch_key="slide" if len(slides) > 1 else None,
    )
    rank = joint.var["highly_variable_rank"].to_numpy()
    order = np.argsort(np.where(np.isnan(rank), np.inf, rank), kind="stable")[:n]
    return sorted(joint.var_names[order].tolist())

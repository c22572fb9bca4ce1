"""Which genes a model learns: a named list, highly variable (``"hvg:N"``) or spatially variable
(``"svg:N"``) genes of the training slides' spots."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .spots import TARGET_SUM, SlideBags


def select_genes(
    slides: list[SlideBags],
    genes,
    *,
    min_counts: int = 200,
    min_frac: float = 0.1,
    universe: pd.Index | None = None,
) -> list[str]:
    """Resolve ``genes`` (a list, ``"hvg:N"`` or ``"svg:N"``) against the genes of all slides.

    ``universe`` restricts the candidates further (e.g. to the genes also measured on a held-out
    slide). Selected genes are returned sorted by name.
    """
    common = common_genes(slides)
    if universe is not None:
        common = common.intersection(pd.Index(universe), sort=False)
    if isinstance(genes, str):
        kind, _, n = genes.partition(":")
        kind = kind.lower()
        if kind not in ("hvg", "svg") or not n.isdigit() or int(n) < 1:
            raise ValueError(
                f"genes={genes!r}: use a list of gene names, 'hvg:N' (highly variable) or 'svg:N' "
                "(spatially variable), e.g. 'hvg:50'."
            )
        candidates = _candidate_genes(slides, list(common), int(n), min_counts, min_frac)
        if kind == "hvg":
            return _hvg(slides, candidates, int(n))
        return _svg(slides, candidates, int(n))
    genes = list(genes)
    if not genes:
        raise ValueError("The gene list is empty.")
    missing = [g for g in genes if g not in common]
    if missing:
        shown = ", ".join(map(repr, missing[:20])) + (" ..." if len(missing) > 20 else "")
        raise KeyError(
            f"{len(missing)} of the requested genes are not measured in every slide: "
            f"{shown}. Check the spelling and the var_names of the spots table(s), or drop them."
        )
    if len(set(genes)) != len(genes):
        raise ValueError("The gene list has duplicates.")
    return genes


def common_genes(slides: Sequence[SlideBags]) -> pd.Index:
    """The genes measured in every slide (in the first slide's order)."""
    common = slides[0].spots.var_names
    for s in slides[1:]:
        common = common.intersection(s.spots.var_names, sort=False)
    return common


def _joint_counts(slides: list[SlideBags], genes: list[str]) -> ad.AnnData:
    adatas = [ad.AnnData(X=s.spots[:, genes].X, var=pd.DataFrame(index=genes)) for s in slides]
    return ad.concat(adatas, label="slide", index_unique="-")


def _candidate_genes(slides, common, n, min_counts, min_frac) -> list[str]:
    """The paper's gene filter: >= min_counts counts, detected in >= min_frac of the spots of
    all slides together, no mitochondrial genes. Relaxed (any count) when fewer than n pass."""
    joint = _joint_counts(slides, common)
    counts = np.asarray(joint.X.sum(0)).ravel()
    frac = np.asarray((joint.X > 0).mean(0)).ravel()
    mt = joint.var_names.str.upper().str.startswith("MT-")
    ok = (counts >= min_counts) & (frac >= min_frac) & ~mt
    if ok.sum() < n:
        ok = (counts > 0) & ~mt
    if not ok.any():
        raise ValueError("No gene with any count in the training spots: check the spots table.")
    return joint.var_names[ok].tolist()


def _hvg(slides, candidates, n) -> list[str]:
    import scanpy as sc  # here only: ~1 s to import, not needed to predict

    joint = _joint_counts(slides, candidates)
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


def morans_i(slides: list[SlideBags], genes: list[str], n_neighs: int = 6) -> pd.Series:
    """Moran's I of each gene's log-normalised spot expression, averaged over the slides.

    Computed by squidpy on each slide separately (``n_neighs`` nearest spots, so that spots of
    different slides are never neighbours and a slide-wide shift of a gene is not mistaken for a
    spatial pattern), then averaged with the slides' spot numbers as weights.
    """
    import squidpy as sq

    total, weight = np.zeros(len(genes)), 0
    for s in slides:
        if s.spots.n_obs <= n_neighs:
            continue
        lib = s.total_counts  # log_normalized, kept sparse
        X = s.spots[:, genes].X.multiply(TARGET_SUM / np.maximum(lib, 1)[:, None]).tocsr().log1p()
        adata = ad.AnnData(X=sp.csr_matrix(X, dtype=np.float64), var=pd.DataFrame(index=genes))
        adata.obsm["spatial"] = s.spots.obs[["x_um", "y_um"]].to_numpy()
        with _quiet("spatialdata._logging"):  # squidpy logs every graph it builds there
            sq.gr.spatial_neighbors_knn(adata, n_neighs=n_neighs)
        sq.gr.spatial_autocorr(adata, mode="moran", n_perms=None, n_jobs=1, show_progress_bar=False)
        i = adata.uns["moranI"]["I"].reindex(genes).fillna(0.0).to_numpy()
        total += s.spots.n_obs * i
        weight += s.spots.n_obs
    if weight == 0:
        raise ValueError(f"svg selection needs slides with more than {n_neighs} spots.")
    return pd.Series(total / weight, index=genes)


@contextmanager
def _quiet(logger_name: str):
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _svg(slides, candidates, n) -> list[str]:
    score = morans_i(slides, candidates)
    return sorted(score.sort_values(ascending=False, kind="stable").index[:n].tolist())

"""``sst.tl.leave_one_slide_out``: train on all slides but one, score spot predictions on it."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pandas as pd
from spatialdata import SpatialData
from tqdm.auto import tqdm

from ..constants import CELLS_KEY, EMBEDDING_KEY
from .evaluate import score_genes
from .genes import select_genes
from .model import MILModel
from .options import training_options
from .spots import BAG_DEFAULTS, measured_spots, slide_bags
from .training import fit_slides

log = logging.getLogger(__name__)


@dataclass
class CrossValidation:
    """Result of :func:`leave_one_slide_out`.

    Attributes
    ----------
    summary
        One row per fold (index: the held-out slide): ``train`` (the training slides, comma
        separated), ``n_genes``, ``n_train_spots``, ``n_test_spots``, ``epochs``, ``pearson`` and
        ``spearman`` (means over genes on the held-out slide's spots), ``seconds``.
    per_gene
        One row per fold and gene: ``held_out``, ``gene``, ``pearson``, ``spearman``, ``mse``,
        ``n``.
    models
        The model of each fold, by held-out slide.

    Examples
    --------
    >>> cv = sst.tl.leave_one_slide_out({"C2": c2, "C3": c3, "C4": c4}, genes="hvg:50")
    >>> cv.summary[["pearson", "spearman"]]
    >>> cv.per_gene.query("held_out == 'C4'").nlargest(5, "pearson")
    """

    summary: pd.DataFrame
    per_gene: pd.DataFrame
    models: dict[str, MILModel] = field(default_factory=dict)


def leave_one_slide_out(
    sdatas: Mapping[str, SpatialData] | Sequence[SpatialData],
    genes: str | Sequence[str] = "hvg:50",
    *,
    held_out: Sequence[str] | None = None,
    embedding_key: str = EMBEDDING_KEY,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    min_spot_counts: int = 20,
    min_gene_counts: int = 200,
    min_gene_fraction: float = 0.1,
    keep_models: bool = True,
    progress: bool = True,
    **fit_kwargs,
) -> CrossValidation:
    """Leave-one-slide-out evaluation: for each slide, train on the others and score it.

    Genes given as ``"hvg:N"`` / ``"svg:N"`` are selected on the training slides of each fold
    only (no information from the held-out slide), among the genes the held-out slide measures.
    Spot predictions on the held-out slide are scored as in :func:`evaluate` (per-gene Pearson
    and Spearman against measured log-normalised expression).

    Parameters
    ----------
    sdatas
        At least two slides, ``{name: sdata}`` or a list (named ``"0"``, ``"1"``, ...), each
        segmented and embedded with the same encoder, with spots and counts.
    genes
        As in :func:`fit`.
    held_out
        Names of the slides to hold out in turn (default: every slide).
    embedding_key, cells_key, spots_key, min_spot_counts, min_gene_counts, min_gene_fraction
        As in :func:`fit`.
    keep_models
        Keep each fold's model in the result.
    progress
        Show a progress bar over the folds (the fits' own epoch bars stay off).
    **fit_kwargs
        Training settings passed on as in :func:`fit` (``loss``, ``lr``, ``max_epochs``,
        ``members``, ...), with fit's defaults; the validation (the ensemble's members) is made
        within the training slides of each fold. Also fit's bag settings of square bins
        (``pooling``, ``cell_dilation_um``, ``bin_um``), used for the training and the held-out
        slides.

    Returns
    -------
    CrossValidation
        ``summary`` (one row per fold), ``per_gene`` (fold × gene scores), ``models``.

    Examples
    --------
    >>> cv = sst.tl.leave_one_slide_out({"C2": c2, "C3": c3, "C4": c4}, genes="hvg:50")
    >>> cv.summary[["pearson", "spearman"]]
    """
    named = (
        dict(sdatas) if isinstance(sdatas, Mapping) else {str(i): s for i, s in enumerate(sdatas)}
    )
    if len(named) < 2:
        raise ValueError("leave_one_slide_out needs at least two slides.")
    bag_kw = {k: fit_kwargs.pop(k) for k in list(fit_kwargs) if k in BAG_DEFAULTS}
    options = training_options(**{**fit_kwargs, "progress": False})
    folds = list(named) if held_out is None else [str(h) for h in held_out]
    missing = [f for f in folds if f not in named]
    if missing:
        raise KeyError(f"Slides {missing} are not among {list(named)}.")
    bags = {
        name: slide_bags(
            s,
            cells_key=cells_key,
            embedding_key=embedding_key,
            spots_key=spots_key,
            min_counts=min_spot_counts,
            **bag_kw,
        )
        for name, s in named.items()
    }
    rows, per_gene, models = [], [], {}
    bar = tqdm(folds, desc="leave_one_slide_out", unit="fold", disable=not progress)
    for test in bar:
        bar.set_postfix_str(f"holding out {test}")
        t0 = time.perf_counter()
        train_names = [n for n in named if n != test]
        train = [bags[n] for n in train_names]
        gene_list = select_genes(
            train,
            genes,
            min_counts=min_gene_counts,
            min_frac=min_gene_fraction,
            universe=bags[test].spots.var_names,
        )
        model = fit_slides(
            train,
            gene_list,
            options,
            min_spot_counts=min_spot_counts,
            gene_selection=genes,
            slide_names=train_names,
        )
        model.config["training_slides"] = train_names
        model.config["bags"] = train[0].pooling
        b = bags[test]
        pred = model.predict_spots(
            b.features, b.bag, b.spots.n_obs, cell=b.pair_cell, weight=b.weight
        )
        scores = score_genes(pred, measured_spots(b, gene_list), gene_list)
        seconds = time.perf_counter() - t0
        rows.append(
            {
                "held_out": test,
                "train": ",".join(train_names),
                "n_genes": len(gene_list),
                "n_train_spots": model.config["n_train_spots"],
                "n_test_spots": b.spots.n_obs,
                "epochs": model.config["epochs_run"],
                "pearson": scores.attrs["mean_pearson"],
                "spearman": scores.attrs["mean_spearman"],
                "seconds": seconds,
            }
        )
        per_gene.append(scores.reset_index().assign(held_out=test))
        if keep_models:
            models[test] = model
        log.info(
            "leave_one_slide_out: slide %r held out (%d spots), mean Pearson %.3f",
            test,
            b.spots.n_obs,
            rows[-1]["pearson"],
        )
        bar.set_postfix_str(f"{test}: Pearson {rows[-1]['pearson']:.3f}")
    bar.close()
    summary = pd.DataFrame(rows).set_index("held_out")
    per_gene_df = pd.concat(per_gene, ignore_index=True)[
        ["held_out", "gene", "pearson", "spearman", "mse", "n"]
    ]
    return CrossValidation(summary=summary, per_gene=per_gene_df, models=models)

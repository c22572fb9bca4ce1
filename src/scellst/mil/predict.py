"""``sst.tl.predict``: a cells x genes expression table for every cell of a slide."""

from __future__ import annotations

import logging

import numpy as np
from spatialdata import SpatialData

from .._docs import OVERWRITE_TABLE, doc_params
from .._sdata import add_element, check_free
from .._tables import cells_table, result_table
from ..constants import (
    EMBEDDING_KEY,
    EMBEDDING_OBSM,
    EXPRESSION_KEY,
    OOD_COLUMN,
    OOD_DISTANCE_COLUMN,
    SPREAD_LAYER,
    UNCERTAINTY_COLUMN,
    UNS_KEY,
)
from .model import MILModel
from .spots import check_embedding_context

log = logging.getLogger(__name__)


@doc_params(overwrite_table=OVERWRITE_TABLE)
def predict(
    sdata: SpatialData,
    model: MILModel,
    *,
    embedding_key: str = EMBEDDING_KEY,
    key_added: str = EXPRESSION_KEY,
    overwrite: bool = False,
) -> None:
    """Predict the expression of every cell of a slide (with or without spots).

    Parameters
    ----------
    sdata
        SpatialData with segmented, embedded cells (:func:`scellst.pp.segment`,
        :func:`scellst.tl.embed` with the encoder used for training). Spots are not needed.
    model
        A model from :func:`scellst.tl.fit` or :meth:`MILModel.load`.
    embedding_key
        The embedding table.
    key_added
        Name of the new table.
    {overwrite_table}

    Returns
    -------
    None
        Adds table ``sdata[key_added]``: cells × model genes, ``X`` = predicted
        log-normalised expression (``log1p`` of counts per 10,000: what a spot made only of cells
        like this one would measure; finite, in ``[0, model.ceiling]``),
        ``layers["spread"]`` = the standard deviation of the ensemble members' predictions
        (same units), ``layers["counts"]`` (count losses only) = expected counts
        the cell contributes to a spot of the training slides' median depth and median number of
        cells, ``obs`` = the cells' ids, area, spot assignment and ``on_tissue`` flag (from
        the cells table), ``uncertainty`` (mean over genes of the spread over the gene's
        standard deviation across the training spots), ``ood_distance`` and
        ``out_of_distribution`` (the embedding lies farther from the training cells' than the
        model's threshold, ``config["ood"]``), ``obsm["spatial"]`` =
        centroids, ``uns["scellst"]["prediction"]`` = units, and under ``"model"`` the training
        settings, preprocessing, encoder reference, spots skipped per slide and the loss curves
        (``"history"``); linked to the cell shapes, ready for ``scanpy.pp.neighbors`` and
        ``squidpy.gr.spatial_neighbors_delaunay``.

    Examples
    --------
    >>> sst.tl.predict(sdata, model)
    >>> sc.pp.neighbors(sdata["sst_expression"])
    >>> table = sdata["sst_expression"]
    >>> reliable = ~table.obs["out_of_distribution"] & (table.obs["uncertainty"] < 0.5)
    """
    check_free(sdata, [key_added], overwrite)
    if not isinstance(model, MILModel):
        raise TypeError(
            f"`model` must be a MILModel from sst.tl.fit or MILModel.load, got {type(model).__name__}."
        )
    if embedding_key not in sdata.tables:
        raise KeyError(f"No embedding table {embedding_key!r}: run `sst.tl.embed(sdata)` first.")
    emb = sdata.tables[embedding_key]
    info = emb.uns.get(UNS_KEY, {}).get("embedding", {})
    encoder = info.get("encoder")
    if encoder is not None and encoder != model.config["encoder"]:
        raise ValueError(
            f"The model was trained on {model.config['encoder']!r} embeddings but {embedding_key!r} "
            f"holds {encoder!r} ones; embed this slide with the training encoder."
        )
    check_embedding_context(info, model.config.get("encoder_info") or {}, embedding_key)
    cells_key = info.get("cells_key")
    if cells_key is None:
        raise ValueError(
            f"Table {embedding_key!r} does not say which cells it embeds (no "
            "uns['scellst']['embedding']['cells_key']); create it with `sst.tl.embed`."
        )
    cells = cells_table(sdata, cells_key)
    features = np.asarray(emb.obsm[EMBEDDING_OBSM])
    pred = model.predict_cells(features)
    layers = {SPREAD_LAYER: pred["spread"]}
    if "counts" in pred:
        layers["counts"] = pred["counts"]
    distance, ood = model.out_of_distribution(features)
    gene_sd = np.asarray(model.config.get("target_sd", np.ones(len(model.genes))), np.float64)
    uncertainty = (pred["spread"] / np.where(gene_sd > 1e-6, gene_sd, 1.0)).mean(1)
    extra_obs = {
        UNCERTAINTY_COLUMN: uncertainty.astype(np.float32),
        OOD_DISTANCE_COLUMN: distance.astype(np.float32),
        OOD_COLUMN: ood,
    }
    uns = {
        UNS_KEY: {
            "prediction": {
                "units": model.units,
                "counts_units": (
                    "expected counts of the cell in a spot of the training median depth "
                    "and median number of cells"
                    if "counts" in pred
                    else ""
                ),
                "loss": model.config["loss"],
                "aggregation": model.config["aggregation"],
                "encoder": model.config["encoder"],
                "embedding_key": embedding_key,
                "cells_key": cells_key,
                "model": model.summary(),
                "ood_threshold": float(model.config.get("ood", {}).get("threshold", np.nan)),
                "n_out_of_distribution": int(ood.sum()),
            }
        }
    }
    table = result_table(
        cells,
        cells_key,
        X=pred["log_normalized"],
        var_names=model.genes,
        layers=layers,
        uns=uns,
        extra_obs=extra_obs,
    )
    add_element(sdata, key_added, table, overwrite=overwrite)
    log.info(
        "predict: %d cells x %d genes written to %r (%d cells out of the training distribution)",
        table.n_obs,
        table.n_vars,
        key_added,
        int(ood.sum()),
    )

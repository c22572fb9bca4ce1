"""``sst.tl.score_cell_types``: marker-signature scores and a type for every predicted cell."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from spatialdata import SpatialData

from ..constants import EXPRESSION_KEY, UNS_KEY

log = logging.getLogger(__name__)

#: Label of the cells whose best signature score is below ``min_score``.
UNASSIGNED = "unassigned"
#: Default ``min_score``: a cell is typed only when the markers of its best type are on average
#: at least this many standard deviations above the table's mean for those genes.
MIN_SCORE = 0.5


def signature_scores(
    X: np.ndarray, genes: Sequence[str], markers: Mapping[str, Sequence[str]]
) -> tuple[pd.DataFrame, dict[str, list[str]]]:
    """Per cell and type: the mean z-score (over the cells of ``X``) of the type's markers.

    Returns the ``cells x types`` scores and the markers used per type (those in ``genes``).
    A gene constant over the cells (SD 0) contributes 0.
    """
    index = pd.Index([str(g) for g in genes])
    used = {
        str(t): [g for g in dict.fromkeys(map(str, m)) if g in index] for t, m in markers.items()
    }
    empty = [t for t, g in used.items() if not g]
    if empty:
        raise ValueError(
            f"No marker of cell type(s) {empty} is among the {len(index)} predicted genes; "
            "predict those genes (fit on a gene list that contains them) or drop the types."
        )
    cols = index.get_indexer(sorted({g for g in used.values() for g in g}))
    sub = X[:, cols]
    sub = sub.toarray() if sp.issparse(sub) else np.asarray(sub, np.float64)
    sd = sub.std(0)
    z = (sub - sub.mean(0)) / np.where(sd > 0, sd, 1.0)
    pos = {g: i for i, g in enumerate(index[cols])}
    scores = {t: z[:, [pos[g] for g in g_]].mean(1) for t, g_ in used.items()}
    return pd.DataFrame(scores), used


def score_cell_types(
    sdata: SpatialData,
    markers: Mapping[str, Sequence[str]],
    *,
    table_key: str = EXPRESSION_KEY,
    layer: str | None = None,
    min_score: float = MIN_SCORE,
    key_added: str = "sst_cell_type",
    overwrite: bool = False,
) -> None:
    """Score every predicted cell for marker signatures and give it the best-scoring type.

    For each marker gene the predicted values are z-scored over the table's cells (mean 0,
    SD 1); a cell's score for a type is the mean z-score of that type's markers, so scores are
    in SD units and comparable between types. The cell's type is the best-scoring type, or
    ``"unassigned"`` when that best score is below ``min_score``.

    Parameters
    ----------
    sdata
        SpatialData with predicted expression (:func:`scellst.tl.predict`).
    markers
        ``{cell type: [marker genes]}``; genes absent from the table are left out (logged), a
        type with none of its markers predicted raises an error.
    table_key
        The table of predicted cells (cells x genes).
    layer
        Layer of that table to score (default ``X``: ``log1p`` of counts per 10,000).
    min_score
        Threshold on the best score (in SD units, default 0.5): below it the cell is
        ``"unassigned"`` (no signature stands out). ``-inf`` types every cell.
    key_added
        Prefix of the new ``obs`` columns.
    overwrite
        Replace existing columns of that name.

    Returns
    -------
    None
        Adds to ``sdata[table_key].obs``: ``f"{key_added}_score_{type}"`` (float, one per
        type) and ``key_added`` (categorical: the types, then ``"unassigned"``); and to its
        ``uns["scellst"]["cell_types"][key_added]`` the markers used and ``min_score``.

    Examples
    --------
    >>> sst.tl.score_cell_types(
    ...     sdata, markers={"T cell": ["CD3E", "CD2"], "B cell": ["MS4A1", "CD79A"]}
    ... )
    >>> sdata["sst_expression"].obs["sst_cell_type"].value_counts()
    """
    if table_key not in sdata.tables:
        raise KeyError(
            f"No table {table_key!r}: predict cells first (`sst.tl.predict(sdata, model)`)."
        )
    if not markers:
        raise ValueError("`markers` is empty: give {cell type: [marker genes]}.")
    table = sdata.tables[table_key]
    types = [str(t) for t in markers]
    if UNASSIGNED in types:
        raise ValueError(f"{UNASSIGNED!r} is reserved for cells of no type; rename that type.")
    columns = [key_added] + [f"{key_added}_score_{t}" for t in types]
    taken = [c for c in columns if c in table.obs]
    if taken and not overwrite:
        raise KeyError(
            f"Table {table_key!r} already has obs columns {taken}; pass overwrite=True or "
            "another key_added."
        )
    X = table.layers[layer] if layer is not None else table.X
    scores, used = signature_scores(X, table.var_names, markers)
    missing = {t: sorted(set(map(str, markers[t])) - set(g)) for t, g in used.items()}
    missing = {t: g for t, g in missing.items() if g}
    if missing:
        log.warning("score_cell_types: markers not predicted, left out: %s", missing)
    values = scores.to_numpy()
    best = values.argmax(1) if len(values) else np.zeros(0, int)
    codes = np.where(values.max(1, initial=-np.inf) >= min_score, best, len(types))
    for t in types:
        table.obs[f"{key_added}_score_{t}"] = scores[t].to_numpy(np.float32)
    table.obs[key_added] = pd.Categorical.from_codes(codes, categories=[*types, UNASSIGNED])
    record = table.uns.setdefault(UNS_KEY, {}).setdefault("cell_types", {})
    record[key_added] = {
        "markers": used,
        "min_score": float(min_score),
        "layer": layer or "X",
        "score": "mean over the type's markers of the z-scored (over cells) prediction",
    }
    log.info("score_cell_types: %s", table.obs[key_added].value_counts().to_dict())

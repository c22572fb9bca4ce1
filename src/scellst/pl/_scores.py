"""``sst.pl.gene_scores``: per-gene accuracy of predictions (``sst.tl.evaluate``) as bars or
violins, for one or several models or slides."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from .._docs import AX_SHOW_SAVE, doc_params
from ._figure import finish, single_axes


@doc_params(ax_show_save=AX_SHOW_SAVE)
def gene_scores(
    scores,
    *,
    kind: str = "bar",
    metric: str = "pearson",
    top: int | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Per-gene scores: a sorted bar chart or violins, with the mean over genes.

    Parameters
    ----------
    scores
        The per-gene table of :func:`scellst.tl.evaluate` (one row per gene), or several of
        them as ``{name: table}`` (models, slides, levels) to compare side by side, or the
        :class:`~scellst.tl.CrossValidation` of :func:`scellst.tl.leave_one_slide_out` (one
        set per held-out slide).
    kind
        ``"bar"``: one bar per gene, sorted from best to worst (grouped bars for several sets,
        sorted by their mean); ``"violin"``: the distribution over genes, one violin per set,
        with the genes as dots.
    metric
        The column to plot: ``"pearson"``, ``"spearman"`` or ``"mse"``.
    top
        ``kind="bar"``: only the ``top`` best genes (lowest for ``"mse"``). The mean lines
        stay the means over all genes.
    {ax_show_save}

    Returns
    -------
    matplotlib.axes.Axes or None
        None when the figure was shown (the default without ``ax``/``save``), else the Axes. Bars are its patches, in the drawn order; the mean of each set is a dashed
        line labelled ``"mean ... = <value>"`` (violins: a black line, the value in the tick
        label).

    Examples
    --------
    >>> scores = sst.tl.evaluate(held_out)
    >>> sst.pl.gene_scores(scores, top=30)
    >>> sst.pl.gene_scores({"morphology": s1, "resnet50": s2}, kind="violin")
    >>> sst.pl.gene_scores(sst.tl.leave_one_slide_out(slides), kind="violin")
    """
    sets = _score_sets(scores, metric)
    if kind not in ("bar", "violin"):
        raise ValueError(f"kind must be 'bar' or 'violin', got {kind!r}.")
    if top is not None and (kind != "bar" or top < 1):
        raise ValueError("`top` takes a positive number of genes, with kind='bar' only.")
    lower_is_better = metric == "mse"
    n_genes = max(len(s) for s in sets.values())
    width = max(4.0, 0.22 * min(n_genes, top or n_genes) * len(sets)) if kind == "bar" else None
    ax, own = single_axes(ax, (width or max(3.0, 1.4 * len(sets) + 1.5), 3.5))
    colors = mpl.colormaps["tab10"](np.arange(len(sets)) % 10)
    if kind == "bar":
        _bars(ax, sets, colors, top, lower_is_better)
    else:
        _violins(ax, sets, colors)
    ax.set_ylabel(metric)
    if kind == "bar":
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return finish(ax, own=own, show=show, save=save)


def _score_sets(scores, metric: str) -> dict[str, pd.Series]:
    """``{name: per-gene values}`` (NaN dropped) from a table, a dict of tables or a CV."""
    per_gene = getattr(scores, "per_gene", None)  # a CrossValidation
    if isinstance(per_gene, pd.DataFrame) and "held_out" in per_gene:
        scores = {str(k): g.set_index("gene") for k, g in per_gene.groupby("held_out", sort=False)}
    if isinstance(scores, pd.DataFrame):
        scores = {metric: scores}
    if not isinstance(scores, Mapping) or not scores:
        raise TypeError(
            "`scores` must be the DataFrame of sst.tl.evaluate, a non-empty {name: DataFrame} "
            f"dict or a CrossValidation; got {type(scores).__name__}."
        )
    sets = {}
    for name, table in scores.items():
        if metric not in table:
            raise KeyError(
                f"No column {metric!r} in the scores {name!r}; its columns are "
                f"{list(table.columns)}."
            )
        values = table[metric].astype(float).dropna()
        if values.empty:
            raise ValueError(f"The scores {name!r} have no {metric!r} value (all NaN).")
        sets[str(name)] = values
    return sets


def _bars(ax, sets, colors, top, lower_is_better) -> None:
    joint = pd.concat(sets, axis=1)
    order = joint.mean(axis=1).sort_values(ascending=lower_is_better, kind="stable").index
    genes = order[:top] if top else order
    k = len(sets)
    width = 0.8 / k
    x = np.arange(len(genes))
    for i, (name, values) in enumerate(sets.items()):
        offset = (i - (k - 1) / 2) * width
        heights = values.reindex(genes).to_numpy()
        ax.bar(x + offset, heights, width, color=colors[i], label=name if k > 1 else None)
        mean = float(values.mean())
        label = f"mean{' ' + name if k > 1 else ''} = {mean:.3f}"
        ax.axhline(mean, color=colors[i] if k > 1 else "0.3", ls="--", lw=1, label=label)
    ax.set_xticks(x, list(genes), rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(genes) - 0.4)
    ax.axhline(0, color="black", lw=0.6)


def _violins(ax, sets, colors) -> None:
    data = [v.to_numpy() for v in sets.values()]
    positions = np.arange(1, len(data) + 1)
    parts = ax.violinplot(data, positions, showextrema=False, widths=0.8)
    rng = np.random.default_rng(0)
    for i, (body, values) in enumerate(zip(parts["bodies"], data, strict=True)):
        body.set_facecolor(colors[i])
        body.set_alpha(0.4)
        jitter = rng.uniform(-0.12, 0.12, len(values))
        ax.scatter(positions[i] + jitter, values, s=6, color=colors[i], zorder=3)
        ax.hlines(values.mean(), positions[i] - 0.35, positions[i] + 0.35, color="black", lw=1.5)
    labels = [f"{name}\nmean {values.mean():.3f}" for name, values in zip(sets, data, strict=True)]
    ax.set_xticks(positions, labels, rotation=30 if len(sets) > 3 else 0)
    ax.set_xlim(0.4, len(data) + 0.6)

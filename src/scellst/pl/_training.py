"""``sst.pl.training``: loss curves of a MIL model or of a self-supervised encoder."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from anndata import AnnData
from matplotlib.axes import Axes
from spatialdata import SpatialData

from .._docs import AX_SHOW_SAVE, doc_params
from ..constants import EXPRESSION_KEY, UNS_KEY
from ._figure import finish, single_axes

#: The curves drawn, in this order, and their legend labels.
CURVES = {"train_loss": "train", "val_loss": "validation", "loss": "training loss (SSL)"}


@doc_params(ax_show_save=AX_SHOW_SAVE)
def training(
    source,
    *,
    table_key: str = EXPRESSION_KEY,
    logy: bool = False,
    best: bool = True,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Loss per epoch: training and validation curves, with the best epoch marked.

    Parameters
    ----------
    source
        Where the curves are recorded:

        - a :class:`~scellst.tl.MILModel` (``model.history``: ``train_loss``, ``val_loss``; its
          ``config["best_epoch"]``);
        - a SpatialData object with a prediction table ``table_key``, or that table (an
          AnnData): the model summary that :func:`scellst.tl.predict` stores in
          ``uns["scellst"]["prediction"]["model"]`` (``history``, ``best_epoch``);
        - an :class:`~scellst.tl.SSLEncoder` (``history["loss"]`` of
          :func:`scellst.tl.train_encoder`);
        - a dict of curves, e.g. ``{"train_loss": [...], "val_loss": [...]}``.
    table_key
        The prediction table, when ``source`` is a SpatialData object.
    logy
        Logarithmic loss axis.
    best
        Mark the epoch whose (smoothed) validation loss was best: the weights the model kept.
    {ax_show_save}

    Returns
    -------
    matplotlib.axes.Axes or None
        None when the figure was shown (the default without ``ax``/``save``), else the Axes; epochs count from 0, as ``config["best_epoch"]``.

    Examples
    --------
    >>> model = sst.tl.fit(sdata, genes="hvg:50")
    >>> sst.pl.training(model, logy=True)
    >>> sst.pl.training(sdata)  # the same, from the prediction table
    >>> sst.pl.training(sst.tl.SSLEncoder.load("encoder_dir"))
    """
    history, best_epoch = _curves(source, table_key)
    curves = {k: np.asarray(history[k], float) for k in CURVES if len(history.get(k, []))}
    if not curves:
        raise ValueError(
            f"No loss curve to plot: expected one of {list(CURVES)} in the history, got "
            f"{sorted(history)}. Was the model trained (sst.tl.fit / sst.tl.train_encoder)?"
        )
    ax, own = single_axes(ax, (5.0, 3.5))
    for key, values in curves.items():
        ax.plot(
            np.arange(len(values)),
            values,
            label=CURVES[key],
            marker="." if len(values) < 30 else None,
        )
    if best and best_epoch is not None and best_epoch >= 0:
        ax.axvline(best_epoch, color="0.4", ls="--", lw=1, label=f"best epoch ({best_epoch})")
        on = curves.get("val_loss", curves.get("train_loss"))
        if on is not None and best_epoch < len(on):
            ax.plot([best_epoch], [on[best_epoch]], "o", color="0.2", ms=5)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend(frameon=False)
    return finish(ax, own=own, show=show, save=save)


def _curves(source, table_key: str) -> tuple[Mapping, int | None]:
    """(history, best epoch) of a model, an encoder, a prediction table or a dict."""
    if isinstance(source, SpatialData):
        if table_key not in source.tables:
            raise KeyError(
                f"No prediction table {table_key!r}: run `sst.tl.predict(sdata, model)` first, "
                "or pass the model itself."
            )
        source = source.tables[table_key]
    if isinstance(source, AnnData):
        summary = source.uns.get(UNS_KEY, {}).get("prediction", {}).get("model")
        if summary is None or "history" not in summary:
            raise ValueError(
                "This table holds no training history (uns['scellst']['prediction']['model']"
                "['history']): pass a table written by `sst.tl.predict`, or the model."
            )
        return summary["history"], _epoch(summary.get("best_epoch"))
    if isinstance(source, Mapping):
        return source, None
    history = getattr(source, "history", None)
    if not isinstance(history, Mapping):
        raise TypeError(
            "`source` must be a MILModel, an SSLEncoder, a SpatialData object or AnnData table "
            f"from sst.tl.predict, or a dict of curves; got {type(source).__name__}."
        )
    config = getattr(source, "config", {}) or {}
    return history, _epoch(config.get("best_epoch"))


def _epoch(value) -> int | None:
    return None if value is None else int(value)

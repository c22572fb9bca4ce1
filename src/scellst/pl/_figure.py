"""What every ``sst.pl`` function does the same way: where it draws, and ``show``/``save``.

- ``ax=None``: a new figure; otherwise the plot goes into the given Axes (single-panel plots),
  or, for grids, into the given sequence of Axes (one per panel) or Figure/SubFigure.
- ``show=None``: ``plt.show()`` only when the function made its own figure and is not saving
  (as in scanpy); ``True``/``False`` force it.
- ``save=path``: the whole figure is written there (150 dpi, tight bounding box).

As in scanpy, a function that shows its figure returns None (so that Jupyter does not draw it a
second time); otherwise (``show=False``, a given ``ax``, ``save=``) it returns what it drew in:
the Axes, or the Figure for grids.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase

#: Resolution of figures written with ``save=``.
SAVE_DPI = 150


def single_axes(ax: Axes | None, figsize: tuple[float, float]) -> tuple[Axes, bool]:
    """``ax``, or the Axes of a new figure; and whether the figure is new."""
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
        return ax, True
    if not isinstance(ax, Axes):
        raise TypeError(f"`ax` must be a matplotlib Axes, got {type(ax).__name__}.")
    return ax, False


def grid_axes(
    ax: Sequence[Axes] | FigureBase | None,
    nrows: int,
    ncols: int,
    panel_size: tuple[float, float],
) -> tuple[np.ndarray, bool]:
    """A ``(nrows, ncols)`` array of Axes: new, made in a given (sub)figure, or given."""
    if ax is None:
        # constrained layout keeps the colour bars and titles of the panels apart
        fig = plt.figure(
            figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained"
        )
        return fig.subplots(nrows, ncols, squeeze=False), True
    if isinstance(ax, FigureBase):
        return ax.subplots(nrows, ncols, squeeze=False), False
    axes = np.asarray(ax, dtype=object).ravel()
    if axes.size != nrows * ncols or not all(isinstance(a, Axes) for a in axes):
        raise ValueError(
            f"This plot has {nrows} x {ncols} panels: pass `ax` as {nrows * ncols} Axes (e.g. "
            "`fig.subplots(...)`), or a Figure/SubFigure to draw them in, or nothing."
        )
    return axes.reshape(nrows, ncols), False


def root_figure(obj: Axes | FigureBase) -> Figure:
    """The top-level figure of an Axes, SubFigure or Figure (what ``save`` writes)."""
    fig = obj if isinstance(obj, FigureBase) else obj.figure
    return fig.figure  # a SubFigure's .figure is the root; the root's is itself


def finish(obj: Axes | FigureBase, *, own: bool, show: bool | None, save: str | Path | None):
    """Save and/or show the figure of ``obj``; return None when it was shown, else ``obj``."""
    if save is not None:
        root_figure(obj).savefig(save, dpi=SAVE_DPI, bbox_inches="tight")
    if show is None:
        show = own and save is None
    if show:
        plt.show()
        return None
    return obj

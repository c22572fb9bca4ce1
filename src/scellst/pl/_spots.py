"""``sst.pl.spots``: measured spot expression next to the cells' predictions pooled per spot."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from matplotlib.axes import Axes
from matplotlib.figure import Figure, FigureBase
from spatialdata import SpatialData

from .._docs import GRID_SHOW_SAVE, doc_params
from .._sdata import apply_matrix, cells_image_key
from .._tables import cells_table
from ..constants import CELLS_KEY, EMBEDDING_KEY, EXPRESSION_KEY
from ..mil.spots import TARGET_SUM, measured_spots
from ._figure import finish, grid_axes
from ._slide import (
    Slide,
    add_scalebar,
    box_figsize,
    discs,
    in_box,
    polygons,
    set_view,
    view_box,
)


@doc_params(grid_show_save=GRID_SHOW_SAVE)
def spots(
    sdata: SpatialData,
    genes: str | Sequence[str],
    *,
    table_key: str = EXPRESSION_KEY,
    spots_key: str | None = None,
    cells_key: str = CELLS_KEY,
    embedding_key: str = EMBEDDING_KEY,
    spots: Sequence | None = None,
    min_spot_counts: int = 20,
    image_key: str | None = None,
    region: Sequence[float] | None = None,
    image: bool = True,
    cmap: str = "viridis",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.9,
    scalebar: bool = True,
    max_image_px: int = 2000,
    panel_size: float = 4.0,
    ax: Sequence[Axes] | FigureBase | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Measured vs predicted spot expression, side by side, one row per gene.

    Left: the measured expression of each spot, ``log1p`` of counts per 10,000 of the spot
    (the training targets). Right: the predictions of its cells (table ``table_key`` written by
    :func:`scellst.tl.predict`) pooled per spot exactly as in training and in
    :func:`scellst.tl.evaluate` (mean or sum, in the model's space; Visium HD bins with the
    model's pooling and coarsening). Spots are drawn as circles of their true radius in µm, or
    as the squares of Visium HD bins (the coarser squares when the model pooled them), over the
    H&E; both panels of a row share one colour scale, and
    the title gives the Pearson correlation across the spots shown, which equals
    ``sst.tl.evaluate(sdata, spots=...)`` for the same spots.

    Only spots that contain segmented cells and have at least ``min_spot_counts`` counts are
    drawn (the spots that training and evaluation use).

    Parameters
    ----------
    sdata
        A slide with spots, segmented and embedded cells and predictions.
    genes
        A gene or a list of genes, predicted and measured.
    table_key
        The prediction table.
    spots_key, cells_key, embedding_key
        The spots (default: the only circles or square bins), the cell shapes and the embedding
        table.
    spots
        Instance ids of the spots to draw (e.g. ``model.config["validation_spots"][0]``, the
        validation spots of the first training slide); default all.
    min_spot_counts
        Spots with fewer counts are not drawn (as in :func:`scellst.tl.evaluate`).
    image_key
        Background image; default the one the cells were segmented on.
    region
        ``(x0, y0, x1, y1)`` in µm: show this box (and score the spots whose centre is in it).
        Default: the box around the spots.
    image
        Draw the H&E under the spots.
    cmap, vmin, vmax, alpha
        Colour map, limits (default: the range of both panels of the row) and spot opacity.
    scalebar
        Draw a scale bar in the first panel.
    max_image_px
        Largest background image side in pixels.
    panel_size
        Width of a panel in inches.
    ax
        ``2 * len(genes)`` Axes to draw in (row by row), or a Figure/SubFigure to make them
        in; default a new figure.
    {grid_show_save}

    Returns
    -------
    matplotlib.figure.Figure or None
        None when the figure was shown (the default without ``ax``/``save``), else the figure (or SubFigure) holding the ``len(genes) × 2`` panels (axes in µm).

    Examples
    --------
    >>> sst.tl.predict(sdata, model)
    >>> sst.pl.spots(sdata, ["ERBB2", "CD74"])
    >>> sst.pl.spots(sdata, "ERBB2", spots=model.config["validation_spots"][0])
    """
    from ..mil.evaluate import pearson_per_gene, slide_spot_predictions, spot_subset

    genes = [genes] if isinstance(genes, str) else list(genes)
    if not genes:
        raise ValueError("`genes` is empty: pass a gene or a list of genes.")
    bags, pred, predicted = slide_spot_predictions(
        sdata,
        table_key=table_key,
        embedding_key=embedding_key,
        cells_key=cells_key,
        spots_key=spots_key,
        min_spot_counts=min_spot_counts,
    )
    _check_genes(genes, predicted, list(bags.spots.var_names), table_key)
    slide = Slide.of(sdata, cells_image_key(sdata, cells_table(sdata, cells_key), image_key))
    xy, radius, corners = _spot_outlines(sdata, slide, bags)
    fit = (
        (xy - radius[:, None]).min(0) - radius.mean(),
        (xy + radius[:, None]).max(0) + radius.mean(),
    )
    box = view_box(region, (*fit[0], *fit[1]))
    select = spot_subset(bags, spots) & in_box(xy, box)
    if not select.any():
        raise ValueError(
            f"No spot to draw in {box} (µm): choose a `region` that holds spots, or other `spots`."
        )
    measured = measured_spots(bags, genes)[select]
    predicted_values = pred[select][:, [predicted.index(g) for g in genes]]
    width = panel_size
    axes, own = grid_axes(ax, len(genes), 2, (width, box_figsize(box, width)[1]))
    units = f"log1p(counts per {TARGET_SUM:,.0f})"
    for row, gene in enumerate(genes):
        pair = (measured[:, row], predicted_values[:, row])
        lo = np.min([v.min() for v in pair]) if vmin is None else vmin
        hi = np.max([v.max() for v in pair]) if vmax is None else vmax
        r = pearson_per_gene(pair[1][:, None], pair[0][:, None])[0]
        titles = (f"{gene} measured", f"{gene} predicted (r = {r:.2f})")
        for col, (values, title) in enumerate(zip(pair, titles, strict=True)):
            panel = axes[row, col]
            if image:
                slide.draw(panel, box, max_image_px)
            if corners is None:
                coll = discs(xy[select], radius[select], panel, cmap=cmap, alpha=alpha)
            else:
                coll = polygons(corners[select], cmap=cmap, alpha=alpha, linewidths=0)
            coll.set_array(values)
            coll.set_clim(lo, hi)
            panel.add_collection(coll)
            set_view(panel, box, labels=False)
            panel.set_title(title)
        axes[row, 0].figure.colorbar(coll, ax=list(axes[row]), shrink=0.8, label=gene)
    for panel in axes[-1]:
        panel.set_xlabel("x (µm)")
    for panel in axes[:, 0]:
        panel.set_ylabel("y (µm)")
    if scalebar:
        add_scalebar(axes[0, 0], box[2] - box[0])
    fig = axes[0, 0].figure
    if own:
        fig.suptitle(f"Spot expression, {units}")
    return finish(fig, own=own, show=show, save=save)


def _spot_outlines(sdata: SpatialData, slide: Slide, bags):
    """Centres (µm), radii (µm; half the diagonal for squares) and, for square bins, the
    ``(n, 4, 2)`` corners in µm of the kept spots."""
    if bags.grid is None:
        circles = sdata.shapes[bags.spots_key].loc[bags.instance]
        to_um = slide.to_um(bags.spots_key)
        xy = apply_matrix(to_um, np.column_stack([circles.geometry.x, circles.geometry.y]))
        radius = circles["radius"].to_numpy(float) * np.sqrt(abs(np.linalg.det(to_um[:2, :2])))
        return xy, radius, None
    to_um = slide.to_um(bags.cells_key)
    squares = bags.grid.squares(bags.bins)
    corners = shapely.get_coordinates(squares).reshape(len(squares), 5, 2)[:, :4]
    corners = apply_matrix(to_um, corners.reshape(-1, 2)).reshape(-1, 4, 2)
    xy = corners.mean(1)
    radius = np.linalg.norm(corners[:, 0] - xy, axis=1)
    return xy, radius, corners


def _check_genes(genes: list[str], predicted: list[str], measured: list[str], table: str) -> None:
    for missing, what, fix in (
        ([g for g in genes if g not in predicted], f"predicted in {table!r}", predicted),
        ([g for g in genes if g not in measured], "measured in the spots table", None),
    ):
        if missing:
            hint = f" Predicted genes: {fix[:10]}{' ...' if len(fix) > 10 else ''}." if fix else ""
            raise KeyError(f"Genes not {what}: {missing[:10]}.{hint}")

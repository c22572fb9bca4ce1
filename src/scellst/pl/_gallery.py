"""``sst.pl.gallery``: H&E crops of the cells with the highest (or lowest) values of a gene or
score, at a fixed physical size, with the nucleus outlined."""

from __future__ import annotations

import math
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
from ..constants import CELLS_KEY, SPATIAL_OBSM
from ..embedding.crops import CROP_SIZE_UM, crop_boxes, crop_pixels, exterior_coords, iter_crops
from ._color import cell_values
from ._figure import finish, grid_axes
from ._slide import Slide, add_scalebar


@doc_params(grid_show_save=GRID_SHOW_SAVE)
def gallery(
    sdata: SpatialData,
    color: str,
    *,
    n: int = 16,
    ascending: bool = False,
    cells_key: str = CELLS_KEY,
    table_key: str | None = None,
    layer: str | None = None,
    image_key: str | None = None,
    crop_size_um: float = CROP_SIZE_UM,
    crop_mpp: float | None = None,
    ncols: int | None = None,
    outline: bool = True,
    outline_color: str = "lime",
    scalebar: bool = True,
    panel_size: float = 1.8,
    ax: Sequence[Axes] | FigureBase | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Figure:
    """Crops of the ``n`` cells with the highest (``ascending=True``: lowest) values.

    Each panel is a ``crop_size_um`` square of the H&E centred on a nucleus (read with the same
    crop reader as :func:`scellst.tl.embed`), its outline drawn, and the cell id and value in
    the title; panels are ordered by value. Cells without a value (NaN) are skipped.

    Parameters
    ----------
    sdata
        SpatialData with segmented cells and their image.
    color
        A gene, a numeric ``obs`` column or an embedding coordinate ``"<obsm key>:<i>"``,
        resolved as in :func:`scellst.pl.cells`.
    n
        Number of cells.
    ascending
        Show the lowest values instead of the highest.
    cells_key, table_key, layer
        As in :func:`scellst.pl.cells`.
    image_key
        The image to crop; default the one the cells were segmented on.
    crop_size_um, crop_mpp
        Crop side in µm and its resolution in µm per pixel (default: the slide's own).
    ncols
        Panels per row (default: a square-ish grid).
    outline, outline_color
        Draw the nucleus polygon, in this colour.
    scalebar
        Draw a scale bar in the first panel.
    panel_size
        Side of a panel in inches.
    ax
        ``n`` Axes to draw in (or as many as the grid has), or a Figure/SubFigure to make them
        in; default a new figure.
    {grid_show_save}

    Returns
    -------
    matplotlib.figure.Figure or None
        None when the figure was shown (the default without ``ax``/``save``), else the figure (or SubFigure) of the grid; panel titles read ``"#<cell id>: <value>"``.

    Examples
    --------
    >>> sst.pl.gallery(sdata, "ERBB2", n=25)
    >>> sst.pl.gallery(sdata, "area_um2", ascending=True)  # the smallest nuclei
    >>> sst.pl.gallery(sdata, "X_sst:5")
    """
    if n < 1:
        raise ValueError(f"`n` must be at least 1, got {n}.")
    cv = cell_values(sdata, color, cells_key=cells_key, table_key=table_key, layer=layer)
    if cv.categorical:
        raise ValueError(
            f"{color!r} is categorical: the gallery ranks cells by a numeric value. Use a gene, "
            "a numeric obs column or an embedding coordinate such as 'X_sst:0'."
        )
    valid = np.flatnonzero(np.isfinite(cv.values))
    if not len(valid):
        raise ValueError(f"No cell has a value of {color!r}.")
    key = cv.values[valid] if ascending else -cv.values[valid]
    cells = valid[np.argsort(key, kind="stable")[:n]]

    slide = Slide.of(sdata, cells_image_key(sdata, cells_table(sdata, cells_key), image_key))
    mpp = slide.mpp
    crop_mpp = mpp if crop_mpp is None else float(crop_mpp)
    to_px = slide.to_px(cells_key)
    centres = apply_matrix(to_px, np.asarray(cells_table(sdata, cells_key).obsm[SPATIAL_OBSM]))
    centres = centres[cells]
    crops = np.empty((len(cells), *(crop_pixels(crop_size_um, crop_mpp),) * 2, 3), np.uint8)
    for batch in iter_crops(
        slide.levels[0],
        mpp,
        centres,
        crop_size_um=crop_size_um,
        crop_mpp=crop_mpp,
        masks=False,
        n_jobs=1,
        progress=False,
    ):
        crops[batch.index] = batch.images
    left, top, side = crop_boxes(centres, mpp, crop_size_um, crop_mpp)
    geoms = sdata.shapes[cells_key].geometry.to_numpy()[cells]
    rings = exterior_coords(shapely.transform(geoms, lambda p: apply_matrix(to_px, p)))
    ids = sdata.shapes[cells_key].index[cells]

    ncols = ncols or math.ceil(math.sqrt(len(cells)))
    nrows = math.ceil(len(cells) / ncols)
    axes, own = grid_axes(ax, nrows, ncols, (panel_size, panel_size + 0.25))
    for k, panel in enumerate(axes.ravel()):
        panel.set_axis_off()
        if k >= len(cells):
            continue
        x0, y0 = left[k] * mpp, top[k] * mpp
        x1, y1 = x0 + side * mpp, y0 + side * mpp
        panel.imshow(crops[k], extent=(x0, x1, y1, y0), interpolation="nearest")
        if outline and rings[k] is not None:
            panel.plot(rings[k][:, 0] * mpp, rings[k][:, 1] * mpp, color=outline_color, lw=1)
        panel.set_xlim(x0, x1)
        panel.set_ylim(y1, y0)
        panel.set_title(f"#{ids[k]}: {cv.values[cells[k]]:.3g}", fontsize=8)
    if scalebar:
        add_scalebar(axes.flat[0], crop_size_um)
    fig = axes.flat[0].figure
    if ax is None or isinstance(ax, FigureBase):
        order = "lowest" if ascending else "highest"
        fig.suptitle(f"{color}: the {len(cells)} cells with the {order} values")
    return finish(fig, own=own, show=show, save=save)

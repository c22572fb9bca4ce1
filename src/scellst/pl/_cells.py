"""``sst.pl.cells``: cell polygons coloured by expression, annotation or embedding, over the H&E."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import shapely
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from spatialdata import SpatialData

from .._docs import AX_SHOW_SAVE, doc_params
from .._sdata import apply_matrix, cells_image_key
from .._tables import cells_table
from ..constants import CELLS_KEY, SPATIAL_OBSM
from ..embedding.crops import exterior_coords
from ._color import NA_COLOR, as_mask, cell_values, mask_values, paint
from ._figure import finish, single_axes
from ._slide import Slide, add_scalebar, box_figsize, discs, in_box, set_view, view_box

#: Views with more cells than this draw polygons rasterised (vector files stay small).
RASTERIZE_ABOVE = 20_000


@doc_params(ax_show_save=AX_SHOW_SAVE)
def cells(
    sdata: SpatialData,
    color: str | None = None,
    *,
    cells_key: str = CELLS_KEY,
    table_key: str | None = None,
    image_key: str | None = None,
    region: Sequence[float] | None = None,
    image: bool = True,
    layer: str | None = None,
    cmap: str = "viridis",
    palette: str | Sequence | Mapping | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] | None = (1.0, 99.0),
    mask: str | np.ndarray | None = None,
    alpha: float = 0.8,
    edgecolor: str | None = None,
    na_color: str = NA_COLOR,
    scalebar: bool = True,
    max_polygons: int = 50_000,
    max_image_px: int = 2000,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot cell polygons over the H&E, coloured by a gene, an ``obs`` column or an embedding.

    Cells whose centroid lies in the view are drawn as polygons (one
    :class:`~matplotlib.collections.PolyCollection`, rasterised beyond 20,000 cells). Views
    holding more than ``max_polygons`` cells (a whole slide) draw each cell as a disc of its
    nucleus' area at its centroid instead (one rasterised
    :class:`~matplotlib.collections.EllipseCollection` in µm, so discs keep their size when
    zooming): about as informative at that scale, in half the time (150,000 cells: 2.3 vs 4.0
    CPU s including ``save``, see ``BENCHMARKS.md``). Axes are in µm of the full-resolution
    H&E (origin top-left, y down).

    Parameters
    ----------
    sdata
        SpatialData with segmented cells (and usually predictions).
    color
        What colours the cells (``None``: outlines only):

        - a gene of the table ``table_key`` (``X``, or ``layers[layer]``);
        - an ``obs`` column of that table, of the cells table or of any table annotating the
          cells: numeric values get the colour map and a colour bar; categorical, string and
          boolean ones a palette and a legend;
        - ``"<obsm key>:<i>"``: column ``i`` (from 0) of an ``obsm`` entry of one of those
          tables, e.g. ``"X_sst:3"`` (fourth feature of the embedding ``sst_embedding``),
          ``"X_pca:0"`` or ``"X_umap:1"`` after scanpy ran on ``sdata["sst_expression"]``.

        Tables are searched in that order: ``table_key``, the cells table, the other tables.
    cells_key
        The cell shapes.
    table_key
        Table searched first; default ``"sst_expression"`` when present, else the cells table.
    image_key
        Background image; default the one the cells were segmented on.
    region
        ``(x0, y0, x1, y1)`` in µm: show this box (cells whose centroid is inside). Default: the
        whole image.
    image
        Draw the H&E under the cells (read from the pyramid level that fits ``max_image_px``).
    layer
        Take gene values from ``layers[layer]`` of ``table_key`` instead of ``X``.
    cmap, vmin, vmax
        Colour map and limits of numeric values (each default: see ``percentiles``).
    percentiles
        Robust colour limits of numeric values: limits not given as ``vmin``/``vmax`` are these
        percentiles of the values of the cells shown (default the 1st and 99th, so that a few
        extreme cells do not flatten the scale; ``None``: the minimum and maximum).
    mask
        Cells to grey out (drawn in ``na_color``, left out of the colour limits): a boolean
        ``obs`` column looked up like ``color`` (e.g. ``"out_of_distribution"`` of
        :func:`~scellst.tl.predict`'s table, or ``"on_tissue"`` negated as a column of your
        own), or a boolean array with one value per cell of the cells table.
    palette
        Categorical colours: a matplotlib colour map name (``"tab10"``), a list of colours or a
        ``{category: colour}`` dict. Default: the colours scanpy stored in the table's
        ``uns[f"{color}_colors"]``, else scanpy's default palettes.
    alpha, edgecolor
        Fill opacity and polygon outline colour (default none; ``"lime"`` when ``color=None``).
    na_color
        Colour of cells without a value (absent from the table, or NaN).
    scalebar
        Draw a scale bar (a round length in µm, about a fifth of the view).
    max_polygons
        Above this many cells in the view, draw discs of the nuclei's area instead of polygons.
    max_image_px
        Largest background image side in pixels (a coarser pyramid level is used beyond it).
    {ax_show_save}

    Returns
    -------
    matplotlib.axes.Axes or None
        None when the figure was shown (the default without ``ax``/``save``), else the Axes (units: µm). The cells are its first collection.

    Examples
    --------
    >>> sst.pl.cells(sdata, color="ERBB2", region=(2000, 2000, 2600, 2600))
    >>> sst.pl.cells(sdata, color="X_sst:0")  # first embedding feature, whole slide
    >>> sc.tl.leiden(sdata["sst_expression"])
    >>> sst.pl.cells(sdata, color="leiden", image=False)
    >>> sst.pl.cells(sdata, color="ERBB2", mask="out_of_distribution")  # grey out unlike cells

    The same map with spatialdata-plot (``import spatialdata_plot``), which joins a table to the
    polygons through their ``cell_id``; there the axes are in the ``"microns"`` coordinate
    system:

    >>> (
    ...     sdata.pl.render_images("he")
    ...     .pl.render_shapes("sst_cells", color="ERBB2", table_name="sst_expression")
    ...     .pl.show(coordinate_systems="microns")
    ... )
    """
    cells_tab = cells_table(sdata, cells_key)
    slide = Slide.of(sdata, cells_image_key(sdata, cells_tab, image_key))
    to_um = slide.to_um(cells_key)
    geoms = sdata.shapes[cells_key].geometry.to_numpy()
    if cells_tab.n_obs != len(geoms):
        raise ValueError(
            f"The cells table has {cells_tab.n_obs} rows but {cells_key!r} has {len(geoms)} "
            "shapes; re-run sst.pp.segment."
        )
    values = None
    if color is not None:
        values = cell_values(sdata, color, cells_key=cells_key, table_key=table_key, layer=layer)
        if mask is not None:
            values = mask_values(values, _mask(sdata, mask, cells_key, table_key, len(geoms)))
    box = view_box(region, slide.box)
    xy_um = apply_matrix(to_um, np.asarray(cells_tab.obsm[SPATIAL_OBSM]))
    inside = np.flatnonzero(in_box(xy_um, box))

    ax, own = single_axes(ax, box_figsize(box))
    if image:
        slide.draw(ax, box, max_image_px)
    if len(inside) > max_polygons:
        area_um2 = shapely.area(geoms[inside]) * abs(np.linalg.det(to_um[:2, :2]))
        coll = discs(xy_um[inside], np.sqrt(area_um2 / np.pi), ax, rasterized=True)
    else:
        polys = shapely.transform(geoms[inside], lambda p: apply_matrix(to_um, p))
        rings = [np.zeros((0, 2)) if r is None else r for r in exterior_coords(polys)]
        coll = PolyCollection(rings, rasterized=len(rings) > RASTERIZE_ABOVE)
    coll.set_alpha(alpha)
    coll.set_edgecolor(edgecolor or "none")
    coll.set_linewidth(0.4)
    if values is None:
        coll.set_facecolor("none")
        coll.set_edgecolor(edgecolor or "lime")
        coll.set_alpha(1.0)
    else:
        paint(
            coll,
            values,
            inside,
            ax,
            cmap=cmap,
            palette=palette,
            vmin=vmin,
            vmax=vmax,
            percentiles=percentiles,
            na_color=na_color,
        )
    ax.add_collection(coll)
    set_view(ax, box)
    ax.set_title(color or cells_key)
    if scalebar:
        add_scalebar(ax, box[2] - box[0])
    return finish(ax, own=own, show=show, save=save)


def _mask(sdata, mask, cells_key: str, table_key: str | None, n: int) -> np.ndarray:
    if isinstance(mask, str):
        return as_mask(cell_values(sdata, mask, cells_key=cells_key, table_key=table_key))
    mask = np.asarray(mask)
    if mask.dtype != bool or mask.shape != (n,):
        raise ValueError(
            f"`mask` must be an obs column name or a boolean array of {n} values (one per cell of "
            f"{cells_key!r}), got {mask.dtype} of shape {mask.shape}."
        )
    return mask

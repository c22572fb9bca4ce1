"""``sst.pl.cells``: cell polygons coloured by expression or annotation, over the H&E."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import shapely
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.patches import Patch
from spatialdata import SpatialData

from .._sdata import apply_matrix, element_to_image_matrix, image_levels, read_rgb
from .._sdata import image_key as resolve_image_key
from ..constants import CELLS_KEY, EXPRESSION_KEY, SPATIAL_OBSM, cells_table_key
from ..io._scale import microns_per_pixel


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
    palette: str = "tab10",
    vmin: float | None = None,
    vmax: float | None = None,
    alpha: float = 0.8,
    edgecolor: str | None = None,
    max_image_px: int = 2000,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | Path | None = None,
) -> Axes:
    """Plot cell polygons over the H&E, coloured by a gene or an ``obs`` column.

    Parameters
    ----------
    sdata
        SpatialData with segmented cells (and usually predictions).
    color
        A gene of the expression table (``table_key``), or an ``obs`` column of that table or of
        the cells table (numeric: colour map; categorical: legend). ``None``: outlines only.
    cells_key
        The cell shapes.
    table_key
        Table to take ``color`` from; default ``"sst_expression"`` when present, else the cells table.
    image_key
        Background image; default the one the cells were segmented on.
    region
        ``(x0, y0, x1, y1)`` in µm: crop to this box.
    image
        Draw the H&E under the cells (read from the pyramid level that fits ``max_image_px``).
    layer
        Take gene values from ``layers[layer]`` instead of ``X``.
    cmap, palette, vmin, vmax, alpha, edgecolor
        Styling (continuous colour map, categorical palette, colour limits, fill alpha, outline).
    max_image_px
        Largest background image side in pixels (a coarser pyramid level is used beyond it).
    ax
        Axes to draw in (a new figure otherwise).
    show
        Call ``plt.show()`` (default: when no ``ax`` was given and not saving).
    save
        Path to save the figure to.

    Returns
    -------
    matplotlib.axes.Axes
        The matplotlib Axes (axis units: µm).

    Examples
    --------
    >>> sst.pl.cells(sdata, color="ERBB2", region=(2000, 2000, 2600, 2600))
    """
    key = resolve_image_key(sdata, image_key)
    mpp = microns_per_pixel(sdata, key)
    if cells_key not in sdata.shapes:
        raise KeyError(
            f"No cell shapes {cells_key!r}: run sst.pp.segment first or pass `cells_key`."
        )
    to_px = element_to_image_matrix(sdata, cells_key, key)
    geoms = sdata.shapes[cells_key].geometry.to_numpy()
    table_key = table_key or (
        EXPRESSION_KEY if EXPRESSION_KEY in sdata.tables else cells_table_key(cells_key)
    )
    values = _color_values(sdata, color, table_key, cells_table_key(cells_key), layer, len(geoms))

    xy_um = (
        apply_matrix(to_px, np.asarray(sdata.tables[cells_table_key(cells_key)].obsm[SPATIAL_OBSM]))
        * mpp
    )
    levels = image_levels(sdata, key)
    H, W = int(levels[0].sizes["y"]), int(levels[0].sizes["x"])
    x0, y0, x1, y1 = (0.0, 0.0, W * mpp, H * mpp) if region is None else map(float, region)
    if x1 <= x0 or y1 <= y0:
        raise ValueError(
            f"region must be (x0, y0, x1, y1) in µm with x1 > x0 and y1 > y0, got {region}."
        )
    inside = (xy_um[:, 0] >= x0) & (xy_um[:, 0] <= x1) & (xy_um[:, 1] >= y0) & (xy_um[:, 1] <= y1)

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 7 * (y1 - y0) / (x1 - x0) if x1 > x0 else 7))
        show = (save is None) if show is None else show
    if image:
        _draw_image(ax, levels, mpp, (x0, y0, x1, y1), max_image_px)
    scale = to_px.copy()
    scale[:2] *= mpp  # element -> µm
    polys = shapely.transform(geoms[inside], lambda p: apply_matrix(scale, p))
    verts = [
        np.asarray(p.exterior.coords)
        if p.geom_type == "Polygon"
        else np.asarray(p.convex_hull.exterior.coords)
        for p in polys
    ]
    coll = PolyCollection(
        verts,
        alpha=alpha,
        edgecolors=edgecolor or "none",
        linewidths=0.4,
        rasterized=len(verts) > 20000,
    )
    if values is None:
        coll.set_facecolor("none")
        coll.set_edgecolor(edgecolor or "lime")
        coll.set_alpha(1.0)
    elif (
        isinstance(values.dtype, pd.CategoricalDtype)
        or values.dtype == object
        or values.dtype == bool
    ):
        cats = pd.Categorical(values)
        colors = plt.get_cmap(palette)(np.arange(len(cats.categories)) % plt.get_cmap(palette).N)
        coll.set_facecolor(colors[cats.codes[inside]])
        ax.legend(
            handles=[Patch(color=colors[i], label=str(c)) for i, c in enumerate(cats.categories)],
            title=color, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
        )  # fmt: skip
    else:
        coll.set_array(np.asarray(values, dtype=float)[inside])
        coll.set_cmap(cmap)
        coll.set_clim(vmin, vmax)
        plt.colorbar(coll, ax=ax, shrink=0.7, label=color)
    ax.add_collection(coll)
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.set_xlabel("x (µm)")
    ax.set_ylabel("y (µm)")
    ax.set_title(color or cells_key)
    if save is not None:
        ax.figure.savefig(save, dpi=150, bbox_inches="tight")
    if show:
        plt.show()
    return ax


def _color_values(sdata, color, table_key, cells_table, layer, n):
    if color is None:
        return None
    for key in dict.fromkeys([table_key, cells_table]):
        if key not in sdata.tables:
            continue
        table = sdata.tables[key]
        if color in table.var_names:
            data = table.layers[layer] if layer else table.X
            col = data[:, table.var_names.get_loc(color)]
            col = col.toarray().ravel() if hasattr(col, "toarray") else np.asarray(col).ravel()
            return pd.Series(col)
        if color in table.obs:
            return table.obs[color].reset_index(drop=True)
    raise KeyError(
        f"{color!r} is neither a gene of {table_key!r} nor an obs column of it or of "
        f"{cells_table!r}."
    )


def _draw_image(ax, levels, mpp, box, max_px) -> None:
    x0, y0, x1, y1 = box
    H0 = int(levels[0].sizes["y"])
    for level in levels:
        f = H0 / int(level.sizes["y"])  # level pixels are f level-0 pixels
        if max(x1 - x0, y1 - y0) / (mpp * f) <= max_px or level is levels[-1]:
            break
    h, w = int(level.sizes["y"]), int(level.sizes["x"])
    px = lambda v, size: int(np.clip(v / (mpp * f), 0, size))  # noqa: E731
    r0, r1, c0, c1 = px(y0, h), px(y1, h), px(x0, w), px(x1, w)
    if r1 <= r0 or c1 <= c0:
        return
    rgb = read_rgb(level, r0, r1, c0, c1)
    ax.imshow(
        rgb,
        extent=(c0 * f * mpp, c1 * f * mpp, r1 * f * mpp, r0 * f * mpp),
        interpolation="nearest",
    )

"""What ``color=`` means in ``sst.pl``: one value per cell, from a gene, an obs column or an
embedding coordinate, and how it becomes colours (colour map and bar, or palette and legend).

``color`` is looked up, in this order, in the table ``table_key`` (default the predictions
``sst_expression`` when present, else the cells table), then in the cells table, then in every
other table annotating the cells (e.g. the embedding ``sst_embedding``):

1. a gene (``var_names``; ``X`` or ``layers[layer]``);
2. an ``obs`` column (numeric: colour map; categorical, string or boolean: palette);
3. ``"<obsm key>:<i>"``: column ``i`` (from 0) of ``obsm[<obsm key>]``, e.g. ``"X_sst:3"`` (the
   fourth embedding feature), ``"X_pca:0"`` or ``"X_umap:1"``.

Rows are matched to the cell polygons through the table's ``instance_key`` (``cell_id``), so a
table holding only some of the cells works: the others get ``na_color``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import matplotlib as mpl
import numpy as np
import pandas as pd
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.collections import Collection
from matplotlib.colors import ListedColormap, to_rgba_array
from matplotlib.patches import Patch
from spatialdata import SpatialData

from .._sdata import table_link
from ..constants import EXPRESSION_KEY, cells_table_key

#: Colour of cells without a value (not in the table, NaN), as in scanpy.
NA_COLOR = "lightgray"


@dataclass
class CellValues:
    """One value per cell polygon (in the order of the shapes element)."""

    #: Numeric: float values (NaN where missing). Categorical: category codes (-1 where missing).
    values: np.ndarray
    #: What the values are (``color``).
    label: str
    #: The table they come from.
    table: str
    #: Categories, for categorical values; ``None`` for numeric ones.
    categories: pd.Index | None = None
    #: Colours stored for the categories in the table's ``uns[f"{color}_colors"]`` (scanpy).
    stored_colors: list | None = None

    @property
    def categorical(self) -> bool:
        return self.categories is not None


def default_table(sdata: SpatialData, cells_key: str, table_key: str | None) -> str:
    """``table_key``, else the predictions when present, else the cells table."""
    if table_key is not None:
        if table_key not in sdata.tables:
            hint = (
                "run `sst.tl.predict(sdata, model)` first"
                if table_key == EXPRESSION_KEY
                else "pass one of them as `table_key`"
            )
            raise KeyError(f"No table {table_key!r}; the tables are {list(sdata.tables)}: {hint}.")
        return table_key
    return EXPRESSION_KEY if EXPRESSION_KEY in sdata.tables else cells_table_key(cells_key)


def cell_values(
    sdata: SpatialData,
    color: str,
    *,
    cells_key: str,
    table_key: str | None = None,
    layer: str | None = None,
) -> CellValues:
    """Resolve ``color`` (a gene, an obs column or ``"<obsm key>:<i>"``) for every cell."""
    first = default_table(sdata, cells_key, table_key)
    names = [first, cells_table_key(cells_key)]
    names += [k for k, t in sdata.tables.items() if cells_key in _regions(t)]
    names = [k for k in dict.fromkeys(names) if k in sdata.tables]
    shapes_index = sdata.shapes[cells_key].index
    for name in names:
        table = sdata.tables[name]
        column = _lookup(table, color, layer if name == first else None)
        if column is not None:
            return _aligned(column, table, name, color, cells_key, shapes_index)
    first_table = sdata.tables[first]
    genes = ", ".join(map(repr, first_table.var_names[:8]))
    raise KeyError(
        f"{color!r} is neither a gene of {first!r} nor an obs column or an obsm entry "
        f"('<key>:<index>', e.g. 'X_sst:0') of the tables of {cells_key!r} ({', '.join(names)}). "
        f"Genes of {first!r}: {genes}{' ...' if first_table.n_vars > 8 else ''}; obs columns: "
        f"{list(first_table.obs.columns)}."
    )


def _regions(table: AnnData) -> list[str]:
    region = table.uns.get("spatialdata_attrs", {}).get("region", [])
    return [region] if isinstance(region, str) else list(region)


def _lookup(table: AnnData, color: str, layer: str | None):
    """The column ``color`` of ``table`` (array or Series, one row per table row), or None."""
    if color in table.var_names:
        if layer is not None and layer not in table.layers:
            raise KeyError(f"No layer {layer!r}; the layers are {list(table.layers)}.")
        data = table.layers[layer] if layer is not None else table.X
        col = data[:, table.var_names.get_loc(color)]
        return col.toarray().ravel() if hasattr(col, "toarray") else np.asarray(col).ravel()
    if color in table.obs:
        return table.obs[color]
    key, sep, index = color.rpartition(":")
    if sep and key in table.obsm:
        matrix = table.obsm[key]
        n_cols = matrix.shape[1]
        if not index.isdigit() or int(index) >= n_cols:
            raise IndexError(
                f"{color!r}: obsm[{key!r}] has {n_cols} columns; use '{key}:<i>' with i from 0 "
                f"to {n_cols - 1}."
            )
        if isinstance(matrix, pd.DataFrame):
            return matrix.iloc[:, int(index)].to_numpy()
        col = matrix[:, int(index)]
        return col.toarray().ravel() if hasattr(col, "toarray") else np.asarray(col).ravel()
    return None


def _aligned(column, table, name, color, cells_key, shapes_index) -> CellValues:
    """Put the table's values in the order of the polygons (missing: NaN / code -1)."""
    n = len(shapes_index)
    try:
        region_key, instance_key = table_link(table)
    except ValueError:
        region_key = instance_key = None
    if instance_key is not None and instance_key in table.obs:
        rows = np.ones(table.n_obs, bool)
        if region_key in table.obs:
            rows = (table.obs[region_key] == cells_key).to_numpy()
        rows = np.flatnonzero(rows)
        target = shapes_index.get_indexer(table.obs[instance_key].to_numpy()[rows])
        rows, target = rows[target >= 0], target[target >= 0]
    elif table.n_obs == n:
        rows = target = np.arange(n)
    else:
        raise ValueError(
            f"Table {name!r} ({table.n_obs} rows) is not linked to {cells_key!r} ({n} cells): "
            "parse it with TableModel (region, region_key, instance_key) to match its rows."
        )
    series = pd.Series(np.asarray(column) if not isinstance(column, pd.Series) else column.values)
    if _is_categorical(series):
        cats = pd.Categorical(series)
        codes = np.full(n, -1, np.int64)
        codes[target] = cats.codes[rows]
        stored = table.uns.get(f"{color}_colors")
        stored = (
            list(stored) if stored is not None and len(stored) >= len(cats.categories) else None
        )
        return CellValues(codes, color, name, cats.categories, stored)
    values = np.full(n, np.nan)
    values[target] = series.to_numpy(dtype=float, na_value=np.nan)[rows]
    return CellValues(values, color, name)


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype)
        or pd.api.types.is_bool_dtype(dtype)
        or not pd.api.types.is_numeric_dtype(dtype)
    )


def category_colors(
    categories: Sequence, palette=None, stored: Sequence | None = None
) -> np.ndarray:
    """RGBA colour of each category: ``palette`` (a matplotlib colour map name, a list of
    colours or a ``{category: colour}`` dict), else the colours stored by scanpy (``stored``),
    else scanpy's default palettes (20, 28 or 102 colours by number of categories)."""
    k = len(categories)
    if isinstance(palette, Mapping):
        missing = [c for c in categories if c not in palette]
        if missing:
            raise KeyError(f"`palette` has no colour for the categories {missing[:10]}.")
        return to_rgba_array([palette[c] for c in categories])
    if palette is None and stored is not None:
        return to_rgba_array(list(stored)[:k])
    if palette is None:
        from scanpy.plotting import palettes  # ~1 s to import: only when needed

        palette = (
            palettes.default_20
            if k <= 20
            else palettes.default_28
            if k <= 28
            else palettes.default_102
        )
    if isinstance(palette, str):
        cmap = mpl.colormaps[palette]
        if isinstance(cmap, ListedColormap) and cmap.N < 256:  # qualitative: cycle its colours
            return to_rgba_array(cmap(np.arange(k) % cmap.N))
        return to_rgba_array(cmap(np.linspace(0, 1, max(k, 1))))
    colors = list(palette)
    return to_rgba_array([colors[i % len(colors)] for i in range(k)])


def paint(
    coll: Collection,
    cv: CellValues,
    select: np.ndarray,
    ax: Axes,
    *,
    cmap: str = "viridis",
    palette=None,
    vmin: float | None = None,
    vmax: float | None = None,
    percentiles: tuple[float, float] | None = None,
    na_color: str = NA_COLOR,
    colorbar: bool = True,
) -> None:
    """Colour the items of ``coll`` (the cells ``select``) by ``cv``, with a colour bar
    (numeric values) or a legend of every category (categorical ones). Numeric limits not given
    are the ``percentiles`` of the finite values shown (``None``: their minimum and maximum)."""
    if cv.categorical:
        colors = category_colors(cv.categories, palette, cv.stored_colors)
        codes = cv.values[select]
        face = np.where(codes[:, None] >= 0, colors[np.maximum(codes, 0)], to_rgba_array(na_color))
        coll.set_facecolor(face)
        ax.legend(
            handles=[Patch(color=colors[i], label=str(c)) for i, c in enumerate(cv.categories)],
            title=cv.label, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False,
        )  # fmt: skip
        return
    shown = cv.values[select]
    coll.set_array(np.ma.masked_invalid(shown))
    coll.set_cmap(mpl.colormaps[cmap].with_extremes(bad=na_color))
    vmin, vmax = color_limits(shown, vmin, vmax, percentiles)
    coll.set_clim(vmin, vmax)
    if colorbar:
        ax.figure.colorbar(coll, ax=ax, shrink=0.7, label=cv.label)


def color_limits(
    values: np.ndarray,
    vmin: float | None,
    vmax: float | None,
    percentiles: tuple[float, float] | None,
) -> tuple[float | None, float | None]:
    """``vmin``/``vmax`` where given, else robust limits: the ``percentiles`` (e.g. ``(1, 99)``)
    of the finite ``values``, so that a few extreme cells do not wash out the colour scale."""
    finite = np.asarray(values, np.float64)
    finite = finite[np.isfinite(finite)]
    if percentiles is None or not len(finite):
        return vmin, vmax
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:  # constant (or nearly) values: let matplotlib choose
        return vmin, vmax
    return (float(lo) if vmin is None else vmin), (float(hi) if vmax is None else vmax)


def mask_values(cv: CellValues, hide: np.ndarray) -> CellValues:
    """A copy of ``cv`` without the values of the cells ``hide`` (drawn in ``na_color``)."""
    values = cv.values.copy()
    values[hide] = -1 if cv.categorical else np.nan
    return CellValues(values, cv.label, cv.table, cv.categories, cv.stored_colors)


def as_mask(cv: CellValues) -> np.ndarray:
    """Boolean per cell from a boolean/numeric column (missing: False)."""
    if cv.categorical:
        truthy = np.array([str(c).lower() in ("true", "1") for c in cv.categories])
        return (cv.values >= 0) & truthy[np.maximum(cv.values, 0)]
    return np.nan_to_num(cv.values, nan=0.0) > 0.5

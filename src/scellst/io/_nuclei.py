"""Import nucleus polygons made elsewhere (CellViT/HoVer-Net GeoJSON from HEST, QuPath, ...)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from spatialdata import SpatialData
from spatialdata.models import ShapesModel

from .._docs import OVERWRITE_ELEMENT, doc_params
from .._sdata import add_element, check_free, transformations_of
from .._sdata import image_key as resolve_image_key

#: Columns tried, in order, for the nucleus class when ``class_column`` is not given.
_CLASS_COLUMNS = ("classification", "class", "cell_type", "type", "label")


@doc_params(overwrite_element=OVERWRITE_ELEMENT)
def read_nuclei(
    path: str | Path,
    sdata: SpatialData,
    image_key: str | None = None,
    *,
    key_added: str = "nuclei",
    class_column: str | None = None,
    overwrite: bool = False,
) -> None:
    """Add nucleus polygons from a GeoJSON or GeoParquet file as a shapes element.

    Use it to bring in a segmentation made by another tool, e.g. the CellViT GeoJSON that
    HEST-1k ships (``cellvit_seg/<id>_cellvit_seg.geojson``) or a QuPath export, then build the
    cells from it with ``sst.pp.segment(sdata, shapes_key=key_added)``.

    Parameters
    ----------
    path
        ``.geojson``/``.json`` or ``.parquet`` file with (Multi)Polygon geometries in the
        full-resolution pixel coordinates of the image (x = column, y = row).
    sdata
        SpatialData holding that image (modified in place).
    image_key
        The image the polygons were drawn on; may be omitted when there is one.
    key_added
        Name of the new shapes element.
    class_column
        Property holding each nucleus' class. Default: the first of ``classification``
        (QuPath/HEST style ``{"name": ...}`` objects are unpacked), ``class``, ``cell_type``,
        ``type``, ``label`` that exists. Stored as the column ``class``.
    {overwrite_element}

    Returns
    -------
    None
        Adds ``sdata[key_added]``: one polygon per nucleus (MultiPolygon features, which group
        several nuclei, are split), with the image's transformations.

    Examples
    --------
    >>> sst.io.read_nuclei("cellvit_seg/SPA141_cellvit_seg.geojson", sdata, key_added="cellvit")
    >>> sst.pp.segment(sdata, shapes_key="cellvit")  # cells from these polygons, class kept
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No nuclei file at {str(path)!r}.")
    key = resolve_image_key(sdata, image_key)
    check_free(sdata, [key_added], overwrite)
    gdf = gpd.read_parquet(path) if path.suffix == ".parquet" else gpd.read_file(path)
    gdf = gdf[~gdf.geometry.is_empty & gdf.geometry.notna()].explode(index_parts=False)
    gdf = gdf[shapely.get_type_id(gdf.geometry.to_numpy()) == shapely.GeometryType.POLYGON]
    if gdf.empty:
        raise ValueError(f"{str(path)!r} holds no polygons.")
    out = gpd.GeoDataFrame(geometry=gdf.geometry.to_numpy(), index=pd.RangeIndex(len(gdf)))
    classes = _classes(gdf, class_column, path)
    if classes is not None:
        out["class"] = pd.Categorical(classes)
    add_element(
        sdata,
        key_added,
        ShapesModel.parse(out, transformations=transformations_of(sdata, key)),
        overwrite,
    )


def _classes(gdf: gpd.GeoDataFrame, column: str | None, path: Path) -> np.ndarray | None:
    if column is not None and column not in gdf.columns:
        raise KeyError(f"{str(path)!r} has no property {column!r}; it has {list(gdf.columns)}.")
    column = column or next((c for c in _CLASS_COLUMNS if c in gdf.columns), None)
    if column is None:
        return None
    values = gdf[column].to_numpy()
    # QuPath / HEST: {"name": "Neoplastic", "color": [...]} (possibly as a JSON string)
    return np.array([_class_name(v) for v in values], dtype=object)


def _class_name(value) -> str:
    if isinstance(value, str) and value.startswith("{"):
        import json

        value = json.loads(value)
    if isinstance(value, dict):
        return str(value.get("name", value))
    return str(value)

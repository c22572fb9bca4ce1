"""Write segmented cells into SpatialData: a polygons element plus the table that annotates it."""

from __future__ import annotations

import anndata as ad
import geopandas as gpd
import numpy as np
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel

from .._sdata import add_element, transformations_of
from ..constants import CELL_ID, REGION_KEY, SPATIAL_OBSM, UNS_KEY, cells_table_key


def write_cells(
    sdata: SpatialData,
    *,
    key_added: str,
    image_key: str,
    geometry: np.ndarray,
    centroids_xy: np.ndarray,
    obs: dict[str, np.ndarray],
    uns: dict,
    overwrite: bool,
) -> None:
    """Add ``key_added`` (polygons in image pixels) and ``<key_added>_table`` to ``sdata``."""
    n = len(geometry)
    transformations = transformations_of(sdata, image_key)
    index = pd.RangeIndex(n)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=list(geometry), index=index), transformations=transformations
    )
    table_obs = pd.DataFrame(
        {CELL_ID: np.arange(n, dtype=np.int64), REGION_KEY: pd.Categorical([key_added] * n)},
        index=index.astype(str),
    )
    for name, values in obs.items():
        table_obs[name] = np.asarray(values)
    adata = ad.AnnData(
        X=np.zeros((n, 0), dtype=np.float32),
        obs=table_obs,
        obsm={SPATIAL_OBSM: np.asarray(centroids_xy, dtype=np.float64).reshape(n, 2)},
        uns={UNS_KEY: uns},
    )
    table = TableModel.parse(adata, region=key_added, region_key=REGION_KEY, instance_key=CELL_ID)
    add_element(sdata, key_added, shapes, overwrite=overwrite)
    add_element(sdata, cells_table_key(key_added), table, overwrite=overwrite)

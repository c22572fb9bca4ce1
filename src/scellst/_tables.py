"""Per-cell result tables that annotate the cell shapes, built the same way for every step."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
from spatialdata import SpatialData
from spatialdata.models import TableModel

from ._sdata import apply_matrix, cells_image_key, element_to_image_matrix
from .constants import CELL_ID, REGION_KEY, SPATIAL_OBSM, cells_table_key


def cells_table(sdata: SpatialData, cells_key: str) -> ad.AnnData:
    key = cells_table_key(cells_key)
    if cells_key not in sdata.shapes or key not in sdata.tables:
        raise KeyError(
            f"No segmented cells {cells_key!r} (shapes) with table {key!r}. Run "
            f"`sst.pp.segment(sdata, key_added={cells_key!r})` first, or pass `cells_key`."
        )
    return sdata.tables[key]


def cells_on_image(
    sdata: SpatialData, cells_key: str, image_key: str | None = None
) -> tuple[ad.AnnData, str, np.ndarray, np.ndarray]:
    """The cells table, the image to read them from (``image_key``, else the one they were
    segmented on), the 3x3 matrix from the cell shapes' coordinates to that image's pixels and
    the cells' centroids in those pixels."""
    cells = cells_table(sdata, cells_key)
    key = cells_image_key(sdata, cells, image_key)
    matrix = element_to_image_matrix(sdata, cells_key, key)
    return cells, key, matrix, apply_matrix(matrix, np.asarray(cells.obsm[SPATIAL_OBSM]))


def result_table(
    cells: ad.AnnData,
    cells_key: str,
    *,
    X: np.ndarray | None = None,
    var_names: list[str] | None = None,
    obsm: dict | None = None,
    layers: dict | None = None,
    uns: dict | None = None,
    extra_obs: dict | None = None,
) -> ad.AnnData:
    """A table with one row per cell of ``cells`` (same order), linked to the cell shapes.

    It carries the cells' ``obs`` (ids, area, spot assignment) and centroids so it can be used on
    its own in scanpy/squidpy.
    """
    obs = cells.obs.copy()
    obs[REGION_KEY] = pd.Categorical([cells_key] * cells.n_obs)
    for k, v in (extra_obs or {}).items():
        obs[k] = v
    n = cells.n_obs
    X = np.zeros((n, 0), dtype=np.float32) if X is None else X
    var = pd.DataFrame(index=pd.Index(var_names if var_names is not None else [], dtype=str))
    adata = ad.AnnData(
        X=X,
        obs=obs,
        var=var,
        obsm={SPATIAL_OBSM: np.asarray(cells.obsm[SPATIAL_OBSM]), **(obsm or {})},
        layers=layers or {},
        uns=uns or {},
    )
    return TableModel.parse(adata, region=cells_key, region_key=REGION_KEY, instance_key=CELL_ID)

"""Square-bin spots (Visium HD) of a slide: their grid in the cells' frame, the cells of each bin
(centroid inside the square, or each cell's area fraction), and coarser bins for training.

The geometry itself is :mod:`scellst.mil.bins`; this module reads it from a SpatialData object
(the bins' table: ``array_row``, ``array_col`` and ``uns["scellst"]["bin_grid"]``) and brings it
into the pixel frame of the cell shapes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import sparse
from spatialdata import SpatialData

from .._sdata import apply_matrix, element_to_image_matrix, table_for_element, table_link
from ..constants import ARRAY_COL, ARRAY_ROW, BIN_GRID_KEY, NO_SPOT, SPOT_SIZE_KEY, UNS_KEY
from ..io._scale import element_microns_per_unit
from .bins import BinGrid, assign_centroids, coarsen_bins, membership_matrix, overlap_matrix

#: Ways of pooling the cells of a bin (``sst.tl.fit(pooling=...)``); ``"auto"`` is
#: ``"overlap"`` on square bins and ``"centroid"`` on circles (BENCHMARKS.md, "Visium HD").
POOLINGS = ("auto", "centroid", "overlap")


@dataclass
class SquareBins:
    """The bins of a square-spots element, in the order of their table."""

    ids: np.ndarray  # instance ids (index of the shapes element)
    bins: np.ndarray  # (n, 2) (row, col) on the bin grid
    grid: BinGrid  # the grid in the pixels of the frame it was read for (the cells' shapes)
    size_um: float  # side of a bin


def square_bins(sdata: SpatialData, spots_key: str, frame_key: str) -> SquareBins:
    """The bins of ``spots_key`` with their grid expressed in the intrinsic frame of
    ``frame_key`` (e.g. the cell shapes)."""
    table = sdata.tables[table_for_element(sdata, spots_key)]
    _, instance_key = table_link(table)
    lacking = [c for c in (ARRAY_ROW, ARRAY_COL) if c not in table.obs]
    if lacking:
        raise ValueError(
            f"The table of the square bins {spots_key!r} lacks obs columns {lacking}: each bin "
            "needs its (row, col) on the bin grid, as `sst.io.read_visium_hd` writes them."
        )
    ids = table.obs[instance_key].to_numpy()
    rc = table.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy(np.int64)
    info = table.uns.get(UNS_KEY, {})
    if BIN_GRID_KEY in info:
        grid = BinGrid.from_dict(info[BIN_GRID_KEY])
    else:  # fit it to the squares' centres
        geoms = sdata.shapes[spots_key].geometry.loc[ids].values
        grid, _ = BinGrid.from_positions(rc, shapely.get_coordinates(shapely.centroid(geoms)))
    m = element_to_image_matrix(sdata, spots_key, frame_key)
    grid = BinGrid(apply_matrix(m, grid.origin[None])[0], matrix=m[:2, :2] @ grid.matrix)
    size = info.get(SPOT_SIZE_KEY)
    if size is None:
        size = grid.size * element_microns_per_unit(sdata, frame_key)
    return SquareBins(ids=ids, bins=rc, grid=grid, size_um=float(size))


def assign_to_bins(xy: np.ndarray, squares: SquareBins) -> np.ndarray:
    """Instance id of the bin whose square contains each centroid (``NO_SPOT`` outside)."""
    idx = assign_centroids(xy, squares.grid, squares.bins)
    out = np.full(len(idx), NO_SPOT, dtype=np.int64)
    out[idx >= 0] = np.asarray(squares.ids)[idx[idx >= 0]].astype(np.int64)
    return out


def coarsening_factor(bin_um: float | None, size_um: float) -> int:
    """The integer ratio of ``bin_um`` to the bins' side (1 for ``None``)."""
    if bin_um is None:
        return 1
    ratio = float(bin_um) / size_um
    factor = int(round(ratio))
    if factor < 1 or abs(ratio - factor) > 1e-6:
        raise ValueError(
            f"bin_um={bin_um!r} is not a whole multiple of the bins' side ({size_um:g} µm): "
            f"choose e.g. {2 * size_um:g} or {4 * size_um:g}."
        )
    return factor


def coarsen(squares: SquareBins, factor: int, counts) -> tuple[SquareBins, sparse.csr_matrix]:
    """Bins ``factor`` times larger (ids 0..m-1) and their summed counts."""
    out = coarsen_bins(squares.bins, factor, sparse.csr_matrix(counts))
    coarse = SquareBins(
        ids=np.arange(len(out.bins), dtype=np.int64),
        bins=out.bins,
        grid=squares.grid.coarsen(factor),
        size_um=squares.size_um * factor,
    )
    return coarse, out.counts


def cell_weights(
    squares: SquareBins,
    xy: np.ndarray,
    polygons: np.ndarray | None,
    *,
    pooling: str,
    dilation_px: float = 0.0,
) -> sparse.csr_matrix:
    """Cells x bins pooling weights: 1 for the bin of the centroid (``"centroid"``), or the
    fraction of each cell (polygon dilated by ``dilation_px``) lying in each bin
    (``"overlap"``); rows sum to at most 1."""
    if pooling == "centroid":
        return membership_matrix(
            assign_centroids(xy, squares.grid, squares.bins), len(squares.bins)
        )
    if pooling == "overlap":
        return overlap_matrix(polygons, squares.grid, squares.bins, dilation=dilation_px)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")

"""``sst.pp.assign_cells``: which cells lie in which spot."""

from __future__ import annotations

import logging

import numpy as np
from scipy.spatial import cKDTree
from spatialdata import SpatialData

from .._sdata import (
    apply_matrix,
    cells_image_key,
    element_to_image_matrix,
    image_shape_yx,
    spot_shape,
)
from .._sdata import spots_key as resolve_spots_key
from ..constants import (
    CELLS_KEY,
    NO_SPOT,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_SHAPE_SQUARE,
    UNS_KEY,
    cells_table_key,
)

log = logging.getLogger(__name__)


def spot_geometry(
    sdata: SpatialData, spots_key: str, frame_key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spot ids, centres (x, y) and radii expressed in the intrinsic frame of ``frame_key``."""
    spots = sdata.shapes[spots_key]
    matrix = element_to_image_matrix(sdata, spots_key, frame_key)
    centres = apply_matrix(matrix, np.column_stack([spots.geometry.x, spots.geometry.y]))
    radii = spots["radius"].to_numpy(dtype=float) * np.sqrt(abs(np.linalg.det(matrix[:2, :2])))
    return spots.index.to_numpy(), centres, radii


def assign_cells(
    sdata: SpatialData,
    cells_key: str = CELLS_KEY,
    spots_key: str | None = None,
    *,
    key_added: str = SPOT_COLUMN,
    overwrite: bool = False,
) -> None:
    """Assign each cell to the spot (disk or square bin) that contains its centroid (the MIL bags).

    A cell belongs to a spot when its centroid lies within the spot radius (KD-tree query, nearest
    spot wins where disks overlap), or, for the square bins of Visium HD
    (:func:`scellst.io.read_visium_hd`), inside the bin's square on the bin grid; cells outside
    every spot get ``-1``. They are still predicted by :func:`scellst.tl.predict`. (Training can
    also spread a cell over the bins it overlaps: ``sst.tl.fit(pooling="overlap")``.)

    Parameters
    ----------
    sdata
        SpatialData with the cells from :func:`scellst.pp.segment` and spot circles.
    cells_key
        The cell shapes; the assignment goes to their table ``f"{cells_key}_table"``.
    spots_key
        The spots (circles, or the square bins of Visium HD); may be omitted when there is a
        single spots element.
    key_added
        ``obs`` column of the cells table receiving the spot instance id (``-1``: no spot).
    overwrite
        Replace an existing ``key_added`` column.

    Returns
    -------
    None
        Adds ``obs[key_added]`` to the cells table and records the spots element in
        ``uns["scellst"]["assignment"]``.

    Examples
    --------
    >>> sst.pp.segment(sdata)
    >>> sst.pp.assign_cells(sdata)
    >>> (sdata["sst_cells_table"].obs["spot"] >= 0).mean()  # fraction of cells in a spot
    """
    table_key = cells_table_key(cells_key)
    if table_key not in sdata.tables:
        raise KeyError(
            f"No cells table {table_key!r}: run `sst.pp.segment(sdata, key_added={cells_key!r})` first."
        )
    table = sdata.tables[table_key]
    if key_added in table.obs and not overwrite:
        raise KeyError(
            f"The cells table already has a column {key_added!r}; pass overwrite=True to recompute it."
        )
    skey = resolve_spots_key(sdata, spots_key)
    cells_xy = np.asarray(table.obsm[SPATIAL_OBSM])
    if spot_shape(sdata, skey) == SPOT_SHAPE_SQUARE:
        ids, assigned = _assign_to_squares(sdata, skey, cells_key, cells_xy)
    else:
        ids, assigned = _assign_to_circles(sdata, skey, cells_key, cells_xy)
    table.obs[key_added] = assigned
    n_in = int((assigned != NO_SPOT).sum())
    n_spots = len(np.unique(assigned[assigned != NO_SPOT]))
    table.uns.setdefault(UNS_KEY, {})["assignment"] = {
        "spots_key": skey,
        "column": key_added,
        "n_cells_in_spots": n_in,
        "n_spots_with_cells": n_spots,
        "n_spots": len(ids),
    }
    log.info(
        "assign_cells: %d of %d cells fall in %d of %d spots",
        n_in,
        len(cells_xy),
        n_spots,
        len(ids),
    )


def _assign_to_circles(sdata, skey, cells_key, cells_xy) -> tuple[np.ndarray, np.ndarray]:
    """Spot ids, and the spot of each centroid: the nearest spot centre within its radius."""
    ids, centres, radii = spot_geometry(sdata, skey, cells_key)
    _check_spots_on_image(sdata, skey, cells_key, centres, radii)
    assigned = np.full(len(cells_xy), NO_SPOT, dtype=np.int64)
    if len(cells_xy) and len(centres):
        dist, nearest = cKDTree(centres).query(
            cells_xy, k=1, distance_upper_bound=float(radii.max())
        )
        inside = np.isfinite(dist)
        inside[inside] = dist[inside] <= radii[nearest[inside]]
        assigned[inside] = ids[nearest[inside]]
    return ids, assigned


def _assign_to_squares(sdata, skey, cells_key, cells_xy) -> tuple[np.ndarray, np.ndarray]:
    """Bin ids, and the bin of each centroid: the square of the bin grid holding it."""
    from .hd import assign_to_bins, square_bins

    squares = square_bins(sdata, skey, cells_key)
    centres = squares.grid.centres(squares.bins)
    _check_spots_on_image(sdata, skey, cells_key, centres, squares.grid.size / np.sqrt(2))
    return squares.ids, assign_to_bins(cells_xy, squares)


def _check_spots_on_image(sdata, spots_key, cells_key, centres, radii) -> None:
    if not sdata.images:
        return
    image = cells_image_key(sdata, sdata.tables[cells_table_key(cells_key)])
    h, w = image_shape_yx(sdata, image)
    x, y = centres[:, 0], centres[:, 1]
    on = (x + radii > 0) & (x - radii < w) & (y + radii > 0) & (y - radii < h)
    if len(centres) and not on.any():
        raise ValueError(
            f"None of the {len(centres)} spots of {spots_key!r} overlaps image {image!r} "
            f"({w}x{h} px; spot centres span x {x.min():.0f}..{x.max():.0f}, y {y.min():.0f}.."
            f"{y.max():.0f} in its pixels). The spots' coordinates or transformations do not "
            "match the image: check they are in full-resolution pixels (or that their "
            "transformation maps them there)."
        )

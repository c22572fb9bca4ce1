"""``sst.pp.rasterize_cells``: burn cell polygons into a label image of the H&E."""

from __future__ import annotations

import cv2
import numpy as np
import shapely
from spatialdata import SpatialData

from .._sdata import apply_matrix, element_to_image_matrix, image_shape_yx
from .._sdata import image_key as resolve_image_key
from ..constants import CELLS_KEY

#: Fractional bits of the fixed-point vertex coordinates given to OpenCV (1/256 pixel).
_SHIFT = 8
#: Vertices farther than this outside the image are clipped (keeps fixed-point values in int32).
_MARGIN = 16


def rasterize_cells(
    sdata: SpatialData,
    cells_key: str = CELLS_KEY,
    *,
    shape: tuple[int, int] | None = None,
    image_key: str | None = None,
) -> np.ndarray:
    """Burn the cell polygons into a label image of the H&E's full-resolution pixel grid.

    Pixel ``(row r, column c)`` covers ``[c, c + 1] x [r, r + 1]`` in the image's pixel frame
    (centre ``(c + 0.5, r + 0.5)``) and is given to a cell when its centre lies inside the cell's
    polygon. This is exact for polygons that follow pixel edges, such as those written by
    :func:`scellst.pp.segment` (so a segmentation rasterises back to its own pixels), and within
    a fraction of a pixel along oblique edges. A polygon too thin to contain a pixel centre still
    gets the pixel under its representative point, so no cell is lost. The filling itself is done
    by OpenCV's ``fillPoly`` with sub-pixel vertices.

    Parameters
    ----------
    sdata
        SpatialData with the cells and the image they were segmented on.
    cells_key
        Shapes element of the cells: polygons or multipolygons (holes are respected), or circles
        (points with a ``radius`` column).
    shape
        ``(height, width)`` of the label image. Default: the level-0 shape of the image.
    image_key
        The image whose pixel grid is used (its transformations place the cells on it); may be
        omitted when there is one. When the object holds no image, ``shape`` is required and the
        cells' own coordinates are taken as pixels.

    Returns
    -------
    numpy.ndarray
        int32 label image of shape ``(height, width)``: 0 = background, ``i + 1`` = the ``i``-th
        cell in the order of the shapes element (the rows of its table written by
        :func:`scellst.pp.segment`). Where polygons overlap, the later cell wins. The image is
        held in memory (4 bytes per pixel): for a whole slide, pass a region of interest instead.

    Raises
    ------
    KeyError
        If ``cells_key`` or ``image_key`` is not in ``sdata``.
    ValueError
        If ``shape`` is not given and there is no image to take it from.

    Examples
    --------
    >>> sdata = sst.datasets.synthetic(shape=(512, 512))
    >>> sst.pp.segment(sdata)
    >>> labels = sst.pp.rasterize_cells(sdata)
    >>> labels.shape, int(labels.max()) == len(sdata["sst_cells"])
    ((512, 512), True)
    >>> sst.tl.segmentation_metrics(sdata["truth_labels"].values, labels)["f1"]  # doctest: +SKIP
    """
    if cells_key not in sdata.shapes:
        raise KeyError(
            f"No shapes element {cells_key!r}; the shapes are {list(sdata.shapes)}. Segment the "
            "nuclei first with `sst.pp.segment` or pass `cells_key`."
        )
    gdf = sdata.shapes[cells_key]
    geoms = gdf.geometry.to_numpy()
    if "radius" in gdf.columns:  # circles: points with a radius
        geoms = shapely.buffer(geoms, gdf["radius"].to_numpy(dtype=float), quad_segs=16)

    if image_key is None and not sdata.images and shape is not None:
        key = None
    else:
        key = resolve_image_key(sdata, image_key)
    if shape is None:
        shape = image_shape_yx(sdata, key)
    height, width = (int(s) for s in shape)
    if height < 0 or width < 0:
        raise ValueError(f"`shape` must be (height, width) with non-negative sizes, got {shape}.")
    if key is not None:
        matrix = element_to_image_matrix(sdata, cells_key, key)
        if not np.allclose(matrix, np.eye(3)):
            geoms = shapely.transform(geoms, lambda xy: apply_matrix(matrix, xy))
    return burn_polygons(geoms, (height, width))


def burn_polygons(geoms: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Label image of ``shape`` with geometry ``i`` burnt as ``i + 1`` (later wins), see above."""
    labels = np.zeros(shape, dtype=np.int32)
    geoms = np.asarray(geoms, dtype=object)
    if geoms.size == 0 or labels.size == 0:
        return labels
    if geoms.size >= np.iinfo(np.int32).max:
        raise ValueError(f"Too many cells ({geoms.size}) for an int32 label image.")
    height, width = shape
    geoms = np.where(shapely.is_missing(geoms), shapely.Polygon(), geoms)
    bounds = shapely.bounds(geoms)
    outside = ~(
        (bounds[:, 0] >= -_MARGIN)
        & (bounds[:, 1] >= -_MARGIN)
        & (bounds[:, 2] <= width + _MARGIN)
        & (bounds[:, 3] <= height + _MARGIN)
    )
    outside &= ~shapely.is_empty(geoms)
    if outside.any():
        geoms[outside] = shapely.clip_by_rect(
            geoms[outside], -_MARGIN, -_MARGIN, width + _MARGIN, height + _MARGIN
        )
    # OpenCV fills a pixel when its centre is within ~half a pixel of the polygon (it rounds the
    # edges' crossings of each pixel row): eroding by half a pixel leaves the pixels whose centre
    # is inside. Mitred joins keep the corners of pixel-edge polygons square.
    eroded = shapely.buffer(geoms, -0.5, quad_segs=2, join_style="mitre")
    parts, part_cell = shapely.get_parts(eroded, return_index=True)
    polygonal = shapely.get_type_id(parts) == 3  # Polygon (collections may hold lines/points)
    parts, part_cell = parts[polygonal], part_cell[polygonal]
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    ring_cell = part_cell[ring_part]
    coords, coord_ring = shapely.get_coordinates(rings, return_index=True)
    # pixel frame (centre at +0.5) -> OpenCV frame (centre at integer), fixed point
    fixed = np.round((coords - 0.5) * (1 << _SHIFT)).astype(np.int32)
    ring_start = np.searchsorted(coord_ring, np.arange(rings.size + 1))
    cell_start = np.searchsorted(ring_cell, np.arange(geoms.size + 1))

    for i in range(geoms.size):
        r0, r1 = cell_start[i], cell_start[i + 1]
        if r1 > r0:
            contours = [fixed[ring_start[r] : ring_start[r + 1]] for r in range(r0, r1)]
            cv2.fillPoly(labels, contours, int(i + 1), lineType=cv2.LINE_8, shift=_SHIFT)
        elif not shapely.is_empty(geoms[i]):
            _burn_thin(labels, geoms[i], i + 1)
    return labels


def _burn_thin(labels: np.ndarray, geom, value: int) -> None:
    """A geometry with no interior left after erosion: its pixel centres, else one pixel."""
    height, width = labels.shape
    x0, y0, x1, y1 = shapely.bounds(geom)
    cols = np.arange(max(int(np.floor(x0)), 0), min(int(np.ceil(x1)), width))
    rows = np.arange(max(int(np.floor(y0)), 0), min(int(np.ceil(y1)), height))
    if cols.size and rows.size:
        rr, cc = np.meshgrid(rows, cols, indexing="ij")
        inside = shapely.contains_xy(geom, cc + 0.5, rr + 0.5)
        if inside.any():
            labels[rr[inside], cc[inside]] = value
            return
    point = shapely.get_coordinates(shapely.point_on_surface(geom))[0]
    c, r = int(np.floor(point[0])), int(np.floor(point[1]))
    if 0 <= r < height and 0 <= c < width:
        labels[r, c] = value

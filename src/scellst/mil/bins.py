"""Square bins (Visium HD): the bin grid, cell x bin overlap fractions, centroid assignment and
coarsening.

Pure geometry on numpy, scipy and shapely, fast enough for whole slides (500,000 bins,
200,000 cells): nothing here reads a SpatialData object.

Conventions
-----------
A :class:`BinGrid` maps *grid coordinates* ``(g_col, g_row)`` to image pixels ``(x, y)`` by an
affine map; bin ``(row, col)`` covers ``g_col in [col, col + 1)``, ``g_row in [row, row + 1)``, so
its centre is at grid coordinates ``(col + 0.5, row + 0.5)``. Bins are given as an ``(n, 2)``
integer array of ``(row, col)`` (Space Ranger's ``array_row``, ``array_col``). All lengths are in
image pixels unless a name ends in ``_um``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import shapely
from scipy import sparse

from ..constants import NO_SPOT

#: Upper bound on the (edge piece x column) terms evaluated at once by :func:`overlap_matrix`
#: (a few hundred MB of temporaries at most).
_CHUNK_TERMS = 2_000_000
#: Cells handled (dilated, split into edges) at once by :func:`overlap_matrix`.
_CELLS_PER_BLOCK = 20_000


class BinGrid:
    """A lattice of square bins in image pixels.

    Parameters
    ----------
    origin
        Pixel position ``(x, y)`` of grid coordinate ``(0, 0)``, the outer corner of bin
        ``(row 0, col 0)``.
    size
        Side of a bin in pixels (``bin size in µm / µm per pixel``).
    angle
        Rotation of the column axis from the image x axis, in radians (positive from x towards
        y). The row axis is the column axis turned by +90°.
    matrix
        Instead of ``size`` and ``angle``: the 2 x 2 matrix whose columns are the pixel vectors of
        one column step and one row step (any orientation, including a flipped row axis, as
        fitted by :meth:`from_positions`).

    Examples
    --------
    >>> from scellst.mil.bins import BinGrid
    >>> grid = BinGrid(origin=(0.0, 0.0), size=16.0)  # 8 µm bins at 0.5 µm/px
    >>> grid.bin_of([[20.0, 3.0]])  # (row, col)
    array([[0, 1]])
    >>> grid.centres([[0, 1]])
    array([[24.,  8.]])
    """

    def __init__(
        self,
        origin: Sequence[float] = (0.0, 0.0),
        size: float = 1.0,
        angle: float = 0.0,
        *,
        matrix: Any = None,
    ) -> None:
        self.origin = np.asarray(origin, dtype=np.float64).reshape(2).copy()
        if matrix is None:
            size = float(size)
            if not np.isfinite(size) or size <= 0:
                raise ValueError(f"Bin size must be a positive number of pixels, got {size!r}.")
            c, s = np.cos(angle), np.sin(angle)
            m = size * np.array([[c, -s], [s, c]])
        else:
            m = np.asarray(matrix, dtype=np.float64).reshape(2, 2).copy()
        det = float(np.linalg.det(m))
        if not np.isfinite(det) or abs(det) < 1e-12:
            raise ValueError(f"The bin grid matrix {m.tolist()} is singular.")
        self.matrix = m
        self._inverse = np.linalg.inv(m)

    # --- derived geometry --------------------------------------------------------------------
    @property
    def size(self) -> float:
        """Side of a bin in pixels (square root of a bin's area)."""
        return float(np.sqrt(abs(np.linalg.det(self.matrix))))

    @property
    def angle(self) -> float:
        """Direction of the column axis, radians from the image x axis."""
        return float(np.arctan2(self.matrix[1, 0], self.matrix[0, 0]))

    @property
    def orientation(self) -> np.ndarray:
        """The orthogonal matrix nearest to :attr:`matrix` / size (its rotation, or rotation and
        flip): the directions of the bins' sides."""
        u, _, vt = np.linalg.svd(self.matrix)
        return u @ vt

    def to_grid(self, xy: Any) -> np.ndarray:
        """Grid coordinates ``(g_col, g_row)`` of pixel positions ``xy`` (n, 2)."""
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        return _affine(self._inverse, xy[:, 0] - self.origin[0], xy[:, 1] - self.origin[1])

    def to_pixels(self, grid_xy: Any) -> np.ndarray:
        """Pixel positions ``(x, y)`` of grid coordinates ``(g_col, g_row)`` (n, 2)."""
        g = np.asarray(grid_xy, dtype=np.float64).reshape(-1, 2)
        return _affine(self.matrix, g[:, 0], g[:, 1]) + self.origin

    def bin_of(self, xy: Any) -> np.ndarray:
        """``(row, col)`` (n, 2) of the bin containing each pixel position."""
        g = np.floor(self.to_grid(xy)).astype(np.int64)
        return g[:, ::-1].copy()

    def centres(self, bins: Any) -> np.ndarray:
        """Pixel centres ``(x, y)`` of bins given as ``(row, col)`` (n, 2)."""
        rc = _as_bins(bins)
        return self.to_pixels(rc[:, ::-1] + 0.5)

    def squares(self, bins: Any) -> np.ndarray:
        """The bins as shapely polygons in pixels (exact grid cells: squares, rotated or not)."""
        rc = _as_bins(bins).astype(np.float64)
        corners = np.array([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=np.float64)  # (col, row)
        g = (rc[:, None, ::-1] + corners[None]).reshape(-1, 2)
        return shapely.polygons(self.to_pixels(g).reshape(-1, 4, 2))

    def coarsen(self, factor: int) -> BinGrid:
        """The grid of bins ``factor`` times larger, with the same origin: coarse bin ``(R, C)``
        holds the bins ``(row, col)`` with ``row // factor == R`` and ``col // factor == C``
        (see :func:`coarsen_bins`)."""
        factor = _check_factor(factor)
        return BinGrid(self.origin, matrix=self.matrix * factor)

    # --- construction and storage ------------------------------------------------------------
    @classmethod
    def from_positions(cls, bins: Any, xy: Any) -> tuple[BinGrid, float]:
        """Fit the grid to bin centres: least squares of ``xy = origin + M (col + 1/2, row + 1/2)``.

        Parameters
        ----------
        bins
            ``(row, col)`` of the bins (n, 2), e.g. Space Ranger's ``array_row``, ``array_col``.
        xy
            Their centres in pixels (n, 2), e.g. ``pxl_col_in_fullres``, ``pxl_row_in_fullres``.

        Returns
        -------
        tuple
            The grid and the root-mean-square distance (pixels) between the given centres and the
            grid's.
        """
        rc = _as_bins(bins).astype(np.float64)
        xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        ok = np.isfinite(xy).all(1)
        rc, xy = rc[ok], xy[ok]
        design = np.column_stack([rc[:, 1] + 0.5, rc[:, 0] + 0.5, np.ones(len(rc))])
        if len(rc) < 3 or np.linalg.matrix_rank(design) < 3:
            raise ValueError(
                "Cannot fit a bin grid: the bins must span at least two rows and two columns."
            )
        coef, *_ = np.linalg.lstsq(design, xy, rcond=None)
        grid = cls(coef[2], matrix=coef[:2].T)
        rms = float(np.sqrt(np.mean(np.sum((grid.centres(rc) - xy) ** 2, axis=1))))
        return grid, rms

    def to_dict(self) -> dict[str, Any]:
        """A JSON/zarr-friendly description (read back by :meth:`from_dict`)."""
        return {
            "origin_px": [float(v) for v in self.origin],
            "matrix_px": [[float(v) for v in row] for row in self.matrix],
            "size_px": self.size,
            "angle_deg": float(np.degrees(self.angle)),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BinGrid:
        """The grid described by :meth:`to_dict`."""
        return cls(d["origin_px"], matrix=d["matrix_px"])

    def __repr__(self) -> str:
        x, y = self.origin
        return (
            f"BinGrid(origin=({x:.6g}, {y:.6g}), size={self.size:.6g} px, "
            f"angle={np.degrees(self.angle):.4g} deg)"
        )


def _affine(m: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``m @ (x, y)`` for many points (faster than a matmul with an inner dimension of 2)."""
    out = np.empty((len(x), 2))
    np.multiply(m[0, 0], x, out=out[:, 0])
    out[:, 0] += m[0, 1] * y
    np.multiply(m[1, 0], x, out=out[:, 1])
    out[:, 1] += m[1, 1] * y
    return out


# --- squares -----------------------------------------------------------------------------------
def square_polygons(centres: Any, side: float, orientation: Any = None) -> np.ndarray:
    """Squares of side ``side`` px centred on ``centres`` (n, 2), as shapely polygons.

    Parameters
    ----------
    centres
        Pixel centres ``(x, y)``.
    side
        Side of the squares in pixels.
    orientation
        2 x 2 orthogonal matrix whose columns are the directions of the sides (e.g.
        :attr:`BinGrid.orientation`); default: axis-aligned.

    Returns
    -------
    numpy.ndarray
        Object array of polygons (corners counter-clockwise in grid order).

    Examples
    --------
    >>> from scellst.mil.bins import square_polygons
    >>> square_polygons([[10.0, 10.0]], 4.0)[0].bounds
    (8.0, 8.0, 12.0, 12.0)
    """
    xy = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    r = np.eye(2) if orientation is None else np.asarray(orientation, dtype=np.float64)
    half = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]]) * float(side)
    offsets = half @ r.T  # (4, 2)
    return shapely.polygons(xy[:, None, :] + offsets[None])


# --- overlap -----------------------------------------------------------------------------------
def overlap_matrix(
    cells: Any,
    grid: BinGrid,
    bins: Any,
    *,
    dilation: float = 0.0,
    quad_segs: int = 8,
) -> sparse.csr_matrix:
    """Fraction of each cell's area lying in each bin, as a sparse cells x bins matrix.

    The areas are exact for polygons (computed edge by edge in grid coordinates, with Green's
    theorem over each bin's row and column strips, in bounded-memory chunks): no rasterisation.

    Parameters
    ----------
    cells
        Cell geometries in image pixels: shapely (multi)polygons or points (an array or a
        GeoSeries), or an ``(n, 2)`` array of centroids ``(x, y)``. Points need ``dilation > 0``.
    grid
        The bin grid.
    bins
        ``(row, col)`` of the bins that exist (n_bins, 2), e.g. those of a counts table: the
        matrix's columns, in this order. Parts of cells in other grid cells are not counted.
    dilation
        Distance in pixels by which each geometry is grown first (a nucleus dilated to an
        approximate cell; the radius of the disk around a centroid).
    quad_segs
        Segments per quarter circle of the dilation's round parts.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_cells, n_bins)`` float64; entry ``(i, j)`` = area(cell i ∩ bin j) / area(cell i). A
        row sums to 1 when the cell lies entirely in the given bins, to less otherwise, and to 0
        for an empty geometry.

    Examples
    --------
    >>> import shapely
    >>> from scellst.mil.bins import BinGrid, overlap_matrix
    >>> grid = BinGrid(size=10.0)
    >>> cell = shapely.box(5.0, 0.0, 15.0, 10.0)  # half in bin (0, 0), half in bin (0, 1)
    >>> overlap_matrix([cell], grid, [[0, 0], [0, 1]]).toarray()
    array([[0.5, 0.5]])
    """
    geoms = _as_geometries(cells)
    n_cells = len(geoms)
    bins = _as_bins(bins)
    keys = _bin_keys(bins)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    if len(sorted_keys) > 1 and (np.diff(sorted_keys) == 0).any():
        raise ValueError("`bins` lists the same (row, col) more than once.")
    dilation = _check_dilation(geoms, dilation)

    rows_out, cols_out, vals_out = [], [], []
    for start in range(0, n_cells, _CELLS_PER_BLOCK):
        block = geoms[start : start + _CELLS_PER_BLOCK]
        if dilation > 0:
            block = shapely.buffer(block, dilation, quad_segs=quad_segs)
        cell_ids, pair_rc, frac = _block_overlap(block, grid)
        if not len(sorted_keys):
            continue
        query = _bin_keys(pair_rc)
        pos = np.minimum(np.searchsorted(sorted_keys, query), len(sorted_keys) - 1)
        found = sorted_keys[pos] == query
        rows_out.append(cell_ids[found] + start)
        cols_out.append(order[pos[found]])
        vals_out.append(np.minimum(frac[found], 1.0))
    if not rows_out:
        return sparse.csr_matrix((n_cells, len(bins)))
    matrix = sparse.csr_matrix(
        (np.concatenate(vals_out), (np.concatenate(rows_out), np.concatenate(cols_out))),
        shape=(n_cells, len(bins)),
    )
    matrix.sum_duplicates()
    return matrix


def _block_overlap(geoms: np.ndarray, grid: BinGrid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(cell, (row, col), fraction) of every non-zero cell-grid cell intersection of a block."""
    n_cells = len(geoms)
    x0, y0, x1, y1, cell, w = _edges_in_grid(geoms, grid)  # grid coordinates; grouped by cell
    # each cell's area (grid units) and bounding box of grid cells
    area = np.bincount(cell, weights=w * 0.5 * (x0 * y1 - x1 * y0), minlength=n_cells)
    big = np.iinfo(np.int64).max
    cmin = np.full(n_cells, big, dtype=np.int64)
    rmin = np.full(n_cells, big, dtype=np.int64)
    cmax = np.full(n_cells, -big, dtype=np.int64)
    rmax = np.full(n_cells, -big, dtype=np.int64)
    np.minimum.at(cmin, cell, np.floor(np.minimum(x0, x1)).astype(np.int64))
    np.minimum.at(rmin, cell, np.floor(np.minimum(y0, y1)).astype(np.int64))
    np.maximum.at(cmax, cell, np.floor(np.maximum(x0, x1)).astype(np.int64))
    np.maximum.at(rmax, cell, np.floor(np.maximum(y0, y1)).astype(np.int64))
    has = area > 0
    ncols = np.where(has, cmax - cmin + 1, 0)
    nrows = np.where(has, rmax - rmin + 1, 0)

    # drop horizontal edges and edges of empty cells; split the rest at the row lines
    keep = (y0 != y1) & has[cell]
    x0, y0, x1, y1, cell, w = (a[keep] for a in (x0, y0, x1, y1, cell, w))
    first_row = np.floor(np.minimum(y0, y1)).astype(np.int64)
    n_pieces = np.maximum(np.ceil(np.maximum(y0, y1)).astype(np.int64) - first_row, 1)
    # (cell, row, col) pairs of each cell's bounding box, numbered cell by cell
    pair_base = np.concatenate([[0], np.cumsum(nrows * ncols)])
    # chunks of whole cells of about _CHUNK_TERMS terms each
    cum_terms = np.cumsum(np.bincount(cell, weights=n_pieces * ncols[cell], minlength=n_cells))
    edge_start = np.searchsorted(cell, np.arange(n_cells + 1))
    pair_idx, pair_val = [], []
    first = 0
    while first < n_cells:
        done = cum_terms[first - 1] if first else 0.0
        stop = int(np.searchsorted(cum_terms, done + _CHUNK_TERMS, side="right"))
        stop = min(max(stop, first + 1), n_cells)
        sl = slice(edge_start[first], edge_start[stop])
        idx, val = _strip_integrals(
            x0[sl], y0[sl], x1[sl], y1[sl], cell[sl], w[sl], first_row[sl], n_pieces[sl],
            cmin, rmin, ncols, nrows, pair_base, pair_base[first], pair_base[stop],
        )  # fmt: skip
        pair_idx.append(idx)
        pair_val.append(val)
        first = stop
    idx = np.concatenate(pair_idx) if pair_idx else np.zeros(0, np.int64)
    values = np.concatenate(pair_val) if pair_val else np.zeros(0)

    # pair index -> (cell, row, col)
    cell_ids = np.searchsorted(pair_base, idx, side="right") - 1
    local = idx - pair_base[cell_ids]
    pair_rc = np.column_stack(
        [rmin[cell_ids] + local // ncols[cell_ids], cmin[cell_ids] + local % ncols[cell_ids]]
    )
    frac = values / area[cell_ids]
    nonzero = frac > 1e-12
    return cell_ids[nonzero], pair_rc[nonzero], frac[nonzero]


def _strip_integrals(
    x0, y0, x1, y1, cell, w, first_row, n_pieces, cmin, rmin, ncols, nrows, pair_base, lo, hi
):
    """Areas of a chunk of cells within the (row, col) bins of their bounding boxes.

    For a positively oriented ring, the area of its polygon within bin ``(r, c)`` is the sum over
    its edge pieces inside row strip ``r`` of ``∫ clamp(x - c, 0, 1) dy`` (Green's theorem with
    ``Q = clamp(x - c, 0, 1)``). Columns left of a cell's bounding box get ``∫ dy``, which sums
    to zero over a strip, so only the box's columns are evaluated. Returns the global indices
    (``pair_base`` numbering) of the pairs with a non-zero area and those areas.
    """
    # 1. split each edge at the horizontal lines y = integer
    edge = np.repeat(np.arange(len(x0)), n_pieces)
    k = np.arange(len(edge)) - np.repeat(np.cumsum(n_pieces) - n_pieces, n_pieces)
    row = first_row[edge] + k
    ex0, ey0, ex1, ey1 = x0[edge], y0[edge], x1[edge], y1[edge]
    slope = (ex1 - ex0) / (ey1 - ey0)
    up = ey1 > ey0
    ya = np.where(up, np.maximum(ey0, row), np.minimum(ey0, row + 1))
    yb = np.where(up, np.minimum(ey1, row + 1), np.maximum(ey1, row))
    xa = ex0 + (ya - ey0) * slope
    xb = ex0 + (yb - ey0) * slope
    dy = (yb - ya) * w[edge]
    pcell = cell[edge]
    live = (dy != 0) & (row >= rmin[pcell]) & (row < rmin[pcell] + nrows[pcell])
    row, xa, xb, dy, pcell = (a[live] for a in (row, xa, xb, dy, pcell))
    del edge, k, ex0, ey0, ex1, ey1, slope, up, ya, yb
    # 2. each piece against each column of its cell's bounding box
    nc = ncols[pcell]
    piece = np.repeat(np.arange(len(row)), nc)
    j = np.arange(len(piece)) - np.repeat(np.cumsum(nc) - nc, nc)
    pc = pcell[piece]
    c = cmin[pc] + j
    ua, ub = xa[piece] - c, xb[piece] - c
    du = ub - ua
    small = np.abs(du) < 1e-9
    mean_q = np.where(
        small,
        np.clip(0.5 * (ua + ub), 0.0, 1.0),
        (_antiderivative(ub) - _antiderivative(ua)) / np.where(small, 1.0, du),
    )
    # 3. sum per (cell, row, col)
    idx = pair_base[pc] + (row[piece] - rmin[pc]) * ncols[pc] + j
    sums = np.bincount(idx - lo, weights=dy[piece] * mean_q, minlength=hi - lo)
    nonzero = np.flatnonzero(sums)
    return nonzero + lo, sums[nonzero]


def _antiderivative(u: np.ndarray) -> np.ndarray:
    """∫_0^u clamp(s, 0, 1) ds."""
    return np.where(u <= 0, 0.0, np.where(u >= 1, u - 0.5, 0.5 * u * u))


def _edges_in_grid(geoms: np.ndarray, grid: BinGrid):
    """Edges of all rings in grid coordinates, with their cell and orientation weight (+1/-1,
    so that exteriors count positively and holes negatively whatever the stored orientation and
    whether the grid flips axes)."""
    types = shapely.get_type_id(geoms)
    if (types == shapely.GeometryType.POLYGON).all():
        parts, part_cell = geoms, np.arange(len(geoms))
    else:
        parts, part_cell = shapely.get_parts(geoms, return_index=True)
        is_poly = shapely.get_type_id(parts) == shapely.GeometryType.POLYGON
        parts, part_cell = parts[is_poly], part_cell[is_poly]
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    exterior = np.ones(len(rings), dtype=bool)
    exterior[1:] = ring_part[1:] != ring_part[:-1]
    coords, ring = shapely.get_coordinates(rings, return_index=True)
    g = grid.to_grid(coords)
    same = ring[1:] == ring[:-1]  # consecutive coordinates of one (closed) ring
    x0, y0 = g[:-1, 0][same], g[:-1, 1][same]
    x1, y1 = g[1:, 0][same], g[1:, 1][same]
    edge_ring = ring[:-1][same]
    signed = np.bincount(edge_ring, weights=0.5 * (x0 * y1 - x1 * y0), minlength=len(rings))
    ring_w = np.sign(signed) * np.where(exterior, 1.0, -1.0)
    return x0, y0, x1, y1, part_cell[ring_part[edge_ring]], ring_w[edge_ring]


def _as_geometries(cells: Any) -> np.ndarray:
    values = getattr(cells, "values", cells)  # GeoSeries -> GeometryArray
    arr = np.asarray(values)
    if arr.dtype != object:
        return shapely.points(np.asarray(arr, dtype=np.float64).reshape(-1, 2))
    return np.asarray(arr, dtype=object).reshape(-1)


def _check_dilation(geoms: np.ndarray, dilation: float) -> float:
    dilation = float(dilation)
    if not np.isfinite(dilation) or dilation < 0:
        raise ValueError(f"`dilation` must be >= 0 pixels, got {dilation!r}.")
    if dilation <= 0:
        types = shapely.get_type_id(geoms)
        if np.isin(types, [shapely.GeometryType.POINT, shapely.GeometryType.MULTIPOINT]).any():
            raise ValueError(
                "Cells given as points (centroids) need `dilation` > 0: the radius in pixels of "
                "the disk standing for each cell."
            )
    return dilation


def _as_bins(bins: Any) -> np.ndarray:
    rc = np.asarray(bins)
    if rc.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    rc = rc.reshape(-1, 2)
    if not np.issubdtype(rc.dtype, np.integer):
        if not np.array_equal(rc, np.round(rc)):
            raise ValueError("Bins must be given as integer (row, col) pairs.")
        rc = rc.astype(np.int64)
    return rc.astype(np.int64, copy=False)


def _bin_keys(rc: np.ndarray) -> np.ndarray:
    """One sortable uint64 per (row, col) (rows and cols within ±2^31)."""
    rc = np.asarray(rc, dtype=np.int64).reshape(-1, 2)
    r = (rc[:, 0] + 2**31).astype(np.uint64)
    c = (rc[:, 1] + 2**31).astype(np.uint64)
    return (r << np.uint64(32)) | c


# --- centroid assignment -----------------------------------------------------------------------
def assign_centroids(xy: Any, grid: BinGrid, bins: Any) -> np.ndarray:
    """The bin containing each cell centroid.

    Parameters
    ----------
    xy
        Cell centroids ``(x, y)`` in pixels (n, 2).
    grid
        The bin grid.
    bins
        ``(row, col)`` of the bins that exist (n_bins, 2).

    Returns
    -------
    numpy.ndarray
        int64 index into ``bins`` for each cell, ``-1`` (``scellst.constants.NO_SPOT``) when the
        centroid is in no listed bin.

    Examples
    --------
    >>> from scellst.mil.bins import BinGrid, assign_centroids
    >>> assign_centroids([[5.0, 5.0], [15.0, 5.0], [99.0, 99.0]], BinGrid(size=10.0), [[0, 1], [0, 0]])
    array([ 1,  0, -1])
    """
    rc = _as_bins(bins)
    keys = _bin_keys(rc)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    out = np.full(len(np.asarray(xy).reshape(-1, 2)), NO_SPOT, dtype=np.int64)
    if not len(rc) or not len(out):
        return out
    q = _bin_keys(grid.bin_of(xy))
    pos = np.minimum(np.searchsorted(sorted_keys, q), len(sorted_keys) - 1)
    found = sorted_keys[pos] == q
    out[found] = order[pos[found]]
    return out


def membership_matrix(assignment: Any, n_bins: int) -> sparse.csr_matrix:
    """Cells x bins 0/1 matrix of a centroid assignment (the counterpart of
    :func:`overlap_matrix` for centroid pooling).

    Parameters
    ----------
    assignment
        Bin index of each cell, ``-1`` for none (from :func:`assign_centroids`).
    n_bins
        Number of bins.

    Returns
    -------
    scipy.sparse.csr_matrix
        ``(n_cells, n_bins)`` float64 with a single 1 in the row of each assigned cell.

    Examples
    --------
    >>> from scellst.mil.bins import membership_matrix
    >>> membership_matrix([1, -1, 0], 2).toarray()
    array([[0., 1.],
           [0., 0.],
           [1., 0.]])
    """
    a = np.asarray(assignment, dtype=np.int64).reshape(-1)
    ok = a != NO_SPOT
    if (a[ok] < 0).any() or (a[ok] >= n_bins).any():
        raise ValueError(f"Bin indices must be in [0, {n_bins}) or -1.")
    return sparse.csr_matrix(
        (np.ones(int(ok.sum())), (np.flatnonzero(ok), a[ok])), shape=(len(a), int(n_bins))
    )


# --- coarsening --------------------------------------------------------------------------------
class CoarseBins(NamedTuple):
    """Result of :func:`coarsen_bins`."""

    #: ``(row, col)`` of the coarse bins (m, 2), sorted by row then column
    bins: np.ndarray
    #: ``(m, n)`` 0/1 CSR matrix: coarse bin x fine bin
    membership: sparse.csr_matrix
    #: ``membership @ counts`` (coarse bins x genes), or None without counts
    counts: Any


def coarsen_bins(bins: Any, factor: int, counts: Any = None) -> CoarseBins:
    """Pool square bins into bins ``factor`` times larger (e.g. 8 µm -> 16 µm with ``factor=2``).

    Coarse bin ``(R, C)`` holds the fine bins with ``row // factor == R`` and
    ``col // factor == C``: Space Ranger's nesting of its 8 and 16 µm bins, and the bins of
    :meth:`BinGrid.coarsen`. Counts are summed, so their total is conserved.

    Parameters
    ----------
    bins
        ``(row, col)`` of the fine bins (n, 2).
    factor
        Integer ratio of the bin sides (>= 1).
    counts
        Optional fine bins x genes counts (dense or sparse), summed into the coarse bins.

    Returns
    -------
    CoarseBins
        ``bins`` (coarse ``(row, col)``), ``membership`` (coarse x fine CSR) and ``counts``
        (CSR when ``counts`` is sparse, else dense; None without counts).

    Examples
    --------
    >>> import numpy as np
    >>> from scellst.mil.bins import coarsen_bins
    >>> out = coarsen_bins([[0, 0], [0, 1], [1, 1], [2, 0]], 2, counts=np.ones((4, 3)))
    >>> out.bins
    array([[0, 0],
           [1, 0]])
    >>> out.counts
    array([[3., 3., 3.],
           [1., 1., 1.]])
    """
    factor = _check_factor(factor)
    rc = _as_bins(bins)
    coarse = np.floor_divide(rc, factor)
    keys = _bin_keys(coarse)
    uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    membership = sparse.csr_matrix(
        (np.ones(len(rc)), (inverse.ravel(), np.arange(len(rc)))), shape=(len(uniq), len(rc))
    )
    pooled = None
    if counts is not None:
        if counts.shape[0] != len(rc):
            raise ValueError(f"`counts` has {counts.shape[0]} rows for {len(rc)} bins.")
        if sparse.issparse(counts):
            pooled = sparse.csr_matrix(membership @ counts)
            pooled.sum_duplicates()
        else:
            pooled = membership @ np.asarray(counts)
        dtype = counts.dtype
        if np.issubdtype(dtype, np.integer):
            pooled = pooled.astype(dtype if np.iinfo(dtype).bits >= 32 else np.int64)
    return CoarseBins(coarse[first], membership, pooled)


def _check_factor(factor: Any) -> int:
    if isinstance(factor, bool) or int(factor) != factor or int(factor) < 1:
        raise ValueError(f"The coarsening factor must be a positive integer, got {factor!r}.")
    return int(factor)

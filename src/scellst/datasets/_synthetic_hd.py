"""Square bins (Visium HD-like) for the synthetic slide: private helpers of ``synthetic``.

Each cell is its nucleus dilated by ``cell_dilation_um``; its transcripts fall in the bins in
proportion to the fraction of the cell's area lying in each bin, so that both centroid and
overlap-aware pooling can be scored against a known cells x bins truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely
from scipy import sparse

from ..mil.bins import BinGrid, assign_centroids, overlap_matrix
from . import _render

#: Poisson draws per chunk (cell-bin pairs x genes), to bound memory.
_CHUNK_DRAWS = 4_000_000


@dataclass
class HDBins:
    """The bins of a synthetic slide and their counts."""

    grid: BinGrid  # bin (row, col) -> pixels; rows and columns start at 0 on the image
    bins: np.ndarray  # (n_bins, 2) (row, col) of the bins under tissue
    squares: np.ndarray  # their polygons (pixels)
    counts: sparse.csr_matrix  # bins x genes, int32
    size_factor: np.ndarray  # per-bin capture efficiency
    n_cells: np.ndarray  # cells whose centroid is in the bin
    cell_bin: np.ndarray  # bin index of each cell's centroid (NO_SPOT: none)
    overlap: sparse.csr_matrix  # cells x bins fraction of each cell in each bin
    cell_counts: sparse.csr_matrix  # cells x genes: each cell's transcripts captured in bins
    cell_shapes: np.ndarray  # the cells (nuclei dilated) as polygons (pixels)


def grid_on_image(shape: tuple[int, int], side_px: float, angle_deg: float) -> BinGrid:
    """A grid of bins of side ``side_px`` rotated by ``angle_deg`` about the image centre, with
    row and column 0 at the first bins that touch the image."""
    height, width = shape
    g0 = BinGrid(origin=(width / 2, height / 2), size=side_px, angle=np.radians(angle_deg))
    corners = g0.to_grid([[0, 0], [width, 0], [0, height], [width, height]])
    c_lo, r_lo = np.floor(corners.min(0)).astype(np.int64)
    return BinGrid(g0.to_pixels([[c_lo, r_lo]])[0], matrix=g0.matrix)


def bins_on_image(grid: BinGrid, shape: tuple[int, int]) -> np.ndarray:
    """``(row, col)`` of the grid's bins lying entirely on the image (rows, then columns)."""
    height, width = shape
    g = grid.to_grid([[0, 0], [width, 0], [0, height], [width, height]])
    n_cols, n_rows = np.ceil(g.max(0)).astype(np.int64)
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    rc = np.column_stack([rows.ravel(), cols.ravel()])
    corners = np.array([[0, 0], [1, 0], [0, 1], [1, 1]], dtype=np.float64)  # (col, row)
    xy = grid.to_pixels((rc[:, None, ::-1] + corners[None]).reshape(-1, 2)).reshape(-1, 4, 2)
    eps = 1e-9
    inside = (
        (xy[..., 0] >= -eps) & (xy[..., 0] <= width + eps)
        & (xy[..., 1] >= -eps) & (xy[..., 1] <= height + eps)
    ).all(1)  # fmt: skip
    return rc[inside]


def make_bins(
    *,
    layout: _render.Layout,
    nuclei: np.ndarray,
    centroids: np.ndarray,
    rate: np.ndarray,
    mpp: float,
    shape: tuple[int, int],
    bins_um: float,
    angle_deg: float,
    cell_dilation_um: float,
    library_size_cv: float,
    theta: float,
    size_rng: np.random.Generator,
    count_rng: np.random.Generator,
) -> HDBins:
    """Bins under tissue and their counts, drawn transcript by transcript from the cells.

    A cell's expression is ``lambda ~ Gamma(theta, rate / theta)`` (negative-binomial counts);
    the transcripts it leaves in bin ``b`` are ``Poisson(size_factor_b * W[c, b] * lambda)``,
    where ``W[c, b]`` is the fraction of the cell (nucleus dilated by ``cell_dilation_um``) lying
    in bin ``b``. A bin's counts are the sum over cells, so they add up exactly to the cells'
    captured transcripts (``cell_counts``).
    """
    side_px = bins_um / mpp
    grid = grid_on_image(shape, side_px, angle_deg)
    candidates = bins_on_image(grid, shape)
    centres_um = grid.centres(candidates) * mpp
    on_tissue = (
        _render._sample(
            (layout.tissue > 0).astype(np.float32), centres_um[:, 0], centres_um[:, 1], order=1
        )
        >= 0.5
    )
    bins = candidates[on_tissue]
    n_bins, n_genes = len(bins), rate.shape[1]

    cells = shapely.buffer(nuclei, cell_dilation_um / mpp, quad_segs=8)
    overlap = overlap_matrix(cells, grid, bins)
    sigma2 = np.log1p(library_size_cv**2)
    size_factor = np.exp(size_rng.normal(-sigma2 / 2, np.sqrt(sigma2), n_bins))
    cell_bin = assign_centroids(centroids, grid, bins)
    n_cells = np.bincount(cell_bin[cell_bin >= 0], minlength=n_bins).astype(np.int64)

    bin_parts, cell_parts = [], []
    n = overlap.shape[0]
    pairs_per_cell = np.diff(overlap.indptr)
    cum = np.cumsum(pairs_per_cell) * n_genes
    start = 0
    while start < n:
        done = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, done + _CHUNK_DRAWS, side="right"))
        stop = min(max(stop, start + 1), n)
        block = overlap[start:stop].tocoo()
        lam = count_rng.gamma(theta, rate[start:stop].astype(np.float64) / theta)
        mu = (block.data * size_factor[block.col])[:, None] * lam[block.row]
        draws = count_rng.poisson(mu).astype(np.int32)  # pairs x genes
        to_bins = sparse.csr_matrix(
            (np.ones(block.nnz), (block.col, np.arange(block.nnz))), shape=(n_bins, block.nnz)
        )
        to_cells = sparse.csr_matrix(
            (np.ones(block.nnz), (block.row, np.arange(block.nnz))),
            shape=(stop - start, block.nnz),
        )
        bin_parts.append(sparse.csr_matrix(to_bins @ sparse.csr_matrix(draws)))
        cell_parts.append(sparse.csr_matrix(to_cells @ sparse.csr_matrix(draws)))
        start = stop
    counts = sparse.csr_matrix((n_bins, n_genes), dtype=np.int32)
    for part in bin_parts:
        counts = counts + part
    counts = sparse.csr_matrix(counts.astype(np.int32))
    cell_counts = (
        sparse.vstack(cell_parts).astype(np.int32).tocsr()
        if cell_parts
        else sparse.csr_matrix((0, n_genes), dtype=np.int32)
    )
    counts.eliminate_zeros()
    cell_counts.eliminate_zeros()
    return HDBins(
        grid=grid,
        bins=bins,
        squares=grid.squares(bins),
        counts=counts,
        size_factor=size_factor,
        n_cells=n_cells,
        cell_bin=cell_bin,
        overlap=overlap,
        cell_counts=cell_counts,
        cell_shapes=cells,
    )

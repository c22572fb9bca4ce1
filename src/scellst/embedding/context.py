"""Neighbourhood context of each cell: statistics of its neighbours' features within µm radii."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import sparse
from scipy.spatial import cKDTree

#: Statistics of the neighbours' features that :func:`context_features` can compute.
CONTEXT_STATS = ("mean", "sd")

#: Upper bound on the neighbour pairs held in memory at once (bounded memory on large slides).
MAX_PAIRS = 4_000_000


def context_radii(context_um: float | Sequence[float] | None) -> list[float]:
    """The radii in µm described by ``context_um`` (``None``/``0``: none), validated and sorted."""
    if context_um is None:
        return []
    values = [context_um] if np.isscalar(context_um) else list(context_um)
    radii = sorted({float(r) for r in values if float(r) != 0.0})
    bad = [r for r in radii if not np.isfinite(r) or r < 0]
    if bad:
        raise ValueError(f"`context_um` must hold positive radii in µm (or 0 for none), got {bad}.")
    return radii


def check_stats(stats: str | Sequence[str]) -> list[str]:
    """``stats`` as a list, each one of :data:`CONTEXT_STATS`, ``"mean"`` first."""
    stats = [stats] if isinstance(stats, str) else list(stats)
    unknown = [s for s in stats if s not in CONTEXT_STATS]
    if unknown or "mean" not in stats:
        raise ValueError(
            f"`context_stats` must include 'mean' and only names of {CONTEXT_STATS}, got {stats}."
        )
    return [s for s in CONTEXT_STATS if s in stats]


def context_feature_names(names: Sequence[str], radii: Sequence[float], stats: Sequence[str]):
    """Column names of :func:`context_features`: ``f"{name}_ctx{radius:g}um_{stat}"``."""
    return [f"{n}_ctx{r:g}um_{s}" for r in radii for s in stats for n in names]


def context_features(
    centroids_um: np.ndarray,
    features: np.ndarray,
    radii_um: Sequence[float],
    stats: Sequence[str] = CONTEXT_STATS,
    *,
    max_pairs: int = MAX_PAIRS,
) -> np.ndarray:
    """Mean (and SD) of the neighbours' features within each radius, for every cell.

    The neighbours of a cell are the *other* cells whose centroid lies within ``radius`` µm of
    its centroid. A cell with no neighbour gets its own features as the mean and 0 as the SD.

    Parameters
    ----------
    centroids_um
        ``(n, 2)`` cell centroids in µm (the whole slide, so that every cell sees all its
        neighbours).
    features
        ``(n, d)`` features of the same cells.
    radii_um
        Radii in µm (positive).
    stats
        ``"mean"`` and optionally ``"sd"``.
    max_pairs
        Neighbour pairs held in memory at once: cells are processed in spatially compact
        chunks so that memory stays bounded on slides of 300,000 cells and more.

    Returns
    -------
    numpy.ndarray
        ``(n, len(radii) * len(stats) * d)`` float32, columns ordered radius, then statistic,
        then feature (as :func:`context_feature_names`).

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [10.0, 0.0], [100.0, 0.0]])
    >>> context_features(xy, np.array([[1.0], [3.0], [5.0]]), [30.0], ["mean"]).ravel()
    array([3., 1., 5.], dtype=float32)
    """
    radii = [float(r) for r in radii_um]
    stats = check_stats(stats)
    xy = np.asarray(centroids_um, np.float64)
    x = np.asarray(features, np.float64)
    n, d = x.shape
    if xy.shape != (n, 2):
        raise ValueError(f"centroids_um has shape {xy.shape}, expected ({n}, 2).")
    out = np.zeros((n, len(radii) * len(stats) * d), np.float32)
    if n == 0 or not radii:
        return out
    tree = cKDTree(xy)
    r_max = max(radii)
    # spatially compact chunks (sorted along a coarse grid), sized by their neighbour counts
    counts = tree.query_ball_point(xy, r_max, return_length=True)
    cell = max(r_max, 1.0) * 4
    order = np.lexsort((xy[:, 0], np.floor(xy[:, 1] / cell)))
    bounds = _chunk_bounds(counts[order], max_pairs)
    x_sq = x * x if "sd" in stats else None
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[start:stop]
        pairs = cKDTree(xy[rows]).sparse_distance_matrix(tree, r_max, output_type="ndarray")
        i, j, dist = pairs["i"], pairs["j"], pairs["v"]
        other = rows[i] != j
        i, j, dist = i[other], j[other], dist[other]
        col = 0
        for r in radii:
            keep = dist <= r
            adj = sparse.csr_matrix(
                (np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(len(rows), n)
            )
            k = np.asarray(adj.sum(1)).ravel()
            none = k == 0
            mean = adj @ x / np.maximum(k, 1)[:, None]
            mean[none] = x[rows[none]]
            out[rows, col : col + d] = mean
            col += d
            if "sd" in stats:
                sq = adj @ x_sq / np.maximum(k, 1)[:, None]
                sd = np.sqrt(np.maximum(sq - mean**2, 0.0))
                sd[none] = 0.0
                out[rows, col : col + d] = sd
                col += d
    return out


def _chunk_bounds(pair_counts: np.ndarray, max_pairs: int) -> np.ndarray:
    """Start/stop offsets of consecutive chunks whose summed pair counts stay <= max_pairs
    (a single cell with more pairs gets a chunk of its own)."""
    total = np.cumsum(pair_counts, dtype=np.int64)
    bounds = [0]
    while bounds[-1] < len(total):
        start = bounds[-1]
        base = total[start - 1] if start else 0
        stop = int(np.searchsorted(total, base + max_pairs, side="right"))
        bounds.append(max(stop, start + 1))
    return np.asarray(bounds)

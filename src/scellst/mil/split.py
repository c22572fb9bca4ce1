"""Validation splits of spots: spatially blocked (default) or random."""

from __future__ import annotations

import numpy as np


def split_spots(
    xy_um: np.ndarray, val_fraction: float, how: str, rng: np.random.Generator, n_blocks: int = 25
) -> np.ndarray:
    """Boolean mask of validation spots.

    ``"spatial"`` cuts the slide into about ``n_blocks`` square blocks and holds out whole blocks,
    so validation spots are not surrounded by (and leaked from) their training neighbours.
    """
    n = len(xy_um)
    if not 0 < val_fraction < 1 or n < 2:
        return np.zeros(n, bool)
    n_val = max(1, int(round(val_fraction * n)))
    if how == "random":
        val = np.zeros(n, bool)
        val[rng.choice(n, n_val, replace=False)] = True
        return val
    if how != "spatial":
        raise ValueError(f"split must be 'spatial' or 'random', got {how!r}")
    lo, hi = xy_um.min(0), xy_um.max(0)
    side = max(np.sqrt(np.prod(np.maximum(hi - lo, 1.0)) / n_blocks), 1.0)
    block = np.floor((xy_um - lo) / side).astype(np.int64)
    block_id = block[:, 0] * (block[:, 1].max() + 1) + block[:, 1]
    val = np.zeros(n, bool)
    for b in rng.permutation(np.unique(block_id)):
        if val.sum() >= n_val:
            break
        val |= block_id == b
    return val

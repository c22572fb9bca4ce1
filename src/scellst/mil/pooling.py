"""Aggregate cell outputs into spot outputs with one index_add (no Python loop over bags)."""

from __future__ import annotations

import torch


def aggregate(
    cells: torch.Tensor, bag: torch.Tensor, n_bags: int, how: str = "mean"
) -> torch.Tensor:
    """Mean or sum of ``cells`` rows per bag; ``bag[i]`` is the bag (0..n_bags-1) of row ``i``."""
    out = cells.new_zeros((n_bags, cells.shape[1])).index_add_(0, bag, cells)
    if how == "sum":
        return out
    if how == "mean":
        count = torch.bincount(bag, minlength=n_bags).clamp_min(1).to(cells.dtype)
        return out / count[:, None]
    raise ValueError(f"aggregation must be 'mean' or 'sum', got {how!r}")

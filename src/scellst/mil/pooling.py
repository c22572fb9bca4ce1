"""Aggregate cell outputs into spot outputs with one index_add (no Python loop over bags)."""

from __future__ import annotations

import torch


def aggregate(
    cells: torch.Tensor,
    bag: torch.Tensor,
    n_bags: int,
    how: str = "mean",
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean or sum of ``cells`` rows per bag; ``bag[i]`` is the bag (0..n_bags-1) of row ``i``.

    With ``weight`` (one per row: the fraction of a cell lying in a bin, for overlap-aware
    pooling), the sum is weighted, ``sum_i w_i x_i``, and the mean is ``sum_i w_i x_i /
    sum_i w_i``; without it every row weighs 1.
    """
    if how not in ("mean", "sum"):
        raise ValueError(f"aggregation must be 'mean' or 'sum', got {how!r}")
    if weight is None:
        out = cells.new_zeros((n_bags, cells.shape[1])).index_add_(0, bag, cells)
        if how == "sum":
            return out
        count = torch.bincount(bag, minlength=n_bags).clamp_min(1).to(cells.dtype)
        return out / count[:, None]
    weight = weight.to(cells.dtype)
    out = cells.new_zeros((n_bags, cells.shape[1])).index_add_(0, bag, cells * weight[:, None])
    if how == "sum":
        return out
    total = cells.new_zeros(n_bags).index_add_(0, bag, weight).clamp_min(1e-12)
    return out / total[:, None]

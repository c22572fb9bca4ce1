"""Plots: predicted expression of segmented cells over the H&E."""

from ._cells import cells

__all__ = ["cells"]

"""Preprocessing: nucleus segmentation and cell-to-spot assignment."""

from ._watershed import WatershedParams
from .assign import assign_cells
from .segment import segment

__all__ = ["WatershedParams", "assign_cells", "segment"]

"""Preprocessing: nucleus segmentation and cell-to-spot assignment."""

from ._cellpose import CellposeSegmenter
from ._rasterize import rasterize_cells
from ._watershed import WatershedParams
from .assign import assign_cells
from .segment import segment

__all__ = ["CellposeSegmenter", "WatershedParams", "assign_cells", "rasterize_cells", "segment"]

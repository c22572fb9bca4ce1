"""Preprocessing: nucleus segmentation and cell-to-spot assignment.

The public face of :mod:`scellst.segmentation` (``segment``, ``rasterize_cells``, the
segmenters) and of the bag-making step of :mod:`scellst.mil` (``assign_cells``). Nothing is
implemented here.
"""

from ..mil.assign import assign_cells
from ..segmentation.cellpose import CellposeSegmenter
from ..segmentation.learned import NucleusSegmenter, train_segmenter
from ..segmentation.rasterize import rasterize_cells
from ..segmentation.segment import segment
from ..segmentation.watershed import WatershedParams

__all__ = [
    "CellposeSegmenter",
    "NucleusSegmenter",
    "WatershedParams",
    "assign_cells",
    "rasterize_cells",
    "segment",
    "train_segmenter",
]

"""Plots (matplotlib): predicted expression of cells over the H&E, measured vs predicted spots,
training curves, crop galleries and per-gene scores.

Every function draws into ``ax=`` (or a new figure), saves with ``save=``, shows with
``show=`` (default: when it made the figure and is not saving) and returns the Axes or Figure.
"""

from ._cells import cells
from ._gallery import gallery
from ._scores import gene_scores
from ._spots import spots
from ._training import training

__all__ = ["cells", "gallery", "gene_scores", "spots", "training"]

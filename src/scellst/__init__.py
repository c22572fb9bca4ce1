"""scellst: single-cell gene expression from H&E histology, on SpatialData."""

from __future__ import annotations

from . import constants, datasets, io, pl, pp, tl
from ._version import __version__

__all__ = ["constants", "datasets", "io", "pl", "pp", "tl", "__version__"]

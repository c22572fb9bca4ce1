"""scellst: single-cell gene expression from H&E histology, on SpatialData."""

from __future__ import annotations

__version__ = "0.1.0"

from . import constants, datasets, io, pl, pp, tl

__all__ = ["constants", "datasets", "io", "pl", "pp", "tl", "__version__"]

"""Example and synthetic datasets."""

from ._spaceranger import synthetic_visium, synthetic_visium_hd
from ._synthetic import synthetic

__all__ = ["synthetic", "synthetic_visium", "synthetic_visium_hd"]

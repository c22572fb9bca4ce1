"""Example and synthetic datasets."""

from ._synthetic import synthetic

__all__ = ["synthetic"]

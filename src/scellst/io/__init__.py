"""Readers for H&E + spatial transcriptomics data, and the physical scale of images."""

from ._scale import microns_per_pixel, set_microns_per_pixel

__all__ = ["microns_per_pixel", "set_microns_per_pixel"]

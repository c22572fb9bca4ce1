"""Readers for H&E + spatial transcriptomics data, and the physical scale of images."""

from ._hest import read_hest
from ._image import read_image
from ._nuclei import read_nuclei
from ._scale import microns_per_pixel, set_microns_per_pixel
from ._visium import read_visium
from ._visium_hd import read_visium_hd
from ._write import write_zarr

__all__ = [
    "microns_per_pixel",
    "read_hest",
    "read_image",
    "read_nuclei",
    "read_visium",
    "read_visium_hd",
    "set_microns_per_pixel",
    "write_zarr",
]

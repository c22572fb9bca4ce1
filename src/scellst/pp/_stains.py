"""Colour deconvolution of H&E into optical densities (Ruifrok & Johnston stain vectors)."""

from __future__ import annotations

import numpy as np
from skimage.color.colorconv import hed_from_rgb

# optical density of each uint8 level, looked up instead of computing a log per pixel
_OD_LUT = (-np.log10((np.arange(256, dtype=np.float32) + 1.0) / 256.0)).astype(np.float32)
HED = hed_from_rgb.astype(np.float32)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """(..., 3) uint8 RGB -> (..., 3) float32 optical density (0 = white)."""
    return _OD_LUT[rgb]


def hematoxylin_eosin(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hematoxylin and eosin concentrations (float32, same spatial shape as ``rgb``)."""
    od = optical_density(rgb)
    return od @ HED[:, 0], od @ HED[:, 1]

"""Whole-slide tissue mask: where the tissue is, at low resolution, so that "cells" segmented on
glass, dust or debris far from the tissue are flagged (``obs["on_tissue"]``) or dropped.

The mask is computed on a coarse pyramid level (at most :data:`MAX_SIDE_PX` pixels a side):
colour saturation (tissue is stained, glass and grey dust are not), an Otsu threshold clipped
to [:data:`MIN_SATURATION`, :data:`MAX_SATURATION`], then, with sizes in µm: a closing that
joins the tissue's gaps, removal of components smaller than ``min_area_um2`` (dust specks,
debris), filling of holes, and a dilation by ``margin_um`` so that cells on the tissue's edge
stay on it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_otsu
from skimage.morphology import disk, remove_small_objects
from spatialdata import SpatialData

from .._sdata import image_levels, to_rgb_uint8

MAX_SIDE_PX = 2048
#: Finest pixel size of the mask (µm): a tissue outline needs no more, and the µm-sized closing
#: and dilation stay a few pixels wide (a 50 µm disk at 0.5 µm/px took minutes per image).
MASK_MIN_UM = 4.0
MIN_SATURATION = 0.03
MAX_SATURATION = 0.15
#: Default smallest piece of tissue kept (µm²): 0.05 mm², a square of about 220 µm.
MIN_AREA_UM2 = 50_000.0
#: Default dilation of the mask (µm).
MARGIN_UM = 50.0
#: Closing radius (µm) joining the gaps of the tissue before small pieces are removed.
CLOSING_UM = 20.0


@dataclass
class TissueMask:
    """A boolean mask of a coarse level and its pixel size in level-0 pixels."""

    mask: np.ndarray  # (h, w) bool
    scale_y: float  # level-0 pixels per mask pixel
    scale_x: float
    threshold: float  # saturation threshold used
    microns_per_pixel: float  # of the mask

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether each level-0 pixel position ``(x, y)`` lies on the tissue."""
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        col = np.floor(xy[:, 0] / self.scale_x).astype(np.int64)
        row = np.floor(xy[:, 1] / self.scale_y).astype(np.int64)
        h, w = self.mask.shape
        ok = (row >= 0) & (row < h) & (col >= 0) & (col < w)
        out = np.zeros(len(xy), bool)
        out[ok] = self.mask[row[ok], col[ok]]
        return out

    def info(self) -> dict:
        return {
            "method": "Otsu on saturation of a coarse level, closing, small pieces removed, "
            "holes filled, dilated",
            "saturation_threshold": float(self.threshold),
            "mask_microns_per_pixel": float(self.microns_per_pixel),
            "tissue_fraction": float(self.mask.mean()),
        }


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation of a uint8 RGB image, in [0, 1]."""
    rgb = rgb.astype(np.float32)
    hi, lo = rgb.max(-1), rgb.min(-1)
    return np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)


def tissue_from_rgb(
    rgb: np.ndarray,
    microns_per_pixel: float,
    *,
    min_area_um2: float = MIN_AREA_UM2,
    margin_um: float = MARGIN_UM,
) -> tuple[np.ndarray, float]:
    """The tissue mask of a low-resolution RGB image (``microns_per_pixel`` of that image) and
    the saturation threshold used."""
    sat = saturation(to_rgb_uint8(rgb))
    t = float(threshold_otsu(sat)) if np.ptp(sat) > 1e-6 else MIN_SATURATION
    t = float(np.clip(t, MIN_SATURATION, MAX_SATURATION))
    mask = sat > t
    close = max(int(round(CLOSING_UM / microns_per_pixel)), 1)
    mask = ndimage.binary_closing(mask, structure=disk(close), border_value=0) | mask
    min_px = max(int(math.ceil(min_area_um2 / microns_per_pixel**2)), 1)
    mask = remove_small_objects(mask, max_size=min_px)
    mask = ndimage.binary_fill_holes(mask)
    grow = int(round(margin_um / microns_per_pixel))
    if grow > 0:
        mask = ndimage.binary_dilation(mask, structure=disk(grow))
    return mask, t


def slide_tissue_mask(
    sdata: SpatialData,
    image_key: str,
    microns_per_pixel: float,
    *,
    min_area_um2: float = MIN_AREA_UM2,
    margin_um: float = MARGIN_UM,
) -> TissueMask:
    """The tissue mask of an image element, from its finest level of at most MAX_SIDE_PX a side
    (or the full resolution read with a stride when it has no such level), read with a stride
    so that the mask's pixels are at least MASK_MIN_UM wide."""
    levels = image_levels(sdata, image_key)
    full = levels[0]
    H, W = int(full.sizes["y"]), int(full.sizes["x"])
    level = next(
        (lv for lv in levels if max(lv.sizes["y"], lv.sizes["x"]) <= MAX_SIDE_PX), levels[-1]
    )
    level_um = microns_per_pixel * H / int(level.sizes["y"])
    step = max(
        1,
        int(math.ceil(max(level.sizes["y"], level.sizes["x"]) / MAX_SIDE_PX)),
        int(MASK_MIN_UM // level_um),
    )
    data = level.data[:, ::step, ::step]
    if hasattr(data, "compute"):
        data = data.compute()
    rgb = np.moveaxis(np.asarray(data), 0, -1)
    sy, sx = H / rgb.shape[0], W / rgb.shape[1]
    mpp = microns_per_pixel * (sy + sx) / 2
    mask, t = tissue_from_rgb(rgb, mpp, min_area_um2=min_area_um2, margin_um=margin_um)
    return TissueMask(mask=mask, scale_y=sy, scale_x=sx, threshold=t, microns_per_pixel=mpp)

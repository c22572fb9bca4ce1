"""Fixed-physical-size crops around nuclei, read tile by tile from the (lazy) image."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
import shapely
import xarray as xr

from .._sdata import read_rgb
from ..pp._tiles import map_tiles, tile_grid

#: Paper geometry: 18 µm crops resampled to 0.25 µm/px (72 px).
CROP_SIZE_UM = 18.0
CROP_MPP = 0.25


@dataclass
class CropBatch:
    """Crops of a set of cells, all at the same physical size and resolution."""

    #: Positions of the cells in the cells table.
    index: np.ndarray
    #: (n, S, S, 3) uint8 RGB crops centred on the nuclei.
    images: np.ndarray
    #: (n, S, S) bool: each cell's own nucleus.
    masks: np.ndarray
    #: (n,) bool: the crop went past the image border (filled with white).
    padded: np.ndarray
    #: µm per pixel of the crops.
    mpp: float


def crop_pixels(crop_size_um: float, crop_mpp: float) -> int:
    return max(4, int(round(crop_size_um / crop_mpp)))


def iter_crops(
    img: xr.DataArray,
    image_mpp: float,
    centroids_xy: np.ndarray,
    polygons: np.ndarray,
    *,
    crop_size_um: float = CROP_SIZE_UM,
    crop_mpp: float = CROP_MPP,
    tile_size: int = 2048,
    n_jobs: int | None = None,
    progress: bool = True,
) -> Iterator[CropBatch]:
    """Yield crops of every cell, grouped by image tile so each pixel is read once.

    Each crop is centred on the cell centroid, ``crop_size_um`` wide, resampled to ``crop_mpp``
    µm/px whatever the slide's resolution; the nucleus mask is the cell polygon rasterised in
    the crop. Areas beyond the image border are white (H&E background).
    """
    out = crop_pixels(crop_size_um, crop_mpp)
    half_src = crop_size_um / image_mpp / 2  # half crop in source pixels
    margin = int(math.ceil(half_src)) + 2
    h, w = int(img.sizes["y"]), int(img.sizes["x"])
    xy = np.asarray(centroids_xy, dtype=float)
    tiles = tile_grid((h, w), tile_size, margin)
    # cells whose centroid is outside the image are assigned to the nearest tile
    cy = np.clip(np.floor(xy[:, 1]), 0, h - 1)
    cx = np.clip(np.floor(xy[:, 0]), 0, w - 1)
    groups = [np.flatnonzero(t.owns(cy, cx)) for t in tiles]
    work = [(t, g) for t, g in zip(tiles, groups, strict=True) if g.size]
    scale = out / (2 * half_src)  # source pixels -> crop pixels
    n_src = int(math.ceil(2 * half_src)) + 5  # source window side, with interpolation margin

    def run(item) -> CropBatch:
        tile, idx = item
        ext = int(math.ceil(half_src)) + 4
        y0, y1 = int(np.floor(xy[idx, 1].min() - ext)), int(np.floor(xy[idx, 1].max() + ext)) + 1
        x0, x1 = int(np.floor(xy[idx, 0].min() - ext)), int(np.floor(xy[idx, 0].max() + ext)) + 1
        window = read_rgb(img, max(y0, 0), min(y1, h), max(x0, 0), min(x1, w))
        pad = ((max(0, -y0), max(0, y1 - h)), (max(0, -x0), max(0, x1 - w)), (0, 0))
        if any(p for pair in pad[:2] for p in pair):
            window = np.pad(window, pad, constant_values=255)
        images = np.empty((idx.size, out, out, 3), np.uint8)
        masks = np.zeros((idx.size, out, out), np.uint8)
        padded = np.zeros(idx.size, bool)
        for k, i in enumerate(idx):
            cxi, cyi = xy[i]
            # warp from a small source window whose origin depends on the cell alone: OpenCV's
            # fixed-point interpolation then gives the same crop whatever the tiling
            sx0, sy0 = int(np.floor(cxi - half_src)) - 2, int(np.floor(cyi - half_src)) - 2
            source = window[sy0 - y0 : sy0 - y0 + n_src, sx0 - x0 : sx0 - x0 + n_src]
            m = np.array(
                [
                    [scale, 0, out / 2 - (cxi - sx0) * scale],
                    [0, scale, out / 2 - (cyi - sy0) * scale],
                ]
            )
            images[k] = cv2.warpAffine(
                source,
                m,
                (out, out),
                flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=(255, 255, 255),
            )
            padded[k] = (
                cxi - half_src < 0 or cyi - half_src < 0 or cxi + half_src > w or cyi + half_src > h
            )
            ring = polygons[i]
            if ring is not None and len(ring) >= 3:
                pts = (ring - [cxi, cyi]) * scale + out / 2
                cv2.fillPoly(masks[k], [np.round(pts * 16).astype(np.int32)], 1, shift=4)
        return CropBatch(idx, images, masks.astype(bool), padded, crop_mpp)

    yield from map_tiles(run, work, n_jobs=n_jobs, desc="crops", progress=progress)


def exterior_coords(geometry: np.ndarray) -> np.ndarray:
    """(k, 2) exterior ring of each polygon (largest part of multipolygons), as an object array."""
    out = np.empty(len(geometry), dtype=object)
    for i, g in enumerate(geometry):
        if g is None or g.is_empty:
            out[i] = None
            continue
        if g.geom_type != "Polygon":
            parts = shapely.get_parts(g)
            g = parts[np.argmax(shapely.area(parts))]
            if g.geom_type != "Polygon":
                out[i] = None
                continue
        out[i] = np.asarray(g.exterior.coords)
    return out

"""Weight-free nucleus segmentation of H&E: hematoxylin top-hat, threshold, distance watershed.

All sizes are given in micrometres and converted with the slide's microns per pixel, so the same
defaults work at 20x and 40x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from .stains import TISSUE_OD, hematoxylin, total_od


@dataclass
class WatershedParams:
    """Parameters of the classical segmentation, in µm (or µm²).

    Examples
    --------
    >>> sst.pp.WatershedParams().min_area_um2  # defaults, in µm²
    8.0
    >>> sst.pp.segment(sdata, params={"min_area_um2": 12.0, "min_seed_distance_um": 2.5})
    """

    #: Gaussian smoothing of the hematoxylin channel before thresholding.
    smooth_um: float = 0.5
    #: Radius of the top-hat structuring element: structures wider than this are background.
    background_radius_um: float = 8.0
    #: Minimal distance between two nucleus seeds (about the smallest nucleus radius).
    min_seed_distance_um: float = 2.0
    #: Opening of the foreground mask: removes specks and thin bridges narrower than this.
    open_radius_um: float = 1.0
    #: Smallest nucleus area kept.
    min_area_um2: float = 8.0
    #: Largest nucleus area kept (also sets the tile overlap).
    max_area_um2: float = 400.0
    #: Tissue = smoothed total optical density above this (white glass/background is ~0.05).
    tissue_od: float = TISSUE_OD
    #: Smoothing of the optical density for the tissue mask.
    tissue_smooth_um: float = 5.0
    #: Threshold on the hematoxylin top-hat; estimated once per slide when None.
    threshold: float | None = None

    def to_dict(self) -> dict:
        """The parameters as a plain dict (recorded in the cells table's ``uns``)."""
        return asdict(self)


def _odd(n: float) -> int:
    return max(3, int(round(n)) | 1)


class WatershedSegmenter:
    """Callable ``(rgb_tile, microns_per_pixel) -> labels`` with a slide-wide threshold."""

    name = "watershed"

    def __init__(self, params: WatershedParams | None = None):
        self.params = params or WatershedParams()

    @property
    def max_diameter_um(self) -> float:
        return 2.0 * np.sqrt(self.params.max_area_um2 / np.pi)

    def tophat(self, rgb: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
        """Hematoxylin top-hat (small dark-blue blobs) and tissue mask of a tile."""
        p = self.params
        tissue = tissue_mask(rgb, mpp, p.tissue_od, p.tissue_smooth_um)
        if not tissue.any():  # background tile: nothing to segment
            return np.zeros(tissue.shape, np.float32), tissue
        return self._tophat(rgb, mpp), tissue

    def _tophat(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        p = self.params
        h = cv2.GaussianBlur(hematoxylin(rgb), (0, 0), p.smooth_um / mpp)
        return h - background(h, p.background_radius_um / mpp)

    def fit_threshold(self, samples: list[np.ndarray], mpp: float) -> float | None:
        """Set the slide-wide threshold by Otsu on tissue pixels of sample tiles (RGB).

        One threshold for the whole slide keeps tiles consistent, so nuclei on tile seams are
        segmented identically by both neighbours. Returns None when no tissue is found.
        """
        if self.params.threshold is not None:
            return self.params.threshold
        values = []
        for rgb in samples:
            th, tissue = self.tophat(rgb, mpp)
            values.append(th[tissue])
        values = np.concatenate(values) if values else np.empty(0)
        if values.size < 1000 or np.ptp(values) == 0:
            return None
        self.params.threshold = float(threshold_otsu(values))
        return self.params.threshold

    def __call__(self, rgb: np.ndarray, mpp: float) -> np.ndarray:
        p = self.params
        if p.threshold is None:
            raise RuntimeError("Call fit_threshold on sample tiles before segmenting.")
        labels = np.zeros(rgb.shape[:2], np.int32)
        tissue = tissue_mask(rgb, mpp, p.tissue_od, p.tissue_smooth_um)
        rows, cols = np.flatnonzero(tissue.any(1)), np.flatnonzero(tissue.any(0))
        if rows.size == 0:  # background tile: nothing to segment
            return labels
        # work on the tissue's bounding box plus the filters' context: nuclei lie in tissue, so
        # they stay that far from the box edge and come out as on the whole tile
        pad = int(np.ceil((2 * p.background_radius_um + self.max_diameter_um) / mpp))
        y0 = max(rows[0] - pad, 0) // ALIGN * ALIGN
        x0 = max(cols[0] - pad, 0) // ALIGN * ALIGN
        y1, x1 = min(rows[-1] + pad + 1, rgb.shape[0]), min(cols[-1] + pad + 1, rgb.shape[1])
        labels[y0:y1, x0:x1] = self._segment(rgb[y0:y1, x0:x1], tissue[y0:y1, x0:x1], mpp)
        return labels

    def _segment(self, rgb: np.ndarray, tissue: np.ndarray, mpp: float) -> np.ndarray:
        p = self.params
        fg = fill_holes((self._tophat(rgb, mpp) > p.threshold) & tissue)
        k = _odd(2 * p.open_radius_um / mpp)
        fg = cv2.morphologyEx(
            fg, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        )
        if not fg.any():
            return np.zeros(fg.shape, np.int32)
        dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
        dist = cv2.GaussianBlur(dist, (0, 0), 1.0)
        seeds = local_maxima(dist, max(1, int(round(p.min_seed_distance_um / mpp)))) & (fg > 0)
        labels = split_touching(fg, seeds, dist)
        return filter_by_area(labels, mpp, p.min_area_um2, p.max_area_um2)


#: Coarse steps work on blocks of ALIGN pixels; tile windows and crops start on multiples of it,
#: so every tile sees the same blocks and nuclei on tile seams come out identical.
ALIGN = 4


def _down(a: np.ndarray, f: int) -> np.ndarray:
    """Block-average by exactly ``f`` (edge-padded to a multiple of ``f``)."""
    h, w = a.shape[:2]
    ph, pw = -h % f, -w % f
    if ph or pw:
        pad = ((0, ph), (0, pw)) + ((0, 0),) * (a.ndim - 2)
        a = np.pad(a, pad, mode="edge")
    return cv2.resize(a, (a.shape[1] // f, a.shape[0] // f), interpolation=cv2.INTER_AREA)


def _up(a: np.ndarray, f: int, shape: tuple[int, int], interpolation: int) -> np.ndarray:
    """Inverse of :func:`_down`: back to the padded size, then cropped to ``shape``."""
    up = cv2.resize(a, (a.shape[1] * f, a.shape[0] * f), interpolation=interpolation)
    return up[: shape[0], : shape[1]]


def tissue_mask(rgb: np.ndarray, mpp: float, min_od: float, smooth_um: float) -> np.ndarray:
    """Smoothed total optical density above ``min_od``, computed at 1/4 resolution (it is smooth)."""
    f = ALIGN if min(rgb.shape[:2]) >= 16 * ALIGN else 1
    small = _down(rgb, f) if f > 1 else rgb
    total = total_od(small)
    small = cv2.GaussianBlur(total, (0, 0), max(smooth_um / mpp / f, 0.5)) > min_od
    if f == 1:
        return small
    return _up(small.astype(np.uint8), f, rgb.shape[:2], cv2.INTER_NEAREST).astype(bool)


def background(h: np.ndarray, radius_px: float) -> np.ndarray:
    """Grey opening of ``h`` with a disk of ``radius_px``: everything narrower than it removed.

    Computed at half resolution (the background is smooth), which is ~8x cheaper.
    """
    f = 2 if radius_px >= 6 and min(h.shape) >= 32 else 1
    small = _down(h, f) if f > 1 else h
    k = _odd(2 * radius_px / f)
    opened = cv2.morphologyEx(
        small, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    )
    if f > 1:
        opened = _up(opened, f, h.shape, cv2.INTER_LINEAR)
    return np.minimum(opened, h)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill background regions not connected to the border (uint8 0/1 out)."""
    padded = np.pad(mask.astype(np.uint8), 1)
    flood = padded.copy()
    cv2.floodFill(flood, None, (0, 0), 2)  # the background reachable from the border
    return (flood[1:-1, 1:-1] != 2).astype(np.uint8)


def local_maxima(image: np.ndarray, radius: int) -> np.ndarray:
    """Pixels equal to the maximum of their (2 radius + 1)² neighbourhood, above zero."""
    dilated = cv2.dilate(image, np.ones((2 * radius + 1, 2 * radius + 1), np.uint8))
    return (image >= dilated) & (image > 0)


def split_touching(fg: np.ndarray, seeds: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Label the foreground, splitting by watershed only the components holding several seeds.

    Most nuclei are isolated components with a single seed and keep their component label; the
    multi-seed ones are split in one watershed call (one call, rather than one per component,
    spends its time in compiled code that runs in parallel across tile threads).
    """
    n_comp, comp = cv2.connectedComponents(fg, connectivity=8, ltype=cv2.CV_32S)
    markers, _ = ndi.label(seeds, structure=np.ones((3, 3)))  # one marker per plateau
    stride = int(markers.max()) + 1
    has = markers > 0
    pairs = np.unique(comp[has].astype(np.int64) * stride + markers[has])
    multi = np.bincount(pairs // stride, minlength=n_comp) > 1
    multi[0] = False
    if not multi.any():
        return comp
    region = multi[comp]
    split = watershed(-dist, np.where(region, markers, 0), mask=region)
    # split objects get ids above the component ids
    return np.where(region, np.where(split > 0, split + n_comp, 0), comp).astype(np.int32)


def filter_by_area(labels: np.ndarray, mpp: float, min_um2: float, max_um2: float) -> np.ndarray:
    """Zero out objects whose area lies outside [min_um2, max_um2] (one lookup-table pass)."""
    area = np.bincount(labels.ravel()) * mpp * mpp
    keep = (area >= min_um2) & (area <= max_um2)
    keep[0] = True
    if keep.all():
        return labels
    lut = np.where(keep, np.arange(len(area), dtype=np.int32), 0).astype(np.int32)
    return lut[labels]

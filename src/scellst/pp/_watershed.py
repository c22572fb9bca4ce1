"""Weight-free nucleus segmentation of H&E: hematoxylin top-hat, threshold, distance watershed.

All sizes are given in micrometres and converted with the slide's microns per pixel, so the same
defaults work at 20x and 40x.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from ._stains import optical_density, stain


@dataclass
class WatershedParams:
    """Parameters of the classical segmentation, in µm (or µm²)."""

    #: Gaussian smoothing of the hematoxylin channel before thresholding.
    smooth_um: float = 0.5
    #: Radius of the top-hat structuring element: structures wider than this are background.
    background_radius_um: float = 8.0
    #: Minimal distance between two nucleus seeds (about the smallest nucleus radius).
    min_seed_distance_um: float = 2.5
    #: Smallest nucleus area kept.
    min_area_um2: float = 8.0
    #: Largest nucleus area kept (also sets the tile overlap).
    max_area_um2: float = 400.0
    #: Tissue = smoothed total optical density above this (white glass/background is ~0.05).
    tissue_od: float = 0.15
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
        od = optical_density(rgb)
        tissue = cv2.GaussianBlur(od.sum(-1), (0, 0), p.tissue_smooth_um / mpp) > p.tissue_od
        if not tissue.any():  # background tile: nothing to segment
            return np.zeros(tissue.shape, np.float32), tissue
        h = cv2.GaussianBlur(stain(od, 0), (0, 0), p.smooth_um / mpp)
        k = _odd(2 * p.background_radius_um / mpp)
        th = cv2.morphologyEx(
            h, cv2.MORPH_TOPHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
        )
        return th, tissue

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
        th, tissue = self.tophat(rgb, mpp)
        fg = (th > p.threshold) & tissue
        fg = ndi.binary_fill_holes(fg)
        fg = cv2.morphologyEx(
            fg.astype(np.uint8),
            cv2.MORPH_OPEN,
            cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3)),
        )
        if not fg.any():
            return np.zeros(fg.shape, np.int32)
        dist = cv2.distanceTransform(fg, cv2.DIST_L2, 5)
        dist = cv2.GaussianBlur(dist, (0, 0), 1.0)
        components, _ = ndi.label(fg)
        peaks = peak_local_max(
            dist,
            min_distance=max(1, int(round(p.min_seed_distance_um / mpp))),
            labels=components,
            exclude_border=False,
        )
        markers = np.zeros(fg.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1, dtype=np.int32)
        labels = watershed(-dist, markers, mask=fg.astype(bool))
        return filter_by_area(labels, mpp, p.min_area_um2, p.max_area_um2)


def filter_by_area(labels: np.ndarray, mpp: float, min_um2: float, max_um2: float) -> np.ndarray:
    """Zero out objects whose area lies outside [min_um2, max_um2]."""
    area = np.bincount(labels.ravel()) * mpp * mpp
    bad = (area < min_um2) | (area > max_um2)
    bad[0] = False
    if bad.any():
        labels = np.where(bad[labels], 0, labels)
    return labels

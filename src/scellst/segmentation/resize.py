"""Resampling images and label images between a slide's µm/px and a model's working resolution."""

from __future__ import annotations

import cv2
import numpy as np


def resample(img: np.ndarray, factor: float) -> np.ndarray:
    """Resize an image by ``factor`` (area averaging when shrinking, linear when enlarging)."""
    return resize_image(img, scaled_shape(img.shape, factor))


def resize_image(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an image to ``(y, x)`` ``shape``: area averaging when shrinking, linear when
    enlarging."""
    if img.shape[:2] == tuple(shape):
        return img
    shrink = shape[0] * shape[1] < img.shape[0] * img.shape[1]
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(img, (int(shape[1]), int(shape[0])), interpolation=interp)


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image (or mask) to ``shape``, sampling at pixel
    centres, as :func:`resample` maps its pixels. (cv2's INTER_NEAREST samples at corners: half
    a pixel off, measured AJI 0.420 vs 0.425 on MoNuSeg.)"""
    if labels.shape == tuple(shape):
        return labels
    iy = np.minimum((np.arange(shape[0]) + 0.5) * labels.shape[0] / shape[0], labels.shape[0] - 1)
    ix = np.minimum((np.arange(shape[1]) + 0.5) * labels.shape[1] / shape[1], labels.shape[1] - 1)
    return labels[iy.astype(int)[:, None], ix.astype(int)[None, :]]


def scaled_shape(shape: tuple[int, ...], factor: float) -> tuple[int, int]:
    """The ``(y, x)`` shape :func:`resample` gives an image of ``shape``."""
    if abs(factor - 1.0) < 1e-6:
        return int(shape[0]), int(shape[1])
    return max(1, round(shape[0] * factor)), max(1, round(shape[1] * factor))

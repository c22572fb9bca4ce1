"""From a tile's label image to the polygons and measurements of the nuclei that tile owns."""

from __future__ import annotations

import cv2
import numpy as np
import shapely

from .stains import hematoxylin
from .tiles import Tile


def owned_nuclei(labels: np.ndarray, rgb: np.ndarray, tile: Tile) -> dict[str, np.ndarray]:
    """Polygons (image pixel coordinates) and measurements of the objects owned by ``tile``.

    ``labels`` and ``rgb`` cover the tile's extended window. An object is owned when its centroid
    lies in the tile's core, so every nucleus is kept exactly once across the tiling.
    """
    labels = np.asarray(labels)
    if labels.shape != rgb.shape[:2]:
        raise ValueError(
            f"The segmentation returned labels of shape {labels.shape} for a tile of shape "
            f"{rgb.shape[:2]}; a segmentation callable must return one label per pixel."
        )
    labels = labels.astype(np.int32, copy=False)
    # per-object sums over the object pixels only (a fraction of the tile; bincount holds the GIL)
    inside = np.flatnonzero(labels.ravel())
    flat = labels.ravel()[inside]
    count = np.bincount(flat)
    present = np.flatnonzero(count[1:]) + 1
    if present.size == 0:
        return {
            "geometry": np.empty(0, dtype=object),
            "area_px": np.empty(0),
            "mean_hematoxylin": np.empty(0),
            "centroid_x": np.empty(0),
            "centroid_y": np.empty(0),
        }
    rings = [c + [tile.wx0 + 0.5, tile.wy0 + 0.5] for c in _contours_of(labels, present)]
    geometry = polygons_from_pixel_contours(rings, count[present])
    centroid = shapely.get_coordinates(shapely.centroid(geometry))
    own = tile.owns(np.floor(centroid[:, 1]), np.floor(centroid[:, 0]))
    ids = present[own]
    h = hematoxylin(rgb.reshape(-1, 3)[inside])
    mean_h = np.bincount(flat, weights=h, minlength=len(count))[ids] / count[ids]
    return {
        "geometry": geometry[own],
        "area_px": count[ids].astype(float),
        "mean_hematoxylin": mean_h,
        "centroid_x": centroid[own, 0],
        "centroid_y": centroid[own, 1],
    }


def polygons_from_pixel_contours(contours, area_px: np.ndarray) -> np.ndarray:
    """Contours through pixel centres -> polygons following the pixels' outer edges.

    A contour through pixel centres loses half a pixel all around (a third of the area of a
    10-pixel nucleus). Each ring is scaled about its centre so that its area matches the
    object's pixel count, which is much cheaper than buffering every polygon. Degenerate
    contours (one pixel, a line) become their pixels' bounding box. All polygons are built in
    one vectorised call.
    """
    rings = list(contours)
    if not rings:
        return np.empty(0, dtype=object)
    area_px = np.array(area_px, dtype=float)
    xy, starts, lengths, area = rings_area(rings)
    for i in np.flatnonzero((lengths < 3) | (area < 1.0)):
        (x0, y0), (x1, y1) = rings[i].min(0) - 0.5, rings[i].max(0) + 0.5
        rings[i] = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
        area_px[i] = (x1 - x0) * (y1 - y0)
    xy, starts, lengths, area = rings_area(rings)
    factor = np.sqrt(area_px / np.maximum(area, 1e-9))
    # thin or spiky rings lose much more than their area by the half-pixel: scaling them would
    # overshoot, so they are buffered instead (below)
    thin = factor > 1.5
    factor = np.where(thin, 1.0, np.maximum(factor, 1.0))
    xy = scale_rings(xy, starts, lengths, factor)
    # close each ring (repeat its first point) for shapely's ragged-array constructor
    closed = np.insert(xy, starts + lengths, xy[starts], axis=0)
    ring_offsets = np.concatenate([[0], np.cumsum(lengths + 1)])
    geom_offsets = np.arange(len(rings) + 1)
    polys = shapely.from_ragged_array(
        shapely.GeometryType.POLYGON, closed, (ring_offsets, geom_offsets)
    )
    if thin.any():
        polys[thin] = shapely.buffer(polys[thin], 0.5, quad_segs=1, join_style="mitre")
    # contours through one-pixel necks touch themselves: repair those few rings
    for i in np.flatnonzero(~shapely.is_valid(polys)):
        parts = shapely.get_parts(
            shapely.make_valid(polys[i], method="structure", keep_collapsed=False)
        )
        parts = parts[shapely.get_type_id(parts) == shapely.GeometryType.POLYGON]
        if len(parts):
            polys[i] = parts[np.argmax(shapely.area(parts))]
    return polys


def rings_area(rings: list[np.ndarray]):
    """Concatenated coordinates, ring starts/lengths and shoelace areas of many rings at once."""
    lengths = np.array([len(r) for r in rings])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    xy = np.concatenate(rings).astype(np.float64)
    nxt = np.arange(len(xy)) + 1
    nxt[starts + lengths - 1] = starts
    cross = xy[:, 0] * xy[nxt, 1] - xy[nxt, 0] * xy[:, 1]
    return xy, starts, lengths, 0.5 * np.abs(np.add.reduceat(cross, starts))


def scale_rings(
    xy: np.ndarray, starts: np.ndarray, lengths: np.ndarray, factor: np.ndarray
) -> np.ndarray:
    """Scale each ring of the concatenated coordinates ``xy`` (as :func:`rings_area` gives them)
    about its vertex mean by its ``factor``."""
    centre = np.add.reduceat(xy, starts, axis=0) / lengths[:, None]
    rep = np.repeat(np.arange(len(lengths)), lengths)
    return centre[rep] + (xy - centre[rep]) * np.asarray(factor)[rep, None]


def _contours_of(labels: np.ndarray, ids: np.ndarray) -> list[np.ndarray]:
    """Outer contour (pixel centres, x/y in the label image) of each label in ``ids``.

    One OpenCV call traces every region of the label image; a label's outer contour is the
    longest of the contours that start on it (the others are the edges of its holes).
    """
    contours, _ = cv2.findContours(
        labels.astype(np.int32), cv2.RETR_FLOODFILL, cv2.CHAIN_APPROX_SIMPLE
    )
    best: dict[int, np.ndarray] = {}
    h, w = labels.shape
    for c in contours:
        x, y = c[0, 0]
        if x >= w or y >= h:  # the frame of the image itself
            continue
        lab = int(labels[y, x])
        if lab and (lab not in best or len(c) > len(best[lab])):
            best[lab] = c
    return [best[int(i)][:, 0, :].astype(np.float64) for i in ids]

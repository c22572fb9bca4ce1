"""The slide as plots see it: µm in the H&E's frame, the background image, views, scale bars.

Every ``sst.pl`` map is drawn in micrometres of the full-resolution H&E (x to the right, y down,
origin at the image's top-left corner), so cells, spots and the image line up whatever
coordinate systems the elements use.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.collections import EllipseCollection, PolyCollection
from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar
from spatialdata import SpatialData

from .._sdata import element_to_image_matrix, image_levels, read_rgb
from ..io._scale import microns_per_pixel

#: Scale bar lengths to choose from (µm).
NICE_LENGTHS_UM = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


@dataclass
class Slide:
    """The H&E image ``key`` at ``mpp`` µm per full-resolution pixel, and its pyramid."""

    sdata: SpatialData
    key: str
    mpp: float
    levels: list[xr.DataArray]

    @classmethod
    def of(cls, sdata: SpatialData, key: str) -> Slide:
        return cls(sdata, key, microns_per_pixel(sdata, key), image_levels(sdata, key))

    @property
    def box(self) -> tuple[float, float, float, float]:
        """The whole image, ``(x0, y0, x1, y1)`` in µm."""
        h, w = int(self.levels[0].sizes["y"]), int(self.levels[0].sizes["x"])
        return 0.0, 0.0, w * self.mpp, h * self.mpp

    def to_px(self, element_key: str) -> np.ndarray:
        """3x3 affine from the intrinsic (x, y) of an element to full-resolution image pixels."""
        return element_to_image_matrix(self.sdata, element_key, self.key)

    def to_um(self, element_key: str) -> np.ndarray:
        """3x3 affine from the intrinsic (x, y) of an element to µm in the image's frame."""
        matrix = self.to_px(element_key)
        matrix[:2] *= self.mpp
        return matrix

    def draw(self, ax: Axes, box: Sequence[float], max_px: int) -> None:
        """Draw the part of the image inside ``box`` (µm), from the finest pyramid level whose
        view is at most ``max_px`` pixels on a side."""
        x0, y0, x1, y1 = box
        mpp, levels = self.mpp, self.levels
        h0 = int(levels[0].sizes["y"])
        for level in levels:
            f = h0 / int(level.sizes["y"])  # level pixels are f level-0 pixels
            if max(x1 - x0, y1 - y0) / (mpp * f) <= max_px or level is levels[-1]:
                break
        h, w = int(level.sizes["y"]), int(level.sizes["x"])
        px = lambda v, size: int(np.clip(v / (mpp * f), 0, size))  # noqa: E731
        r0, r1, c0, c1 = px(y0, h), px(y1, h), px(x0, w), px(x1, w)
        if r1 <= r0 or c1 <= c0:
            return
        rgb = read_rgb(level, r0, r1, c0, c1)
        ax.imshow(
            rgb,
            extent=(c0 * f * mpp, c1 * f * mpp, r1 * f * mpp, r0 * f * mpp),
            interpolation="nearest",
        )


def view_box(region: Sequence[float] | None, default: Sequence[float]) -> tuple[float, ...]:
    """``region`` as a checked ``(x0, y0, x1, y1)`` box in µm, or ``default``."""
    if region is None:
        return tuple(float(v) for v in default)
    values = tuple(float(v) for v in region)
    if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
        raise ValueError(
            f"region must be (x0, y0, x1, y1) in µm with x1 > x0 and y1 > y0, got {region}."
        )
    return values


def in_box(xy: np.ndarray, box: Sequence[float]) -> np.ndarray:
    """Which points (µm) lie inside ``box`` (edges included)."""
    x0, y0, x1, y1 = box
    return (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)


def set_view(ax: Axes, box: Sequence[float], *, labels: bool = True) -> None:
    """Show ``box`` (µm) with the image's orientation (y down) and equal aspect, no grid (a
    style such as scanpy's ``set_figure_params`` would draw one over the tissue)."""
    x0, y0, x1, y1 = box
    ax.set_xlim(x0, x1)
    ax.set_ylim(y1, y0)
    ax.set_aspect("equal")
    ax.grid(False)
    if labels:
        ax.set_xlabel("x (µm)")
        ax.set_ylabel("y (µm)")


def box_figsize(box: Sequence[float], width: float = 7.0) -> tuple[float, float]:
    """Figure size for a map of ``box``: ``width`` inches wide, height to scale."""
    x0, y0, x1, y1 = box
    return width, float(np.clip(width * (y1 - y0) / (x1 - x0), 1.0, 4 * width))


def nice_length(width_um: float, fraction: float = 0.2) -> float:
    """The length of :data:`NICE_LENGTHS_UM` closest (in ratio) to ``fraction`` of a view."""
    target = max(width_um * fraction, 1e-9)
    lengths = np.asarray(NICE_LENGTHS_UM, dtype=float)
    return float(lengths[np.argmin(np.abs(np.log(lengths / target)))])


def add_scalebar(ax: Axes, width_um: float, color: str = "black") -> AnchoredSizeBar:
    """A scale bar of a round length, about a fifth of ``width_um``, at the lower right."""
    length = nice_length(width_um)
    bar = AnchoredSizeBar(
        ax.transData,
        length,
        f"{length:g} µm",
        loc="lower right",
        pad=0.4,
        sep=3,
        color=color,
        frameon=False,
        size_vertical=0,
        label_top=True,
    )
    ax.add_artist(bar)
    return bar


def discs(xy_um: np.ndarray, radius_um: np.ndarray, ax: Axes, **kwargs) -> EllipseCollection:
    """Circles of the given radii (µm, data units: they scale with zoom) at ``xy_um``."""
    diameter = 2 * np.broadcast_to(np.asarray(radius_um, float), (len(xy_um),))
    return EllipseCollection(
        diameter,
        diameter,
        np.zeros(len(xy_um)),
        units="xy",
        offsets=np.asarray(xy_um, float).reshape(-1, 2),
        offset_transform=ax.transData,
        **kwargs,
    )


def polygons(corners_um: np.ndarray, **kwargs) -> PolyCollection:
    """Polygons (e.g. square bins) given as an ``(n, k, 2)`` array of corners in µm."""
    return PolyCollection(np.asarray(corners_um, float), closed=True, **kwargs)

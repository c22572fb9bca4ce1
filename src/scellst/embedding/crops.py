"""Fixed-physical-size crops around nuclei, read tile by tile from the (lazy) image.

Every crop has the same scale (slide µm/px over crop µm/px), so the resampling is separable and
shared by all the cells of a tile: their source patches are laid side by side in one wide image,
resampled along x in one :func:`cv2.resize` call, transposed back and resampled along y in a
second call (OpenCV resizes wide images far faster than it warps many small ones). Each
cell's patch is anchored on its own centroid, so a crop never depends on the tiling.

Sub-pixel centring comes from choosing, per cell, an integer patch origin and an integer offset
into the resampled patch: the crop's pixel grid lies within half a crop pixel of the grid
centred exactly on the centroid (within half a slide pixel when downsampling). Downsampling
(slide finer than the crops) averages each crop pixel's footprint (``INTER_AREA``), so detail
finer than a crop pixel averages out instead of aliasing; upsampling is bilinear.

Only the storage chunks of the slide that some crop touches are read, each once.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property

import cv2
import dask
import dask.array as da
import numpy as np
import shapely
import xarray as xr

from .._sdata import to_rgb_uint8
from ..segmentation.polygons import rings_area, scale_rings
from ..segmentation.stains import TISSUE_OD, total_od
from ..segmentation.tiles import map_tiles, tile_grid

#: Paper geometry: 18 µm crops resampled to 0.25 µm/px (72 px).
CROP_SIZE_UM = 18.0
CROP_MPP = 0.25
#: Cells resampled together in one stacked image (bounds the temporary arrays to a few MB).
_CHUNK = 128
#: Storage chunks larger than this (pixels) are read in part and never cached.
_CACHE_MAX_PIXELS = 4096 * 4096
#: SpatialData's pixel frame (the polygons, centroids and spots of scellst) puts the centre of
#: pixel (row r, column c) at (c + 0.5, r + 0.5); OpenCV, and the resampling here, at (c, r).
_PIXEL_CENTRE = 0.5
#: Side of the full-resolution blocks that slide_channel_stats samples.
_STATS_BLOCK = 512


@dataclass
class CropBatch:
    """Crops of a set of cells, all at the same physical size and resolution.

    What an :class:`~scellst.tl.Encoder`'s ``encode`` receives from :func:`~scellst.tl.embed`.

    Examples
    --------
    >>> class MeanColour:  # a minimal encoder
    ...     name = "mean_colour"
    ...     needs_masks = False
    ...     def feature_names(self):
    ...         return ["r", "g", "b"]
    ...     def encode(self, batch):  # batch: a CropBatch
    ...         return batch.images.reshape(len(batch.index), -1, 3).mean(1)
    >>> sst.tl.embed(sdata, encoder=MeanColour(), key_added="colour")
    """

    #: Positions of the cells in the cells table.
    index: np.ndarray
    #: (n, S, S, 3) uint8 RGB crops centred on the nuclei.
    images: np.ndarray
    #: (n, S, S) bool: each cell's own nucleus; ``None`` when the crops were read without masks.
    masks: np.ndarray | None
    #: (n,) bool: the crop went past the image border (filled with white).
    padded: np.ndarray
    #: µm per pixel of the crops.
    mpp: float
    #: Per-slide channel statistics (mean and std of RGB in [0, 1], ``slide_channel_stats``), if any.
    channel_stats: dict | None = None


def crop_pixels(crop_size_um: float, crop_mpp: float) -> int:
    """Side in pixels of a ``crop_size_um`` crop at ``crop_mpp`` µm/px (at least 4)."""
    return max(4, int(round(crop_size_um / crop_mpp)))


@dataclass(frozen=True)
class CropGeometry:
    """How crops of ``out`` pixels at ``scale`` crop pixels per slide pixel are resampled.

    Along each axis, a cell's source patch is ``patch`` slide pixels from an integer origin;
    resampling it by ``scale`` gives ``resampled`` pixels, of which the crop keeps ``out``
    from an integer offset. Pixel centres are at integer coordinates (OpenCV's convention), and
    crop pixel ``j`` lies at ``start + j / scale`` in slide pixels.
    """

    out: int
    scale: float

    @property
    def identity(self) -> bool:
        """Crops at the slide's own resolution: plain copies, no resampling."""
        return abs(self.scale - 1.0) < 1e-9

    @property
    def area(self) -> bool:
        """Downsampling: area averaging (anti-aliased) instead of bilinear interpolation."""
        return self.scale < 1.0 and not self.identity

    @cached_property
    def patch(self) -> int:
        """Source patch side (slide pixels)."""
        s, out = self.scale, self.out
        if self.identity:
            return out + 2
        if self.area:
            return int(math.ceil(out / s - 1e-9))
        # bilinear: origin <= start - 1 (see place) and the last sample's right neighbour inside
        patch = 3 + int(math.ceil((out - 0.5) / s))
        while self._max_offset + out > self._resampled(patch):
            patch += 1
        return patch

    @property
    def _max_offset(self) -> int:
        return 0 if self.area else int(np.rint(2.5 * self.scale - 0.5))

    def _resampled(self, patch: int) -> int:
        if self.identity:
            return patch
        probe = np.zeros((patch, 1, 3), np.uint8)
        return cv2.resize(
            probe, None, fx=1.0, fy=self.scale, interpolation=self.interpolation
        ).shape[0]

    @cached_property
    def resampled(self) -> int:
        """Resampled patch side (crop pixels), as OpenCV computes it."""
        return self._resampled(self.patch)

    @property
    def interpolation(self) -> int:
        return cv2.INTER_AREA if self.area else cv2.INTER_LINEAR

    def place(self, centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Patch origins, crop offsets and crop starts along one axis, for centre coordinates.

        The ideal crop grid is centred on the centroid: pixel ``j`` at
        ``centre + (j + 0.5 - out / 2) / scale``. The achieved grid is
        ``origin + (offset + 0.5) / scale - 0.5 + j / scale``, the closest such grid with integer
        origin and offset: within half a crop pixel of the ideal one (half a slide pixel when
        downsampling).
        """
        s = self.scale
        ideal = np.asarray(centre, dtype=np.float64) + (0.5 - self.out / 2) / s
        if self.area:
            offset = np.zeros(ideal.shape, np.int64)
            origin = np.rint(ideal + 0.5 - 0.5 / s).astype(np.int64)
        else:
            origin = np.floor(ideal).astype(np.int64) - 1
            offset = np.rint((ideal - origin + 0.5) * s - 0.5).astype(np.int64)
        start = origin + (offset + 0.5) / s - 0.5
        return origin, offset, start


def iter_crops(
    img: xr.DataArray,
    image_mpp: float,
    centroids_xy: np.ndarray,
    polygons: np.ndarray | None = None,
    *,
    crop_size_um: float = CROP_SIZE_UM,
    crop_mpp: float = CROP_MPP,
    masks: bool = True,
    channel_stats: dict | None = None,
    tile_size: int = 2048,
    n_jobs: int | None = None,
    progress: bool = True,
) -> Iterator[CropBatch]:
    """Yield crops of every cell, grouped by image tile so each pixel is read once.

    Parameters
    ----------
    img
        The slide, a lazy ``(c, y, x)`` RGB(A) image (its full-resolution level).
    image_mpp
        µm per pixel of ``img``.
    centroids_xy
        ``(n, 2)`` nucleus centroids in ``img`` pixels, in SpatialData's pixel frame (the frame
        of the cell polygons: pixel ``(r, c)`` covers ``[c, c + 1] x [r, r + 1]``).
    polygons
        ``(n,)`` object array of ``(k, 2)`` exterior rings in the same frame (``None`` for no
        polygon), rasterised into the masks; may be ``None`` when ``masks=False``.
    crop_size_um, crop_mpp
        Crop side in µm and its resolution in µm/px, whatever the slide's resolution.
    masks
        Rasterise each cell's polygon into its crop (``CropBatch.masks``); encoders that use the
        images alone skip this.
    channel_stats
        Attached to every batch (``CropBatch.channel_stats``), e.g. for normalisation.
    tile_size, n_jobs, progress
        Tiles read at a time (pixels per side), worker threads, progress bar.

    Yields
    ------
    CropBatch
        The cells of one tile. A crop is ``crop_size_um`` wide, resampled to ``crop_mpp`` µm/px
        (bilinear when upsampling, area-averaged when downsampling) and centred on the centroid
        to within half a crop pixel. Areas beyond the image border are white (H&E background)
        and flag the cell ``padded``. Crops do not depend on ``tile_size`` or ``n_jobs``.
    """
    for name, value in (
        ("image_mpp", image_mpp),
        ("crop_size_um", crop_size_um),
        ("crop_mpp", crop_mpp),
    ):
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"`{name}` must be a positive number, got {value!r}.")
    geo = CropGeometry(crop_pixels(crop_size_um, crop_mpp), float(image_mpp) / float(crop_mpp))
    out, patch = geo.out, geo.patch
    h, w = int(img.sizes["y"]), int(img.sizes["x"])
    xy = np.asarray(centroids_xy, dtype=float).reshape(-1, 2) - _PIXEL_CENTRE
    if masks and polygons is None:
        raise ValueError("`masks=True` needs the cell `polygons`.")
    ox, kx, sx = geo.place(xy[:, 0])
    oy, ky, sy = geo.place(xy[:, 1])
    # the crop's square (pixel edges) reaches past the image's
    half = 0.5 / geo.scale
    padded = (sx - half < -0.5) | (sy - half < -0.5)
    padded |= (sx + (out - 0.5) / geo.scale > w - 0.5) | (sy + (out - 0.5) / geo.scale > h - 0.5)
    # cells whose centroid is outside the image are assigned to the nearest tile
    tiles = tile_grid((h, w), tile_size, 0)
    cy = np.clip(np.floor(xy[:, 1]), 0, h - 1)
    cx = np.clip(np.floor(xy[:, 0]), 0, w - 1)
    groups = [g for g in (np.flatnonzero(t.owns(cy, cx)) for t in tiles) if g.size]
    reader = _ChunkReader(img, oy, ox, patch, groups)

    def run(item: tuple[int, np.ndarray]) -> CropBatch:
        number, idx = item
        y0, y1 = int(oy[idx].min()), int(oy[idx].max()) + patch
        x0, x1 = int(ox[idx].min()), int(ox[idx].max()) + patch
        window = reader.window(number, y0, y1, x0, x1)
        images = np.empty((idx.size, out, out, 3), np.uint8)
        for lo in range(0, idx.size, _CHUNK):
            sel = idx[lo : lo + _CHUNK]
            _resample(
                window,
                oy[sel] - y0,
                ox[sel] - x0,
                ky[sel],
                kx[sel],
                geo,
                images[lo : lo + _CHUNK],
            )
        cell_masks = None
        if masks:
            cell_masks = _rasterise(polygons[idx], sx[idx], sy[idx], geo)
        return CropBatch(idx, images, cell_masks, padded[idx], float(crop_mpp), channel_stats)

    work = list(enumerate(groups))
    yield from map_tiles(run, work, n_jobs=n_jobs, desc="crops", progress=progress)


class _ChunkReader:
    """Reads, for each group of cells, the pixels their patches cover, as a (y, x, 3) window.

    A lazy (dask) image is read only in the storage chunks that some patch touches, all in one
    computation per group: where tissue is sparse this decodes a fraction of the bounding box.
    A chunk touched by several groups (patches near a tile edge reach the neighbour's chunks)
    is decoded once and kept until the last of them has used it, so the cache holds at most
    the chunks along the edges of the tiles in progress; chunks larger than
    ``_CACHE_MAX_PIXELS`` are never kept (only their part in the window is read). Beyond the
    image, windows are white.
    """

    def __init__(self, img: xr.DataArray, oy: np.ndarray, ox: np.ndarray, p: int, groups: list):
        self.img, self.p = img, p
        self.h, self.w = int(img.sizes["y"]), int(img.sizes["x"])
        self.lazy = isinstance(img.data, da.Array)
        self.cache: dict[int, np.ndarray] = {}
        self.lock = threading.Lock()
        if self.lazy:
            self.ys = np.cumsum([0, *img.data.chunks[-2]])
            self.xs = np.cumsum([0, *img.data.chunks[-1]])
            self.needed = [self._touched(oy[g], ox[g]) for g in groups]
            n_chunks = (len(self.ys) - 1) * (len(self.xs) - 1)
            ids = np.concatenate([np.zeros(0, np.int64), *self.needed])
            self.refs = np.bincount(ids, minlength=n_chunks)

    def __getstate__(self) -> dict:  # shipped to dask.distributed workers: no lock, no cache
        return {k: v for k, v in self.__dict__.items() if k not in ("lock", "cache")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, lock=threading.Lock(), cache={})

    def _touched(self, oy: np.ndarray, ox: np.ndarray) -> np.ndarray:
        """Flat ids of the chunks that patches at (``oy``, ``ox``) touch."""
        h, w, p = self.h, self.w, self.p
        inside = (oy + p > 0) & (oy < h) & (ox + p > 0) & (ox < w)
        oy, ox = oy[inside], ox[inside]
        cy0 = np.searchsorted(self.ys, np.clip(oy, 0, h - 1), side="right") - 1
        cy1 = np.searchsorted(self.ys, np.clip(oy + p - 1, 0, h - 1), side="right") - 1
        cx0 = np.searchsorted(self.xs, np.clip(ox, 0, w - 1), side="right") - 1
        cx1 = np.searchsorted(self.xs, np.clip(ox + p - 1, 0, w - 1), side="right") - 1
        n_x = len(self.xs) - 1
        ids = [np.zeros(0, np.int64)]
        for dy in range(int((cy1 - cy0).max(initial=0)) + 1):
            for dx in range(int((cx1 - cx0).max(initial=0)) + 1):
                ok = (cy0 + dy <= cy1) & (cx0 + dx <= cx1)
                ids.append((cy0[ok] + dy) * n_x + cx0[ok] + dx)
        return np.unique(np.concatenate(ids))

    def window(self, group: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Window ``[y0, y1) x [x0, x1)`` holding the patches of group number ``group``."""
        window = np.full((y1 - y0, x1 - x0, 3), 255, np.uint8)
        ry0, ry1, rx0, rx1 = max(y0, 0), min(y1, self.h), max(x0, 0), min(x1, self.w)
        if ry1 <= ry0 or rx1 <= rx0:
            return window
        if not self.lazy:  # in memory: a plain slice
            planes = self.img.data[:, ry0:ry1, rx0:rx1]
            window[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = _to_rgb(planes)
            return window
        ids = self.needed[group].tolist()
        n_x = len(self.xs) - 1
        regions = {}  # chunk id -> (y0, y1, x0, x1) to read: the chunk, or its part in the window
        small = set()  # chunks read whole, which may be cached
        for c in ids:
            r, q = divmod(c, n_x)
            a, b, e, f = int(self.ys[r]), int(self.ys[r + 1]), int(self.xs[q]), int(self.xs[q + 1])
            if (b - a) * (f - e) > _CACHE_MAX_PIXELS:
                a, b, e, f = max(a, ry0), min(b, ry1), max(e, rx0), min(f, rx1)
            else:
                small.add(c)
            regions[c] = (a, b, e, f)
        with self.lock:
            have = {c: self.cache[c] for c in ids if c in self.cache}
        missing = [c for c in ids if c not in have]
        data = self.img.data
        pieces = (data[:, a:b, e:f] for a, b, e, f in map(regions.get, missing))
        # in the calling thread: the groups already run in parallel, and dask's threaded
        # scheduler would spend more time scheduling the chunks (holding the GIL) than reading
        arrays = dask.compute(*pieces, scheduler="synchronous")
        new = {c: _to_rgb(a) for c, a in zip(missing, arrays, strict=True)}
        with self.lock:
            for c in ids:
                self.refs[c] -= 1
                if self.refs[c] > 0 and c in new and c in small:
                    self.cache[c] = new[c]
                elif self.refs[c] <= 0:
                    self.cache.pop(c, None)
        for c, rgb in (have | new).items():
            a, b, e, f = regions[c]
            ya, yb, xa, xb = max(a, y0), min(b, y1), max(e, x0), min(f, x1)
            if ya < yb and xa < xb:
                window[ya - y0 : yb - y0, xa - x0 : xb - x0] = rgb[ya - a : yb - a, xa - e : xb - e]
        return window


def _to_rgb(planes) -> np.ndarray:
    """(c, y, x) planes as (y, x, 3) uint8 RGB (interleaved by OpenCV when already uint8)."""
    planes = np.asarray(planes)
    if planes.dtype == np.uint8 and planes.shape[0] in (3, 4):
        return cv2.merge(list(planes[:3]))
    return to_rgb_uint8(np.moveaxis(planes, 0, -1))


def _resample(
    window: np.ndarray,
    oy: np.ndarray,
    ox: np.ndarray,
    ky: np.ndarray,
    kx: np.ndarray,
    geo: CropGeometry,
    dst: np.ndarray,
) -> None:
    """Crops of cells whose patches start at (``oy``, ``ox``) in ``window``, written to ``dst``.

    Each pass resamples the rows of one wide image holding every cell side by side (columns
    never mix, so a crop does not depend on its neighbours in the batch): first along x on the
    transposed patches, then along y; only the small patches and the half-resampled blocks are
    transposed, and the second pass leaves every crop upright.
    """
    n, p, out = len(oy), geo.patch, geo.out
    oy, ox, ky, kx = (a.tolist() for a in (oy, ox, ky, kx))
    if geo.identity:
        for i in range(n):
            y, x = oy[i] + ky[i], ox[i] + kx[i]
            dst[i] = window[y : y + out, x : x + out]
        return
    # [x, (cell, y), c]: the transposed patches side by side, resampled along x in one call
    stacked = np.empty((p, n * p, 3), np.uint8)
    for i in range(n):
        patch = window[oy[i] : oy[i] + p, ox[i] : ox[i] + p]
        cv2.transpose(patch, dst=stacked[:, i * p : (i + 1) * p])
    along_x = cv2.resize(stacked, None, fx=1.0, fy=geo.scale, interpolation=geo.interpolation)
    # [y, (cell, x), c]: each cell's crop columns, transposed back, resampled along y
    upright = np.empty((p, n * out, 3), np.uint8)
    for i in range(n):
        block = along_x[kx[i] : kx[i] + out, i * p : (i + 1) * p]
        cv2.transpose(block, dst=upright[:, i * out : (i + 1) * out])
    along_y = cv2.resize(upright, None, fx=1.0, fy=geo.scale, interpolation=geo.interpolation)
    for i in range(n):
        dst[i] = along_y[ky[i] : ky[i] + out, i * out : (i + 1) * out]


def crop_boxes(
    centroids_xy: np.ndarray, image_mpp: float, crop_size_um: float, crop_mpp: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Where the crops of :func:`iter_crops` lie on the slide: the left and top edges of each
    crop (``(n,)`` each) and the side of every crop, in image pixels of SpatialData's frame."""
    geo = CropGeometry(crop_pixels(crop_size_um, crop_mpp), float(image_mpp) / float(crop_mpp))
    xy = np.asarray(centroids_xy, dtype=float).reshape(-1, 2) - _PIXEL_CENTRE
    # crop pixel j is centred at start + j / scale (OpenCV frame); its left edge half a crop
    # pixel before, and SpatialData's frame half a slide pixel after
    edge = _PIXEL_CENTRE - 0.5 / geo.scale
    return geo.place(xy[:, 0])[2] + edge, geo.place(xy[:, 1])[2] + edge, geo.out / geo.scale


def _rasterise(
    polygons: np.ndarray, start_x: np.ndarray, start_y: np.ndarray, geo: CropGeometry
) -> np.ndarray:
    """(n, S, S) bool masks: each polygon drawn in its crop (1/16-pixel vertex precision).

    ``cv2.fillPoly`` also fills the pixels its outline passes through, which inflates a small
    nucleus by about a quarter of its area; each ring is first shrunk towards its centre by
    half a crop pixel (in equivalent radius), which leaves the masks unbiased to within ~2 %.
    """
    out = geo.out
    masks = np.zeros((len(polygons), out, out), np.uint8)
    cells = [k for k, r in enumerate(polygons) if r is not None and len(r) >= 3]
    if cells:
        origin = np.column_stack([start_x, start_y]) + _PIXEL_CENTRE
        rings = [(polygons[k][:, :2] - origin[k]) * geo.scale for k in cells]  # crop pixels
        xy, starts, lengths, area = rings_area(rings)
        radius = np.sqrt(area / np.pi)  # equivalent radius
        xy = scale_rings(xy, starts, lengths, np.clip(1 - 0.5 / np.maximum(radius, 1e-9), 0, 1))
        pts = np.round(xy * 16).astype(np.int32)
        bounds = np.append(starts, len(xy)).tolist()
        for j, k in enumerate(cells):
            cv2.fillPoly(masks[k], [pts[bounds[j] : bounds[j + 1]]], 1, shift=4)
    return masks.view(bool)


def slide_channel_stats(
    img: xr.DataArray,
    *,
    points_xy: np.ndarray | None = None,
    max_pixels: int = 4_000_000,
    tissue_od: float = TISSUE_OD,
    seed: int = 0,
) -> dict:
    """Per-channel mean and standard deviation of a slide's tissue pixels (RGB in [0, 1]).

    Reads about ``max_pixels`` pixels (at least one block): blocks of the full resolution (a
    fixed grid of 512-px squares) sampled over the slide, preferring those holding ``points_xy`` (e.g. the
    nucleus centroids, so the sample lies on the tissue). The same pixels are read whatever the
    storage (a freshly read TIFF and its pyramid, a zarr copy, an array in memory, any
    chunking), so a slide always gets the same statistics, which ``normalization="slide"``
    encoders rely on. Tissue pixels are those whose summed optical density exceeds
    ``tissue_od`` (white glass is excluded); when there are none, all pixels count.

    Parameters
    ----------
    img
        The slide's full-resolution ``(c, y, x)`` level.
    points_xy
        ``(n, 2)`` positions (full-resolution pixels) of interest; blocks are sampled with
        probability proportional to how many of them they hold.
    max_pixels
        Pixel budget (bounds time and memory): ``max_pixels`` over the mean block area blocks
        are read.
    tissue_od
        Summed optical density (log10, three channels) above which a pixel is tissue.
    seed
        Seed of the block sample (the result is deterministic).

    Returns
    -------
    dict
        ``mean`` and ``std`` (lists of 3 floats, R, G, B in [0, 1]), ``n_pixels`` (pixels
        used), ``tissue_only`` (False when no tissue was found and all pixels were used) and
        ``source`` (how many blocks were read).

    Examples
    --------
    >>> stats = slide_channel_stats(image_level0(sdata, "he"), points_xy=centroids)
    >>> stats["mean"], stats["std"]
    """
    acc = _ColourHistograms(tissue_od)
    h, w = int(img.sizes["y"]), int(img.sizes["x"])
    ys = np.append(np.arange(0, h, _STATS_BLOCK), h)
    xs = np.append(np.arange(0, w, _STATS_BLOCK), w)
    n_x = len(xs) - 1
    weight = np.ones((len(ys) - 1) * n_x)
    if points_xy is not None and len(points_xy):
        p = np.asarray(points_xy, dtype=float).reshape(-1, 2)
        iy = np.clip(np.searchsorted(ys, p[:, 1], side="right") - 1, 0, len(ys) - 2)
        ix = np.clip(np.searchsorted(xs, p[:, 0], side="right") - 1, 0, n_x - 1)
        counts = np.bincount(iy * n_x + ix, minlength=weight.size).astype(float)
        if counts.sum():
            weight = counts
    area = (np.diff(ys)[:, None] * np.diff(xs)[None, :]).ravel()
    candidates = np.flatnonzero(weight > 0)
    n_pick = int(np.clip(max_pixels // area.mean(), 1, len(candidates)))
    rng = np.random.default_rng(seed)
    prob = weight[candidates] / weight[candidates].sum()
    picked = np.sort(rng.choice(candidates, n_pick, replace=False, p=prob))
    blocks = [
        img.data[:, ys[r] : ys[r + 1], xs[q] : xs[q + 1]]
        for r, q in map(divmod, picked, [n_x] * n_pick)
    ]
    for planes in dask.compute(*blocks, scheduler="synchronous"):
        acc.add(_to_rgb(planes))
    return acc.result(f"{n_pick} of {weight.size} full-resolution blocks")


class _ColourHistograms:
    """Per-channel histograms of tissue pixels (and of all pixels, the fallback)."""

    def __init__(self, tissue_od: float):
        self.tissue_od = tissue_od
        self.counts = np.zeros((2, 3, 256))  # [tissue, all] x RGB x grey level

    def add(self, rgb: np.ndarray) -> None:
        rgb = np.ascontiguousarray(rgb)
        tissue = (total_od(rgb) > self.tissue_od).astype(np.uint8)
        for c in range(3):
            for row, mask in ((0, tissue), (1, None)):
                hist = cv2.calcHist([rgb], [c], mask, [256], [0, 256])
                self.counts[row, c] += hist.ravel()

    def result(self, source: str) -> dict:
        row = 0 if self.counts[0, 0].sum() > 0 else 1
        n = self.counts[row].sum(1)
        if n[0] == 0:
            raise ValueError("The image has no pixels to compute channel statistics from.")
        levels = np.arange(256) / 255.0
        mean = self.counts[row] @ levels / n
        std = np.sqrt(np.maximum(self.counts[row] @ levels**2 / n - mean**2, 0.0))
        return {
            "mean": [float(v) for v in mean],
            "std": [float(v) for v in std],
            "n_pixels": int(n[0]),
            "tissue_only": bool(row == 0),
            "source": source,
        }


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

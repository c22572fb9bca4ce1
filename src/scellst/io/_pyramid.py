"""Image pyramids: the resolution levels stored in a TIFF, and the multiscale image element.

A whole-slide file usually stores its own pyramid (SVS, OME-TIFF SubIFDs, NDPI, tiled TIFFs
with reduced-resolution pages). Reading those levels costs what they hold, whereas a level
computed on the fly from the full resolution decodes the whole slide each time it is read.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import xarray as xr
import zarr
from dask.base import tokenize
from spatialdata.models import Image2DModel
from spatialdata.transformations import BaseTransformation, Identity, set_transformation

from ..constants import MICRONS_CS
from ._common import rgb_uint8_factor, tiff_to_yxc, to_rgb_uint8_lazy
from ._scale import microns_scale

#: Images with a side longer than this get a multiscale (pyramid) element.
MULTISCALE_MIN_SIDE = 4096
#: The coarsest pyramid level is brought below this many pixels on its longest side.
PYRAMID_TOP_SIDE = 1000
#: Channel names of the RGB image element.
RGB = ["r", "g", "b"]


def open_tiff_levels(path: str | Path) -> list[da.Array]:
    """The resolution levels of the first series of a TIFF, finest first, as lazy (y, x, c)
    dask arrays.

    Nothing is decoded here: each level is backed by tifffile's zarr store, which reads the tiles
    a computation touches. A file without a pyramid gives one level. A level that is not a
    downsampled copy of level 0 is left out, with the ones after it (see
    :func:`consistent_levels`).
    """
    path = Path(path)
    with tifffile.TiffFile(path) as tif:
        if not tif.series:
            raise ValueError(f"{str(path)!r} holds no image.")
        axes = [level.axes for level in tif.series[0].levels]
    # one store (one file handle) for all levels: a group of arrays "0", "1", ...
    store = tifffile.imread(path, aszarr=True, series=0, multiscales=True)
    root = zarr.open_group(store, mode="r")
    token = tokenize(str(path.resolve()), path.stat().st_mtime)
    levels = []
    for i, level_axes in enumerate(axes):
        z = root[str(i)]
        # from_array, not from_zarr: spatialdata treats "from-zarr" graph keys as files of its own
        # store and fails on tifffile's store (no `.root`) when printing or saving the object
        arr = da.from_array(z, chunks=z.chunks, name=f"tiff-{token}-{i}")
        if arr.ndim != len(level_axes):
            raise ValueError(
                f"Unexpected layout of {str(path)!r}, level {i}: axes {level_axes!r}, shape "
                f"{arr.shape}."
            )
        levels.append(tiff_to_yxc(arr, level_axes, str(path)))
    return consistent_levels(levels, repr(str(path)))


def consistent_levels(levels: Sequence[da.Array], what: str = "image") -> list[da.Array]:
    """The leading levels that form a pyramid: each smaller than the previous on both axes,
    downsampling level 0 by the same factor on y and x (up to the rounding of level sizes), with
    the same channels and dtype. A warning names the first level that is not."""
    h0, w0 = levels[0].shape[:2]
    kept = [levels[0]]
    for i, level in enumerate(levels[1:], start=1):
        (h, w), (hp, wp) = level.shape[:2], kept[-1].shape[:2]
        # sizes round h0 / f and w0 / f, each by less than a pixel: compare the cross products
        same_factor = abs(h * w0 - w * h0) <= h0 + w0
        same_pixels = level.shape[2:] == levels[0].shape[2:] and level.dtype == levels[0].dtype
        if not (h < hp and w < wp and same_factor and same_pixels):
            warnings.warn(
                f"{what}: stored level {i} ({w}x{h} px, {level.shape[2:]} {level.dtype}) is not "
                f"a downsampled copy of level 0 ({w0}x{h0} px, {levels[0].shape[2:]} "
                f"{levels[0].dtype}); using levels 0-{i - 1} of the file only.",
                UserWarning,
                stacklevel=3,
            )
            break
        kept.append(level)
    return kept


def pyramid_scale_factors(
    shape_yx: tuple[int, int], min_side: int = MULTISCALE_MIN_SIDE
) -> list[int] | None:
    """Scale factors (2 each) bringing an image below :data:`PYRAMID_TOP_SIDE` px, or ``None``
    when its longest side is at most ``min_side`` (no pyramid needed)."""
    side = max(shape_yx)
    if side <= min_side:
        return None
    factors = []
    while side > PYRAMID_TOP_SIDE:
        factors.append(2)
        side //= 2
    return factors


def rgb_image_element(
    levels: da.Array | Sequence[da.Array],
    pixel_cs: str,
    mpp: float,
    chunks: int = 2048,
    what: str = "image",
) -> xr.DataArray | xr.DataTree:
    """Parse (y, x, c) arrays into a lazy uint8 RGB image element (multiscale when large).

    ``levels`` is the full-resolution image, or a file's pyramid (finest first, as from
    :func:`open_tiff_levels`). A stored pyramid becomes the element's first scales as it is;
    coarser scales are then computed from its coarsest level until one is at most
    :data:`PYRAMID_TOP_SIDE` px. A single image larger than :data:`MULTISCALE_MIN_SIDE` gets
    its pyramid computed from the full resolution.

    The element has an Identity to ``pixel_cs`` and a ``Scale`` by ``mpp`` to ``"microns"``
    (spatialdata prepends each scale's downscaling from its shape).
    """
    if not isinstance(chunks, int | np.integer) or chunks < 64:
        raise ValueError(f"`chunks` must be an integer >= 64, got {chunks!r}.")
    chunks = int(chunks)
    levels = [levels] if isinstance(levels, da.Array) else list(levels)
    # a float image's value range is judged on the full resolution, for every level alike
    factor = rgb_uint8_factor(levels[0], what)
    cyx = [
        to_rgb_uint8_lazy(level, what, factor).transpose(2, 0, 1).rechunk((3, chunks, chunks))
        for level in levels
    ]
    transformations: dict[str, BaseTransformation] = {
        pixel_cs: Identity(),
        MICRONS_CS: microns_scale(mpp),
    }
    if len(cyx) == 1:
        return _parse(cyx[0], transformations, pyramid_scale_factors(cyx[0].shape[1:]), chunks)
    more = pyramid_scale_factors(cyx[-1].shape[1:], min_side=PYRAMID_TOP_SIDE)
    if more:
        computed = _parse(cyx[-1], {pixel_cs: Identity()}, more, chunks)
        cyx += [_scale_data(computed, k) for k in range(1, len(more) + 1)]
    return multiscale_element(cyx, transformations)


def multiscale_element(
    cyx: Sequence[da.Array], transformations: dict[str, BaseTransformation]
) -> xr.DataTree:
    """A multiscale image element from (c, y, x) levels, finest first, of any sizes.

    Built as spatialdata reads a multiscale image from zarr: scale ``i`` holds level ``i`` with
    pixel-centre coordinates in level-0 pixels, and its transformations are
    ``Sequence([Scale(level-0 size / level size), t])`` for each ``t`` of ``transformations``.
    """
    h0, w0 = cyx[0].shape[1:]
    scales = {}
    for i, level in enumerate(cyx):
        h, w = level.shape[1:]
        coords = {"c": RGB, "y": _centres(h0, h), "x": _centres(w0, w)}
        image = xr.DataArray(level, name="image", dims=("c", "y", "x"), coords=coords)
        scales[f"scale{i}"] = xr.Dataset({"image": image})
    tree = xr.DataTree.from_dict(scales)
    set_transformation(tree, dict(transformations), set_all=True)
    Image2DModel().validate(tree)
    return tree


def _centres(full: int, n: int) -> np.ndarray:
    """Pixel centres of a level of ``n`` pixels spanning ``full`` level-0 pixels."""
    return np.linspace(0, full, n + 1)[:-1] + full / n / 2


def _parse(
    cyx: da.Array,
    transformations: dict[str, BaseTransformation],
    scale_factors: list[int] | None,
    chunks: int,
) -> xr.DataArray | xr.DataTree:
    return Image2DModel.parse(
        cyx,
        dims=("c", "y", "x"),
        c_coords=RGB,
        transformations=transformations,
        scale_factors=scale_factors,
        chunks=(3, chunks, chunks),
    )


def _scale_data(tree: xr.DataTree, k: int) -> da.Array:
    return next(iter(tree[f"scale{k}"].ds.data_vars.values())).data

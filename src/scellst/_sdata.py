"""Small helpers to find, read and add elements of a SpatialData object safely."""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr
from anndata import AnnData
from spatialdata import SpatialData
from spatialdata.transformations import get_transformation

from .constants import (
    SPOT_SHAPE_CIRCLE,
    SPOT_SHAPE_KEY,
    SPOT_SHAPE_SQUARE,
    UNS_KEY,
    check_key,
)


def image_key(sdata: SpatialData, key: str | None = None) -> str:
    """Return the key of the H&E image, resolving ``None`` when there is exactly one image."""
    images = list(sdata.images.keys())
    if key is not None:
        if key not in sdata.images:
            raise KeyError(
                f"No image element {key!r} in the SpatialData object; its images are {images}. "
                "Pass one of them as `image_key`."
            )
        return key
    if not images:
        raise ValueError(
            "The SpatialData object has no image element. Load the H&E slide with "
            "`sst.io.read_image`, `sst.io.read_hest` or `sst.io.read_visium`, or add it with "
            "`spatialdata.models.Image2DModel.parse`."
        )
    if len(images) > 1:
        # prefer the full-resolution image when a reader stored several (Visium: full/hires/lowres)
        full = [k for k in images if k.endswith("full_image")]
        if len(full) == 1:
            return full[0]
        raise ValueError(f"Several images {images}: pass `image_key` to choose the H&E slide.")
    return images[0]


def cells_image_key(sdata: SpatialData, cells: AnnData, key: str | None = None) -> str:
    """The image to read for these cells: ``key``, else the one they were segmented on
    (recorded by :func:`scellst.pp.segment`), else the only image of ``sdata``."""
    if key is None:
        key = cells.uns.get(UNS_KEY, {}).get("segmentation", {}).get("image_key")
        key = key if key in sdata.images else None
    return image_key(sdata, key)


def image_level0(sdata: SpatialData, key: str) -> xr.DataArray:
    """The full-resolution level of an image element as a (c, y, x) DataArray (lazy)."""
    return image_levels(sdata, key)[0]


def image_levels(sdata: SpatialData, key: str) -> list[xr.DataArray]:
    """All levels of an image, finest first (a single-scale image gives a one-item list)."""
    element = sdata.images[key]
    if isinstance(element, xr.DataTree):
        return [
            next(iter(element[k].ds.data_vars.values()))
            for k in sorted(element.children, key=lambda s: int(s.removeprefix("scale")))
        ]
    return [element]


def image_shape_yx(sdata: SpatialData, key: str) -> tuple[int, int]:
    img = image_level0(sdata, key)
    return int(img.sizes["y"]), int(img.sizes["x"])


def read_rgb(img: xr.DataArray, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    """Read a window of a (c, y, x) image as a (y, x, 3) uint8 RGB array."""
    window = img.data[:, y0:y1, x0:x1]
    if hasattr(window, "compute"):
        # in the calling thread: tiles already run in parallel, and dask's threaded scheduler
        # would spend more time scheduling a window's chunks (holding the GIL) than decoding them
        window = window.compute(scheduler="synchronous")
    window = np.asarray(window)
    # contiguous (y, x, c): OpenCV silently copies non-contiguous inputs on every call
    return np.ascontiguousarray(to_rgb_uint8(np.moveaxis(window, 0, -1)))


def to_rgb_uint8(rgb: np.ndarray) -> np.ndarray:
    """Bring an (y, x, c) H&E array to uint8 RGB, dropping alpha and rescaling other dtypes."""
    if rgb.ndim != 3 or rgb.shape[-1] not in (3, 4):
        raise ValueError(
            f"Expected an RGB(A) H&E image with 3 or 4 channels, got shape {rgb.shape}. "
            "Fluorescence or single-channel images are not supported by this step."
        )
    rgb = rgb[..., :3]
    if rgb.dtype == np.uint8:
        return rgb
    if np.issubdtype(rgb.dtype, np.floating):
        scale = 255.0 if float(np.nanmax(rgb, initial=0)) <= 1.0 else 1.0
        return np.clip(rgb * scale, 0, 255).astype(np.uint8)
    info = np.iinfo(rgb.dtype)
    return (rgb.astype(np.float32) * (255.0 / info.max)).round().astype(np.uint8)


def check_free(sdata: SpatialData, keys: list[str], overwrite: bool) -> None:
    """Fail before any work if an output key is invalid or taken (and ``overwrite`` is False)."""
    for key in keys:
        check_key(key, "key_added")
        if key in sdata and not overwrite:
            raise KeyError(
                f"The SpatialData object already has an element named {key!r}. Pass "
                "`overwrite=True` to replace it, or choose another name with `key_added`."
            )


def add_element(sdata: SpatialData, key: str, element: Any, overwrite: bool = False) -> None:
    """Add an element/table under ``key``, refusing to replace existing data unless asked to."""
    check_free(sdata, [key], overwrite)
    if key in sdata:
        del sdata[key]
    sdata[key] = element


def transformations_of(sdata: SpatialData, key: str) -> dict:
    """All coordinate transformations of an element (copied, so they can be reused)."""
    return dict(get_transformation(sdata[key], get_all=True))


def element_to_image_matrix(sdata: SpatialData, element_key: str, image: str) -> np.ndarray:
    """3x3 affine mapping an element's intrinsic (x, y) onto the image's level-0 pixels (x, y).

    Uses a coordinate system both elements share, so it works whatever the systems are called
    (``global``, a Visium dataset id, ``microns``).
    """
    t_el = get_transformation(sdata[element_key], get_all=True)
    t_im = get_transformation(sdata[image], get_all=True)
    shared = [cs for cs in t_el if cs in t_im]
    if not shared:
        raise ValueError(
            f"Element {element_key!r} shares no coordinate system with image {image!r} "
            f"({sorted(t_el)} vs {sorted(t_im)}), so it cannot be placed on the image. Add a "
            "transformation to one of the image's coordinate systems (spatialdata.transformations"
            ".set_transformation)."
        )
    cs = shared[0]
    axes = ("x", "y")
    m_el = t_el[cs].to_affine_matrix(input_axes=axes, output_axes=axes)
    m_im = t_im[cs].to_affine_matrix(input_axes=axes, output_axes=axes)
    return np.linalg.inv(m_im) @ m_el


def apply_matrix(matrix: np.ndarray, xy: np.ndarray) -> np.ndarray:
    xy = np.asarray(xy, dtype=float)
    return xy @ matrix[:2, :2].T + matrix[:2, 2]


def spots_key(sdata: SpatialData, key: str | None = None) -> str:
    """Return the key of the spots: circles (a shapes element with a ``radius`` column) or
    square bins (Visium HD: polygons whose table records ``spot_shape="square"``)."""
    found = [k for k in sdata.shapes if spot_shape(sdata, k) is not None]
    if key is not None:
        if key not in sdata.shapes:
            raise KeyError(
                f"No shapes element {key!r}; the shapes are {list(sdata.shapes)}. Pass the spots "
                "(circles or Visium HD square bins) as `spots_key`."
            )
        if spot_shape(sdata, key) is None:
            raise ValueError(
                f"Shapes {key!r} are not spots: neither circles (no 'radius' column) nor square "
                f"bins (no table with uns[{UNS_KEY!r}][{SPOT_SHAPE_KEY!r}] = "
                f"{SPOT_SHAPE_SQUARE!r}). Spots are circles, ShapesModel.parse(centres, "
                "geometry=0, radius=...), or the bins of `sst.io.read_visium_hd`."
            )
        return key
    if not found:
        raise ValueError(
            "The SpatialData object has no spots: no circles (a shapes element with a 'radius' "
            "column) and no square bins (Visium HD). Read the data with `sst.io.read_hest`/"
            "`sst.io.read_visium`/`sst.io.read_visium_hd`, or pass `spots_key`."
        )
    if len(found) > 1:
        raise ValueError(f"Several spot elements {found}: pass `spots_key` to choose one.")
    return found[0]


def spot_shape(sdata: SpatialData, key: str) -> str | None:
    """``"circle"`` or ``"square"`` for spots (circles with a ``radius``, or polygons whose table
    says ``spot_shape="square"``), None for other shapes."""
    if "radius" in sdata.shapes[key].columns:
        return SPOT_SHAPE_CIRCLE
    for table in sdata.tables.values():
        attrs = table.uns.get("spatialdata_attrs", {})
        region = attrs.get("region", [])
        region = [region] if isinstance(region, str) else list(region)
        if key in region and table.uns.get(UNS_KEY, {}).get(SPOT_SHAPE_KEY) == SPOT_SHAPE_SQUARE:
            return SPOT_SHAPE_SQUARE
    return None


def table_for_element(sdata: SpatialData, element_key: str) -> str:
    """Key of the one table that annotates ``element_key`` (through its ``region``)."""
    found = []
    for name, table in sdata.tables.items():
        attrs = table.uns.get("spatialdata_attrs", {})
        region = attrs.get("region", [])
        region = [region] if isinstance(region, str) else list(region)
        if element_key in region:
            found.append(name)
    if not found:
        raise ValueError(
            f"No table annotates element {element_key!r}: a table must be linked to it with "
            f"TableModel.parse(adata, region={element_key!r}, region_key=..., instance_key=...). "
            "Link your table, or read the data with an `sst.io` reader."
        )
    if len(found) > 1:
        raise ValueError(f"Several tables {found} annotate {element_key!r}; pass the table key.")
    return found[0]


def table_link(table) -> tuple[str, str]:
    """(region_key, instance_key) of a table parsed with TableModel."""
    attrs = table.uns.get("spatialdata_attrs")
    if not attrs:
        raise ValueError(
            "Table is not linked to any shapes: parse it with TableModel.parse(adata, region=..., "
            "region_key=..., instance_key=...)."
        )
    return attrs["region_key"], attrs["instance_key"]

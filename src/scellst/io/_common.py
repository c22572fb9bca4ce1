"""Shared bits of the readers: TIFF axes, RGB normalisation, pixel size (image elements and
pyramids: :mod:`._pyramid`)."""

from __future__ import annotations

import math
import re
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile

#: Pixel sizes outside this range (µm/px) do not come from a microscope scan; ignore them.
PLAUSIBLE_MPP = (0.01, 20.0)

RGB_REQUIRED = (
    "scellst needs an RGB H&E (brightfield) image with 3 colour channels (an alpha channel is "
    "dropped)."
)


def resolve_path(path: str | Path, what: str) -> Path:
    """Expand ``path`` and raise a clear FileNotFoundError when it is missing."""
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{what} not found: expected {str(p)!r}.")
    return p


# --- lazy TIFF ---------------------------------------------------------------------------------


def tiff_to_yxc(arr: da.Array, axes: str, what: str) -> da.Array:
    """A TIFF array with tifffile's ``axes`` as (y, x, c); other axes must have length 1."""
    axes = axes.upper()
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"{what}: no Y/X axes in {axes!r} (shape {arr.shape}). {RGB_REQUIRED}")
    channel_axes = [i for i, a in enumerate(axes) if a in "SC" and arr.shape[i] > 1]
    if len(channel_axes) > 1:
        raise ValueError(f"{what}: several channel axes in {axes!r} (shape {arr.shape}).")
    index: list[Any] = []
    kept: list[str] = []
    for i, a in enumerate(axes):
        if a in "YX" or i in channel_axes:
            index.append(slice(None))
            kept.append(a if a in "YX" else "C")
        elif arr.shape[i] == 1:
            index.append(0)
        else:
            raise ValueError(
                f"{what}: axis {a!r} of {axes!r} has length {arr.shape[i]} (shape {arr.shape}); "
                f"only single 2-D images are supported. {RGB_REQUIRED}"
            )
    arr = arr[tuple(index)]
    if "C" not in kept:
        raise ValueError(
            f"{what} is a single-channel (grayscale) image, shape {arr.shape}. " + RGB_REQUIRED
        )
    return arr.transpose([kept.index("Y"), kept.index("X"), kept.index("C")])


# --- arrays ----------------------------------------------------------------------------------


def array_to_yxc(data: Any) -> da.Array:
    """A numpy/dask array (y, x, c) — or unambiguously (c, y, x) — as a lazy (y, x, c) dask array."""
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data))
    if arr.ndim == 2:
        raise ValueError(f"Got a 2-D (grayscale) array of shape {arr.shape}. " + RGB_REQUIRED)
    if arr.ndim != 3:
        raise ValueError(f"Expected a (y, x, 3) array, got shape {arr.shape}. " + RGB_REQUIRED)
    if arr.shape[-1] not in (3, 4) and arr.shape[0] in (3, 4):
        arr = arr.transpose(1, 2, 0)  # channels first
    return arr


def rgb_uint8_factor(yxc: da.Array, what: str = "image") -> float:
    """Check that a lazy (y, x, c) array is RGB(A) and return what its values are multiplied by
    to become uint8: 1 for uint8, ``255 / dtype max`` for other unsigned integers (uint16 ->
    uint8); for floats 255 when their maximum is <= 1 (read as [0, 1]), else 1 ([0, 255])."""
    n_channels = yxc.shape[-1]
    if n_channels not in (3, 4):
        raise ValueError(f"{what} has {n_channels} channels (shape {yxc.shape}). " + RGB_REQUIRED)
    dtype = yxc.dtype
    if dtype == np.uint8:
        return 1.0
    if np.issubdtype(dtype, np.unsignedinteger):
        return 255.0 / np.iinfo(dtype).max
    if np.issubdtype(dtype, np.floating):
        top = float(da.nanmax(yxc[..., :3]).compute())
        return 255.0 if top <= 1.0 else 1.0
    raise ValueError(
        f"{what} has unsupported dtype {dtype}; expected uint8 (or uint16/float) RGB values."
    )


def to_rgb_uint8_lazy(yxc: da.Array, what: str = "image", factor: float | None = None) -> da.Array:
    """Drop alpha and bring a lazy (y, x, c) array to uint8 RGB, multiplying its values by
    ``factor`` (by default :func:`rgb_uint8_factor`, which computes a float image's maximum)."""
    if factor is None:
        factor = rgb_uint8_factor(yxc, what)
    rgb = yxc[..., :3]
    if rgb.dtype == np.uint8:
        return rgb
    if np.issubdtype(rgb.dtype, np.floating):
        return da.clip(da.nan_to_num(rgb) * factor, 0, 255).round().astype(np.uint8)
    return (rgb.astype(np.float32) * factor).round().astype(np.uint8)


# --- pixel size from file metadata --------------------------------------------------------------

_SVS_MPP = re.compile(r"\bMPP\s*=\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)")
_OME_UNITS_UM = {
    "µm": 1.0,
    "um": 1.0,
    "μm": 1.0,  # greek mu
    "micron": 1.0,
    "nm": 1e-3,
    "mm": 1e3,
    "cm": 1e4,
    "m": 1e6,
    "Å": 1e-4,
}
# ResolutionUnit: 2 inch, 3 centimetre; 4/5 are tifffile's millimetre/micrometre extensions
_RESUNIT_UM = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}


def tiff_microns_per_pixel(path: str | Path) -> tuple[float | None, str]:
    """Pixel size of level 0 of a TIFF from its metadata.

    Looks, in order, at the Aperio SVS ``ImageDescription`` (``MPP = ...``), the OME-XML
    ``PhysicalSizeX/Y`` and the ``XResolution``/``ResolutionUnit`` tags. Returns ``(mpp, note)``
    where ``note`` says where the value came from, or why no value was usable (``mpp`` is None).
    """
    notes = []
    with tifffile.TiffFile(path) as tif:
        page = tif.series[0].keyframe if tif.series else tif.pages.first
        description = page.description or ""
        if tif.is_svs or description.startswith("Aperio"):
            m = _SVS_MPP.search(description)
            if m:
                mpp = float(m.group(1))
                if _plausible(mpp):
                    return mpp, "Aperio SVS ImageDescription (MPP)"
                notes.append(f"SVS MPP = {mpp} is implausible")
        if tif.is_ome and tif.ome_metadata:
            mpp, note = _ome_mpp(tif.ome_metadata)
            if mpp is not None:
                return mpp, note
            notes.append(note)
        mpp, note = _resolution_tag_mpp(page)
        if mpp is not None:
            return mpp, note
        notes.append(note)
    return None, "; ".join(n for n in notes if n)


def _plausible(mpp: float) -> bool:
    return math.isfinite(mpp) and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1]


def _ome_mpp(xml: str) -> tuple[float | None, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, "unparseable OME-XML"
    pixels = next((el for el in root.iter() if el.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None or pixels.get("PhysicalSizeX") is None:
        return None, "OME-XML without PhysicalSizeX"
    sizes = []
    for ax in ("X", "Y"):
        value = pixels.get(f"PhysicalSize{ax}")
        if value is None:
            continue
        unit = pixels.get(f"PhysicalSize{ax}Unit", "µm")
        if unit not in _OME_UNITS_UM:
            return None, f"OME-XML PhysicalSize{ax} in unsupported unit {unit!r}"
        sizes.append(float(value) * _OME_UNITS_UM[unit])
    if len(sizes) == 2 and not np.isclose(sizes[0], sizes[1], rtol=0.01):
        warnings.warn(
            f"Non-square pixels in the OME-XML ({sizes[0]:.4g} x {sizes[1]:.4g} µm); using the "
            "X size.",
            UserWarning,
            stacklevel=3,
        )
    if not _plausible(sizes[0]):
        return None, f"OME-XML PhysicalSizeX = {sizes[0]} µm is implausible"
    return sizes[0], "OME-XML PhysicalSizeX"


def _resolution_tag_mpp(page: Any) -> tuple[float | None, str]:
    tags = page.tags
    if "XResolution" not in tags:
        return None, ""
    unit = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF default
    num, den = tags["XResolution"].value
    res = num / den if den else 0.0
    if unit not in _RESUNIT_UM:
        return None, "XResolution without a physical unit (ResolutionUnit NONE)"
    if res <= 0 or (unit == 2 and math.isclose(res, 72.0)) or math.isclose(res, 1.0):
        return None, f"default XResolution {res:g} (not a physical pixel size)"
    mpp = _RESUNIT_UM[unit] / res
    if "YResolution" in tags:
        ynum, yden = tags["YResolution"].value
        yres = ynum / yden if yden else 0.0
        if yres > 0 and not math.isclose(res, yres, rel_tol=0.01):
            warnings.warn(
                f"Non-square pixels in the TIFF resolution tags ({res:g} vs {yres:g}); using "
                "XResolution.",
                UserWarning,
                stacklevel=3,
            )
    if not _plausible(mpp):
        return None, f"XResolution gives {mpp:.4g} µm/px, which is not a microscope scan"
    return mpp, "TIFF XResolution/ResolutionUnit"


def check_mpp(mpp: Any) -> float:
    value = float(mpp)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"microns_per_pixel must be a positive number, got {mpp!r}.")
    return value


def sanitize_name(name: str) -> str:
    """``name`` with every character outside ``[A-Za-z0-9_.-]`` replaced by ``_``."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name.strip())


def is_tiff(path: Path) -> bool:
    """Whether ``path`` is a file tifffile can open."""
    try:
        with tifffile.TiffFile(path):
            return True
    except (tifffile.TiffFileError, OSError):
        return False

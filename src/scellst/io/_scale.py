"""The physical scale of images: one documented place where microns per pixel live.

scellst records the scale as a ``Scale([mpp, mpp], axes=("x", "y"))`` transformation from the
element's pixels to the ``"microns"`` coordinate system. It survives a zarr round trip and does not
depend on what the other coordinate systems are called.
"""

from __future__ import annotations

import numpy as np
from spatialdata import SpatialData
from spatialdata.transformations import (
    Scale,
    Sequence,
    get_transformation,
    set_transformation,
)

from .._sdata import image_key as _resolve_image_key
from ..constants import GLOBAL_CS, MICRONS_CS


def microns_per_pixel(sdata: SpatialData, image_key: str | None = None) -> float:
    """Microns per pixel of the full-resolution level of an image.

    Parameters
    ----------
    sdata
        The SpatialData object.
    image_key
        Image element; may be omitted when there is a single image.

    Returns
    -------
    float
        The isotropic pixel size in µm.

    Raises
    ------
    ValueError
        If the image has no transformation to the ``"microns"`` coordinate system, or if its
        pixels are not square.

    Examples
    --------
    >>> sdata = sst.datasets.synthetic(seed=0)
    >>> sst.io.microns_per_pixel(sdata)
    0.5
    """
    key = _resolve_image_key(sdata, image_key)
    return element_microns_per_unit(sdata, key)


def element_microns_per_unit(sdata: SpatialData, key: str) -> float:
    """Microns per intrinsic unit of any element (image pixels, shape coordinates)."""
    transforms = get_transformation(sdata[key], get_all=True)
    if MICRONS_CS not in transforms:
        raise ValueError(
            f"Element {key!r} has no physical scale: it lacks a transformation to the "
            f"{MICRONS_CS!r} coordinate system. Set it with "
            f"`sst.io.set_microns_per_pixel(sdata, {key!r}, <µm per pixel>)` (the scanner's MPP, "
            "e.g. 0.25 at 40x, 0.5 at 20x)."
        )
    m = transforms[MICRONS_CS].to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y"))
    sx, sy = np.linalg.norm(m[:2, 0]), np.linalg.norm(m[:2, 1])
    if not np.isclose(sx, sy, rtol=1e-3):
        raise ValueError(
            f"Element {key!r} has non-square pixels ({sx:.4g} x {sy:.4g} µm); scellst needs an "
            "isotropic scale. Resample the image or fix its 'microns' transformation."
        )
    return float(sx)


def set_microns_per_pixel(
    sdata: SpatialData, element_key: str, microns_per_pixel: float, *, overwrite: bool = False
) -> None:
    """Record the physical pixel size of an element as a ``Scale`` to ``"microns"``.

    Parameters
    ----------
    sdata
        The SpatialData object (modified in place).
    element_key
        Image, labels or shapes element whose intrinsic units are pixels of the H&E.
    microns_per_pixel
        Pixel size in µm (positive, finite).
    overwrite
        Replace an existing, different scale. Without it a conflicting scale raises.

    Returns
    -------
    None
        Sets the element's transformation to the ``"microns"`` coordinate system.

    Examples
    --------
    >>> sdata = sst.io.read_image("slide.tif")  # a TIFF without a resolution tag
    >>> sst.io.set_microns_per_pixel(sdata, "he", 0.25)
    >>> sst.io.microns_per_pixel(sdata, "he")
    0.25
    """
    mpp = float(microns_per_pixel)
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"microns_per_pixel must be a positive number, got {microns_per_pixel!r}.")
    element = sdata[element_key]
    existing = get_transformation(element, get_all=True)
    if MICRONS_CS in existing and not overwrite:
        current = element_microns_per_unit(sdata, element_key)
        if not np.isclose(current, mpp, rtol=1e-6):
            raise ValueError(
                f"Element {element_key!r} already has {current:.6g} µm/px; pass overwrite=True to "
                f"set {mpp:.6g}."
            )
        return
    set_transformation(element, microns_scale(mpp), to_coordinate_system=MICRONS_CS)


def add_global_frame(sdata: SpatialData, pixel_cs: str) -> None:
    """Give every element that maps to the pixel frame ``pixel_cs`` the same transformation to
    :data:`~scellst.constants.GLOBAL_CS` (``"global"``), unless it has one already."""
    for _kind, _name, element in sdata.gen_spatial_elements():
        transforms = get_transformation(element, get_all=True)
        if pixel_cs in transforms and GLOBAL_CS not in transforms:
            set_transformation(element, transforms[pixel_cs], to_coordinate_system=GLOBAL_CS)


def microns_scale(mpp: float) -> Scale:
    return Scale([mpp, mpp], axes=("x", "y"))


def compose_to_microns(pixel_transform, mpp: float) -> Sequence:
    """Transformation element -> microns for an element living in an image's pixel frame."""
    return Sequence([pixel_transform, microns_scale(mpp)])

"""Read an H&E-only slide (no transcriptomics), e.g. for inference."""

from __future__ import annotations

import warnings
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
from spatialdata import SpatialData

from ..constants import GLOBAL_CS, IMAGE_KEY, UNS_KEY, check_key
from ._common import array_to_yxc, check_mpp, resolve_path, tiff_microns_per_pixel
from ._pyramid import open_tiff_levels, rgb_image_element

#: Pixel coordinate system of an H&E-only slide (there is no dataset id to name it after).
PIXEL_CS = GLOBAL_CS
#: Relative disagreement between a given and a file's pixel size that triggers a warning.
MPP_TOLERANCE = 0.05


def read_image(
    path_or_array: str | Path | np.ndarray | da.Array,
    microns_per_pixel: float | None = None,
    *,
    image_key: str = IMAGE_KEY,
    chunks: int = 512,
) -> SpatialData:
    """Read an H&E slide without transcriptomics into a new SpatialData object.

    The image is read lazily (only the tiles a computation touches are decoded) as uint8 RGB.
    A file's stored pyramid levels become the first scales of a multiscale image (coarser ones
    are computed from the coarsest stored level); an image without a pyramid gets one computed
    from the full resolution when it is larger than 4096 px on a side. Its physical scale is
    recorded as a ``Scale`` to the ``"microns"`` coordinate system; the pixel coordinate system is
    ``"global"``.

    Parameters
    ----------
    path_or_array
        A TIFF, BigTIFF, OME-TIFF or Aperio SVS file (the first series, with its pyramid), or an
        RGB(A) array of shape ``(y, x, 3|4)`` (numpy or dask). uint16 images are scaled to uint8
        and an alpha channel is dropped.
    microns_per_pixel
        Pixel size in µm. When omitted it is read from the file's metadata: Aperio ``MPP``,
        OME-XML ``PhysicalSizeX`` or the TIFF ``XResolution``/``ResolutionUnit`` tags (the
        meaningless defaults, 72 dpi or no unit, are ignored). When given, it wins over the file;
        a warning says when the two differ by more than 5%.
    image_key
        Name of the image element.
    chunks
        Chunk size (pixels, y and x) of the dask array of each level.

    Returns
    -------
    SpatialData
        A SpatialData object with the single image element ``image_key`` (coordinate systems
        ``"global"`` in pixels and ``"microns"``).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If no pixel size is given nor found in the file, if the image is not RGB (grayscale,
        fluorescence with other than 3 channels, stacks), or if the file is not a TIFF.

    Examples
    --------
    >>> sdata = sst.io.read_image("slide.svs")  # MPP from the Aperio metadata
    >>> sdata = sst.io.read_image("region.tif", microns_per_pixel=0.25)  # 40x scan
    >>> sst.io.microns_per_pixel(sdata)
    0.25
    """
    check_key(image_key, "image_key")
    given = None if microns_per_pixel is None else check_mpp(microns_per_pixel)
    if isinstance(path_or_array, str | Path):
        path = resolve_path(path_or_array, "Image file")
        what = repr(str(path))
        try:
            levels = open_tiff_levels(path)
            found, source = tiff_microns_per_pixel(path)
        except tifffile.TiffFileError as e:
            raise ValueError(
                f"Cannot read {what} as a TIFF ({e}). `sst.io.read_image` reads TIFF, OME-TIFF and "
                "SVS files; for another format load it into a (y, x, 3) uint8 array (e.g. with "
                "`imageio.v3.imread`) and pass the array with `microns_per_pixel=`."
            ) from e
        origin = str(path)
    else:
        what = "The image array"
        levels = [array_to_yxc(path_or_array)]
        found, source = None, "arrays carry no pixel size"
        origin = "array"

    if given is not None:
        mpp = given
        if found is not None and abs(found - given) > MPP_TOLERANCE * found:
            warnings.warn(
                f"microns_per_pixel={given:g} differs from the {found:.4g} µm/px in the file's "
                f"metadata ({source}); using {given:g}.",
                UserWarning,
                stacklevel=2,
            )
    elif found is not None:
        mpp = found
    else:
        raise ValueError(
            f"No pixel size found for {what} ({source or 'no resolution metadata'}). Pass "
            "`microns_per_pixel=` with the scanner's resolution (e.g. 0.25 µm/px at 40x, 0.5 at "
            "20x)."
        )

    image = rgb_image_element(levels, PIXEL_CS, mpp, chunks=chunks, what=what)
    sdata = SpatialData(images={image_key: image})
    sdata.attrs[UNS_KEY] = {
        "reader": "read_image",
        "source": origin,
        "microns_per_pixel": float(mpp),
        "microns_per_pixel_source": "argument" if given is not None else source,
    }
    return sdata

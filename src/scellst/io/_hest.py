"""Read one sample of a HEST-1k style folder (H&E whole-slide image + spot transcriptomics)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
from spatialdata import SpatialData
from spatialdata.models import ShapesModel, TableModel
from spatialdata.transformations import Identity

from ..constants import (
    IMAGE_KEY,
    MICRONS_CS,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_ID,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    UNS_KEY,
    check_key,
)
from ._common import check_mpp
from ._pyramid import open_tiff_levels, rgb_image_element
from ._scale import add_global_frame, microns_scale

_TIFF_SUFFIXES = (".tif", ".tiff", ".btf")


def read_hest(
    root: str | Path,
    sample_id: str,
    *,
    image_key: str = IMAGE_KEY,
    chunks: int = 512,
    microns_per_pixel: float | None = None,
) -> SpatialData:
    """Read one sample of a HEST-1k style dataset into a new SpatialData object.

    The folder follows the HEST-1k layout::

        root/st/<sample_id>.h5ad        spots x genes raw counts, obsm["spatial"] = (x, y) px
        root/wsis/<sample_id>.tif       the H&E whole-slide image (pyramidal tiled TIFF)
        root/metadata/<sample_id>.json  pixel_size_um_estimated, spot_diameter (µm), ...

    The slide is read lazily (tiles are decoded only when a computation touches them) as uint8
    RGB, as a multiscale image whose first scales are the pyramid levels stored in the file (coarser
    ones are computed from the coarsest stored level); a file without a pyramid gets one computed
    from the full resolution when it is larger than 4096 px on a side.

    Parameters
    ----------
    root
        The dataset folder holding ``st/``, ``wsis/`` and ``metadata/``.
    sample_id
        The sample to read (file stem, e.g. ``"TENX95"``). It also names the pixel coordinate
        system, as spatialdata-io does for Visium.
    image_key
        Name of the image element.
    chunks
        Chunk size (pixels, y and x) of the image's dask arrays.
    microns_per_pixel
        Pixel size of the slide in µm, overriding ``pixel_size_um_estimated`` of the metadata.

    Returns
    -------
    SpatialData
        A SpatialData object with

        - image ``image_key``: the H&E, (c, y, x) uint8 with channels ``r, g, b``;
        - shapes ``"spots"``: one circle per spot (centre and radius in full-resolution pixels),
          indexed by the integers ``0..n-1``;
        - table ``"spots_table"``: the sample's AnnData (``X`` raw counts, spot names as obs names),
          annotating ``"spots"`` through ``obs["region"]`` and ``obs["spot_id"]``; ``uns["scellst"]``
          records the reader, sample id, microns per pixel and spot diameter.

        Every element has an Identity to the coordinate system ``sample_id`` (full-resolution
        pixels), the same Identity to ``"global"`` (the pixel frame scverse tools assume, e.g.
        spatialdata-plot above 10,000 shapes) and a ``Scale`` to ``"microns"``.

    Raises
    ------
    FileNotFoundError
        If ``root`` or one of the sample's files is missing.
    ValueError
        If the metadata has no pixel size (pass ``microns_per_pixel=``) or no spot diameter, or if
        the count table has no spot coordinates.

    Examples
    --------
    >>> sdata = sst.io.read_hest("hest_data", "TENX95")
    >>> sst.io.microns_per_pixel(sdata)
    0.2738...
    >>> sdata["spots_table"]
    AnnData object with n_obs × n_vars = ...
    """
    check_key(image_key, "image_key")
    if not isinstance(sample_id, str) or not sample_id:
        raise ValueError(f"`sample_id` must be a non-empty string, got {sample_id!r}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"HEST folder not found: expected a directory {str(root)!r} holding st/, wsis/ and "
            "metadata/."
        )
    st_path, wsi_path, meta_path = _sample_files(root, sample_id)

    meta = json.loads(meta_path.read_text())
    adata = ad.read_h5ad(st_path)

    if microns_per_pixel is not None:
        mpp = check_mpp(microns_per_pixel)
    else:
        raw = meta.get("pixel_size_um_estimated")
        if raw is None or not np.isfinite(float(raw)) or float(raw) <= 0:
            raise ValueError(
                f"{str(meta_path)!r} has no usable 'pixel_size_um_estimated' (got {raw!r}). Pass "
                "the slide's pixel size with `microns_per_pixel=` (µm per pixel, e.g. 0.25 at 40x, "
                "0.5 at 20x)."
            )
        mpp = float(raw)
    spot_diameter_um = _spot_diameter_um(meta, adata, mpp, meta_path)

    levels = open_tiff_levels(wsi_path)
    height, width = int(levels[0].shape[0]), int(levels[0].shape[1])
    transformations = {sample_id: Identity(), MICRONS_CS: microns_scale(mpp)}
    image = rgb_image_element(levels, sample_id, mpp, chunks=chunks, what=repr(str(wsi_path)))

    xy = _spot_centres(adata, st_path)
    _check_spots_on_image(xy, width, height, wsi_path)
    n = adata.n_obs
    radius_px = spot_diameter_um / 2.0 / mpp
    spots = ShapesModel.parse(
        xy,
        geometry=0,
        radius=np.full(n, radius_px),
        index=pd.RangeIndex(n),
        transformations=dict(transformations),
    )

    table = _spots_table(adata, xy)
    table.uns[UNS_KEY] = {
        "reader": "read_hest",
        "sample_id": sample_id,
        "microns_per_pixel": mpp,
        "spot_diameter_um": spot_diameter_um,
    }
    table = TableModel.parse(table, region=SPOTS_KEY, region_key=REGION_KEY, instance_key=SPOT_ID)
    sdata = SpatialData(
        images={image_key: image},
        shapes={SPOTS_KEY: spots},
        tables={SPOTS_TABLE_KEY: table},
    )
    add_global_frame(sdata, sample_id)
    return sdata


def _sample_files(root: Path, sample_id: str) -> tuple[Path, Path, Path]:
    st_path = root / "st" / f"{sample_id}.h5ad"
    meta_path = root / "metadata" / f"{sample_id}.json"
    wsi_path = root / "wsis" / f"{sample_id}.tif"
    if not wsi_path.exists():  # accept .tiff / .btf too
        alternatives = [root / "wsis" / f"{sample_id}{s}" for s in _TIFF_SUFFIXES]
        wsi_path = next((p for p in alternatives if p.exists()), wsi_path)
    missing = [p for p in (st_path, wsi_path, meta_path) if not p.exists()]
    if missing:
        available = sorted(p.stem for p in (root / "st").glob("*.h5ad"))
        hint = f" Samples with counts in {str(root / 'st')!r}: {available}." if available else ""
        raise FileNotFoundError(
            f"Sample {sample_id!r} is incomplete in {str(root)!r}: missing "
            f"{', '.join(repr(str(p)) for p in missing)}.{hint}"
        )
    return st_path, wsi_path, meta_path


def _spot_diameter_um(meta: dict, adata: ad.AnnData, mpp: float, meta_path: Path) -> float:
    value = meta.get("spot_diameter")
    if value is not None and np.isfinite(float(value)) and float(value) > 0:
        return float(value)
    # fall back on the Visium-style scalefactors stored in the AnnData
    for lib in (adata.uns.get("spatial") or {}).values():
        px = (lib.get("scalefactors") or {}).get("spot_diameter_fullres")
        if px is not None and float(px) > 0:
            return float(px) * mpp
    raise ValueError(
        f"{str(meta_path)!r} has no 'spot_diameter' (µm) and the AnnData has no "
        "uns['spatial'][<library>]['scalefactors']['spot_diameter_fullres']: cannot size the "
        "spots. Add 'spot_diameter' to the metadata (55 for Visium, 100 for legacy ST)."
    )


def _spot_centres(adata: ad.AnnData, st_path: Path) -> np.ndarray:
    if SPATIAL_OBSM in adata.obsm:
        xy = np.asarray(adata.obsm[SPATIAL_OBSM], dtype=float)[:, :2]
    elif {"pxl_col_in_fullres", "pxl_row_in_fullres"} <= set(adata.obs.columns):
        xy = adata.obs[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(dtype=float)
    else:
        raise ValueError(
            f"{str(st_path)!r} has no spot coordinates: expected obsm[{SPATIAL_OBSM!r}] with (x, y) "
            "spot centres in full-resolution pixels."
        )
    if not np.isfinite(xy).all():
        raise ValueError(f"{str(st_path)!r}: obsm[{SPATIAL_OBSM!r}] has missing coordinates.")
    return xy


def _check_spots_on_image(xy: np.ndarray, width: int, height: int, wsi_path: Path) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if outside.mean() > 0.05:
        warnings.warn(
            f"{outside.sum()} of {len(xy)} spot centres fall outside the {width}x{height} px "
            f"image {str(wsi_path)!r}: the coordinates may not be in full-resolution pixels.",
            UserWarning,
            stacklevel=3,
        )


def _spots_table(adata: ad.AnnData, xy: np.ndarray) -> ad.AnnData:
    adata.var_names_make_unique()
    x: Any = adata.X
    if x is None:
        raise ValueError("The count table has no X (raw counts).")
    if not sp.issparse(x):
        x = sp.csr_matrix(np.asarray(x))
    elif not isinstance(x, sp.csr_matrix | sp.csr_array):
        x = sp.csr_matrix(x)
    values = x.data
    if values.size and np.issubdtype(values.dtype, np.floating):
        if not np.allclose(values, np.round(values)):
            warnings.warn(
                "The count table's X is not integer-valued: scellst expects raw counts.",
                UserWarning,
                stacklevel=3,
            )
    adata.X = x
    adata.obs[SPOT_ID] = np.arange(adata.n_obs, dtype=np.int64)
    adata.obs[REGION_KEY] = pd.Categorical([SPOTS_KEY] * adata.n_obs)
    adata.obsm[SPATIAL_OBSM] = xy
    return adata

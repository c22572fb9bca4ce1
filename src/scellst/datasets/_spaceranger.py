"""A synthetic slide written as a 10x Visium Space Ranger output folder (for tutorials, tests)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import h5py
import numpy as np
import scipy.sparse as sp
import tifffile

from .._sdata import image_level0, read_rgb
from ..constants import IMAGE_KEY, SPOTS_KEY, SPOTS_TABLE_KEY
from ..io._scale import microns_per_pixel
from ._synthetic import synthetic

#: Space Ranger's downscaled images: the longest side of ``tissue_hires_image.png``.
_HIRES_PX = 2000
_LOWRES_PX = 600


def synthetic_visium(path: str | Path, *, overwrite: bool = False, **kwargs) -> tuple[Path, Path]:
    """Write a :func:`synthetic` slide as a Space Ranger ``outs`` folder and a full-resolution TIFF.

    The folder has the files :func:`scellst.io.read_visium` (and :func:`spatialdata_io.visium`)
    read: ``filtered_feature_bc_matrix.h5`` (10x HDF5 feature-barcode matrix, raw counts),
    ``spatial/tissue_positions.csv`` (spot centres in full-resolution pixels),
    ``spatial/scalefactors_json.json`` (``spot_diameter_fullres`` and the downscaled images'
    factors) and ``spatial/tissue_hires_image.png`` / ``tissue_lowres_image.png``. The
    full-resolution H&E, the image one gives Space Ranger, is a tiled TIFF beside the folder
    with its pixel size in the resolution tags. With the default Visium geometry (55 µm spots),
    reading it back gives the synthetic slide's spots, counts and pixel size.

    Parameters
    ----------
    path
        Folder to create; it receives ``outs/`` and ``tissue.tif``.
    overwrite
        Write into an existing non-empty folder.
    **kwargs
        Passed to :func:`synthetic` (``shape``, ``seed``, ``microns_per_pixel``, ...).

    Returns
    -------
    tuple of Path
        The ``outs`` folder and the full-resolution TIFF.

    Examples
    --------
    >>> outs, tif = sst.datasets.synthetic_visium("visium_demo", shape=(2048, 2048))
    >>> sdata = sst.io.read_visium(outs, fullres_image_file=tif)
    """
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} is not empty; pass overwrite=True to write into it.")
    sdata = synthetic(**kwargs)
    outs = path / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    mpp = microns_per_pixel(sdata, IMAGE_KEY)
    spots = sdata[SPOTS_KEY]
    table = sdata[SPOTS_TABLE_KEY]
    n = len(spots)
    barcodes = [f"SYN{i:06d}-1" for i in range(n)]
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", barcodes, list(table.var_names), table.X)

    x, y = spots.geometry.x.to_numpy(), spots.geometry.y.to_numpy()
    pitch_px = kwargs.get("spot_pitch_um", 100.0) / mpp
    rows = np.rint((y - y.min()) / (pitch_px * np.sqrt(3) / 2)).astype(int)
    cols = np.rint((x - x.min()) / (pitch_px / 2)).astype(int)
    lines = ["barcode,in_tissue,array_row,array_col,pxl_row_in_fullres,pxl_col_in_fullres"]
    lines += [
        f"{b},1,{r},{c},{yy:.3f},{xx:.3f}"
        for b, r, c, yy, xx in zip(barcodes, rows, cols, y, x, strict=True)
    ]
    (outs / "spatial" / "tissue_positions.csv").write_text("\n".join(lines) + "\n")

    img = image_level0(sdata, IMAGE_KEY)
    h, w = int(img.sizes["y"]), int(img.sizes["x"])
    rgb = read_rgb(img, 0, h, 0, w)
    factors = {"spot_diameter_fullres": float(2 * spots["radius"].iloc[0])}
    factors["fiducial_diameter_fullres"] = 1.6 * factors["spot_diameter_fullres"]
    for name, side in (("hires", _HIRES_PX), ("lowres", _LOWRES_PX)):
        f = min(1.0, side / max(h, w))
        small = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(outs / "spatial" / f"tissue_{name}_image.png"), small[..., ::-1])
        factors[f"tissue_{name}_scalef"] = f
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors, indent=1))

    tif = path / "tissue.tif"
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        tif, rgb, tile=(256, 256), photometric="rgb", compression="zlib",
        resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
    )  # fmt: skip
    return outs, tif


def write_10x_h5(path: Path, barcodes: list[str], genes: list[str], counts) -> None:
    """The 10x Genomics v3 HDF5 feature-barcode matrix of ``counts`` (barcodes x genes, dense or
    sparse), stored genes x barcodes (CSC) as Space Ranger writes it."""
    m = sp.csc_matrix(sp.csr_matrix(counts).T)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g.create_dataset("barcodes", data=np.array(barcodes, dtype="S"))
        g.create_dataset("data", data=m.data.astype(np.int32))
        g.create_dataset("indices", data=m.indices.astype(np.int64))
        g.create_dataset("indptr", data=m.indptr.astype(np.int64))
        g.create_dataset("shape", data=np.array(m.shape, dtype=np.int32))
        feats = g.create_group("features")
        feats.create_dataset("id", data=np.array([f"GENE{i:05d}" for i in range(len(genes))], "S"))
        feats.create_dataset("name", data=np.array(genes, dtype="S"))
        feats.create_dataset("feature_type", data=np.array(["Gene Expression"] * len(genes), "S"))
        feats.create_dataset("genome", data=np.array(["synthetic"] * len(genes), dtype="S"))

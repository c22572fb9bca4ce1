"""Synthetic slides written as 10x Visium / Visium HD Space Ranger output folders (for
tutorials and tests)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

import cv2
import h5py
import numpy as np
import pandas as pd
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

    rgb = _full_rgb(sdata)
    factors = {"spot_diameter_fullres": float(2 * spots["radius"].iloc[0])}
    factors["fiducial_diameter_fullres"] = 1.6 * factors["spot_diameter_fullres"]
    factors.update(_write_downscaled(rgb, outs / "spatial"))
    (outs / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors, indent=1))
    tif = path / "tissue.tif"
    _write_tiff(tif, rgb, mpp)
    return outs, tif


def synthetic_visium_hd(
    path: str | Path,
    *,
    bin_sizes_um: Sequence[int] = (8, 16),
    overwrite: bool = False,
    **kwargs,
) -> tuple[Path, Path]:
    """Write a :func:`synthetic` slide with square bins as a Space Ranger Visium HD ``outs``
    folder and a full-resolution TIFF.

    The slide is generated with ``bins_um`` = the smallest of ``bin_sizes_um``; larger bin sizes
    (integer multiples of it) pool its bins as Space Ranger nests its bins
    (:func:`scellst.mil.bins.coarsen_bins`). Each size gets a
    ``outs/binned_outputs/square_XXXum/`` folder with the files
    :func:`scellst.io.read_visium_hd` reads: ``filtered_feature_bc_matrix.h5`` (the bins under
    tissue, barcodes ``s_008um_<row>_<col>-1``), ``spatial/tissue_positions.parquet`` (every bin
    lying on the image, ``in_tissue`` 1 for those of the counts), ``spatial/
    scalefactors_json.json`` (``bin_size_um``, ``microns_per_pixel``, ``spot_diameter_fullres``
    = the bin side in pixels, the downscaled images' factors) and the hires/lowres PNGs (also in
    ``outs/spatial/``). The full-resolution H&E is a tiled TIFF beside ``outs`` with its pixel
    size in the resolution tags.

    Parameters
    ----------
    path
        Folder to create; it receives ``outs/`` and ``tissue.tif``.
    bin_sizes_um
        Bin sides in µm, each an integer multiple of the smallest.
    overwrite
        Write into an existing non-empty folder.
    **kwargs
        Passed to :func:`synthetic` (``shape``, ``seed``, ``microns_per_pixel``,
        ``bins_angle_deg``, ``cell_dilation_um``, ...), except ``bins_um``.

    Returns
    -------
    tuple of Path
        The ``outs`` folder and the full-resolution TIFF.

    Examples
    --------
    >>> outs, tif = sst.datasets.synthetic_visium_hd("hd_demo", shape=(1024, 1024))
    >>> sdata = sst.io.read_visium_hd(outs, bin_size_um=8, fullres_image_file=tif)
    """
    from ..constants import BIN_GRID_KEY
    from ..mil.bins import BinGrid, coarsen_bins
    from ._synthetic_hd import bins_on_image

    if "bins_um" in kwargs:
        raise TypeError("Pass the bin sizes as `bin_sizes_um=`, not `bins_um=`.")
    sizes = sorted({int(b) for b in bin_sizes_um})
    if not sizes or sizes[0] <= 0 or any(b % sizes[0] for b in sizes):
        raise ValueError(
            f"bin_sizes_um must be positive integers, multiples of the smallest; got "
            f"{list(bin_sizes_um)!r}."
        )
    path = Path(path)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise FileExistsError(f"{path} is not empty; pass overwrite=True to write into it.")
    sdata = synthetic(bins_um=sizes[0], **kwargs)
    mpp = microns_per_pixel(sdata, IMAGE_KEY)
    table = sdata[SPOTS_TABLE_KEY]
    fine_grid = BinGrid.from_dict(table.uns["scellst"][BIN_GRID_KEY])
    fine_bins = table.obs[["array_row", "array_col"]].to_numpy(np.int64)
    genes = list(table.var_names)

    outs = path / "outs"
    (outs / "spatial").mkdir(parents=True, exist_ok=True)
    rgb = _full_rgb(sdata)
    shape = rgb.shape[:2]
    image_factors = _write_downscaled(rgb, outs / "spatial")
    for size in sizes:
        factor = size // sizes[0]
        grid = fine_grid.coarsen(factor)
        if factor == 1:
            bins, counts = fine_bins, table.X
        else:
            coarse = coarsen_bins(fine_bins, factor, table.X)
            bins, counts = coarse.bins, coarse.counts
        listed = np.unique(np.concatenate([bins, bins_on_image(grid, shape)]), axis=0)
        in_tissue = pd.MultiIndex.from_arrays(listed.T).isin(pd.MultiIndex.from_arrays(bins.T))
        xy = grid.centres(listed)
        prefix = f"s_{size:03d}um"
        folder = outs / "binned_outputs" / f"square_{size:03d}um"
        (folder / "spatial").mkdir(parents=True, exist_ok=True)
        pd.DataFrame(
            {
                "barcode": [f"{prefix}_{r:05d}_{c:05d}-1" for r, c in listed],
                "in_tissue": in_tissue.astype(np.int32),
                "array_row": listed[:, 0].astype(np.int32),
                "array_col": listed[:, 1].astype(np.int32),
                "pxl_row_in_fullres": xy[:, 1],
                "pxl_col_in_fullres": xy[:, 0],
            }
        ).to_parquet(folder / "spatial" / "tissue_positions.parquet", index=False)
        barcodes = [f"{prefix}_{r:05d}_{c:05d}-1" for r, c in bins]
        write_10x_h5(folder / "filtered_feature_bc_matrix.h5", barcodes, genes, counts)
        factors = {
            "spot_diameter_fullres": size / mpp,
            "bin_size_um": float(size),
            "microns_per_pixel": mpp,
            "regist_target_img_scalef": image_factors["tissue_hires_scalef"],
            "fiducial_diameter_fullres": 120.0 / mpp,
            **image_factors,
        }
        (folder / "spatial" / "scalefactors_json.json").write_text(json.dumps(factors, indent=1))
        for name in ("hires", "lowres"):
            png = f"tissue_{name}_image.png"
            shutil.copyfile(outs / "spatial" / png, folder / "spatial" / png)
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps({"microns_per_pixel": mpp, **image_factors}, indent=1)
    )
    tif = path / "tissue.tif"
    _write_tiff(tif, rgb, mpp)
    return outs, tif


def _full_rgb(sdata) -> np.ndarray:
    img = image_level0(sdata, IMAGE_KEY)
    h, w = int(img.sizes["y"]), int(img.sizes["x"])
    return read_rgb(img, 0, h, 0, w)


def _write_downscaled(rgb: np.ndarray, spatial: Path) -> dict[str, float]:
    """Space Ranger's ``tissue_hires_image.png`` and ``tissue_lowres_image.png``; returns their
    scale factors."""
    h, w = rgb.shape[:2]
    factors = {}
    for name, side in (("hires", _HIRES_PX), ("lowres", _LOWRES_PX)):
        f = min(1.0, side / max(h, w))
        small = cv2.resize(rgb, (round(w * f), round(h * f)), interpolation=cv2.INTER_AREA)
        cv2.imwrite(str(spatial / f"tissue_{name}_image.png"), small[..., ::-1])
        factors[f"tissue_{name}_scalef"] = f
    return factors


def _write_tiff(tif: Path, rgb: np.ndarray, mpp: float) -> None:
    per_cm = 1e4 / mpp
    tifffile.imwrite(
        tif, rgb, tile=(256, 256), photometric="rgb", compression="zlib",
        resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
    )  # fmt: skip


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

"""Read 10x Visium HD (Space Ranger binned outputs): square bins on the H&E, with its scale.

spatialdata-io's ``visium_hd`` reader needs the whole ``outs`` folder (``feature_slice.h5`` and
its metadata) and decodes the full-resolution image in one block; this reader needs only one
``binned_outputs/square_XXXum`` folder (``tissue_positions.parquet``, the feature-barcode
matrix, ``scalefactors_json.json``) and reads TIFF slides lazily, like the other scellst readers.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import anndata as ad
import dask
import dask.array as da
import geopandas as gpd
import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp
from PIL import Image
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, ShapesModel, TableModel
from spatialdata.transformations import BaseTransformation, Identity, Scale

from ..constants import (
    ARRAY_COL,
    ARRAY_ROW,
    BIN_GRID_KEY,
    MICRONS_CS,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_ID,
    SPOT_SHAPE_KEY,
    SPOT_SHAPE_SQUARE,
    SPOT_SIZE_KEY,
    UNS_KEY,
)
from ._common import array_to_yxc, is_tiff, resolve_path, sanitize_name
from ._pyramid import RGB, open_tiff_levels, rgb_image_element
from ._scale import add_global_frame, compose_to_microns, microns_scale

_COUNTS_FILE = "filtered_feature_bc_matrix.h5"
_POSITIONS_FILE = "spatial/tissue_positions.parquet"
_SCALEFACTORS_FILE = "spatial/scalefactors_json.json"
_BINNED = "binned_outputs"
_BIN_DIR = re.compile(r"^square_(\d+)um$")
_POSITION_COLUMNS = (
    "barcode",
    "in_tissue",
    ARRAY_ROW,
    ARRAY_COL,
    "pxl_row_in_fullres",
    "pxl_col_in_fullres",
)
#: Relative disagreement between two estimates of the pixel size (or of the bin pitch and the
#: bin side) that triggers a warning.
_TOLERANCE = 0.01
_USE_READ_VISIUM = (
    "it is Visium (55 µm spots) Space Ranger output: read it with "
    "`sst.io.read_visium(path, fullres_image_file=...)`."
)


def read_visium_hd(
    path: str | Path,
    *,
    bin_size_um: int | None = None,
    fullres_image_file: str | Path | None = None,
    dataset_id: str | None = None,
    counts_file: str = _COUNTS_FILE,
) -> SpatialData:
    """Read one bin size of a 10x Visium HD Space Ranger output, with its physical scale.

    Visium HD bins its 2 µm barcodes into 8 µm and 16 µm squares (``binned_outputs/
    square_008um``, ``square_016um``). Each bin becomes a square polygon in full-resolution
    pixels, centred on its ``pxl_col_in_fullres``, ``pxl_row_in_fullres`` from
    ``spatial/tissue_positions.parquet``, of side ``bin size / microns_per_pixel`` and oriented
    along the bin grid (fitted to the bins' array rows and columns: Space Ranger's grid is usually
    slightly rotated on the image). The pixel size is ``microns_per_pixel`` of
    ``spatial/scalefactors_json.json``. Only the bin folder is needed (no ``feature_slice.h5``);
    a TIFF full-resolution image is read lazily.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder, its ``binned_outputs`` folder, or one
        ``binned_outputs/square_XXXum`` folder.
    bin_size_um
        Bin side in µm (``8`` or ``16``; ``2`` when present). Needed when ``path`` holds several
        bin sizes; checked against the bin folder otherwise.
    fullres_image_file
        The full-resolution H&E given to Space Ranger (absolute, or relative to ``path``): TIFF,
        BigTIFF (``.btf``), OME-TIFF or SVS, read lazily; other formats (PNG, JPEG) are decoded
        when first used. Without it, only the hires/lowres images are read.
    dataset_id
        Names the elements and the pixel coordinate system. By default the ``library_ids``
        attribute of the counts file, else the folder holding ``binned_outputs`` (the sample
        folder for ``<sample>/outs``).
    counts_file
        The feature-barcode matrix of the bin folder (``"raw_feature_bc_matrix.h5"`` for all
        bins, not only those under tissue).

    Returns
    -------
    SpatialData
        With ``<id>`` the dataset id and ``<bins>`` = ``square_008um`` (etc.):

        - images ``<id>_full_image`` (if ``fullres_image_file``), ``<id>_hires_image``,
          ``<id>_lowres_image`` (when the PNGs are in the bin's or the ``outs``' ``spatial/``);
        - shapes ``<id>_<bins>``: one square polygon per bin of the counts file (that has a
          position), in full-resolution pixels, indexed ``0..n-1``;
        - table ``<bins>``: raw counts (CSR), bins x genes, barcodes as ``obs_names``, annotating
          the squares through ``obs["region"]`` / ``obs["spot_id"]``, with ``obs`` columns
          ``in_tissue``, ``array_row``, ``array_col``, ``obsm["spatial"]`` = bin centres (x, y) in
          pixels, and ``uns["scellst"]``: ``reader``, ``dataset_id``, ``microns_per_pixel``,
          ``bin_size_um``, ``spot_shape`` = ``"square"``, ``spot_size_um`` (= bin size),
          ``bin_grid`` (the fitted grid, :meth:`scellst.mil.bins.BinGrid.to_dict`, whose (row,
          col) are ``array_row``, ``array_col``), ``bin_grid_rms_px``, ``bin_pitch_px``,
          ``n_barcodes_without_position``.

        The pixel coordinate system is ``<id>`` (full-resolution pixels), with
        ``<id>_downscaled_hires`` and ``<id>_downscaled_lowres`` as spatialdata-io names them;
        every element also has a ``Scale`` to ``"microns"``, and to ``"global"`` the same
        transformation as to ``<id>`` (the pixel frame scverse tools assume).

    Raises
    ------
    FileNotFoundError
        If the folder, the requested bin size, or a file of the bin folder is missing.
    ValueError
        If ``path`` is Visium (not HD) output, if several bin sizes are available and
        ``bin_size_um`` is not given, or if the files disagree (bin size, no shared barcodes).

    See Also
    --------
    scellst.io.read_visium : Visium (55 µm spots) Space Ranger output.

    Examples
    --------
    >>> sdata = sst.io.read_visium_hd("outs", bin_size_um=8, fullres_image_file="tissue.btf")
    >>> sdata["square_008um"].uns["scellst"]["microns_per_pixel"]
    0.2737...
    """
    from ..mil.bins import BinGrid, square_polygons

    path = resolve_path(path, "Visium HD folder")
    if not path.is_dir():
        raise FileNotFoundError(f"Visium HD folder not found: {str(path)!r} is not a directory.")
    bin_dir, bin_size = _bin_folder(path, bin_size_um)
    image_path = None
    if fullres_image_file is not None:
        image_path = resolve_path(path / Path(fullres_image_file), "Full-resolution image")
    factors_file = resolve_path(
        bin_dir / _SCALEFACTORS_FILE, "Visium HD scale factors (written by Space Ranger)"
    )
    factors = json.loads(factors_file.read_text())
    bin_size = _check_bin_size(factors, bin_size, factors_file)
    mpp = _hd_mpp(factors, bin_size, factors_file)
    side_px = bin_size / mpp

    positions = _read_positions(bin_dir)
    counts_path = bin_dir / counts_file
    if not counts_path.is_file():
        raise FileNotFoundError(
            f"Visium HD counts not found: expected {str(counts_path)!r} (Space Ranger writes "
            f"{_COUNTS_FILE} and raw_feature_bc_matrix.h5 in each binned_outputs/square_XXXum "
            "folder; choose another with `counts_file=`)."
        )
    barcodes, var, x, library_ids = _read_10x_h5(counts_path)
    dataset_id = _hd_dataset_id(bin_dir, dataset_id, library_ids)
    bins_key = bin_dir.name if _BIN_DIR.match(bin_dir.name) else f"square_{bin_size:03d}um"
    shapes_key = f"{dataset_id}_{bins_key}"

    # bins of the counts file, in its order, with their positions
    row_of = pd.Index(positions["barcode"].to_numpy()).get_indexer(barcodes)
    missing = row_of < 0
    if missing.all():
        raise ValueError(
            f"None of the {len(barcodes)} barcodes of {str(counts_path)!r} is in "
            f"{str(bin_dir / _POSITIONS_FILE)!r}: the two files come from different runs or bin "
            "sizes."
        )
    if missing.any():
        warnings.warn(
            f"{int(missing.sum())} of the {len(barcodes)} barcodes of {str(counts_path)!r} have no "
            f"position in {_POSITIONS_FILE}; they are left out.",
            UserWarning,
            stacklevel=2,
        )
        keep = ~missing
        barcodes, x, row_of = barcodes[keep], x[keep], row_of[keep]
    bins_pos = positions.iloc[row_of]
    centres = bins_pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64)
    rowcol = bins_pos[[ARRAY_ROW, ARRAY_COL]].to_numpy(np.int64)

    # the bin grid, from every listed position (also those off tissue)
    grid_info: dict[str, Any] = {}
    orientation = None
    try:
        grid, rms = BinGrid.from_positions(
            positions[[ARRAY_ROW, ARRAY_COL]].to_numpy(np.int64),
            positions[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy(np.float64),
        )
    except ValueError:
        warnings.warn(
            f"The bins of {str(bin_dir)!r} do not span two rows and two columns: no bin grid is "
            "fitted and the squares are axis-aligned.",
            UserWarning,
            stacklevel=2,
        )
    else:
        orientation = grid.orientation
        pitch = float(np.mean(np.linalg.norm(grid.matrix, axis=0)))
        grid_info = {BIN_GRID_KEY: grid.to_dict(), "bin_grid_rms_px": rms, "bin_pitch_px": pitch}
        if abs(pitch - side_px) > _TOLERANCE * side_px:
            warnings.warn(
                f"The bins of {str(bin_dir)!r} are {pitch:.4g} px apart on their grid but a "
                f"{bin_size} µm bin is {side_px:.4g} px wide at {mpp:.5g} µm/px: the positions "
                "and the bin size disagree. The squares are drawn with the bin size; "
                f"uns[{UNS_KEY!r}][{BIN_GRID_KEY!r}] keeps the grid of the positions.",
                UserWarning,
                stacklevel=2,
            )
    squares = square_polygons(centres, side_px, orientation)

    # downscaled images: name -> (scale factor, coordinate system), when the factor is known
    downscaled = {
        name: (scalef, f"{dataset_id}_downscaled_{name}")
        for name in ("hires", "lowres")
        if (scalef := _positive(factors, f"tissue_{name}_scalef")) is not None
    }
    n = len(barcodes)
    shapes = ShapesModel.parse(
        gpd.GeoDataFrame(geometry=squares, index=pd.RangeIndex(n)),
        transformations={
            dataset_id: Identity(),
            **{cs: _scale(scalef) for scalef, cs in downscaled.values()},
            MICRONS_CS: microns_scale(mpp),
        },
    )

    obs = pd.DataFrame(
        {
            "in_tissue": bins_pos["in_tissue"].to_numpy(np.int64),
            ARRAY_ROW: rowcol[:, 0],
            ARRAY_COL: rowcol[:, 1],
            SPOT_ID: np.arange(n, dtype=np.int64),
            REGION_KEY: pd.Categorical([shapes_key] * n),
        },
        index=pd.Index(barcodes, name=None),
    )
    table = ad.AnnData(X=x, obs=obs, var=var, obsm={SPATIAL_OBSM: centres})
    table.var_names_make_unique()
    table.uns[UNS_KEY] = {
        "reader": "read_visium_hd",
        "dataset_id": dataset_id,
        "microns_per_pixel": mpp,
        "bin_size_um": float(bin_size),
        SPOT_SHAPE_KEY: SPOT_SHAPE_SQUARE,
        SPOT_SIZE_KEY: float(bin_size),
        **grid_info,
        "n_barcodes_without_position": int(missing.sum()),
        "counts_file": counts_file,
    }
    table = TableModel.parse(table, region=shapes_key, region_key=REGION_KEY, instance_key=SPOT_ID)

    images: dict[str, Any] = {}
    if image_path is not None:
        what = repr(str(image_path))
        levels = open_tiff_levels(image_path) if is_tiff(image_path) else [_lazy_pil(image_path)]
        full = rgb_image_element(levels, dataset_id, mpp, what=what)
        images[f"{dataset_id}_full_image"] = full
        _check_on_image(centres, levels[0].shape[1], levels[0].shape[0], image_path)
    for name, (scalef, cs) in downscaled.items():
        png = _find_png(bin_dir, f"tissue_{name}_image.png")
        if png is None:
            continue
        to_full = _scale(1.0 / scalef)
        images[f"{dataset_id}_{name}_image"] = Image2DModel.parse(
            _lazy_pil(png).transpose(2, 0, 1),
            dims=("c", "y", "x"),
            c_coords=RGB,
            transformations={
                dataset_id: to_full,
                cs: Identity(),
                MICRONS_CS: compose_to_microns(_scale(1.0 / scalef), mpp),
            },
        )
    sdata = SpatialData(images=images, shapes={shapes_key: shapes}, tables={bins_key: table})
    add_global_frame(sdata, dataset_id)
    return sdata


# --- folders -----------------------------------------------------------------------------------
def _bin_folder(path: Path, bin_size_um: int | None) -> tuple[Path, int | None]:
    """The ``square_XXXum`` folder to read, and the bin size its name gives (None if unnamed)."""
    if bin_size_um is not None:
        if isinstance(bin_size_um, bool) or float(bin_size_um) != int(bin_size_um):
            raise ValueError(f"`bin_size_um` must be an integer (8, 16), got {bin_size_um!r}.")
        bin_size_um = int(bin_size_um)
    if (path / _POSITIONS_FILE).is_file() or _BIN_DIR.match(path.name):
        m = _BIN_DIR.match(path.name)
        named = int(m.group(1)) if m else None
        if bin_size_um is not None and named is not None and bin_size_um != named:
            raise ValueError(
                f"{str(path)!r} holds {named} µm bins, not bin_size_um={bin_size_um}: pass the "
                f"`outs` folder (or its square_{bin_size_um:03d}um folder) to read "
                f"{bin_size_um} µm bins."
            )
        return path, named if named is not None else bin_size_um
    if (path / _BINNED).is_dir():
        root = path / _BINNED
    elif path.name == _BINNED:
        root = path
    else:
        if _is_visium_v1(path):
            raise ValueError(f"{str(path)!r} is not Visium HD output: {_USE_READ_VISIUM}")
        raise FileNotFoundError(
            f"No Visium HD bins in {str(path)!r}: expected a Space Ranger HD `outs` folder "
            f"holding {_BINNED}/square_008um, square_016um, ..., or one such bin folder holding "
            f"{_POSITIONS_FILE}."
        )
    available = sorted(
        int(m.group(1)) for p in root.iterdir() if p.is_dir() and (m := _BIN_DIR.match(p.name))
    )
    if not available:
        raise FileNotFoundError(f"{str(root)!r} holds no square_XXXum bin folder.")
    if bin_size_um is None:
        if len(available) > 1:
            raise ValueError(
                f"{str(root)!r} holds several bin sizes ({', '.join(f'{b} µm' for b in available)}):"
                f" choose one with `bin_size_um=` (e.g. bin_size_um={available[0]})."
            )
        bin_size_um = available[0]
    if bin_size_um not in available:
        raise FileNotFoundError(
            f"No {bin_size_um} µm bins in {str(root)!r} (no square_{bin_size_um:03d}um folder); "
            f"available: {', '.join(f'{b} µm' for b in available)}."
        )
    return root / f"square_{bin_size_um:03d}um", bin_size_um


def _is_visium_v1(path: Path) -> bool:
    spatial = path / "spatial"
    v1 = ("tissue_positions_list.csv", "tissue_positions.csv")
    has_csv = any((spatial / name).is_file() for name in v1)
    return has_csv and not (spatial / "tissue_positions.parquet").is_file()


def is_visium_hd(path: Path) -> bool:
    """Whether ``path`` looks like Visium HD Space Ranger output (an ``outs`` folder with
    ``binned_outputs``, that folder itself, or a bin folder)."""
    return (
        (path / _BINNED).is_dir()
        or path.name == _BINNED
        or bool(_BIN_DIR.match(path.name))
        or (path / _POSITIONS_FILE).is_file()
    )


def _find_png(bin_dir: Path, name: str) -> Path | None:
    candidates = [bin_dir / "spatial" / name]
    if bin_dir.parent.name == _BINNED:
        candidates.append(bin_dir.parent.parent / "spatial" / name)  # outs/spatial
    return next((p for p in candidates if p.is_file()), None)


def _hd_dataset_id(bin_dir: Path, dataset_id: str | None, library_ids: list[str]) -> str:
    if dataset_id is not None:
        return dataset_id
    for lid in library_ids:
        if sanitize_name(lid):
            return sanitize_name(lid)
    folder = bin_dir.resolve().parent
    if folder.name == _BINNED:
        folder = folder.parent
    if folder.name == "outs" and folder.parent.name:  # <sample>/outs
        folder = folder.parent
    return sanitize_name(folder.name) or "visium_hd"


# --- files ---------------------------------------------------------------------------------------
def _check_bin_size(factors: dict, named: int | None, file: Path) -> int:
    raw = factors.get("bin_size_um")
    if raw is None:
        if named is None:
            raise ValueError(
                f"{str(file)!r} has no 'bin_size_um' and the folder is not named square_XXXum: "
                "the bin size is unknown. Pass `bin_size_um=`."
            )
        return named
    size = float(raw)
    if named is not None and not np.isclose(size, named):
        raise ValueError(
            f"{str(file)!r} says bin_size_um = {size:g} but its folder holds {named} µm bins."
        )
    return int(round(size))


def _hd_mpp(factors: dict, bin_size: int, file: Path) -> float:
    """µm per full-resolution pixel: ``microns_per_pixel``, checked against ``bin_size_um /
    spot_diameter_fullres`` (the bin side in pixels)."""

    mpp = _positive(factors, "microns_per_pixel")
    side = _positive(factors, "spot_diameter_fullres")
    from_side = bin_size / side if side else None
    if mpp is None:
        if from_side is None:
            raise ValueError(
                f"{str(file)!r} has neither a valid 'microns_per_pixel' nor a valid "
                "'spot_diameter_fullres' (the bin side in pixels): the pixel size is unknown."
            )
        return from_side
    if from_side is not None and abs(from_side - mpp) > _TOLERANCE * mpp:
        warnings.warn(
            f"{str(file)!r}: microns_per_pixel = {mpp:.6g} but bin_size_um / "
            f"spot_diameter_fullres = {from_side:.6g}; using microns_per_pixel.",
            UserWarning,
            stacklevel=3,
        )
    return mpp


def _positive(factors: dict, key: str) -> float | None:
    try:
        value = float(factors.get(key))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) and value > 0 else None


def _read_positions(bin_dir: Path) -> pd.DataFrame:
    file = bin_dir / _POSITIONS_FILE
    if not file.is_file():
        if _is_visium_v1(bin_dir):
            raise ValueError(f"{str(bin_dir)!r} is not Visium HD output: {_USE_READ_VISIUM}")
        raise FileNotFoundError(
            f"Visium HD bin positions not found: expected {str(file)!r} (Space Ranger writes "
            "tissue_positions.parquet in each binned_outputs/square_XXXum/spatial folder)."
        )
    positions = pd.read_parquet(file)
    lacking = [c for c in _POSITION_COLUMNS if c not in positions.columns]
    if lacking:
        raise ValueError(
            f"{str(file)!r} lacks the columns {lacking} (has {list(positions.columns)}); Space "
            f"Ranger HD positions have {list(_POSITION_COLUMNS)}."
        )
    positions["barcode"] = positions["barcode"].astype(str)
    if positions["barcode"].duplicated().any():
        raise ValueError(f"{str(file)!r} lists some barcodes more than once.")
    return positions.reset_index(drop=True)


def _read_10x_h5(path: Path) -> tuple[np.ndarray, pd.DataFrame, sp.csr_matrix, list[str]]:
    """Barcodes, features, bins x features counts (CSR) and library ids of a 10x v3 HDF5
    feature-barcode matrix (Gene Expression features only when others are present)."""

    def strings(ds) -> np.ndarray:
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]])

    with h5py.File(path, "r") as f:
        if "matrix" not in f:
            raise ValueError(
                f"{str(path)!r} is not a 10x Genomics v3 feature-barcode matrix (no 'matrix' "
                "group)."
            )
        g = f["matrix"]
        n_features, n_barcodes = (int(v) for v in g["shape"][()])
        m = sp.csc_matrix(
            (g["data"][()], g["indices"][()], g["indptr"][()]), shape=(n_features, n_barcodes)
        )
        barcodes = strings(g["barcodes"])
        feats = g["features"]
        var = pd.DataFrame(
            {
                "gene_ids": strings(feats["id"]),
                "feature_types": strings(feats["feature_type"])
                if "feature_type" in feats
                else "Gene Expression",
            },
            index=pd.Index(strings(feats["name"])),
        )
        if "genome" in feats:
            var["genome"] = strings(feats["genome"])
        ids = f.attrs.get("library_ids")
        library_ids = [
            v.decode() if isinstance(v, bytes) else str(v)
            for v in (np.atleast_1d(ids) if ids is not None else [])
        ]
    x = sp.csr_matrix(m.T)
    gex = (var["feature_types"] == "Gene Expression").to_numpy()
    if gex.any() and not gex.all():
        x, var = x[:, gex], var[gex]
    fits_int32 = not x.nnz or x.data.max() < 2**31
    if np.issubdtype(x.dtype, np.integer) and x.dtype != np.int32 and fits_int32:
        x = x.astype(np.int32)
    return barcodes, var, x, library_ids


# --- images ------------------------------------------------------------------------------------
def _lazy_pil(path: Path) -> da.Array:
    """A PNG/JPEG as a lazy (y, x, 3) uint8 array, decoded on first use."""
    with Image.open(path) as im:
        width, height = im.size

    def load() -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    arr = da.from_delayed(dask.delayed(load)(), shape=(height, width, 3), dtype=np.uint8)
    return array_to_yxc(arr)


def _scale(factor: float) -> BaseTransformation:
    return Scale([factor, factor], axes=("x", "y"))


def _check_on_image(xy: np.ndarray, width: int, height: int, image_path: Path) -> None:
    outside = (xy[:, 0] < 0) | (xy[:, 0] > width) | (xy[:, 1] < 0) | (xy[:, 1] > height)
    if len(xy) and outside.mean() > 0.05:
        warnings.warn(
            f"{int(outside.sum())} of {len(xy)} bin centres fall outside the {width}x{height} px "
            f"image {str(image_path)!r}: it may not be the full-resolution image given to Space "
            "Ranger.",
            UserWarning,
            stacklevel=3,
        )

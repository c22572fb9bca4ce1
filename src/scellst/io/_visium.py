"""Read 10x Visium (Space Ranger output) through spatialdata-io and record its physical scale."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import h5py
from spatialdata import SpatialData
from spatialdata.transformations import (
    Identity,
    get_transformation,
    set_transformation,
)

from ..constants import MICRONS_CS, REGION_KEY, SPOT_ID, UNS_KEY
from ._common import is_tiff, resolve_path, sanitize_name
from ._pyramid import open_tiff_levels, rgb_image_element
from ._scale import add_global_frame, compose_to_microns, microns_scale

#: Diameter of a Visium spot in µm (10x Genomics specification).
VISIUM_SPOT_DIAMETER_UM = 55.0
_COUNTS_FILE = "filtered_feature_bc_matrix.h5"
_SCALEFACTORS_FILE = "spatial/scalefactors_json.json"

log = logging.getLogger(__name__)


def read_visium(
    path: str | Path,
    *,
    fullres_image_file: str | Path | None = None,
    dataset_id: str | None = None,
    **kwargs: Any,
) -> SpatialData:
    """Read a 10x Visium Space Ranger output folder, with its physical scale.

    The folder is read by :func:`spatialdata_io.visium`, whose element names are kept; scellst
    then records the pixel size of the full-resolution image, ``55 µm / spot_diameter_fullres``
    (from ``spatial/scalefactors_json.json``), as a transformation to the ``"microns"``
    coordinate system on every image and on the spot circles.

    A TIFF full-resolution image is read lazily by scellst (tiled access, uint8 RGB, multiscale
    from the file's own pyramid levels when it has some) rather than by spatialdata-io, which
    would decode it as a single block.

    Parameters
    ----------
    path
        The Space Ranger ``outs`` folder (holding ``filtered_feature_bc_matrix.h5`` and
        ``spatial/``).
    fullres_image_file
        The full-resolution H&E given to Space Ranger (absolute, or relative to ``path``).
        Without it there is no full-resolution image; the scale is still set on the spots and the
        hires/lowres images.
    dataset_id
        Names the elements and the pixel coordinate system. By default it is inferred from the
        counts file prefix (``<id>_filtered_feature_bc_matrix.h5``), else from the
        ``library_ids`` attribute of the counts file, else from the folder name (the sample
        folder for ``<sample>/outs``).
    **kwargs
        Passed to :func:`spatialdata_io.visium` (e.g. ``counts_file``, ``tissue_positions_file``,
        ``scalefactors_file``).

    Returns
    -------
    SpatialData
        The SpatialData object of :func:`spatialdata_io.visium`, where ``<id>`` is the dataset id:

        - images ``<id>_full_image`` (if ``fullres_image_file``), ``<id>_hires_image``,
          ``<id>_lowres_image``;
        - shapes ``<id>``: the spot circles in full-resolution pixels, with a ``radius``;
        - table ``"table"``: counts, annotating ``<id>`` through ``obs["region"]``/``obs["spot_id"]``;
          ``uns["scellst"]`` records the reader, dataset id and microns per pixel.

        All of them have a transformation to ``"microns"`` besides spatialdata-io's ``<id>``,
        ``<id>_downscaled_hires`` and ``<id>_downscaled_lowres`` systems, and to ``"global"``
        the same as to ``<id>`` (full-resolution pixels, the frame scverse tools assume).

    Raises
    ------
    FileNotFoundError
        If the folder, the scale factors or the full-resolution image file is missing.
    ValueError
        If the scale factors have no valid ``spot_diameter_fullres``, or if ``path`` is Visium HD
        output (``binned_outputs``, ``tissue_positions.parquet``): that is read by
        :func:`scellst.io.read_visium_hd`.

    Examples
    --------
    >>> sdata = sst.io.read_visium("outs", fullres_image_file="tissue.tif", dataset_id="s1")
    >>> sst.io.microns_per_pixel(sdata, "s1_full_image")
    0.2737...
    """
    import spatialdata_io

    path = resolve_path(path, "Visium folder")
    if not path.is_dir():
        raise FileNotFoundError(f"Visium folder not found: {str(path)!r} is not a directory.")
    from ._visium_hd import is_visium_hd

    if is_visium_hd(path):
        raise ValueError(
            f"{str(path)!r} is Visium HD Space Ranger output (square bins, "
            "tissue_positions.parquet): read it with `sst.io.read_visium_hd(path, bin_size_um=8 "
            "or 16, fullres_image_file=...)`."
        )
    mpp, spot_diameter_px = _visium_mpp(path, kwargs.get("scalefactors_file"))
    dataset_id = _dataset_id(path, dataset_id, kwargs.get("counts_file", _COUNTS_FILE))

    full_image = None
    if fullres_image_file is not None:
        image_path = resolve_path(path / Path(fullres_image_file), "Full-resolution image")
        if is_tiff(image_path):
            full_image = rgb_image_element(
                open_tiff_levels(image_path), dataset_id, mpp, what=repr(str(image_path))
            )
        else:
            kwargs["fullres_image_file"] = image_path

    with warnings.catch_warnings():
        # spatialdata-io hands a string region column to TableModel, which converts it: not
        # actionable by the user
        warnings.filterwarnings("ignore", message=".*to categorical dtype", category=UserWarning)
        # anndata's notice on reading a count matrix with repeated gene names (10x feature
        # names are not unique, their ids are): the names are made unique just below
        warnings.filterwarnings(
            "ignore", message="Variable names are not unique", category=UserWarning
        )
        sdata = spatialdata_io.visium(path, dataset_id=dataset_id, **kwargs)
    for table in sdata.tables.values():
        if not table.var_names.is_unique:
            n = int(table.var_names.duplicated().sum())
            table.var_names_make_unique()
            log.info("read_visium: %d repeated gene names made unique (suffixes -1, -2, ...)", n)
    if full_image is not None:
        sdata.images[f"{dataset_id}_full_image"] = full_image

    for key in [*sdata.images, *sdata.shapes]:
        element = sdata[key]
        t = get_transformation(element, to_coordinate_system=dataset_id)
        to_microns = microns_scale(mpp) if isinstance(t, Identity) else compose_to_microns(t, mpp)
        set_transformation(element, to_microns, to_coordinate_system=MICRONS_CS)

    add_global_frame(sdata, dataset_id)
    circles = sdata.shapes[dataset_id]
    if "radius" not in circles.columns:  # spatialdata-io sets it; be safe across versions
        circles["radius"] = spot_diameter_px / 2.0
    for name, table in sdata.tables.items():
        attrs = table.uns.get("spatialdata_attrs", {})
        region = attrs.get("region")
        region = [region] if isinstance(region, str) else list(region or [])
        if dataset_id not in region:
            raise RuntimeError(  # pragma: no cover - guards a change in spatialdata-io
                f"Table {name!r} is not linked to the spots {dataset_id!r} (region {region})."
            )
        if attrs.get("region_key") != REGION_KEY or attrs.get("instance_key") != SPOT_ID:
            raise RuntimeError(  # pragma: no cover
                f"Table {name!r} links the spots through {attrs}; expected region_key="
                f"{REGION_KEY!r}, instance_key={SPOT_ID!r}."
            )
        table.uns[UNS_KEY] = {
            "reader": "read_visium",
            "dataset_id": dataset_id,
            "microns_per_pixel": mpp,
            "spot_diameter_um": VISIUM_SPOT_DIAMETER_UM,
        }
    return sdata


def _visium_mpp(path: Path, scalefactors_file: str | Path | None) -> tuple[float, float]:
    """(µm per full-res pixel, spot diameter in full-res pixels) from the scale factors."""
    file = path / (scalefactors_file if scalefactors_file is not None else _SCALEFACTORS_FILE)
    file = resolve_path(file, "Visium scale factors")
    factors = json.loads(file.read_text())
    diameter = factors.get("spot_diameter_fullres")
    try:
        diameter = float(diameter)
    except (TypeError, ValueError):
        diameter = float("nan")
    if not diameter > 0:
        raise ValueError(
            f"{str(file)!r} has no valid 'spot_diameter_fullres' (got "
            f"{factors.get('spot_diameter_fullres')!r}); it is needed for the pixel size "
            f"({VISIUM_SPOT_DIAMETER_UM:g} µm / spot diameter in pixels)."
        )
    return VISIUM_SPOT_DIAMETER_UM / diameter, diameter


def _dataset_id(path: Path, dataset_id: str | None, counts_file: str) -> str:
    if dataset_id is not None:
        return dataset_id
    prefixed = sorted(p.name for p in path.glob(f"*_{counts_file}"))
    if prefixed:
        return prefixed[0][: -len(f"_{counts_file}")]
    counts = path / counts_file
    if counts.suffix == ".h5" and counts.exists():
        with h5py.File(counts, "r") as f:
            ids = f.attrs.get("library_ids")
        if ids is not None and len(ids):
            lid = ids[0]
            lid = sanitize_name(lid.decode() if isinstance(lid, bytes) else str(lid))
            if lid:
                return lid
    folder = path.resolve()
    if folder.name == "outs" and folder.parent.name:  # <sample>/outs from Space Ranger
        folder = folder.parent
    return sanitize_name(folder.name) or "visium"

"""``sst.pp.segment``: nuclei of the H&E as polygons, tile by tile."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from spatialdata import SpatialData
from spatialdata.models import Labels2DModel

from .._sdata import (
    add_element,
    apply_matrix,
    check_free,
    element_to_image_matrix,
    image_level0,
    image_levels,
    read_rgb,
    to_rgb_uint8,
    transformations_of,
)
from .._sdata import (
    image_key as resolve_image_key,
)
from ..constants import CELLS_KEY, ON_TISSUE_COLUMN, cells_table_key
from ..io._scale import microns_per_pixel
from .cellpose import CellposeSegmenter
from .cells import write_cells
from .checkpoint import TileCheckpoint
from .polygons import owned_nuclei
from .rasterize import rasterize_cells
from .stains import total_od
from .tiles import Tile, map_tiles, release_free_memory, tile_grid
from .tissue import slide_tissue_mask
from .watershed import ALIGN, WatershedParams, WatershedSegmenter

log = logging.getLogger(__name__)

SegmentFn = Callable[[np.ndarray, float], np.ndarray]


def segment(
    sdata: SpatialData,
    image_key: str | None = None,
    *,
    method: str | SegmentFn = "watershed",
    shapes_key: str | None = None,
    key_added: str = CELLS_KEY,
    params: dict | None = None,
    tile_size: int = 2048,
    margin_um: float | None = None,
    n_jobs: int | None = None,
    progress: bool = True,
    checkpoint: str | Path | None = None,
    labels_key: str | None = None,
    drop_off_tissue: bool = False,
    overwrite: bool = False,
) -> None:
    """Segment the nuclei of an H&E image into polygons.

    The image is processed tile by tile (tiles overlap by a margin wider than the largest
    nucleus); each nucleus is kept by the one tile whose core contains its centroid, so nuclei on
    tile seams are neither cut nor duplicated, and memory is bounded by the tile size.

    Parameters
    ----------
    sdata
        SpatialData with an H&E image whose scale is known (see :func:`scellst.io.microns_per_pixel`).
    image_key
        The image; may be omitted when there is one.
    method
        ``"watershed"``: weight-free classical segmentation (hematoxylin colour deconvolution,
        top-hat, slide-wide Otsu threshold, distance-transform watershed; sizes in µm).
        ``"learned"``: the nucleus network shipped with scellst
        (:class:`~scellst.pp.NucleusSegmenter`, trained on DSB2018 H&E; ``params`` are its
        arguments, e.g. ``{"path": <a model fine-tuned by sst.pp.train_segmenter>}``); a GPU
        is used when available. See the docs' segmentation page for how it compares.
        ``"cellpose"``: cellpose 4 (:class:`~scellst.pp.CellposeSegmenter`) with local weights
        only (``params={"pretrained_model": <file>}`` or ``CELLPOSE_LOCAL_MODELS_PATH``); a GPU
        is used when available. Or a callable ``f(rgb_tile, microns_per_pixel) -> labels``
        returning an integer label image of the tile (0 = background), run with the same tiling
        and stitching.
    shapes_key
        Instead of segmenting, adopt the nuclei of an existing shapes element (e.g. Xenium nucleus
        boundaries or imported CellViT polygons). They are copied into ``key_added`` in the
        image's pixel frame; the original element is left untouched.
    key_added
        Name of the new shapes element; its table is ``f"{key_added}_table"``.
    params
        With ``"watershed"``: overrides of :class:`~scellst.pp.WatershedParams` (sizes in µm),
        e.g. ``{"min_area_um2": 10, "threshold": 0.3}``. With ``"learned"`` / ``"cellpose"``:
        arguments of :class:`~scellst.pp.NucleusSegmenter` / :class:`~scellst.pp.CellposeSegmenter`.
    tile_size
        Tile side in pixels, rounded up to a multiple of 4 (memory per worker is a few times ``(tile_size + 2 margin)² × 3`` bytes).
    margin_um
        Tile overlap in µm. Default: the largest nucleus diameter plus the background context.
    n_jobs
        Worker threads (default: all cores). When a ``dask.distributed`` client is active, tiles
        are sent to its workers instead.
    progress
        Show a progress bar.
    checkpoint
        Directory where each finished tile is saved. Re-running with the same directory (after an
        interruption) loads the finished tiles instead of segmenting them again; a directory
        written with other settings is refused. Delete it once the result is saved.
    drop_off_tissue
        Leave out the nuclei whose centroid is off the whole-slide tissue mask (default: keep
        them, flagged ``on_tissue = False``).
    labels_key
        Also add the nuclei as a labels element (label = ``cell_id + 1``) under this key. It is as
        large as the image (int32), so it is off by default.
    overwrite
        Replace existing elements named ``key_added`` / ``f"{key_added}_table"`` (and
        ``labels_key``).

    Returns
    -------
    None
        Adds the polygons ``sdata[key_added]`` (one per nucleus, image pixel coordinates,
        with the image's transformations) and the table ``sdata[f"{key_added}_table"]`` with
        ``obs``: ``cell_id``, ``area_um2``, ``mean_hematoxylin``; ``obsm["spatial"]``: centroids (x, y)
        in pixels; ``uns["scellst"]["segmentation"]``: method and parameters.

    Examples
    --------
    >>> sdata = sst.datasets.synthetic(seed=0)
    >>> sst.pp.segment(sdata)
    >>> sdata["sst_cells"].head()
    """
    key = resolve_image_key(sdata, image_key)
    mpp = microns_per_pixel(sdata, key)
    outputs = [key_added, cells_table_key(key_added)] + ([labels_key] if labels_key else [])
    check_free(sdata, outputs, overwrite)
    if shapes_key is not None:
        geometry, obs_extra, info = _adopt_shapes(sdata, shapes_key, key)
    else:
        geometry, obs_extra, info = _segment_image(
            sdata,
            key,
            mpp,
            method,
            params or {},
            tile_size,
            margin_um,
            n_jobs,
            progress,
            checkpoint,
        )
    if len(geometry) == 0:
        raise ValueError(
            f"No nuclei found in image {key!r} ({info.get('method')}): it looks blank or is not "
            "H&E. Check the image and its scale (sst.io.microns_per_pixel), or lower the "
            "thresholds through `params` (e.g. {'tissue_od': 0.05})."
        )
    if "centroid_x" in obs_extra:  # segmented tiles measured them: no Point per nucleus here
        centroids = np.column_stack([obs_extra.pop("centroid_x"), obs_extra.pop("centroid_y")])
    else:
        centroids = shapely.get_coordinates(shapely.centroid(geometry))
    area_px = obs_extra.pop("area_px", None)
    if area_px is None:
        area_px = shapely.area(geometry)
    tissue = slide_tissue_mask(sdata, key, mpp)
    on_tissue = tissue.contains(centroids)
    info["tissue"] = {**tissue.info(), "n_off_tissue": int((~on_tissue).sum()),
                      "dropped": bool(drop_off_tissue)}  # fmt: skip
    if drop_off_tissue:
        keep = on_tissue
        geometry, centroids = np.asarray(geometry)[keep], np.asarray(centroids)[keep]
        on_tissue = on_tissue[keep]
        area_px = np.asarray(area_px)[keep]
        obs_extra = {k: np.asarray(v)[keep] for k, v in obs_extra.items()}
    obs_extra[ON_TISSUE_COLUMN] = on_tissue
    info.update(image_key=key, microns_per_pixel=mpp, n_cells=len(geometry))
    write_cells(
        sdata,
        key_added=key_added,
        image_key=key,
        geometry=geometry,
        centroids_xy=centroids,
        obs={"area_um2": np.asarray(area_px, dtype=float) * mpp**2, **obs_extra},
        uns={"segmentation": info},
        overwrite=overwrite,
    )
    if labels_key:
        labels = Labels2DModel.parse(
            rasterize_cells(sdata, key_added, image_key=key),
            dims=("y", "x"),
            transformations=transformations_of(sdata, key),
            chunks=4096,
        )
        add_element(sdata, labels_key, labels, overwrite=overwrite)
    log.info("segment: %d nuclei written to %r", len(geometry), key_added)


def _segment_image(
    sdata, key, mpp, method, params, tile_size, margin_um, n_jobs, progress, checkpoint
):
    img = image_level0(sdata, key)
    shape = (int(img.sizes["y"]), int(img.sizes["x"]))
    if isinstance(method, str) and method == "cellpose":
        method, params = CellposeSegmenter(**params), {}
    elif isinstance(method, str) and method == "learned":
        from .learned import NucleusSegmenter  # imports torch

        method, params = NucleusSegmenter(**params), {}
    if isinstance(method, str):
        if method != "watershed":
            raise ValueError(
                f"Unknown segmentation method {method!r}: use 'watershed', 'learned', 'cellpose', "
                "a callable f(rgb_tile, microns_per_pixel) -> labels, or "
                "shapes_key=<existing shapes>."
            )
        unknown = set(params) - set(WatershedParams.__dataclass_fields__)
        if unknown:
            raise TypeError(
                f"Unknown watershed parameters {sorted(unknown)}; valid ones are "
                f"{sorted(WatershedParams.__dataclass_fields__)}."
            )
        segmenter = WatershedSegmenter(WatershedParams(**params))
        p = segmenter.params
        margin_um = margin_um or segmenter.max_diameter_um + 2 * p.background_radius_um
        threshold = segmenter.fit_threshold(_threshold_samples(sdata, key, p.tissue_od), mpp)
        info = {"method": "watershed", "params": segmenter.params.to_dict()}
        if threshold is None:
            info["method"] = "watershed: no tissue detected"
            return np.empty(0, dtype=object), {}, info
        fn: SegmentFn = segmenter
    elif callable(method):
        fn = method
        margin_um = margin_um or getattr(method, "margin_um", None) or 30.0
        info = {
            "method": getattr(method, "__name__", type(method).__name__),
            "params": dict(params),
        }
        if isinstance(getattr(method, "params", None), dict):  # cellpose, learned: their settings
            info.update(method=method.name, params={**params, **method.params})
    else:
        raise TypeError(f"`method` must be 'watershed' or a callable, got {type(method).__name__}.")
    # windows start on multiples of ALIGN so that every tile sees the same coarse blocks
    margin = -(-int(math.ceil(margin_um / mpp)) // ALIGN) * ALIGN
    tile_size = -(-int(tile_size) // ALIGN) * ALIGN
    info.update(tile_size=tile_size, margin_px=margin)

    store = None
    if checkpoint is not None:
        settings = {"image": key, "shape": list(shape), "microns_per_pixel": mpp, **info}
        store = TileCheckpoint(checkpoint, settings)

    def run(tile: Tile) -> dict[str, np.ndarray]:
        if store is not None and (done := store.load(tile)) is not None:
            return done
        rgb = read_rgb(img, tile.wy0, tile.wy1, tile.wx0, tile.wx1)
        found = owned_nuclei(fn(rgb, mpp), rgb, tile)
        result = {"geometry": found.pop("geometry"), **{f"obs_{k}": v for k, v in found.items()}}
        if store is not None:
            store.save(tile, result)
        release_free_memory()
        return result

    parts = list(
        map_tiles(
            run,
            tile_grid(shape, tile_size, margin),
            n_jobs=n_jobs,
            desc="segment",
            progress=progress,
        )
    )
    merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    geometry = merged.pop("geometry")
    return geometry, {k.removeprefix("obs_"): v for k, v in merged.items()}, info


def _threshold_samples(
    sdata, key, tissue_od, n_samples=6, size=1024, lattice=6, probe=512
) -> list[np.ndarray]:
    """Full-resolution windows from the most tissue-rich areas of the slide.

    Small probe windows on a ``lattice`` × ``lattice`` grid are read first (a few percent of a
    slide, instead of decoding all of it for a preview); the richest ones are re-read at
    ``size``. Only when no probe touches tissue (a small biopsy) is the coarsest level used.
    """
    full = image_levels(sdata, key)[0]
    H, W = int(full.sizes["y"]), int(full.sizes["x"])
    probe, size = min(probe, H, W), min(size, H, W)
    ny, nx = (int(np.clip(n // probe, 1, lattice)) for n in (H, W))  # probes never overlap
    centres = {
        (int(y), int(x))
        for y in np.linspace(probe / 2, H - probe / 2, ny)
        for x in np.linspace(probe / 2, W - probe / 2, nx)
    }
    probes = {
        c: read_rgb(
            full,
            c[0] - probe // 2,
            c[0] - probe // 2 + probe,
            c[1] - probe // 2,
            c[1] - probe // 2 + probe,
        )
        for c in sorted(centres)
    }
    _check_brightfield(np.concatenate([p.reshape(-1, 3) for p in probes.values()])[None], key)
    frac = {c: float((total_od(p) > tissue_od).mean()) for c, p in probes.items()}
    best = [c for c in sorted(frac, key=frac.get, reverse=True)[:n_samples] if frac[c] > 0.05]
    if not best:
        best = _tissue_centres_from_preview(sdata, key, tissue_od, n_samples)
    windows = []
    for cy, cx in best:
        y0 = int(np.clip(cy - size // 2, 0, H - size))
        x0 = int(np.clip(cx - size // 2, 0, W - size))
        windows.append(read_rgb(full, y0, y0 + size, x0, x0 + size))
    return windows


def _tissue_centres_from_preview(sdata, key, tissue_od, n) -> list[tuple[int, int]]:
    """Centres (level-0 pixels) of the most tissue-rich cells of a coarse preview."""
    levels = image_levels(sdata, key)
    full, coarse = levels[0], levels[-1]
    H, W = int(full.sizes["y"]), int(full.sizes["x"])
    step = int(math.ceil(max(H, W) / 2048)) if len(levels) == 1 and max(H, W) > 4096 else 1
    data = coarse.data if step == 1 else coarse.data[:, ::step, ::step]
    low = to_rgb_uint8(np.moveaxis(np.asarray(data), 0, -1))
    tissue = total_od(low) > tissue_od
    if not tissue.any():
        return []
    fy, fx = H / low.shape[0], W / low.shape[1]
    ys, xs = np.nonzero(tissue)
    pick = np.linspace(0, len(ys) - 1, min(n, len(ys))).astype(int)
    return [(int((ys[i] + 0.5) * fy), int((xs[i] + 0.5) * fx)) for i in pick]


def _check_brightfield(preview: np.ndarray, key: str) -> None:
    """Brightfield H&E is bright (white glass, pale tissue); fluorescence is mostly dark."""
    brightness = preview.mean(-1)
    if np.median(brightness) < 60 and (brightness > 200).mean() < 0.01:
        raise ValueError(
            f"Image {key!r} is mostly dark (median brightness {np.median(brightness):.0f}/255): "
            "it does not look like a brightfield H&E stain (fluorescence?). The watershed "
            "segmenter needs H&E; segment other images with a callable `method` or import "
            "existing nuclei with `shapes_key`."
        )


#: obs columns the cells table defines itself (imported columns with these names get a prefix)
_OWN_COLUMNS = ("cell_id", "region", "area_um2", "mean_hematoxylin", "area_px", "on_tissue")


def _adopt_shapes(sdata: SpatialData, shapes_key: str, image: str):
    """Copy an existing nuclei element into the image's pixel frame."""
    if shapes_key not in sdata.shapes:
        raise KeyError(f"No shapes element {shapes_key!r}; the shapes are {list(sdata.shapes)}.")
    gdf = sdata.shapes[shapes_key]
    geoms = gdf.geometry.to_numpy()
    if "radius" in gdf.columns:  # circles (points with a radius), e.g. Xenium cell circles
        geoms = shapely.buffer(geoms, gdf["radius"].to_numpy())
    parts = shapely.get_parts(geoms, return_index=True)
    # MultiPolygons: keep the largest part of each nucleus
    order = np.lexsort((-shapely.area(parts[0]), parts[1]))
    rows, first = np.unique(parts[1][order], return_index=True)
    geoms = parts[0][order][first]
    matrix = element_to_image_matrix(sdata, shapes_key, image)
    geoms = shapely.transform(geoms, lambda xy: apply_matrix(matrix, xy))
    # annotations that came with the nuclei (e.g. a class) follow them into the cells table
    extra = {
        col if col not in _OWN_COLUMNS else f"source_{col}": gdf[col].to_numpy()[rows]
        for col in gdf.columns
        if col not in ("geometry", "radius")
    }
    info = {"method": "shapes", "shapes_key": shapes_key, "n_input": len(gdf)}
    return geoms, extra, info

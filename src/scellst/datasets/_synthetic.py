"""A generated, seeded H&E + spot transcriptomics dataset with single-cell ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import anndata as ad
import cv2
import geopandas as gpd
import numpy as np
import pandas as pd
from scipy import sparse
from scipy.spatial import cKDTree
from spatialdata import SpatialData
from spatialdata.models import Image2DModel, Labels2DModel, ShapesModel, TableModel
from spatialdata.transformations import Identity

from ..constants import (
    BIN_GRID_KEY,
    BIN_OVERLAP_OBSM,
    CELL_ID,
    CELL_TYPE_COLUMN,
    IMAGE_KEY,
    MICRONS_CS,
    NO_SPOT,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_ELEMENT_COLUMN,
    SPOT_ID,
    SPOT_SHAPE_KEY,
    SPOT_SHAPE_SQUARE,
    SPOT_SIZE_KEY,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    TRUE_CELL_BOUNDARIES_KEY,
    TRUE_CELLS_KEY,
    TRUE_EXPRESSION_KEY,
    TRUE_LABELS_KEY,
    UNS_KEY,
)
from ..io._scale import microns_scale
from . import _render
from ._render import CELL_TYPES, TISSUE_REGIONS

#: marker gene names of each cell type (taken in order, up to ``_MAX_MARKERS`` per type)
_MARKERS = {
    "tumour": ["EPCAM", "KRT8", "KRT18", "KRT19", "CDH1"],
    "lymphocyte": ["PTPRC", "CD3E", "CD2", "CD52", "CCL5"],
    "fibroblast": ["COL1A1", "COL1A2", "COL3A1", "DCN", "LUM"],
    "macrophage": ["CD68", "CD163", "LYZ", "C1QA", "CSF1R"],
}
_MAX_MARKERS = 5
#: genes whose expression follows a morphological feature within every cell type
_MORPH_AREA_GENE = "MORPH_AREA"
_MORPH_HEMA_GENE = "MORPH_HEMATOXYLIN"
#: relative RNA content of each cell type
_TYPE_LIBRARY = {"tumour": 1.4, "lymphocyte": 0.6, "fibroblast": 0.9, "macrophage": 1.1}
_MORPH_EFFECT = 0.6  # log-fold change of a morphology gene per within-type SD of its feature
_CELL_JITTER = 0.15  # log-sd of per-cell, per-gene expression noise
_MULTISCALE_ABOVE = 4096  # images larger than this (pixels) get a pyramid


def synthetic(
    *,
    shape: tuple[int, int] = (2048, 2048),
    microns_per_pixel: float = 0.5,
    n_genes: int = 60,
    spot_diameter_um: float = 55.0,
    spot_pitch_um: float = 100.0,
    cell_spacing_um: float = 11.0,
    seed: int = 0,
    nb_dispersion: float = 10.0,
    library_size_cv: float = 0.3,
    counts_per_cell: float = 200.0,
    tissue_fraction: float = 0.8,
    bins_um: float | None = None,
    cell_dilation_um: float = 3.0,
    bins_angle_deg: float = 0.0,
) -> SpatialData:
    """Generate a synthetic H&E slide with Visium-like spots (or Visium HD-like square bins) and
    single-cell ground truth.

    The tissue is a noisy Voronoi mosaic of tumour nests, stroma, immune aggregates and inflamed
    stroma, with white holes and margins. Each region holds its own mixture of four cell types
    whose nuclei differ in morphology (all sizes in µm, so the same seed gives the same tissue at
    any pixel size):

    - ``tumour``: large (~5 µm radius), irregular, moderately dark, coarse chromatin, nucleolus;
    - ``lymphocyte``: small (~2.7 µm radius), round, very dark, homogeneous;
    - ``fibroblast``: elongated (aspect ~3), thin, fairly dark, aligned with the collagen fibres;
    - ``macrophage``: medium, oval or kidney-shaped, pale, fine chromatin.

    The image is rendered with Beer-Lambert mixing of the Ruifrok hematoxylin and eosin stain
    vectors (those inverted by :func:`skimage.color.rgb2hed`), then mildly blurred and noised.
    Each cell expresses marker genes of its type, two genes that follow its nucleus area and its
    hematoxylin darkness, and background genes; spot counts are negative-binomial draws around a
    size factor times the summed expression of the cells whose centroid lies in the spot.

    With ``bins_um`` the spots are Visium HD-like square bins of that side tiling the tissue
    instead. Each cell is its nucleus dilated by ``cell_dilation_um``, and its transcripts are
    spread over the bins by area: cell ``c`` expresses ``lambda_c ~ Gamma(theta, rate_c /
    theta)`` per gene and leaves ``Poisson(size_factor_b * W[c, b] * lambda_c)`` transcripts in
    bin ``b``, where ``W[c, b]`` is the fraction of the cell lying in the bin. A bin's counts are
    the sum of those of its cells, so they add up exactly to the cells' captured transcripts
    (``layers["counts"]`` of the truth), and overlap-aware pooling has a real signal to recover.
    The same ``seed`` (and other arguments) gives the same tissue, cells and cell expression
    with and without ``bins_um``, so Visium spots and HD bins can be compared on one slide.

    Parameters
    ----------
    shape
        Image size in pixels, ``(height, width)``.
    microns_per_pixel
        Pixel size in µm (0.5 is a 20x scan, 0.25 a 40x scan).
    n_genes
        Number of genes (at least 6): up to 5 markers per cell type, 2 morphology-linked genes,
        the rest background genes.
    spot_diameter_um
        Diameter of the capture spots in µm (Visium: 55).
    spot_pitch_um
        Centre-to-centre distance of the spots on the hexagonal grid in µm (Visium: 100).
    cell_spacing_um
        Typical distance between neighbouring nuclei in µm (denser in immune aggregates, sparser
        in stroma).
    seed
        Seed of the random generator; the same arguments give identical data.
    nb_dispersion
        Negative-binomial dispersion ``theta`` of the spot counts (variance ``mu + mu^2/theta``).
    library_size_cv
        Coefficient of variation of the lognormal per-spot capture efficiency.
    counts_per_cell
        Expected counts of an average cell (before the spot size factor).
    tissue_fraction
        Approximate fraction of the slide covered by tissue.
    bins_um
        Side of square bins in µm (Visium HD: 8 or 16) instead of Visium spots; ``None``
        (default) for spots. ``spot_diameter_um`` and ``spot_pitch_um`` then play no part in
        the counts.
    cell_dilation_um
        With ``bins_um``: distance in µm by which each nucleus is grown into the cell whose
        transcripts are spread over the bins.
    bins_angle_deg
        With ``bins_um``: rotation of the bin grid on the image in degrees (Space Ranger's
        grid is rarely aligned with the image axes).

    Returns
    -------
    SpatialData
        With elements (keys from :mod:`scellst.constants`):

        - ``IMAGE_KEY`` (``"he"``): RGB uint8 image, channels ``r, g, b`` (multiscale when the
          largest side exceeds 4096 pixels);
        - ``SPOTS_KEY``: spot circles (centres in pixels, ``radius`` column), index ``0..S-1``;
        - ``SPOTS_TABLE_KEY``: raw counts (CSR, int32), spots x genes, linked to the spots, with
          obs ``SPOT_ID``, ``n_cells`` (true number of cells) and ``size_factor``;
        - ``TRUE_LABELS_KEY``: nucleus label image, 0 = background, ``1..N`` = cells;
        - ``TRUE_CELLS_KEY``: nucleus polygons indexed by the same cell ids;
        - ``TRUE_EXPRESSION_KEY``: cells x genes, ``X`` = log1p of the expected expression
          normalised to 1e4 per cell, ``layers["rate"]`` = expected counts, obs ``CELL_ID``,
          ``CELL_TYPE_COLUMN``, ``tissue_region``, ``area_um2``, ``hematoxylin`` (nucleus
          darkness), ``SPOT_COLUMN`` (spot of the centroid, ``NO_SPOT`` if none); ``uns`` holds
          ``marker_genes``, ``morphology_genes`` and the generation parameters (``synthetic``).

        With ``bins_um``:

        - ``SPOTS_KEY`` holds square polygons (no ``radius``), one per bin under tissue, index
          ``0..B-1``; ``SPOTS_TABLE_KEY`` has obs ``array_row``, ``array_col`` (the bin on the
          grid), ``in_tissue``, ``n_cells`` (cells whose centroid is in the bin), ``size_factor``
          and ``uns["scellst"]`` with ``spot_shape="square"``, ``spot_size_um``,
          ``bin_size_um``, ``microns_per_pixel`` and ``bin_grid``
          (:meth:`scellst.mil.bins.BinGrid.to_dict`);
        - ``TRUE_CELL_BOUNDARIES_KEY``: the cells (nuclei dilated) that spread the transcripts;
        - the truth table also has ``layers["counts"]`` (CSR int32: each cell's transcripts
          captured in the bins; summed over cells they equal the bins' counts),
          ``obsm["bin_overlap"]`` (CSR cells x bins: fraction of each cell in each bin),
          obs ``in_bins_fraction`` (its row sums), and ``SPOT_COLUMN`` is the bin of the
          centroid.

        Every element maps to ``"global"`` by identity and to ``"microns"`` by a scale.
        Coordinates follow SpatialData's image convention: pixel ``(row i, column j)`` covers
        ``[j, j + 1) x [i, i + 1)`` (centre ``x = j + 0.5, y = i + 0.5``).

    Examples
    --------
    >>> import scellst as sst
    >>> sdata = sst.datasets.synthetic(shape=(1024, 1024), seed=0)
    >>> sst.io.microns_per_pixel(sdata)
    0.5
    >>> truth = sdata["truth_expression"]
    >>> truth.obs["cell_type"].value_counts()  # doctest: +SKIP
    >>> hd = sst.datasets.synthetic(shape=(1024, 1024), seed=0, bins_um=8)  # same cells, 8 µm bins
    >>> hd["spots_table"].uns["scellst"]["spot_shape"]
    'square'
    """
    height, width = (int(s) for s in shape)
    if height < 64 or width < 64:
        raise ValueError(f"shape must be at least (64, 64) pixels, got {shape!r}.")
    mpp = float(microns_per_pixel)
    if not np.isfinite(mpp) or mpp <= 0:
        raise ValueError(f"microns_per_pixel must be positive, got {microns_per_pixel!r}.")
    if int(n_genes) < 2 + len(CELL_TYPES):
        raise ValueError(
            f"n_genes must be at least {2 + len(CELL_TYPES)} (one marker per cell type and two "
            f"morphology genes), got {n_genes!r}."
        )
    for name, value in {
        "spot_diameter_um": spot_diameter_um,
        "spot_pitch_um": spot_pitch_um,
        "cell_spacing_um": cell_spacing_um,
        "nb_dispersion": nb_dispersion,
        "counts_per_cell": counts_per_cell,
    }.items():
        if not np.isfinite(value) or value <= 0:
            raise ValueError(f"{name} must be a positive number, got {value!r}.")
    if spot_diameter_um > spot_pitch_um:
        raise ValueError("spot_diameter_um must not exceed spot_pitch_um (spots would overlap).")
    if library_size_cv < 0 or not 0 < tissue_fraction <= 1:
        raise ValueError("library_size_cv must be >= 0 and tissue_fraction in (0, 1].")
    if bins_um is not None:
        bins_um = float(bins_um)
        if not np.isfinite(bins_um) or bins_um <= 0:
            raise ValueError(f"bins_um must be a positive number of µm, got {bins_um!r}.")
        if not np.isfinite(cell_dilation_um) or cell_dilation_um < 0:
            raise ValueError(f"cell_dilation_um must be >= 0, got {cell_dilation_um!r}.")
        if not np.isfinite(bins_angle_deg):
            raise ValueError(f"bins_angle_deg must be finite, got {bins_angle_deg!r}.")

    rng = np.random.default_rng(seed)
    extent_um = (height * mpp, width * mpp)

    # 1. physical layout and candidate nuclei (µm; independent of the pixel size)
    layout = _render.make_layout(rng, extent_um, tissue_fraction)
    candidates = _render.candidate_nuclei(rng, layout, extent_um, float(cell_spacing_um))
    genes = _gene_model(rng, int(n_genes))
    spots_um, spot_rowcol = _spot_grid(layout, extent_um, spot_pitch_um, spot_diameter_um)
    # drawn with bins too, so that the cells' expression (drawn next) does not depend on them
    size_factor = _size_factors(rng, len(spots_um), library_size_cv)
    render_rng = np.random.default_rng([seed, 1])  # pixel-level noise, drawn separately
    count_rng = np.random.default_rng([seed, 2])

    # 2. nuclei in pixels: rasterise, drop overlapping ones, label in (y, x) order
    raster = _render.rasterize(candidates, mpp, (height, width))
    keep = _render.resolve_overlaps(candidates, raster, (height, width))
    kept = np.flatnonzero(keep)
    kept = kept[np.lexsort((candidates.x[kept], candidates.y[kept]))]
    nuc = candidates.take(kept)
    new_id = np.zeros(len(candidates), dtype=np.int32)
    new_id[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)
    sel = raster.inside & keep[raster.owner]
    pix_flat = raster.flat[sel]
    pix_id = new_id[raster.owner[sel]]
    del raster
    labels = np.zeros((height, width), dtype=np.int32)
    labels.reshape(-1)[pix_flat] = pix_id

    n_cells = len(nuc)
    area_px = np.bincount(pix_id, minlength=n_cells + 1)[1:].astype(np.float64)
    py, px = np.divmod(pix_flat, width)
    # centroids in continuous pixel coordinates (pixel j is centred at j + 0.5)
    cen_x = np.bincount(pix_id, weights=px, minlength=n_cells + 1)[1:] / np.maximum(area_px, 1)
    cen_y = np.bincount(pix_id, weights=py, minlength=n_cells + 1)[1:] / np.maximum(area_px, 1)
    cen_x += 0.5
    cen_y += 0.5
    del py, px, pix_flat, pix_id
    area_um2 = area_px * mpp**2

    # 3. image
    image = _render.render(render_rng, layout, nuc, labels, mpp)

    # 4. expression, spots and counts
    rate = _cell_rates(rng, genes, nuc, area_um2, float(counts_per_cell))
    nuclei = _render.polygons(nuc, mpp)
    centroids = np.column_stack([cen_x, cen_y])
    if bins_um is None:
        spots_px = spots_um / mpp
        radius_px = spot_diameter_um / 2 / mpp
        cell_spot = _assign_spots(centroids, spots_px, radius_px)
        counts, n_in_spot = _spot_counts(count_rng, rate, cell_spot, size_factor, nb_dispersion)
    else:
        from ._synthetic_hd import make_bins

        hd = make_bins(
            layout=layout, nuclei=nuclei, centroids=centroids, rate=rate, mpp=mpp,
            shape=(height, width), bins_um=bins_um, angle_deg=float(bins_angle_deg),
            cell_dilation_um=float(cell_dilation_um), library_size_cv=float(library_size_cv),
            theta=float(nb_dispersion), size_rng=np.random.default_rng([seed, 3]),
            count_rng=count_rng,
        )  # fmt: skip
        cell_spot = hd.cell_bin

    # 5. SpatialData

    def transformations() -> dict:  # fresh objects for every element
        return {"global": Identity(), MICRONS_CS: microns_scale(mpp)}

    scale_factors = [2, 2] if max(height, width) > _MULTISCALE_ABOVE else None
    if scale_factors is not None:
        while max(height, width) / np.prod(scale_factors) > 2048:
            scale_factors.append(2)
    image_el = Image2DModel.parse(
        image,
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        scale_factors=scale_factors,
        chunks=(3, 1024, 1024),
        transformations=transformations(),
    )
    labels_el = Labels2DModel.parse(
        labels, dims=("y", "x"), chunks=(1024, 1024), transformations=transformations()
    )
    ids = np.arange(1, n_cells + 1, dtype=np.int64)
    cells_gdf = gpd.GeoDataFrame(geometry=nuclei, index=pd.Index(ids))
    cells_el = ShapesModel.parse(cells_gdf, transformations=transformations())
    shapes = {TRUE_CELLS_KEY: cells_el}
    if bins_um is None:
        spots_el = ShapesModel.parse(
            spots_px,
            geometry=0,
            radius=np.full(len(spots_px), radius_px),
            index=np.arange(len(spots_px), dtype=np.int64),
            transformations=transformations(),
        )
    else:
        spots_el = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=hd.squares, index=pd.RangeIndex(len(hd.bins))),
            transformations=transformations(),
        )
        shapes[TRUE_CELL_BOUNDARIES_KEY] = ShapesModel.parse(
            gpd.GeoDataFrame(geometry=hd.cell_shapes, index=pd.Index(ids)),
            transformations=transformations(),
        )
    shapes[SPOTS_KEY] = spots_el

    params = {
        "seed": int(seed),
        "shape": [height, width],
        "microns_per_pixel": mpp,
        "n_genes": int(n_genes),
        "spot_diameter_um": float(spot_diameter_um),
        "spot_pitch_um": float(spot_pitch_um),
        "cell_spacing_um": float(cell_spacing_um),
        "nb_dispersion": float(nb_dispersion),
        "library_size_cv": float(library_size_cv),
        "counts_per_cell": float(counts_per_cell),
        "tissue_fraction": float(tissue_fraction),
        "cell_types": list(CELL_TYPES),
        "tissue_regions": list(TISSUE_REGIONS),
        "morphology_effect": _MORPH_EFFECT,
        "pixel_centre": "pixel (row i, column j) covers [j, j+1) x [i, i+1), centre (j+0.5, i+0.5)",
    }
    if bins_um is not None:
        params.update(
            bins_um=bins_um,
            cell_dilation_um=float(cell_dilation_um),
            bins_angle_deg=float(bins_angle_deg),
        )
    truth = _truth_table(genes, nuc, rate, ids, area_um2, centroids, cell_spot, params)
    if bins_um is None:
        spots_table = _spots_table(genes, counts, spots_px, spot_rowcol, n_in_spot, size_factor)
    else:
        truth.layers["counts"] = hd.cell_counts
        truth.obsm[BIN_OVERLAP_OBSM] = hd.overlap
        truth.obs["in_bins_fraction"] = np.asarray(hd.overlap.sum(1)).ravel()
        spots_table = _spots_table(
            genes, hd.counts, hd.grid.centres(hd.bins), hd.bins, hd.n_cells, hd.size_factor
        )
        spots_table.obs["in_tissue"] = np.ones(len(hd.bins), dtype=np.int64)
        spots_table.obs_names = [f"bin_{i}" for i in range(len(hd.bins))]
        spots_table.uns[UNS_KEY] = {
            "reader": "synthetic",
            "microns_per_pixel": mpp,
            "bin_size_um": bins_um,
            SPOT_SHAPE_KEY: SPOT_SHAPE_SQUARE,
            SPOT_SIZE_KEY: bins_um,
            BIN_GRID_KEY: hd.grid.to_dict(),
        }
    return SpatialData(
        images={IMAGE_KEY: image_el},
        labels={TRUE_LABELS_KEY: labels_el},
        shapes=shapes,
        tables={TRUE_EXPRESSION_KEY: truth, SPOTS_TABLE_KEY: spots_table},
    )


# --- genes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Genes:
    names: list[str]
    profile: np.ndarray  # (n_types, n_genes) relative expression of an average cell of each type
    markers: dict[str, list[str]]  # cell type -> marker gene names
    area_gene: int  # column of the gene that follows nucleus area
    hema_gene: int  # column of the gene that follows nucleus hematoxylin darkness


def _gene_model(rng: np.random.Generator, n_genes: int) -> _Genes:
    n_types = len(CELL_TYPES)
    per_type = min(_MAX_MARKERS, (n_genes - 2) // n_types)
    markers = {t: _MARKERS[t][:per_type] for t in CELL_TYPES}
    n_background = n_genes - 2 - per_type * n_types
    names = [g for t in CELL_TYPES for g in markers[t]] + [_MORPH_AREA_GENE, _MORPH_HEMA_GENE]
    names += [f"GENE_{i + 1:03d}" for i in range(n_background)]

    profile = np.empty((n_types, n_genes))
    # background genes: gene-wise level, moderately modulated by cell type
    bg = slice(per_type * n_types + 2, n_genes)
    level = np.exp(rng.normal(0.0, 0.8, n_background))
    profile[:, bg] = level[None, :] * np.exp(rng.normal(0.0, 0.5, (n_types, n_background)))
    # markers: high in their own type, ~30-100x lower elsewhere
    for ti in range(n_types):
        cols = slice(ti * per_type, (ti + 1) * per_type)
        high = 12.0 * np.exp(rng.normal(0.0, 0.3, per_type))
        low = np.exp(rng.normal(np.log(0.02), 0.4, (n_types, per_type)))
        profile[:, cols] = high[None, :] * low
        profile[ti, cols] = high
    # morphology genes: expressed everywhere, type-modulated
    area_gene, hema_gene = per_type * n_types, per_type * n_types + 1
    profile[:, [area_gene, hema_gene]] = 5.0 * np.exp(rng.normal(0.0, 0.3, (n_types, 2)))
    # scale each type to its RNA content
    library = np.array([_TYPE_LIBRARY[t] for t in CELL_TYPES])
    profile *= (library / profile.sum(1))[:, None]
    return _Genes(names, profile, markers, area_gene, hema_gene)


def _within_type_z(values: np.ndarray, cell_type: np.ndarray) -> np.ndarray:
    z = np.zeros_like(values, dtype=np.float64)
    for t in np.unique(cell_type):
        m = cell_type == t
        v = values[m]
        sd = v.std()
        z[m] = (v - v.mean()) / sd if sd > 0 else 0.0
    return z


def _cell_rates(
    rng: np.random.Generator,
    genes: _Genes,
    nuc: _render.Nuclei,
    area_um2: np.ndarray,
    counts_per_cell: float,
) -> np.ndarray:
    """Expected counts per cell and gene: type profile x jitter x morphology link."""
    n, g = len(nuc), len(genes.names)
    rate = genes.profile[nuc.cell_type] * counts_per_cell
    rate *= np.exp(rng.normal(0.0, _CELL_JITTER, (n, g)) - _CELL_JITTER**2 / 2)
    if n:
        z_area = _within_type_z(np.log(np.maximum(area_um2, 1e-9)), nuc.cell_type)
        z_hema = _within_type_z(np.log(nuc.darkness), nuc.cell_type)
        rate[:, genes.area_gene] *= np.exp(_MORPH_EFFECT * z_area - _MORPH_EFFECT**2 / 2)
        rate[:, genes.hema_gene] *= np.exp(_MORPH_EFFECT * z_hema - _MORPH_EFFECT**2 / 2)
    return rate.astype(np.float32)


# --- spots ---------------------------------------------------------------------------------------
def _spot_grid(
    layout: _render.Layout, extent_um: tuple[float, float], pitch: float, diameter: float
) -> tuple[np.ndarray, np.ndarray]:
    """Centres (µm) and (array_row, array_col) of hexagonal-grid spots lying over tissue."""
    h_um, w_um = extent_um
    r = diameter / 2
    dy = pitch * np.sqrt(3) / 2
    n_rows = int(np.floor((h_um - 2 * r) / dy)) + 1
    n_cols = int(np.floor((w_um - 2 * r - pitch / 2) / pitch)) + 1
    if n_rows < 1 or n_cols < 1:
        return np.zeros((0, 2)), np.zeros((0, 2), dtype=np.int64)
    # centre the grid on the slide
    y0 = (h_um - (n_rows - 1) * dy) / 2
    x0 = (w_um - (n_cols - 1) * pitch - pitch / 2) / 2
    rows, cols = np.meshgrid(np.arange(n_rows), np.arange(n_cols), indexing="ij")
    x = x0 + (cols + 0.5 * (rows % 2)) * pitch
    y = y0 + rows * dy
    xy = np.column_stack([x.ravel(), y.ravel()])
    rowcol = np.column_stack([rows.ravel(), 2 * cols.ravel() + rows.ravel() % 2])
    # keep the spots with enough tissue under them (Visium keeps the spots "under tissue")
    cover = cv2.GaussianBlur(
        (layout.tissue > 0).astype(np.float32), (0, 0), max(r / 2 / _render._COARSE_UM, 0.5)
    )
    under = _render._sample(cover, xy[:, 0], xy[:, 1]) >= 0.4
    return xy[under], rowcol[under]


def _size_factors(rng: np.random.Generator, n: int, cv: float) -> np.ndarray:
    sigma2 = np.log1p(cv**2)
    return np.exp(rng.normal(-sigma2 / 2, np.sqrt(sigma2), n))


def _assign_spots(centroids: np.ndarray, spots: np.ndarray, radius: float) -> np.ndarray:
    out = np.full(len(centroids), NO_SPOT, dtype=np.int64)
    if len(spots) == 0 or len(centroids) == 0:
        return out
    dist, idx = cKDTree(spots).query(centroids, k=1, distance_upper_bound=radius)
    inside = np.isfinite(dist) & (dist <= radius)
    out[inside] = idx[inside]
    return out


def _spot_counts(
    rng: np.random.Generator,
    rate: np.ndarray,
    cell_spot: np.ndarray,
    size_factor: np.ndarray,
    theta: float,
) -> tuple[sparse.csr_matrix, np.ndarray]:
    n_spots, n_genes = len(size_factor), rate.shape[1]
    in_spot = cell_spot != NO_SPOT
    membership = sparse.csr_matrix(
        (np.ones(int(in_spot.sum())), (cell_spot[in_spot], np.flatnonzero(in_spot))),
        shape=(n_spots, len(rate)),
    )
    n_cells = np.asarray(membership.sum(1)).ravel().astype(np.int64)
    mu = np.asarray(membership @ rate.astype(np.float64)) * size_factor[:, None]
    lam = rng.gamma(theta, mu / theta) if n_spots else mu
    counts = rng.poisson(lam).astype(np.int32) if n_spots else np.zeros((0, n_genes), np.int32)
    return sparse.csr_matrix(counts, dtype=np.int32), n_cells


# --- tables --------------------------------------------------------------------------------------
def _truth_table(
    genes: _Genes,
    nuc: _render.Nuclei,
    rate: np.ndarray,
    ids: np.ndarray,
    area_um2: np.ndarray,
    centroids: np.ndarray,
    cell_spot: np.ndarray,
    params: dict,
) -> ad.AnnData:
    total = rate.sum(1, keepdims=True)
    x = np.log1p(rate / np.maximum(total, 1e-12) * 1e4).astype(np.float32)
    obs = pd.DataFrame(
        {
            CELL_ID: ids,
            REGION_KEY: pd.Categorical([TRUE_CELLS_KEY] * len(ids)),
            CELL_TYPE_COLUMN: pd.Categorical.from_codes(nuc.cell_type, categories=CELL_TYPES),
            "tissue_region": pd.Categorical.from_codes(nuc.region, categories=TISSUE_REGIONS),
            "area_um2": area_um2.astype(np.float64),
            "hematoxylin": nuc.darkness.astype(np.float64),
            SPOT_COLUMN: cell_spot.astype(np.int64),
            SPOT_ELEMENT_COLUMN: pd.Categorical([SPOTS_KEY] * len(ids)),
        },
        index=pd.Index(ids.astype(str)),
    )
    adata = ad.AnnData(
        X=x,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes.names)),
        layers={"rate": rate.astype(np.float32)},
        obsm={SPATIAL_OBSM: centroids.astype(np.float64)},
        uns={
            "marker_genes": {t: list(v) for t, v in genes.markers.items()},
            "morphology_genes": [genes.names[genes.area_gene], genes.names[genes.hema_gene]],
            "synthetic": params,
        },
    )
    return TableModel.parse(
        adata, region=TRUE_CELLS_KEY, region_key=REGION_KEY, instance_key=CELL_ID
    )


def _spots_table(
    genes: _Genes,
    counts: sparse.csr_matrix,
    spots_px: np.ndarray,
    rowcol: np.ndarray,
    n_cells: np.ndarray,
    size_factor: np.ndarray,
) -> ad.AnnData:
    n = counts.shape[0]
    obs = pd.DataFrame(
        {
            SPOT_ID: np.arange(n, dtype=np.int64),
            REGION_KEY: pd.Categorical([SPOTS_KEY] * n),
            "n_cells": n_cells.astype(np.int64),
            "size_factor": size_factor.astype(np.float64),
            "array_row": rowcol[:, 0].astype(np.int64),
            "array_col": rowcol[:, 1].astype(np.int64),
        },
        index=pd.Index([f"spot_{i}" for i in range(n)]),
    )
    adata = ad.AnnData(
        X=counts,
        obs=obs,
        var=pd.DataFrame(index=pd.Index(genes.names)),
        obsm={SPATIAL_OBSM: spots_px.astype(np.float64)},
    )
    return TableModel.parse(adata, region=SPOTS_KEY, region_key=REGION_KEY, instance_key=SPOT_ID)

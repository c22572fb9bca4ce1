"""Tests of ``sst.datasets.synthetic``: structure, ground truth and the properties the pipeline needs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shapely
import spatialdata
import xarray as xr
from scipy import ndimage, sparse
from skimage.color import rgb2hed
from spatialdata.models import get_table_keys
from spatialdata.transformations import get_transformation

import scellst as sst
from scellst._sdata import image_level0
from scellst.constants import (
    CELL_ID,
    CELL_TYPE_COLUMN,
    IMAGE_KEY,
    MICRONS_CS,
    NO_SPOT,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_ID,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    TRUE_CELLS_KEY,
    TRUE_EXPRESSION_KEY,
    TRUE_LABELS_KEY,
)

SHAPE = (768, 768)
CELL_TYPES = ["tumour", "lymphocyte", "fibroblast", "macrophage"]


@pytest.fixture(scope="module")
def sdata():
    return sst.datasets.synthetic(shape=SHAPE, seed=0)


def _arrays(sd):
    return (
        np.asarray(sd[IMAGE_KEY].data),
        np.asarray(sd[TRUE_LABELS_KEY].data),
        sd[SPOTS_TABLE_KEY].X.toarray(),
        sd[TRUE_EXPRESSION_KEY].layers["rate"],
    )


def _per_cell_hematoxylin(sd) -> np.ndarray:
    rgb = np.moveaxis(np.asarray(sd[IMAGE_KEY].data), 0, -1)
    labels = np.asarray(sd[TRUE_LABELS_KEY].data)
    ids = sd[TRUE_EXPRESSION_KEY].obs[CELL_ID].to_numpy()
    return ndimage.mean(rgb2hed(rgb)[..., 0], labels, ids)


def test_deterministic_and_seeded(sdata):
    again = sst.datasets.synthetic(shape=SHAPE, seed=0)
    for a, b in zip(_arrays(sdata), _arrays(again), strict=True):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(sdata[TRUE_EXPRESSION_KEY].obs, again[TRUE_EXPRESSION_KEY].obs)
    other = sst.datasets.synthetic(shape=SHAPE, seed=1)
    assert not np.array_equal(_arrays(sdata)[1], _arrays(other)[1])
    assert not np.array_equal(_arrays(sdata)[0], _arrays(other)[0])


def test_elements_and_links(sdata):
    assert set(sdata.images) == {IMAGE_KEY}
    assert set(sdata.labels) == {TRUE_LABELS_KEY}
    assert set(sdata.shapes) == {TRUE_CELLS_KEY, SPOTS_KEY}
    assert set(sdata.tables) == {TRUE_EXPRESSION_KEY, SPOTS_TABLE_KEY}

    image = sdata[IMAGE_KEY]
    assert isinstance(image, xr.DataArray)  # single scale below 4096 px
    assert image.dims == ("c", "y", "x") and image.shape == (3, *SHAPE)
    assert image.dtype == np.uint8
    assert list(image.coords["c"].values) == ["r", "g", "b"]
    labels = sdata[TRUE_LABELS_KEY]
    assert labels.dims == ("y", "x") and labels.dtype == np.int32

    for key in (IMAGE_KEY, TRUE_LABELS_KEY, TRUE_CELLS_KEY, SPOTS_KEY):
        transforms = get_transformation(sdata[key], get_all=True)
        assert set(transforms) == {"global", MICRONS_CS}
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.5)

    truth = sdata[TRUE_EXPRESSION_KEY]
    assert get_table_keys(truth) == (TRUE_CELLS_KEY, REGION_KEY, CELL_ID)
    n = truth.n_obs
    assert n > 300
    ids = truth.obs[CELL_ID].to_numpy()
    np.testing.assert_array_equal(ids, np.arange(1, n + 1))
    np.testing.assert_array_equal(sdata[TRUE_CELLS_KEY].index.to_numpy(), ids)
    assert set(np.unique(np.asarray(labels.data))) == {0, *ids.tolist()}
    assert isinstance(truth.obs[CELL_TYPE_COLUMN].dtype, pd.CategoricalDtype)
    assert list(truth.obs[CELL_TYPE_COLUMN].cat.categories) == CELL_TYPES
    assert set(truth.obs[CELL_TYPE_COLUMN]) == set(CELL_TYPES)
    assert truth.X.dtype == np.float32 and truth.layers["rate"].dtype == np.float32
    np.testing.assert_allclose(
        np.expm1(truth.X).sum(1), 1e4, rtol=1e-3
    )  # log1p of rates normalised to 1e4
    assert truth.obsm[SPATIAL_OBSM].shape == (n, 2)
    assert truth.var_names.is_unique and truth.n_vars == 60
    markers = truth.uns["marker_genes"]
    assert set(markers) == set(CELL_TYPES)
    assert all(len(g) == 5 and set(g) <= set(truth.var_names) for g in markers.values())
    assert len(truth.uns["morphology_genes"]) == 2
    assert truth.uns["synthetic"]["seed"] == 0

    spots = sdata[SPOTS_TABLE_KEY]
    assert get_table_keys(spots) == (SPOTS_KEY, REGION_KEY, SPOT_ID)
    circles = sdata[SPOTS_KEY]
    assert "radius" in circles.columns
    np.testing.assert_allclose(circles["radius"], 55.0 / 2 / 0.5)
    np.testing.assert_array_equal(circles.index.to_numpy(), np.arange(len(circles)))
    np.testing.assert_array_equal(spots.obs[SPOT_ID].to_numpy(), np.arange(len(circles)))
    assert sparse.issparse(spots.X) and spots.X.dtype == np.int32
    np.testing.assert_allclose(
        spots.obsm[SPATIAL_OBSM], np.column_stack([circles.geometry.x, circles.geometry.y])
    )
    # hexagonal grid with the requested pitch
    xy = spots.obsm[SPATIAL_OBSM]
    d = np.sort(np.linalg.norm(xy[:, None] - xy[None], axis=-1), axis=1)[:, 1]
    np.testing.assert_allclose(d.min(), 100.0 / 0.5, rtol=1e-6)
    assert spots.obs["n_cells"].sum() == (truth.obs[SPOT_COLUMN] != NO_SPOT).sum()


def test_labels_match_polygons_and_centroids(sdata):
    truth = sdata[TRUE_EXPRESSION_KEY]
    labels = np.asarray(sdata[TRUE_LABELS_KEY].data)
    ids = truth.obs[CELL_ID].to_numpy()
    counts = np.bincount(labels.ravel(), minlength=ids.max() + 1)[ids]
    polys = sdata[TRUE_CELLS_KEY].geometry
    assert polys.is_valid.all()
    ratio = polys.area.to_numpy() / counts
    assert np.median(np.abs(ratio - 1)) < 0.02
    assert np.all(np.abs(ratio - 1) < 0.1)
    np.testing.assert_allclose(truth.obs["area_um2"], counts * 0.5**2)
    # centroids: label centroids, pixel (i, j) centred at (j + 0.5, i + 0.5) as in SpatialData
    cy, cx = np.array(ndimage.center_of_mass(labels > 0, labels, ids)).T + 0.5
    np.testing.assert_allclose(truth.obsm[SPATIAL_OBSM], np.column_stack([cx, cy]), atol=1e-6)
    pc = polys.centroid
    assert np.max(np.hypot(pc.x - cx, pc.y - cy)) < 1.0
    assert np.median(np.hypot(pc.x - cx, pc.y - cy)) < 0.2
    # the polygons contain exactly the pixel centres of their labels (up to boundary pixels)
    ious = []
    for i, sl in list(enumerate(ndimage.find_objects(labels), 1))[:200]:
        sl = tuple(slice(max(s.start - 2, 0), s.stop + 2) for s in sl)
        yy, xx = np.mgrid[sl]
        inside = shapely.contains_xy(polys.loc[i], xx + 0.5, yy + 0.5)
        mask = labels[sl] == i
        ious.append((inside & mask).sum() / (inside | mask).sum())
    assert np.min(ious) > 0.95 and np.median(ious) > 0.99
    # nuclei never overlap: each label is one connected piece
    n_pieces = [
        ndimage.label(labels[sl] == i)[1] for i, sl in enumerate(ndimage.find_objects(labels), 1)
    ]
    assert max(n_pieces) == 1


def test_spot_membership_and_counts(sdata):
    truth = sdata[TRUE_EXPRESSION_KEY]
    spots = sdata[SPOTS_TABLE_KEY]
    circles = sdata[SPOTS_KEY]
    centres = circles[["geometry"]].get_coordinates().to_numpy()
    radius = circles["radius"].to_numpy()
    cell_xy = truth.obsm[SPATIAL_OBSM]
    dist = np.linalg.norm(cell_xy[:, None] - centres[None], axis=-1)
    inside = dist <= radius[None]
    expected_spot = np.where(inside.any(1), inside.argmax(1), NO_SPOT)
    np.testing.assert_array_equal(truth.obs[SPOT_COLUMN].to_numpy(), expected_spot)
    np.testing.assert_array_equal(spots.obs["n_cells"], inside.sum(0))
    assert spots.obs["n_cells"].mean() > 5

    rate = truth.layers["rate"].astype(np.float64)
    expected = (
        np.stack([rate[expected_spot == s].sum(0) for s in range(spots.n_obs)])
        * spots.obs["size_factor"].to_numpy()[:, None]
    )
    observed = spots.X.toarray().astype(np.float64)
    assert np.corrcoef(observed.sum(1), expected.sum(1))[0, 1] > 0.9
    assert np.corrcoef(observed.ravel(), expected.ravel())[0, 1] > 0.8
    # negative binomial around the expectation: unbiased, Pearson residuals of unit variance
    assert observed.sum() / expected.sum() == pytest.approx(1.0, rel=0.1)
    theta = sdata[TRUE_EXPRESSION_KEY].uns["synthetic"]["nb_dispersion"]
    mu = expected[expected > 0]
    resid = (observed[expected > 0] - mu) / np.sqrt(mu + mu**2 / theta)
    assert abs(resid.mean()) < 0.1
    assert 0.8 < resid.var() < 1.2
    assert np.all(observed[expected.sum(1) == 0] == 0)


def test_marker_and_morphology_genes(sdata):
    truth = sdata[TRUE_EXPRESSION_KEY]
    expr = pd.DataFrame(truth.X, columns=truth.var_names)
    mean = expr.groupby(truth.obs[CELL_TYPE_COLUMN].to_numpy()).mean()
    for cell_type, genes in truth.uns["marker_genes"].items():
        assert (mean[list(genes)].idxmax() == cell_type).all()
        others = mean.drop(index=cell_type)[list(genes)].max()
        assert (mean.loc[cell_type, list(genes)] > others + 2).all()  # > e^2-fold, in log1p
    area_gene, hema_gene = truth.uns["morphology_genes"]
    types = truth.obs[CELL_TYPE_COLUMN].to_numpy()
    hem = _per_cell_hematoxylin(sdata)
    for cell_type in CELL_TYPES:
        m = types == cell_type
        area = np.log(truth.obs["area_um2"].to_numpy()[m])
        assert np.corrcoef(area, truth[m, area_gene].X.ravel())[0, 1] > 0.6
        # the darkness gene follows the hematoxylin measured on the image
        assert np.corrcoef(hem[m], truth[m, hema_gene].X.ravel())[0, 1] > 0.4


def test_cell_types_differ_in_morphology(sdata):
    truth = sdata[TRUE_EXPRESSION_KEY]
    obs = truth.obs.assign(hem=_per_cell_hematoxylin(sdata))
    g = obs.groupby(CELL_TYPE_COLUMN, observed=True)
    area, hem = g["area_um2"].mean(), g["hem"].mean()
    # tumour nuclei are the largest, lymphocytes the smallest
    assert area["tumour"] > 1.5 * max(area["fibroblast"], area["macrophage"])
    assert area["lymphocyte"] < 0.7 * min(area["fibroblast"], area["macrophage"])
    # lymphocytes the darkest, macrophages the palest
    assert hem["lymphocyte"] > 1.2 * max(hem["tumour"], hem["fibroblast"])
    assert hem["macrophage"] < 0.85 * min(hem["tumour"], hem["fibroblast"])
    # every pair of types is separated by area or by darkness (in pooled SDs)
    sd_area, sd_hem = obs["area_um2"].std(), obs["hem"].std()
    for i, a in enumerate(CELL_TYPES):
        for b in CELL_TYPES[i + 1 :]:
            gap = max(abs(area[a] - area[b]) / sd_area, abs(hem[a] - hem[b]) / sd_hem)
            assert gap > 0.3, (a, b)
    # nuclei are darker in hematoxylin than the tissue around them, which is darker than glass
    rgb = np.moveaxis(np.asarray(sdata[IMAGE_KEY].data), 0, -1)
    h = rgb2hed(rgb)[..., 0]
    labels = np.asarray(sdata[TRUE_LABELS_KEY].data)
    assert h[labels > 0].mean() > 3 * h[labels == 0].mean()
    white = (rgb.min(-1) > 235).mean()
    assert 0.01 < white < 0.6  # some background, mostly tissue


def test_microns_per_pixel_consistency(sdata):
    fine = sst.datasets.synthetic(
        shape=(SHAPE[0] * 2, SHAPE[1] * 2), microns_per_pixel=0.25, seed=0
    )
    assert sst.io.microns_per_pixel(fine) == pytest.approx(0.25)
    t_coarse, t_fine = sdata[TRUE_EXPRESSION_KEY], fine[TRUE_EXPRESSION_KEY]
    # the same tissue: same spots, nearly the same cells, same areas in µm²
    assert fine[SPOTS_TABLE_KEY].n_obs == sdata[SPOTS_TABLE_KEY].n_obs
    np.testing.assert_allclose(
        fine[SPOTS_TABLE_KEY].obsm[SPATIAL_OBSM], 2 * sdata[SPOTS_TABLE_KEY].obsm[SPATIAL_OBSM]
    )
    np.testing.assert_allclose(fine[SPOTS_KEY]["radius"], 2 * sdata[SPOTS_KEY]["radius"])
    assert abs(t_fine.n_obs - t_coarse.n_obs) < 0.05 * t_coarse.n_obs
    a_coarse = t_coarse.obs.groupby(CELL_TYPE_COLUMN, observed=True)["area_um2"].mean()
    a_fine = t_fine.obs.groupby(CELL_TYPE_COLUMN, observed=True)["area_um2"].mean()
    np.testing.assert_allclose(a_fine, a_coarse, rtol=0.08)
    px_coarse = a_coarse / 0.5**2
    px_fine = a_fine / 0.25**2
    np.testing.assert_allclose(px_fine / px_coarse, 4.0, rtol=0.1)


def test_zarr_round_trip(sdata, tmp_path):
    path = tmp_path / "x.zarr"
    sdata.write(path)
    back = spatialdata.read_zarr(path)
    assert set(back.tables) == {TRUE_EXPRESSION_KEY, SPOTS_TABLE_KEY}
    assert get_table_keys(back[TRUE_EXPRESSION_KEY]) == (TRUE_CELLS_KEY, REGION_KEY, CELL_ID)
    assert get_table_keys(back[SPOTS_TABLE_KEY]) == (SPOTS_KEY, REGION_KEY, SPOT_ID)
    assert sst.io.microns_per_pixel(back) == pytest.approx(0.5)
    np.testing.assert_array_equal(
        np.asarray(back[TRUE_LABELS_KEY].data), np.asarray(sdata[TRUE_LABELS_KEY].data)
    )
    np.testing.assert_array_equal(
        np.asarray(back[IMAGE_KEY].data), np.asarray(sdata[IMAGE_KEY].data)
    )
    assert back[TRUE_EXPRESSION_KEY].uns["marker_genes"]["tumour"][0] == "EPCAM"
    assert (back[SPOTS_TABLE_KEY].X != sdata[SPOTS_TABLE_KEY].X).nnz == 0
    # the annotated instances exist in the shapes
    assert set(back[TRUE_EXPRESSION_KEY].obs[CELL_ID]) == set(back[TRUE_CELLS_KEY].index)


def test_multiscale_above_4096_pixels():
    sd = sst.datasets.synthetic(shape=(128, 4200), n_genes=12, seed=2)
    image = sd[IMAGE_KEY]
    assert isinstance(image, xr.DataTree)
    assert len(image.children) >= 3
    level0 = image_level0(sd, IMAGE_KEY)
    assert level0.shape == (3, 128, 4200)
    assert sst.io.microns_per_pixel(sd) == pytest.approx(0.5)
    truth = sd[TRUE_EXPRESSION_KEY]
    assert truth.n_vars == 12
    assert all(len(g) == 2 for g in truth.uns["marker_genes"].values())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shape": (32, 32)},
        {"microns_per_pixel": 0.0},
        {"n_genes": 3},
        {"spot_diameter_um": 120.0},
        {"tissue_fraction": 0.0},
    ],
)
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        sst.datasets.synthetic(**kwargs)

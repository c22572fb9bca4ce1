"""Crops around nuclei: geometry, tiling independence, borders, anti-aliasing, lazy reading,
per-slide channel statistics."""

import cv2
import dask.array as da
import numpy as np
import pytest
import spatialdata as sd
import xarray as xr

import scellst as sst
from scellst._sdata import image_level0
from scellst.embedding.crops import (
    CropGeometry,
    exterior_coords,
    iter_crops,
    slide_channel_stats,
)


def as_image(rgb: np.ndarray, chunks: int | None = None) -> xr.DataArray:
    """(y, x, 3) uint8 -> (c, y, x) DataArray, dask-backed with ``chunks`` when given."""
    cyx = np.ascontiguousarray(np.moveaxis(rgb, -1, 0))
    data = da.from_array(cyx, chunks=(3, chunks, chunks)) if chunks else cyx
    return xr.DataArray(data, dims=("c", "y", "x"))


def crops_of(img, mpp, xy, polygons=None, **kwargs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All crops, masks and padded flags, in cell order.

    ``xy`` and ``polygons`` in OpenCV's pixel frame (pixel centres at integers, as the checks
    below with cv2 use), given to iter_crops in SpatialData's (centres at +0.5)."""
    kwargs.setdefault("progress", False)
    kwargs.setdefault("masks", polygons is not None)
    if polygons is not None:
        shifted = np.empty(len(polygons), dtype=object)
        shifted[:] = [None if r is None else r + 0.5 for r in polygons]
        polygons = shifted
    batches = list(iter_crops(img, mpp, np.asarray(xy) + 0.5, polygons, **kwargs))
    n = len(xy)
    side = batches[0].images.shape[1]
    images = np.zeros((n, side, side, 3), np.uint8)
    masks = np.zeros((n, side, side), bool)
    padded = np.zeros(n, bool)
    for b in batches:
        images[b.index] = b.images
        padded[b.index] = b.padded
        if b.masks is not None:
            masks[b.index] = b.masks
    return images, masks, padded


@pytest.fixture(scope="module")
def slide():
    """A smooth random 600x700 RGB slide, its cells (some past the border) and polygons."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (600, 700, 3)).astype(np.uint8)
    rgb = cv2.GaussianBlur(rgb, (0, 0), 1.2)
    xy = np.column_stack([rng.uniform(-15, 715, 400), rng.uniform(-15, 615, 400)])
    xy[:4] = [[0.0, 0.0], [699.0, 599.0], [-40.0, 300.0], [350.2, 300.7]]
    t = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    ring = np.column_stack([8 * np.cos(t), 6 * np.sin(t)])
    polygons = np.empty(len(xy), dtype=object)
    polygons[:] = [ring + c for c in xy]
    return rgb, xy, polygons


@pytest.mark.parametrize("image_mpp", [0.688, 0.5, 0.25, 0.3, 0.125])
def test_crops_match_an_affine_warp_and_are_centred(slide, image_mpp):
    rgb, xy, _ = slide
    crop_mpp = 0.25 if image_mpp >= 0.25 else 0.5
    geo = CropGeometry(round(18 / crop_mpp), image_mpp / crop_mpp)
    images, _, _ = crops_of(as_image(rgb), image_mpp, xy, crop_mpp=crop_mpp)
    assert images.shape[1:] == (geo.out, geo.out, 3)
    _, _, sx = geo.place(xy[:, 0])
    _, _, sy = geo.place(xy[:, 1])
    s = geo.scale
    # the crop grid is centred on the centroid within half a crop pixel (a slide pixel when
    # downsampling)
    tol = 0.5 / s if s >= 1 else 0.5
    assert np.abs(sx + (geo.out - 1) / 2 / s - xy[:, 0]).max() <= tol + 1e-9
    assert np.abs(sy + (geo.out - 1) / 2 / s - xy[:, 1]).max() <= tol + 1e-9
    if s >= 1:  # bilinear: the same pixels as one affine warp per cell, within one grey level
        white = cv2.copyMakeBorder(rgb, 64, 64, 64, 64, cv2.BORDER_CONSTANT, value=(255,) * 3)
        for i in range(0, len(xy), 7):
            m = np.array([[s, 0, -(sx[i] + 64) * s], [0, s, -(sy[i] + 64) * s]])
            ref = cv2.warpAffine(white, m, (geo.out, geo.out), flags=cv2.INTER_LINEAR)
            assert np.abs(ref.astype(int) - images[i]).max() <= 1


def test_crops_do_not_depend_on_tiling_chunks_or_threads(slide, monkeypatch):
    rgb, xy, polygons = slide
    ref = crops_of(as_image(rgb), 0.5, xy, polygons, tile_size=4096, n_jobs=1)
    for chunks, tile_size, n_jobs in [(64, 100, 2), (128, 256, 1), (256, 64, 2)]:
        got = crops_of(as_image(rgb, chunks), 0.5, xy, polygons, tile_size=tile_size, n_jobs=n_jobs)
        for a, b in zip(ref, got, strict=True):
            np.testing.assert_array_equal(a, b)  # bit-identical
    # storage chunks too large to cache are read in part, window by window
    monkeypatch.setattr("scellst.embedding.crops._CACHE_MAX_PIXELS", 100 * 100)
    got = crops_of(as_image(rgb, 256), 0.5, xy, polygons, tile_size=128, n_jobs=2)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_chunk_reader_pickles_for_distributed_workers(slide):
    import pickle

    from scellst.embedding.crops import _ChunkReader

    rgb, _, _ = slide
    img = as_image(rgb, 128)
    oy, ox = np.array([10, 300]), np.array([20, 400])
    reader = _ChunkReader(img, oy, ox, 30, [np.array([0]), np.array([1])])
    copy = pickle.loads(pickle.dumps(reader))
    for group, (y, x) in enumerate(zip(oy, ox, strict=True)):
        got = copy.window(group, int(y), int(y) + 30, int(x), int(x) + 30)
        np.testing.assert_array_equal(got, rgb[y : y + 30, x : x + 30])


@pytest.mark.slow
def test_crops_on_a_dask_distributed_cluster(slide):
    from distributed import Client, LocalCluster

    rgb, xy, polygons = slide
    ref = crops_of(as_image(rgb, 128), 0.688, xy, polygons, tile_size=256)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        got = crops_of(as_image(rgb, 128), 0.688, xy, polygons, tile_size=256)
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)


def test_borders_are_white_and_flagged(slide):
    rgb, xy, _ = slide
    images, _, padded = crops_of(as_image(rgb, 128), 0.5, xy, crop_mpp=0.25)
    assert padded[:3].all() and not padded[3]
    assert (images[0, :30, :30] == 255).all()  # beyond the top-left corner
    assert (images[1, -30:, -30:] == 255).all()  # beyond the bottom-right corner
    assert (images[2] == 255).all()  # a cell wholly outside the image
    # flagged exactly when the crop's square leaves the image (18 µm = 36 px here)
    inside = (xy[:, 0] - 18 > 0) & (xy[:, 1] - 18 > 0)
    inside &= (xy[:, 0] + 18 < 699) & (xy[:, 1] + 18 < 599)
    assert not padded[inside].any()
    assert (images[~padded] < 255).any(axis=(1, 2, 3)).all()


def test_masks_follow_the_polygon_and_are_optional(slide):
    rgb, xy, polygons = slide
    dark = rgb.copy()
    for ring in polygons[3:4]:
        cv2.fillPoly(dark, [np.round(ring * 16).astype(np.int32)], (0, 0, 0), shift=4)
    images, masks, _ = crops_of(as_image(dark), 0.5, xy[3:4], polygons[3:4], crop_mpp=0.25)
    # a 12-gon in a 4 x 3 µm-radius ellipse: 36 µm² = 576 pixels at 0.25 µm/px
    assert abs(masks[0].sum() - 576) < 40
    inner = cv2.erode(masks[0].astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    assert (images[0][inner] < 40).all()  # the mask lies on the dark nucleus drawn there
    batch = next(iter_crops(as_image(rgb), 0.5, xy[:5], None, masks=False, progress=False))
    assert batch.masks is None
    with pytest.raises(ValueError, match="polygons"):
        next(iter_crops(as_image(rgb), 0.5, xy[:5], None, progress=False))
    with pytest.raises(ValueError, match="crop_mpp"):
        next(iter_crops(as_image(rgb), 0.5, xy[:5], None, crop_mpp=0, masks=False))


def test_crops_are_centred_in_spatialdatas_pixel_frame():
    """A one-pixel nucleus at pixel (row 40, column 30): its polygon is the pixel's square,
    its centroid (30.5, 40.5); at the slide's resolution, with an odd crop, that pixel is the
    crop's centre pixel and the mask is exactly that pixel."""
    rgb = np.full((80, 80, 3), 230, np.uint8)
    rgb[40, 30] = 0
    square = np.array([[30.0, 40.0], [31.0, 40.0], [31.0, 41.0], [30.0, 41.0]])
    polygons = np.empty(1, dtype=object)
    polygons[0] = square
    batch = next(
        iter_crops(
            as_image(rgb), 0.5, np.array([[30.5, 40.5]]), polygons, crop_size_um=18.5,
            crop_mpp=0.5, progress=False,
        )
    )  # fmt: skip
    assert batch.images.shape[1] == 37
    assert (batch.images[0, 18, 18] == 0).all() and (batch.images[0].min(-1) == 0).sum() == 1
    assert batch.masks[0].sum() == 1 and batch.masks[0, 18, 18]  # neither moved nor inflated
    from scellst.embedding.crops import crop_boxes

    left, top, side = crop_boxes(np.array([[30.5, 40.5]]), 0.5, 18.5, 0.5)
    assert (left[0], top[0], side) == (12.0, 22.0, 37.0)  # pixel 30 - 18 .. 30 + 18, edges


def test_masks_cover_the_pixels_whose_centre_is_in_the_nucleus():
    """The nucleus masks are neither inflated by fillPoly nor shifted: on 200 random nuclei of
    2-10 px radius at the slide's resolution, mask area within 3 % of the pixels whose centre
    lies in the polygon on average, and they disagree on under 10 % of them."""
    from matplotlib.path import Path as MplPath

    from scellst.embedding.crops import crop_boxes

    rng = np.random.default_rng(0)
    t = np.linspace(0, 2 * np.pi, 14, endpoint=False)
    polygons = np.empty(200, dtype=object)
    xy = np.zeros((200, 2))
    for i in range(200):
        r = rng.uniform(2, 10) * (1 + 0.15 * rng.standard_normal(14))
        centre = rng.uniform(40, 360, 2)
        polygons[i] = np.column_stack([centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)])
        xy[i] = polygons[i].mean(0)
    img = xr.DataArray(np.full((3, 400, 400), 200, np.uint8), dims=("c", "y", "x"))
    masks = np.zeros((200, 37, 37), bool)
    for b in iter_crops(img, 0.5, xy, polygons, crop_size_um=18.5, crop_mpp=0.5, progress=False):
        masks[b.index] = b.masks
    left, top, _ = crop_boxes(xy, 0.5, 18.5, 0.5)
    jj, ii = np.meshgrid(np.arange(37) + 0.5, np.arange(37) + 0.5)
    ratio, disagree = [], []
    for k in range(200):
        centres = np.column_stack([left[k] + jj.ravel(), top[k] + ii.ravel()])
        truth = MplPath(polygons[k]).contains_points(centres).reshape(37, 37)
        ratio.append(masks[k].sum() / truth.sum())
        disagree.append((masks[k] ^ truth).sum() / truth.sum())
    assert abs(np.mean(ratio) - 1) < 0.03
    assert np.mean(disagree) < 0.10


@pytest.mark.parametrize("image_mpp, crop_mpp", [(0.25, 0.5), (0.3, 0.5), (0.125, 0.25)])
def test_downsampling_averages_instead_of_aliasing(image_mpp, crop_mpp):
    # a one-pixel checkerboard: any point sampling (or bilinear interpolation at these ratios)
    # gives black/white stripes or moiré; area averaging gives uniform grey
    yy, xx = np.mgrid[:400, :400]
    board = np.repeat((((yy + xx) % 2) * 255).astype(np.uint8)[..., None], 3, axis=2)
    xy = np.random.default_rng(1).uniform(100, 300, (50, 2))
    images, _, padded = crops_of(as_image(board, 128), image_mpp, xy, crop_mpp=crop_mpp)
    assert not padded.any()
    assert np.abs(images.astype(float) - 127.5).max() <= 8
    assert images.std(axis=(1, 2, 3)).max() <= 6
    # bilinear warps (the former implementation) alias: moiré, or a grey that depends on the
    # cell's sub-pixel position, far from the true average
    s, side = image_mpp / crop_mpp, images.shape[1]
    worst = 0.0
    for x, y in xy:
        m = np.array([[s, 0, side / 2 - x * s], [0, s, side / 2 - y * s]])
        warped = cv2.warpAffine(board, m, (side, side), flags=cv2.INTER_LINEAR)
        worst = max(worst, np.abs(warped - 127.5).max())
    assert worst > 60


def test_lazy_reading_decodes_only_touched_chunks_once():
    rgb = np.full((1024, 1024, 3), 200, np.uint8)
    reads: list = []

    def record(block, block_info=None):
        reads.append(tuple(block_info[0]["chunk-location"]))
        return block

    data = da.from_array(np.moveaxis(rgb, -1, 0).copy(), chunks=(3, 128, 128))
    img = xr.DataArray(data.map_blocks(record, dtype=np.uint8), dims=("c", "y", "x"))
    # cells on both sides of tile edges (tiles of 256 px), none in the bottom half
    xy = np.array([[250.0, 250.0], [262.0, 262.0], [500.0, 60.0], [515.0, 62.0], [70.0, 400.0]])
    # one worker: with two, neighbouring tiles running at the same moment may both decode a
    # shared chunk before either has cached it (harmless, but it makes the count racy)
    images, _, _ = crops_of(img, 0.5, xy, crop_mpp=0.5, tile_size=256, n_jobs=1)
    assert (images == 200).all()
    assert len(reads) == len(set(reads))  # no chunk decoded twice, though tiles share some
    assert all(r[1] < 4 for r in reads)  # nothing below y = 512, where there are no cells
    assert len(reads) < 20  # of 64 chunks


def test_slide_channel_stats_on_synthetic_slide():
    sdata = sst.datasets.synthetic(shape=(768, 768), seed=3)
    rgb = np.moveaxis(np.asarray(image_level0(sdata, "he").data), 0, -1)
    od = -np.log10((rgb.astype(float) + 1) / 256).sum(-1)
    tissue = rgb[od > 0.15] / 255.0
    exact_mean, exact_std = tissue.mean(0), tissue.std(0)
    assert 0.05 < (od <= 0.15).mean() < 0.9  # the slide has both glass and tissue

    stats = slide_channel_stats(image_level0(sdata, "he"))
    np.testing.assert_allclose(stats["mean"], exact_mean, atol=1e-6)
    np.testing.assert_allclose(stats["std"], exact_std, atol=1e-6)
    assert stats["tissue_only"] and stats["n_pixels"] == len(tissue)
    # white glass is left out: tissue is darker than the whole slide on average
    assert np.mean(stats["mean"]) < rgb.mean() / 255

    # sampled: a small pixel budget reads a few chunks, preferring those with cells
    lazy = as_image(rgb, 128)
    centres = sdata["truth_cells"].geometry.centroid
    points = np.column_stack([centres.x, centres.y])
    sampled = slide_channel_stats(lazy, points_xy=points, max_pixels=300_000, seed=0)
    assert sampled["source"] == "2 of 4 full-resolution blocks"  # 512-px grid, ~300k px
    assert sampled["n_pixels"] < len(tissue)
    np.testing.assert_allclose(sampled["mean"], exact_mean, atol=0.05)
    np.testing.assert_allclose(sampled["std"], exact_std, atol=0.05)
    assert sampled == slide_channel_stats(lazy, points_xy=points, max_pixels=300_000, seed=0)

    # the same pixels whatever the storage: in memory, other chunks, a list of levels
    assert slide_channel_stats(as_image(rgb), points_xy=points, max_pixels=300_000) == sampled
    assert slide_channel_stats(as_image(rgb, 200), points_xy=points, max_pixels=300_000) == sampled


def test_slide_channel_stats_do_not_depend_on_how_the_slide_is_stored(tmp_path):
    """A pyramidal TIFF read fresh and its zarr copy (other stored levels) give the same
    statistics, so per-slide normalisation gives the same embedding either way."""
    import spatialdata as sd
    import tifffile

    rgb = sst.datasets.synthetic(shape=(1536, 1024), seed=1)["he"].data.compute()
    rgb = np.moveaxis(np.asarray(rgb), 0, -1)
    path = tmp_path / "pyramid.tif"
    with tifffile.TiffWriter(path) as tif:
        tif.write(rgb, tile=(256, 256), photometric="rgb")
        tif.write(rgb[::4, ::4], subfiletype=1, tile=(128, 128), photometric="rgb")
    fresh = sst.io.read_image(path, microns_per_pixel=0.5)
    sst.io.write_zarr(fresh, tmp_path / "copy.zarr", image_codec="lossless")
    copy = sd.read_zarr(tmp_path / "copy.zarr")
    for budget in (384 * 256, 4_000_000):
        a = slide_channel_stats(image_level0(fresh, "he"), max_pixels=budget)
        b = slide_channel_stats(image_level0(copy, "he"), max_pixels=budget)
        assert a == b and "blocks" in a["source"]


def test_embed_stores_channel_stats_and_skips_masks(synthetic_small):
    sdata = sd.SpatialData(
        images={"he": synthetic_small["he"]}, shapes={"truth_cells": synthetic_small["truth_cells"]}
    )
    sst.pp.segment(sdata, progress=False)

    class MeanColour:
        name = "mean_colour"
        needs_masks = False

        def feature_names(self):
            return ["r", "g", "b"]

        def encode(self, batch):
            assert batch.masks is None and batch.channel_stats is not None
            return batch.images.reshape(len(batch.index), -1, 3).mean(1)

    sst.tl.embed(sdata, encoder=MeanColour(), progress=False)
    stats = sdata["sst_embedding"].uns["scellst"]["embedding"]["channel_stats"]
    assert len(stats["mean"]) == 3 and len(stats["std"]) == 3
    assert all(0 < m < 1 for m in stats["mean"]) and all(0 < s < 0.5 for s in stats["std"])


def test_exterior_coords_handles_empty_and_multipolygons():
    import shapely

    geoms = np.array(
        [
            shapely.box(0, 0, 2, 2),
            shapely.MultiPolygon([shapely.box(0, 0, 1, 1), shapely.box(5, 5, 8, 8)]),
            None,
        ],
        dtype=object,
    )
    rings = exterior_coords(geoms)
    assert rings[0].shape == (5, 2) and rings[1][:, 0].min() == 5 and rings[2] is None

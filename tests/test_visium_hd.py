"""Visium HD: the reader (real Space Ranger HD files in ../shared, and a synthetic HD folder),
the square-bin geometry of ``scellst.mil.bins`` and the synthetic slide with square bins."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import shapely
import spatialdata
from spatialdata.transformations import Identity, get_transformation

import scellst as sst
from scellst._sdata import image_level0, table_for_element, table_link
from scellst.constants import (
    ARRAY_COL,
    ARRAY_ROW,
    BIN_GRID_KEY,
    BIN_OVERLAP_OBSM,
    MICRONS_CS,
    NO_SPOT,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_COLUMN,
    SPOT_ID,
    SPOT_SHAPE_KEY,
    SPOT_SIZE_KEY,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    TRUE_CELL_BOUNDARIES_KEY,
    TRUE_EXPRESSION_KEY,
    UNS_KEY,
)
from scellst.io._scale import element_microns_per_unit
from scellst.mil.bins import (
    BinGrid,
    assign_centroids,
    coarsen_bins,
    membership_matrix,
    overlap_matrix,
    square_polygons,
)

SPACERANGER = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "spaceranger"
HD = SPACERANGER / "visium_hd"
V1 = SPACERANGER / "visium"

needs_spaceranger = pytest.mark.skipif(
    not (HD / "binned_outputs").is_dir() or not (V1 / "spatial").is_dir(),
    reason=f"Space Ranger fixtures not found at {SPACERANGER} (../shared beside the repository)",
)


def _read_quietly(*args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sdata = sst.io.read_visium_hd(*args, **kwargs)
    return sdata, [str(w.message) for w in caught if issubclass(w.category, UserWarning)]


def _side_lengths(polygons) -> np.ndarray:
    xy = shapely.get_coordinates(polygons).reshape(len(polygons), 5, 2)
    return np.linalg.norm(np.diff(xy, axis=1), axis=2)  # (n, 4)


# --- the real Space Ranger HD files -------------------------------------------------------------


@needs_spaceranger
@pytest.mark.parametrize("bin_um, n_bins", [(8, 2695), (16, 642)])
def test_read_visium_hd_fixture(bin_um, n_bins):
    folder = HD / "binned_outputs" / f"square_{bin_um:03d}um"
    factors = json.loads((folder / "spatial" / "scalefactors_json.json").read_text())
    positions = pd.read_parquet(folder / "spatial" / "tissue_positions.parquet")
    sdata, messages = _read_quietly(HD, bin_size_um=bin_um)

    shapes_key, table_key = f"visium_hd_square_{bin_um:03d}um", f"square_{bin_um:03d}um"
    assert set(sdata.shapes) == {shapes_key} and set(sdata.tables) == {table_key}
    assert set(sdata.images) == {"visium_hd_hires_image", "visium_hd_lowres_image"}
    squares, table = sdata[shapes_key], sdata[table_key]

    # bin count: the counts file's barcodes that have a position (the fixture's 16 µm counts
    # file is the 8 µm one, so 2053 of its barcodes are not 16 µm bins)
    assert len(squares) == table.n_obs == n_bins
    with h5py.File(folder / "filtered_feature_bc_matrix.h5") as f:
        n_barcodes = int(f["matrix"]["shape"][1])
    assert table.uns[UNS_KEY]["n_barcodes_without_position"] == n_barcodes - n_bins
    if n_bins < n_barcodes:
        assert any(f"{n_barcodes - n_bins} of the {n_barcodes} barcodes" in m for m in messages)

    # µm/px is the scale factors' microns_per_pixel, on the squares and in the table
    mpp = factors["microns_per_pixel"]
    assert element_microns_per_unit(sdata, shapes_key) == pytest.approx(mpp, rel=1e-12)
    assert table.uns[UNS_KEY]["microns_per_pixel"] == pytest.approx(mpp, rel=1e-12)
    hires = factors["tissue_hires_scalef"]
    assert sst.io.microns_per_pixel(sdata, "visium_hd_hires_image") == pytest.approx(mpp / hires)
    assert image_level0(sdata, "visium_hd_hires_image").shape == (3, 5575, 6000)
    assert isinstance(get_transformation(squares, "visium_hd"), Identity)
    assert isinstance(get_transformation(squares, "global"), Identity)

    # bin centres are the parquet's pixel positions, row for row (joined on the barcode)
    pos = positions.set_index("barcode").loc[table.obs_names]
    expected = pos[["pxl_col_in_fullres", "pxl_row_in_fullres"]].to_numpy()
    centroids = shapely.get_coordinates(shapely.centroid(squares.geometry.values))
    np.testing.assert_allclose(centroids, expected, rtol=0, atol=1e-6)
    np.testing.assert_allclose(table.obsm[SPATIAL_OBSM], expected, rtol=0, atol=1e-9)
    np.testing.assert_array_equal(table.obs[ARRAY_ROW], pos[ARRAY_ROW])
    np.testing.assert_array_equal(table.obs[ARRAY_COL], pos[ARRAY_COL])

    # squares: side = bin size / mpp (the scale factors' spot_diameter_fullres), along the grid
    side = bin_um / mpp
    assert side == pytest.approx(factors["spot_diameter_fullres"], rel=1e-6)
    np.testing.assert_allclose(_side_lengths(squares.geometry.values), side, rtol=1e-9)
    np.testing.assert_allclose(shapely.area(squares.geometry.values), side**2, rtol=1e-9)
    grid = BinGrid.from_dict(table.uns[UNS_KEY][BIN_GRID_KEY])
    assert np.degrees(grid.angle) == pytest.approx(-0.38, abs=0.01)  # the fixture's grid
    assert table.uns[UNS_KEY]["bin_grid_rms_px"] < 1.0
    np.testing.assert_array_equal(grid.bin_of(expected), pos[[ARRAY_ROW, ARRAY_COL]].to_numpy())
    # the fixture's 8 µm positions lie on a 16 µm grid: the reader says so
    pitch = table.uns[UNS_KEY]["bin_pitch_px"]
    assert pitch == pytest.approx(16 / mpp, rel=1e-3)
    assert any("disagree" in m for m in messages) == (bin_um == 8)

    # geometry and link recorded for the MIL code
    uns = table.uns[UNS_KEY]
    assert uns["reader"] == "read_visium_hd" and uns["bin_size_um"] == bin_um
    assert uns[SPOT_SHAPE_KEY] == "square" and uns[SPOT_SIZE_KEY] == bin_um
    assert table_for_element(sdata, shapes_key) == table_key
    assert table_link(table) == (REGION_KEY, SPOT_ID)
    np.testing.assert_array_equal(table.obs[SPOT_ID], squares.index)
    assert sp.issparse(table.X) and table.X.format == "csr" and table.X.dtype == np.int32
    assert table.var_names.is_unique and table.n_vars == 100


@needs_spaceranger
def test_read_visium_v1_fixture_and_the_wrong_reader():
    sdata = sst.io.read_visium(V1)
    assert len(sdata["visium"]) == sdata["table"].n_obs == 2695
    assert element_microns_per_unit(sdata, "visium") == pytest.approx(55 / 89.47248494250101)

    for path in (HD, HD / "binned_outputs", HD / "binned_outputs" / "square_016um"):
        with pytest.raises(ValueError, match=r"read_visium_hd\(path, bin_size_um="):
            sst.io.read_visium(path)
    with pytest.raises(ValueError, match=r"Visium \(55 µm spots\).*sst\.io\.read_visium\("):
        sst.io.read_visium_hd(V1)
    with pytest.raises(ValueError, match=r"several bin sizes \(8 µm, 16 µm\).*bin_size_um="):
        sst.io.read_visium_hd(HD)
    with pytest.raises(FileNotFoundError, match=r"No 2 µm bins.*available: 8 µm, 16 µm"):
        sst.io.read_visium_hd(HD, bin_size_um=2)
    with pytest.raises(ValueError, match="holds 16 µm bins, not bin_size_um=8"):
        sst.io.read_visium_hd(HD / "binned_outputs" / "square_016um", bin_size_um=8)
    # the bin folder itself, without a bin size
    sdata, _ = _read_quietly(HD / "binned_outputs" / "square_016um")
    assert set(sdata.tables) == {"square_016um"}


# --- a synthetic Space Ranger HD folder ---------------------------------------------------------


@pytest.fixture(scope="module")
def hd_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("hd") / "sample1"
    outs, tif = sst.datasets.synthetic_visium_hd(
        root, shape=(512, 768), seed=2, bins_angle_deg=5.0, bin_sizes_um=(8, 16)
    )
    syn = sst.datasets.synthetic(shape=(512, 768), seed=2, bins_angle_deg=5.0, bins_um=8)
    return outs, tif, syn


def test_synthetic_visium_hd_reads_back_as_the_synthetic_slide(hd_folder, tmp_path):
    outs, tif, syn = hd_folder
    sdata, messages = _read_quietly(outs, bin_size_um=8, fullres_image_file=tif)
    assert not messages
    assert set(sdata.shapes) == {"sample1_square_008um"}  # id: the folder holding outs/
    squares, table = sdata["sample1_square_008um"], sdata["square_008um"]
    want, want_table = syn[SPOTS_KEY], syn[SPOTS_TABLE_KEY]
    assert sst.io.microns_per_pixel(sdata, "sample1_full_image") == pytest.approx(0.5)
    np.testing.assert_array_equal(table.X.toarray(), want_table.X.toarray())
    assert list(table.var_names) == list(want_table.var_names)
    np.testing.assert_array_equal(
        table.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy(), want_table.obs[[ARRAY_ROW, ARRAY_COL]]
    )
    got_xy = shapely.get_coordinates(squares.geometry.values)
    np.testing.assert_allclose(got_xy, shapely.get_coordinates(want.geometry.values), atol=1e-6)
    grid = BinGrid.from_dict(table.uns[UNS_KEY][BIN_GRID_KEY])
    assert np.degrees(grid.angle) == pytest.approx(5.0, abs=1e-9)
    assert grid.size == pytest.approx(16.0)
    np.testing.assert_array_equal(
        np.asarray(sdata["sample1_full_image"].data), np.asarray(syn["he"].data)
    )

    # 16 µm: Space Ranger's nesting of the 8 µm bins, counts conserved
    sdata16, _ = _read_quietly(outs, bin_size_um=16)
    t16 = sdata16["square_016um"]
    coarse = coarsen_bins(want_table.obs[[ARRAY_ROW, ARRAY_COL]], 2, want_table.X)
    np.testing.assert_array_equal(t16.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy(), coarse.bins)
    np.testing.assert_array_equal(t16.X.toarray(), coarse.counts.toarray())
    assert t16.X.sum() == want_table.X.sum()
    np.testing.assert_allclose(_side_lengths(sdata16["sample1_square_016um"].geometry.values), 32)

    # zarr round trip keeps the scale and the recorded geometry
    small = sdata.subset(["sample1_square_008um", "square_008um"])
    small.write(tmp_path / "hd.zarr")
    back = spatialdata.read_zarr(tmp_path / "hd.zarr")
    assert element_microns_per_unit(back, "sample1_square_008um") == pytest.approx(0.5)
    uns = back["square_008um"].uns[UNS_KEY]
    assert uns[SPOT_SHAPE_KEY] == "square" and uns[SPOT_SIZE_KEY] == 8
    assert BinGrid.from_dict(uns[BIN_GRID_KEY]).size == pytest.approx(16.0)


def test_read_visium_hd_errors(hd_folder, tmp_path):
    outs, _, _ = hd_folder
    copy = tmp_path / "copy"
    shutil.copytree(outs / "binned_outputs" / "square_008um", copy / "square_008um")
    folder = copy / "square_008um"
    sdata, _ = _read_quietly(folder, dataset_id="s1")
    assert set(sdata.shapes) == {"s1_square_008um"}

    with pytest.raises(FileNotFoundError, match="nowhere"):
        sst.io.read_visium_hd(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="No Visium HD bins"):
        sst.io.read_visium_hd(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.tif"):
        sst.io.read_visium_hd(folder, fullres_image_file="missing.tif")
    with pytest.raises(FileNotFoundError, match="raw_feature_bc_matrix.h5"):
        sst.io.read_visium_hd(folder, counts_file="raw_feature_bc_matrix.h5")

    factors_file = folder / "spatial" / "scalefactors_json.json"
    factors = json.loads(factors_file.read_text())
    factors_file.write_text(json.dumps({**factors, "bin_size_um": 16.0}))
    with pytest.raises(ValueError, match="bin_size_um = 16 but its folder holds 8 µm bins"):
        sst.io.read_visium_hd(folder)
    factors_file.write_text(json.dumps({**factors, "microns_per_pixel": 0.6}))
    with (
        pytest.warns(UserWarning, match="using microns_per_pixel"),
        pytest.warns(UserWarning, match="positions and the bin size disagree"),
    ):
        sdata = sst.io.read_visium_hd(folder)
    assert element_microns_per_unit(sdata, "copy_square_008um") == pytest.approx(0.6)
    factors_file.write_text(json.dumps({**factors, "microns_per_pixel": None}))
    sdata = sst.io.read_visium_hd(folder)  # falls back on bin size / spot_diameter_fullres
    assert element_microns_per_unit(sdata, "copy_square_008um") == pytest.approx(0.5)
    factors_file.unlink()
    with pytest.raises(FileNotFoundError, match="scalefactors_json.json"):
        sst.io.read_visium_hd(folder)
    (folder / "spatial" / "tissue_positions.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="No Visium HD bins"):  # nothing says HD now
        sst.io.read_visium_hd(copy)


# --- geometry --------------------------------------------------------------------------------


def _grid_bins(grid: BinGrid, extent: float) -> np.ndarray:
    g = grid.to_grid([[0, 0], [extent, 0], [0, extent], [extent, extent]])
    lo, hi = np.floor(g.min(0)).astype(int) - 1, np.ceil(g.max(0)).astype(int) + 1
    rows, cols = np.meshgrid(np.arange(lo[1], hi[1]), np.arange(lo[0], hi[0]), indexing="ij")
    return np.column_stack([rows.ravel(), cols.ravel()])


def _brute_force(cells, grid: BinGrid, bins: np.ndarray) -> np.ndarray:
    squares = grid.squares(bins)
    inter = shapely.area(shapely.intersection(cells[:, None], squares[None, :]))
    return inter / shapely.area(cells)[:, None]


@pytest.mark.parametrize(
    "grid",
    [
        BinGrid(origin=(3.0, -2.0), size=7.0, angle=0.3),
        BinGrid(origin=(1.0, 90.0), matrix=[[6.0, 0.2], [0.1, -6.0]]),  # flipped rows, skewed
    ],
    ids=["rotated", "flipped"],
)
def test_overlap_matrix_matches_shapely(grid):
    rng = np.random.default_rng(0)
    xy = rng.uniform(5, 55, (40, 2))
    cells = shapely.buffer(shapely.points(xy), rng.uniform(1, 9, len(xy)), quad_segs=5)
    cells[0] = shapely.Polygon([(10, 10), (30, 10), (30, 30), (20, 15), (10, 30)])  # concave
    cells[1] = shapely.box(5, 5, 40, 40).difference(shapely.box(15, 15, 25, 25))  # a hole
    cells[2] = shapely.MultiPolygon([shapely.box(0, 0, 5, 5), shapely.box(20, 0, 26, 4)])
    cells[3] = shapely.Polygon(shapely.box(30, 30, 40, 40).exterior.coords[::-1])  # clockwise
    bins = _grid_bins(grid, 70.0)
    subset = bins[rng.random(len(bins)) < 0.7]  # parts in missing bins are not counted

    w = overlap_matrix(cells, grid, subset)
    assert isinstance(w, sp.csr_matrix) and w.shape == (len(cells), len(subset))
    np.testing.assert_allclose(w.toarray(), _brute_force(cells, grid, subset), atol=1e-10)
    full = overlap_matrix(cells, grid, bins)
    np.testing.assert_allclose(full.sum(1), 1.0, atol=1e-10)  # every part of every cell
    assert (w.sum(1) <= 1 + 1e-10).all()

    # centroids + a dilation are disks; nuclei dilated to cells
    disks = overlap_matrix(xy, grid, bins, dilation=4.0, quad_segs=6)
    want = _brute_force(shapely.buffer(shapely.points(xy), 4.0, quad_segs=6), grid, bins)
    np.testing.assert_allclose(disks.toarray(), want, atol=1e-10)
    grown = overlap_matrix(cells[4:], grid, bins, dilation=2.0)
    want = _brute_force(shapely.buffer(cells[4:], 2.0, quad_segs=8), grid, bins)
    np.testing.assert_allclose(grown.toarray(), want, atol=1e-10)

    with pytest.raises(ValueError, match="dilation"):
        overlap_matrix(xy, grid, bins)
    with pytest.raises(ValueError, match="more than once"):
        overlap_matrix(cells, grid, np.concatenate([bins, bins[:1]]))


def test_overlap_matrix_edge_cases():
    grid = BinGrid(size=10.0)
    # a cell exactly on a bin, one straddling four bins, an empty geometry
    cells = np.array(
        [shapely.box(0, 0, 10, 10), shapely.box(5, 5, 15, 15), shapely.Polygon()], dtype=object
    )
    bins = [[0, 0], [0, 1], [1, 0], [1, 1]]
    w = overlap_matrix(cells, grid, bins).toarray()
    np.testing.assert_allclose(w, [[1, 0, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0, 0, 0]])
    assert overlap_matrix(cells, grid, np.zeros((0, 2), int)).shape == (3, 0)


def test_grid_centroids_squares_and_coarsening():
    grid = BinGrid(origin=(4.0, 2.0), size=16.0, angle=np.radians(3.0))
    rng = np.random.default_rng(1)
    bins = np.unique(rng.integers(-3, 20, (300, 2)), axis=0)
    centres = grid.centres(bins)
    np.testing.assert_array_equal(grid.bin_of(centres), bins)
    np.testing.assert_allclose(
        shapely.get_coordinates(shapely.centroid(grid.squares(bins))), centres, atol=1e-9
    )
    np.testing.assert_allclose(_side_lengths(grid.squares(bins)), 16.0)
    sq = square_polygons(centres, 16.0, grid.orientation)
    assert shapely.equals_exact(sq, grid.squares(bins), tolerance=1e-9).all()
    refit, rms = BinGrid.from_positions(bins, centres)
    np.testing.assert_allclose(refit.matrix, grid.matrix, atol=1e-9)
    assert rms < 1e-9
    assert BinGrid.from_dict(grid.to_dict()).to_dict() == grid.to_dict()

    # centroid assignment, and as a matrix
    cells_xy = centres[:5] + 3.0
    out = assign_centroids(np.vstack([cells_xy, [[1e5, 1e5]]]), grid, bins)
    np.testing.assert_array_equal(out, [0, 1, 2, 3, 4, NO_SPOT])
    m = membership_matrix(out, len(bins))
    assert m.shape == (6, len(bins)) and m.sum() == 5 and m[5].sum() == 0

    # coarsening: nested bins, counts conserved (sparse and dense), the coarse grid agrees
    counts = sp.random(len(bins), 7, density=0.4, random_state=0, format="csr") * 10
    counts = sp.csr_matrix(np.round(counts.toarray()).astype(np.int32))
    for factor in (2, 4):
        coarse = coarsen_bins(bins, factor, counts)
        assert coarse.counts.sum() == counts.sum()
        np.testing.assert_array_equal(coarse.counts.sum(0), counts.sum(0))
        assert coarse.counts.dtype == np.int32
        np.testing.assert_array_equal(coarse.membership.sum(0), 1)  # each fine bin once
        parent = coarse.bins[coarse.membership.T.toarray().argmax(1)]
        np.testing.assert_array_equal(parent, np.floor_divide(bins, factor))
        np.testing.assert_array_equal(grid.coarsen(factor).bin_of(centres), parent)
        dense = coarsen_bins(bins, factor, counts.toarray()).counts
        np.testing.assert_array_equal(dense, coarse.counts.toarray())
    with pytest.raises(ValueError, match="positive integer"):
        coarsen_bins(bins, 1.5)


# --- the synthetic slide with square bins ---------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_hd():
    return sst.datasets.synthetic(shape=(512, 640), seed=4, bins_um=8, bins_angle_deg=3.0)


def test_synthetic_bins_sum_to_the_cells_counts(synthetic_hd):
    sdata = synthetic_hd
    bins_table, truth = sdata[SPOTS_TABLE_KEY], sdata[TRUE_EXPRESSION_KEY]
    w = truth.obsm[BIN_OVERLAP_OBSM]
    assert w.shape == (truth.n_obs, bins_table.n_obs)
    cell_counts = truth.layers["counts"]
    # every transcript counted in a bin comes from a cell, gene by gene
    np.testing.assert_array_equal(
        np.asarray(bins_table.X.sum(0)).ravel(), np.asarray(cell_counts.sum(0)).ravel()
    )
    assert bins_table.X.sum() > 10 * bins_table.n_obs  # not empty
    np.testing.assert_allclose(truth.obs["in_bins_fraction"], np.asarray(w.sum(1)).ravel())
    assert (truth.obs["in_bins_fraction"] <= 1 + 1e-9).all()
    assert truth.obs["in_bins_fraction"].mean() > 0.9
    # the expected counts of a bin follow the cells' overlap: measured vs expected, summed
    expected = w.T @ truth.layers["rate"].astype(np.float64)
    expected *= bins_table.obs["size_factor"].to_numpy()[:, None]
    r = np.corrcoef(np.asarray(bins_table.X.sum(1)).ravel(), expected.sum(1))[0, 1]
    assert r > 0.8

    # squares, grid and centroid assignment agree
    squares = sdata[SPOTS_KEY]
    assert "radius" not in squares.columns and len(squares) == bins_table.n_obs
    uns = bins_table.uns[UNS_KEY]
    assert uns[SPOT_SHAPE_KEY] == "square" and uns[SPOT_SIZE_KEY] == 8.0
    grid = BinGrid.from_dict(uns[BIN_GRID_KEY])
    rc = bins_table.obs[[ARRAY_ROW, ARRAY_COL]].to_numpy()
    assert shapely.equals_exact(squares.geometry.values, grid.squares(rc), 1e-9).all()
    np.testing.assert_allclose(_side_lengths(squares.geometry.values), 16.0)  # 8 µm at 0.5 µm/px
    spot = assign_centroids(truth.obsm[SPATIAL_OBSM], grid, rc)
    np.testing.assert_array_equal(truth.obs[SPOT_COLUMN], spot)
    np.testing.assert_array_equal(
        bins_table.obs["n_cells"], np.bincount(spot[spot >= 0], minlength=len(rc))
    )
    assert len(sdata[TRUE_CELL_BOUNDARIES_KEY]) == truth.n_obs
    assert element_microns_per_unit(sdata, SPOTS_KEY) == pytest.approx(0.5)
    assert MICRONS_CS in get_transformation(sdata[TRUE_CELL_BOUNDARIES_KEY], get_all=True)


def test_synthetic_bins_keep_the_cells_of_the_visium_slide(synthetic_hd):
    visium = sst.datasets.synthetic(shape=(512, 640), seed=4)
    a, b = visium[TRUE_EXPRESSION_KEY], synthetic_hd[TRUE_EXPRESSION_KEY]
    np.testing.assert_array_equal(a.layers["rate"], b.layers["rate"])
    np.testing.assert_array_equal(a.obsm[SPATIAL_OBSM], b.obsm[SPATIAL_OBSM])
    assert "radius" in visium[SPOTS_KEY].columns
    assert SPOT_SHAPE_KEY not in visium[SPOTS_TABLE_KEY].uns.get(UNS_KEY, {})
    with pytest.raises(ValueError, match="bins_um"):
        sst.datasets.synthetic(shape=(128, 128), bins_um=-8)

"""Tests of the readers in ``sst.io``: HEST-1k folders, Visium outputs and H&E-only slides."""

from __future__ import annotations

import json
import math
from pathlib import Path

import dask.array as da
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import spatialdata
import tifffile
from PIL import Image
from spatialdata.transformations import Identity, get_transformation

import scellst as sst
from scellst._sdata import image_key as resolve_image_key
from scellst._sdata import image_level0, image_levels, table_for_element, table_link
from scellst.constants import (
    IMAGE_KEY,
    MICRONS_CS,
    REGION_KEY,
    SPATIAL_OBSM,
    SPOT_ID,
    SPOTS_KEY,
    SPOTS_TABLE_KEY,
    UNS_KEY,
)
from scellst.datasets._spaceranger import write_10x_h5
from scellst.io._pyramid import consistent_levels
from scellst.io._scale import element_microns_per_unit

SHARED = Path(__file__).parents[1].parent / "shared" / "data"
HER2ST = SHARED / "her2st"
SVS = SHARED / "he_small" / "cmu_small_region.svs"

needs_her2st = pytest.mark.skipif(
    not (HER2ST / "st" / "C2.h5ad").exists(),
    reason=f"shared her2st data not found at {HER2ST} (checked out next to the repo in CI)",
)
needs_svs = pytest.mark.skipif(
    not SVS.exists(), reason=f"shared H&E region not found at {SVS} (next to the repo in CI)"
)


def _assert_lazy(arr: da.Array) -> None:
    """The dask graph holds no decoded image: no in-memory array larger than a few tiles."""
    assert isinstance(arr, da.Array)
    for value in dict(arr.__dask_graph__()).values():
        if isinstance(value, np.ndarray):
            assert value.nbytes < 4 * 2**20


# --- HEST -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hest_c2():
    return sst.io.read_hest(HER2ST, "C2")


@needs_her2st
def test_read_hest_elements_and_links(hest_c2):
    sdata = hest_c2
    assert set(sdata.images) == {IMAGE_KEY}
    assert set(sdata.shapes) == {SPOTS_KEY}
    assert set(sdata.tables) == {SPOTS_TABLE_KEY}
    assert table_for_element(sdata, SPOTS_KEY) == SPOTS_TABLE_KEY
    assert table_link(sdata[SPOTS_TABLE_KEY]) == (REGION_KEY, SPOT_ID)

    # image: (c, y, x) uint8 RGB, multiscale, lazy
    assert image_level0(sdata, IMAGE_KEY).shape == (3, 9911, 9274)
    levels = image_levels(sdata, IMAGE_KEY)
    assert len(levels) > 1 and max(levels[-1].shape[1:]) < 1000
    for level in levels:
        assert level.dtype == np.uint8
        assert list(level.coords["c"].values) == ["r", "g", "b"]
    _assert_lazy(image_level0(sdata, IMAGE_KEY).data)
    assert image_level0(sdata, IMAGE_KEY).data.chunksize == (
        3,
        512,
        512,
    )  # default chunks: windows decode only the 512-px blocks they touch

    # scale
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.688, abs=1e-3)
    assert element_microns_per_unit(sdata, SPOTS_KEY) == pytest.approx(0.688, abs=1e-3)
    for key in (IMAGE_KEY, SPOTS_KEY):
        ts = get_transformation(sdata[key], get_all=True)
        assert set(ts) == {"C2", "global", MICRONS_CS}
        assert isinstance(ts["C2"], Identity) and isinstance(ts["global"], Identity)

    # spots: 187 circles of 100 µm, int index 0..n-1
    spots = sdata[SPOTS_KEY]
    assert len(spots) == 187
    assert list(spots.index) == list(range(187))
    radius_um = spots["radius"].to_numpy() * sst.io.microns_per_pixel(sdata)
    np.testing.assert_allclose(radius_um, 50.0)

    # table
    table = sdata[SPOTS_TABLE_KEY]
    assert table.n_obs == 187 and table.var_names.is_unique
    assert sp.issparse(table.X) and table.X.format == "csr"
    np.testing.assert_array_equal(table.X.data, np.round(table.X.data))
    assert table.obs_names[0] == "10x21"
    np.testing.assert_array_equal(table.obs[SPOT_ID], np.arange(187))
    assert isinstance(table.obs[REGION_KEY].dtype, pd.CategoricalDtype)
    assert set(table.obs[REGION_KEY]) == {SPOTS_KEY}
    xy = np.column_stack([spots.geometry.x, spots.geometry.y])
    np.testing.assert_allclose(table.obsm[SPATIAL_OBSM], xy)
    assert table.uns[UNS_KEY]["reader"] == "read_hest"
    assert table.uns[UNS_KEY]["sample_id"] == "C2"
    assert table.uns[UNS_KEY]["spot_diameter_um"] == 100.0

    # spot centres sit on the image
    h, w = image_level0(sdata, IMAGE_KEY).shape[1:]
    assert (xy >= 0).all() and (xy[:, 0] < w).all() and (xy[:, 1] < h).all()


@needs_her2st
def test_read_hest_uses_the_stored_4x_level(hest_c2):
    levels = image_levels(hest_c2, IMAGE_KEY)
    with tifffile.TiffFile(HER2ST / "wsis" / "C2.tif") as tif:
        stored = tif.series[0].levels[1]
        assert stored.shape == (2477, 2318, 3)  # 9911 / 4 = 2477.75
        window = stored.asarray()[1000:1100, 500:640]
    assert levels[1].shape == (3, 2477, 2318)
    np.testing.assert_array_equal(
        np.moveaxis(levels[1][:, 1000:1100, 500:640].values, 0, -1), window
    )
    assert is_stored_level(levels[1].data)
    # coarser scales are computed from the stored level, not from the full resolution
    assert [lv.shape[1:] for lv in levels[2:]] == [(1238, 1159), (619, 579)]
    tiff_layers = {
        name.rsplit("-", 1)[1] for name in levels[2].data.dask.layers if name.startswith("tiff-")
    }
    assert tiff_layers == {"1"} and not is_stored_level(levels[2].data)


@needs_her2st
def test_read_hest_zarr_round_trip(hest_c2, tmp_path):
    from spatialdata.models import Image2DModel

    # keep it light: spots, table and a small crop of the slide with the same transformations
    small = hest_c2.subset([SPOTS_KEY, SPOTS_TABLE_KEY])
    crop = image_level0(hest_c2, IMAGE_KEY)[:, 4000:4256, 3000:3300]
    small.images["crop"] = Image2DModel.parse(
        crop.data.rechunk(-1),
        dims=("c", "y", "x"),
        c_coords=["r", "g", "b"],
        transformations=get_transformation(image_level0(hest_c2, IMAGE_KEY), get_all=True),
    )
    small.write(tmp_path / "c2.zarr")
    back = spatialdata.read_zarr(tmp_path / "c2.zarr")
    assert element_microns_per_unit(back, SPOTS_KEY) == pytest.approx(0.688, abs=1e-3)
    assert sst.io.microns_per_pixel(back, "crop") == pytest.approx(0.688, abs=1e-3)
    assert table_for_element(back, SPOTS_KEY) == SPOTS_TABLE_KEY
    assert back[SPOTS_TABLE_KEY].uns[UNS_KEY]["microns_per_pixel"] == pytest.approx(0.688, 1e-3)
    np.testing.assert_array_equal(back["crop"].values, crop.values)


@needs_her2st
def test_read_hest_override_and_errors(tmp_path):
    sdata = sst.io.read_hest(HER2ST, "C2", microns_per_pixel=0.7, image_key="img")
    assert sst.io.microns_per_pixel(sdata, "img") == pytest.approx(0.7)
    np.testing.assert_allclose(sdata[SPOTS_KEY]["radius"] * 0.7, 50.0)

    with pytest.raises(FileNotFoundError, match="nope"):
        sst.io.read_hest(tmp_path / "nope", "C2")
    with pytest.raises(FileNotFoundError, match=r"XX\.h5ad"):
        sst.io.read_hest(HER2ST, "XX")

    # metadata without pixel size -> says to pass microns_per_pixel=
    root = tmp_path / "hest"
    for sub in ("st", "wsis", "metadata"):
        (root / sub).mkdir(parents=True)
    (root / "st" / "C2.h5ad").symlink_to(HER2ST / "st" / "C2.h5ad")
    (root / "wsis" / "C2.tif").symlink_to(HER2ST / "wsis" / "C2.tif")
    meta = json.loads((HER2ST / "metadata" / "C2.json").read_text())
    del meta["pixel_size_um_estimated"]
    (root / "metadata" / "C2.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="microns_per_pixel="):
        sst.io.read_hest(root, "C2")
    assert sst.io.microns_per_pixel(sst.io.read_hest(root, "C2", microns_per_pixel=0.69)) == 0.69


def test_read_hest_missing_files_message(tmp_path):
    (tmp_path / "st").mkdir()
    with pytest.raises(FileNotFoundError, match=r"wsis.*S1\.tif"):
        sst.io.read_hest(tmp_path, "S1")


# --- Visium -----------------------------------------------------------------------------------

SPOT_DIAMETER_FULLRES = 110.0  # -> 0.5 µm/px
HIRES, LOWRES = 0.5, 0.1
FULLRES_SHAPE = (500, 600)  # (y, x)


def is_stored_level(data) -> bool:
    """Whether reading ``data`` decodes about its own pixels only: a level stored in a file or
    zarr store (converted or rechunked on the way), not one computed on the fly from a finer
    level, which would decode that level whole."""
    if isinstance(data, np.ndarray):
        return True
    graph = getattr(data, "dask", None)
    layers = getattr(graph, "layers", None)
    if layers is None:
        return False
    # the arrays the graph starts from: array layers (they carry a shape) fed by no other array
    # (only by the raw store/file object, a layer without a shape)
    shapes = {
        name: (layer.collection_annotations or {}).get("shape") for name, layer in layers.items()
    }
    sources = [
        shape
        for name, shape in shapes.items()
        if shape is not None and all(shapes.get(dep) is None for dep in graph.dependencies[name])
    ]
    # an alpha channel makes the source 4/3 of an RGB level
    return bool(sources) and sum(math.prod(s) for s in sources) <= 1.5 * data.size


@pytest.fixture
def visium_dir(tmp_path) -> Path:
    """A tiny Space-Ranger-shaped folder: 6 spots x 4 genes, full-res 600x500 RGB TIFF."""
    rng = np.random.default_rng(0)
    outs = tmp_path / "sample1" / "outs"
    (outs / "spatial").mkdir(parents=True)
    barcodes = [f"AAAC{i:04d}-1" for i in range(6)]
    genes = ["GeneA", "GeneB", "GeneB", "GeneC"]  # duplicated name -> made unique
    counts = rng.poisson(3.0, size=(6, 4))
    write_10x_h5(outs / "filtered_feature_bc_matrix.h5", barcodes, genes, counts)

    rows = np.array([100, 100, 200, 200, 300, 300])
    cols = np.array([150, 300, 150, 300, 150, 300])
    pd.DataFrame(
        {
            "barcode": barcodes,
            "in_tissue": 1,
            "array_row": np.arange(6) // 2,
            "array_col": np.arange(6) % 2,
            "pxl_row_in_fullres": rows,
            "pxl_col_in_fullres": cols,
        }
    ).to_csv(outs / "spatial" / "tissue_positions.csv", index=False)
    (outs / "spatial" / "scalefactors_json.json").write_text(
        json.dumps(
            {
                "spot_diameter_fullres": SPOT_DIAMETER_FULLRES,
                "tissue_hires_scalef": HIRES,
                "tissue_lowres_scalef": LOWRES,
                "fiducial_diameter_fullres": 1.6 * SPOT_DIAMETER_FULLRES,
            }
        )
    )
    full = rng.integers(0, 255, size=(*FULLRES_SHAPE, 3), dtype=np.uint8)
    for name, f in (("hires", HIRES), ("lowres", LOWRES)):
        size = (int(FULLRES_SHAPE[1] * f), int(FULLRES_SHAPE[0] * f))
        Image.fromarray(full).resize(size).save(outs / "spatial" / f"tissue_{name}_image.png")
    tifffile.imwrite(tmp_path / "fullres.tif", full, tile=(128, 128))
    return outs


def test_read_visium(visium_dir, tmp_path):
    sdata = sst.io.read_visium(visium_dir, fullres_image_file=tmp_path / "fullres.tif")
    ds = "sample1"  # <sample>/outs, no file prefix nor library_ids attribute
    assert set(sdata.images) == {f"{ds}_full_image", f"{ds}_hires_image", f"{ds}_lowres_image"}
    assert set(sdata.shapes) == {ds}
    assert set(sdata.tables) == {"table"}
    assert resolve_image_key(sdata) == f"{ds}_full_image"

    mpp = 55.0 / SPOT_DIAMETER_FULLRES
    assert sst.io.microns_per_pixel(sdata, f"{ds}_full_image") == pytest.approx(mpp)
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(mpp)
    assert sst.io.microns_per_pixel(sdata, f"{ds}_hires_image") == pytest.approx(mpp / HIRES)
    assert sst.io.microns_per_pixel(sdata, f"{ds}_lowres_image") == pytest.approx(mpp / LOWRES)
    circles = sdata.shapes[ds]
    radius_um = circles["radius"].to_numpy() * element_microns_per_unit(sdata, ds)
    np.testing.assert_allclose(radius_um, 27.5)
    # "global" is the full-resolution pixel frame too (what scverse tools assume)
    for key in (f"{ds}_full_image", f"{ds}_hires_image", ds):
        ts = get_transformation(sdata[key], get_all=True)
        assert ts["global"] == ts[ds]

    full = image_level0(sdata, f"{ds}_full_image")
    assert full.shape == (3, *FULLRES_SHAPE) and full.dtype == np.uint8
    _assert_lazy(full.data)
    np.testing.assert_array_equal(
        np.moveaxis(full.values, 0, -1), tifffile.imread(tmp_path / "fullres.tif")
    )
    # spot (x, y) = (pxl_col, pxl_row) in full-res pixels
    np.testing.assert_allclose(circles.geometry.x.to_numpy(), [150, 300] * 3)
    np.testing.assert_allclose(circles.geometry.y.to_numpy(), [100, 100, 200, 200, 300, 300])

    table = sdata["table"]
    assert table_for_element(sdata, ds) == "table"
    assert table_link(table) == (REGION_KEY, SPOT_ID)
    assert set(table.obs[SPOT_ID]) == set(circles.index)
    assert table.var_names.is_unique
    assert table.uns[UNS_KEY]["microns_per_pixel"] == pytest.approx(mpp)

    sdata.write(tmp_path / "visium.zarr")
    back = spatialdata.read_zarr(tmp_path / "visium.zarr")
    assert sst.io.microns_per_pixel(back, f"{ds}_full_image") == pytest.approx(mpp)
    assert sst.io.microns_per_pixel(back, f"{ds}_hires_image") == pytest.approx(mpp / HIRES)
    assert element_microns_per_unit(back, ds) == pytest.approx(mpp)


def test_read_visium_without_fullres_and_errors(visium_dir, tmp_path):
    sdata = sst.io.read_visium(visium_dir, dataset_id="s1")
    assert set(sdata.images) == {"s1_hires_image", "s1_lowres_image"}
    mpp = 55.0 / SPOT_DIAMETER_FULLRES
    assert element_microns_per_unit(sdata, "s1") == pytest.approx(mpp)
    assert sst.io.microns_per_pixel(sdata, "s1_lowres_image") == pytest.approx(mpp / LOWRES)

    # dataset id from the h5's library_ids attribute, then from a file prefix
    counts = visium_dir / "filtered_feature_bc_matrix.h5"
    with h5py.File(counts, "a") as f:
        f.attrs["library_ids"] = np.array([b"lib 7"])
    assert set(sst.io.read_visium(visium_dir).shapes) == {"lib_7"}
    counts.rename(visium_dir / "abc_filtered_feature_bc_matrix.h5")
    assert set(sst.io.read_visium(visium_dir).shapes) == {"abc"}

    with pytest.raises(FileNotFoundError, match="missing.tif"):
        sst.io.read_visium(visium_dir, fullres_image_file="missing.tif")
    with pytest.raises(FileNotFoundError, match="Visium folder"):
        sst.io.read_visium(tmp_path / "nowhere")
    (visium_dir / "spatial" / "scalefactors_json.json").write_text("{}")
    with pytest.raises(ValueError, match="spot_diameter_fullres"):
        sst.io.read_visium(visium_dir)


# --- H&E only ---------------------------------------------------------------------------------


@needs_svs
def test_read_image_svs():
    sdata = sst.io.read_image(SVS)
    img = image_level0(sdata, IMAGE_KEY)
    assert img.shape == (3, 2967, 2220) and img.dtype == np.uint8
    _assert_lazy(img.data)
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.499)
    ts = get_transformation(sdata[IMAGE_KEY], get_all=True)
    assert set(ts) == {"global", MICRONS_CS}
    expected = tifffile.TiffFile(SVS).pages[0].asarray()[:64, :80]
    np.testing.assert_array_equal(np.moveaxis(img[:, :64, :80].values, 0, -1), expected)


@needs_her2st
def test_read_image_tiff_resolution_tag():
    sdata = sst.io.read_image(HER2ST / "wsis" / "C2.tif")
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.688, abs=1e-3)
    assert len(image_levels(sdata, IMAGE_KEY)) > 1  # large slide -> multiscale


def test_read_image_tmp_tiff_and_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, size=(300, 200, 3), dtype=np.uint8)
    path = tmp_path / "he.tif"
    tifffile.imwrite(path, rgb, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    sdata = sst.io.read_image(path, chunks=128)
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.5)
    assert image_level0(sdata, IMAGE_KEY).data.chunksize == (3, 128, 128)

    sdata.write(tmp_path / "he.zarr")
    back = spatialdata.read_zarr(tmp_path / "he.zarr")
    assert sst.io.microns_per_pixel(back) == pytest.approx(0.5)
    np.testing.assert_array_equal(np.moveaxis(back[IMAGE_KEY].values, 0, -1), rgb)

    # the argument wins, with a warning when it disagrees with the file
    with pytest.warns(UserWarning, match="differs"):
        sdata = sst.io.read_image(path, microns_per_pixel=0.25)
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.25)


def test_read_image_ome_tiff(tmp_path):
    path = tmp_path / "he.ome.tif"
    cyx = np.full((3, 40, 50), 7, dtype=np.uint8)
    tifffile.imwrite(
        path, cyx, metadata={"axes": "CYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25}
    )
    sdata = sst.io.read_image(path)
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.25)
    assert image_level0(sdata, IMAGE_KEY).shape == (3, 40, 50)


def test_read_image_arrays():
    rgba = np.zeros((40, 30, 4), dtype=np.uint16)
    rgba[..., 0] = 65535
    sdata = sst.io.read_image(rgba, 0.25, image_key="slide")
    img = image_level0(sdata, "slide")
    assert img.shape == (3, 40, 30) and img.dtype == np.uint8
    assert list(img.coords["c"].values) == ["r", "g", "b"]
    assert int(img[0].max()) == 255 and int(img[1:].max()) == 0
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.25)

    lazy = da.from_array(np.zeros((5000, 4200, 3), dtype=np.uint8), chunks=1024)
    sdata = sst.io.read_image(lazy, microns_per_pixel=0.5)
    assert len(image_levels(sdata, IMAGE_KEY)) > 1


def test_read_image_errors(tmp_path):
    rgb = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="microns_per_pixel="):
        sst.io.read_image(rgb)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, rgb)  # no resolution unit: not a physical size
    with pytest.raises(ValueError, match="microns_per_pixel="):
        sst.io.read_image(plain)
    dpi72 = tmp_path / "dpi72.tif"
    tifffile.imwrite(dpi72, rgb, resolution=(72, 72), resolutionunit="INCH")
    with pytest.raises(ValueError, match="microns_per_pixel="):
        sst.io.read_image(dpi72)

    with pytest.raises(ValueError, match="RGB"):
        sst.io.read_image(np.zeros((20, 30), dtype=np.uint8), 0.5)
    with pytest.raises(ValueError, match="RGB"):
        sst.io.read_image(np.zeros((20, 30, 5), dtype=np.uint8), 0.5)
    gray = tmp_path / "gray.tif"
    tifffile.imwrite(gray, rgb[..., 0])
    with pytest.raises(ValueError, match="RGB"):
        sst.io.read_image(gray, 0.5)

    with pytest.raises(FileNotFoundError, match="missing.tif"):
        sst.io.read_image(tmp_path / "missing.tif", 0.5)
    png = tmp_path / "he.png"
    Image.fromarray(rgb).save(png)
    with pytest.raises(ValueError, match="TIFF"):
        sst.io.read_image(png, 0.5)
    with pytest.raises(ValueError, match="positive"):
        sst.io.read_image(rgb, -1.0)


# --- pyramids stored in the file --------------------------------------------------------------


def _microns_xy_scale(level) -> np.ndarray:
    """(x, y) µm per pixel of one scale of a multiscale image, from its transformation."""
    t = get_transformation(level, to_coordinate_system=MICRONS_CS)
    return np.diag(t.to_affine_matrix(input_axes=("x", "y"), output_axes=("x", "y")))[:2]


def test_read_image_uses_the_pyramid_stored_in_the_file(tmp_path):
    """An OME-TIFF with a SubIFD level: scale1 is the stored level (here not a downsample of
    level 0), the next scale is computed from it, and a zarr round trip keeps all of it."""
    from spatialdata.models import Image2DModel

    level0 = np.random.default_rng(0).integers(0, 255, (2403, 2001, 3), dtype=np.uint8)
    level1 = np.zeros((1202, 1000, 3), np.uint8)  # 2403 / 2 and 2001 / 2 are not integers
    level1[..., 0], level1[:600, :, 2] = 7, 200
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path, ome=True) as tif:
        metadata = {"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}
        tif.write(level0, subifds=1, tile=(256, 256), photometric="rgb", metadata=metadata)
        tif.write(level1, subfiletype=1, tile=(256, 256), photometric="rgb")

    sdata = sst.io.read_image(path)
    levels = image_levels(sdata, IMAGE_KEY)
    assert [lv.shape for lv in levels] == [(3, 2403, 2001), (3, 1202, 1000), (3, 601, 500)]
    for level in levels:
        _assert_lazy(level.data)
        assert level.dtype == np.uint8
        assert level.data.chunksize == (3, *(min(512, n) for n in level.shape[1:]))
    np.testing.assert_array_equal(np.moveaxis(levels[0].values, 0, -1), level0)
    np.testing.assert_array_equal(np.moveaxis(levels[1].values, 0, -1), level1)
    # the coarsest scale comes from the stored level (level 0 holds no such colours)
    expected2 = level1[::2, ::2]
    np.testing.assert_array_equal(np.moveaxis(levels[2].values, 0, -1), expected2)
    assert [is_stored_level(lv.data) for lv in levels] == [True, True, False]
    # each scale maps onto the full-resolution frame by its own size ratio
    for level in levels:
        h, w = level.shape[1:]
        np.testing.assert_allclose(_microns_xy_scale(level), [0.5 * 2001 / w, 0.5 * 2403 / h])
    assert sst.io.microns_per_pixel(sdata) == pytest.approx(0.5)
    Image2DModel().validate(sdata[IMAGE_KEY])

    sst.io.write_zarr(sdata, tmp_path / "pyramid.zarr", image_codec="lossless")
    back = spatialdata.read_zarr(tmp_path / "pyramid.zarr")
    Image2DModel().validate(back[IMAGE_KEY])
    back_levels = image_levels(back, IMAGE_KEY)
    assert len(back_levels) == len(levels)
    for level, read in zip(levels, back_levels, strict=True):
        np.testing.assert_array_equal(read.values, level.values)
        for ax in ("y", "x"):
            np.testing.assert_allclose(read.coords[ax].values, level.coords[ax].values)
        np.testing.assert_allclose(_microns_xy_scale(read), _microns_xy_scale(level))
    assert sst.io.microns_per_pixel(back) == pytest.approx(0.5)


def test_read_image_stored_pyramid_of_uint16_rgba_pages(tmp_path):
    """Reduced-resolution pages (as in her2st's TIFFs), 16-bit with alpha: every level becomes
    uint8 RGB; levels of rounded sizes are kept, no level is added below 1000 px."""
    rgb = [np.full((1203, 1001, 3), 100, np.uint16), np.full((301, 250, 3), 2570, np.uint16)]
    rgb.append(np.full((75, 62, 3), 65535, np.uint16))
    path = tmp_path / "pages.tif"
    with tifffile.TiffWriter(path) as tif:
        for i, level in enumerate(rgb):
            rgba = np.concatenate([level, np.full((*level.shape[:2], 1), 65535, np.uint16)], -1)
            tif.write(
                rgba,
                tile=(64, 64),
                photometric="rgb",
                extrasamples=["unassalpha"],
                subfiletype=1 if i else 0,
            )
    sdata = sst.io.read_image(path, microns_per_pixel=0.25, chunks=128)
    levels = image_levels(sdata, IMAGE_KEY)
    assert [lv.shape for lv in levels] == [(3, *level.shape[:2]) for level in rgb]
    for level, value in zip(levels, (0, 10, 255), strict=True):  # 100 / 257 rounds to 0
        assert level.dtype == np.uint8 and level.data.chunksize[0] == 3
        assert set(np.unique(level.values)) == {value}
    assert all(is_stored_level(lv.data) for lv in levels)


def test_read_image_without_pyramid_computes_its_levels(tmp_path):
    yy, xx = np.mgrid[:4200, :4100]
    rgb = np.stack([yy % 256, xx % 256, (yy + xx) % 256], -1).astype(np.uint8)
    path = tmp_path / "flat.tif"
    tifffile.imwrite(path, rgb, tile=(256, 256), photometric="rgb", compression="zlib")
    levels = image_levels(sst.io.read_image(path, microns_per_pixel=0.5), IMAGE_KEY)
    assert [lv.shape[1:] for lv in levels] == [(4200, 4100), (2100, 2050), (1050, 1025), (525, 512)]
    assert [is_stored_level(lv.data) for lv in levels] == [True, False, False, False]
    # scale1 is computed from level 0: 2x2 means
    corner = rgb[:64, :64].reshape(32, 2, 32, 2, 3).mean((1, 3))
    got = np.moveaxis(levels[1][:, :32, :32].values, 0, -1)
    np.testing.assert_allclose(got, corner, atol=1)


def test_consistent_levels_drops_a_level_of_another_shape():
    level0 = da.zeros((1000, 800, 3), dtype=np.uint8)
    good = da.zeros((250, 200, 3), dtype=np.uint8)
    assert len(consistent_levels([level0, good])) == 2
    for bad in (
        da.zeros((250, 100, 3), dtype=np.uint8),  # another aspect ratio (a label, a macro)
        da.zeros((250, 200, 4), dtype=np.uint8),  # other channels
        da.zeros((250, 200, 3), dtype=np.uint16),  # other dtype
        da.zeros((1000, 800, 3), dtype=np.uint8),  # not smaller
    ):
        with pytest.warns(UserWarning, match="not a downsampled copy"):
            kept = consistent_levels([level0, good, bad, da.zeros((125, 100, 3), np.uint8)])
        assert len(kept) == 2


def test_synthetic_visium_reads_back_as_the_synthetic_slide(tmp_path):
    """sst.datasets.synthetic_visium writes a Space Ranger folder that read_visium reads back
    with the synthetic slide's spots, counts, image and pixel size."""
    outs, tif = sst.datasets.synthetic_visium(tmp_path / "demo", shape=(512, 768), seed=2)
    syn = sst.datasets.synthetic(shape=(512, 768), seed=2)
    sdata = sst.io.read_visium(outs, fullres_image_file=tif)
    assert set(sdata.shapes) == {"demo"}  # dataset id: the folder holding outs/
    assert sst.io.microns_per_pixel(sdata, "demo_full_image") == pytest.approx(0.5)
    np.testing.assert_array_equal(
        sdata["table"].X.toarray(), syn["spots_table"].X.toarray()
    )  # same spot order
    assert list(sdata["table"].var_names) == list(syn["spots_table"].var_names)
    got, want = sdata["demo"], syn["spots"]
    np.testing.assert_allclose(got.geometry.x, want.geometry.x, atol=1e-3)
    np.testing.assert_allclose(got.geometry.y, want.geometry.y, atol=1e-3)
    np.testing.assert_allclose(got["radius"], want["radius"])
    np.testing.assert_array_equal(
        np.asarray(sdata["demo_full_image"].data), np.asarray(syn["he"].data)
    )
    with pytest.raises(FileExistsError, match="overwrite"):
        sst.datasets.synthetic_visium(tmp_path / "demo", shape=(256, 256))

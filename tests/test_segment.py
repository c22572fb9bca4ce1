import numpy as np
import pytest
import shapely
import spatialdata as sd
from spatialdata.models import Image2DModel
from spatialdata.transformations import Identity

import scellst as sst
from scellst.constants import MICRONS_CS
from scellst.io._scale import microns_scale


def _image_only(sdata):
    """A fresh SpatialData with just the synthetic H&E (so tests never modify the fixture)."""
    return sd.SpatialData(images={"he": sdata["he"]})


def _he(cyx: np.ndarray) -> sd.SpatialData:
    """A SpatialData holding ``cyx`` as the H&E at 0.5 µm/px."""
    transforms = {"global": Identity(), MICRONS_CS: microns_scale(0.5)}
    return sd.SpatialData(
        images={"he": Image2DModel.parse(cyx, dims=("c", "y", "x"), transformations=transforms)}
    )


def _f1_vs_truth(sdata, cells_key="sst_cells"):
    labels = np.asarray(sdata["truth_labels"].data)
    xy = np.asarray(sdata[f"{cells_key}_table"].obsm["spatial"])
    ids = labels[xy[:, 1].astype(int), xy[:, 0].astype(int)]
    hits = np.unique(ids[ids > 0])
    precision = len(hits) / max(len(xy), 1)
    recall = len(hits) / (len(np.unique(labels)) - 1)
    return 2 * precision * recall / (precision + recall)


def test_watershed_finds_the_true_nuclei(synthetic_small):
    sdata = _image_only(synthetic_small)
    sdata["truth_labels"] = synthetic_small["truth_labels"]
    sst.pp.segment(sdata, progress=False)
    cells, table = sdata["sst_cells"], sdata["sst_cells_table"]
    assert len(cells) == table.n_obs > 500
    assert _f1_vs_truth(sdata) > 0.9
    # the table annotates the shapes and records how it was made
    attrs = table.uns["spatialdata_attrs"]
    assert attrs["region"] == "sst_cells" and attrs["instance_key"] == "cell_id"
    np.testing.assert_array_equal(table.obs["cell_id"].to_numpy(), cells.index.to_numpy())
    seg = table.uns["scellst"]["segmentation"]
    assert seg["method"] == "watershed" and seg["params"]["threshold"] > 0
    # areas in µm² agree with the true nuclei (median within 25%)
    true_area = np.median(synthetic_small["truth_expression"].obs["area_um2"])
    assert abs(np.median(table.obs["area_um2"]) / true_area - 1) < 0.25
    # cells carry the image's transformations, so they sit in the microns frame too
    assert MICRONS_CS in sd.transformations.get_transformation(cells, get_all=True)


def test_tiling_neither_cuts_nor_duplicates_seam_nuclei(synthetic_small):
    whole, tiled = _image_only(synthetic_small), _image_only(synthetic_small)
    sst.pp.segment(whole, tile_size=4096, progress=False)
    sst.pp.segment(tiled, tile_size=200, progress=False, n_jobs=2)
    a, b = whole["sst_cells"].geometry.to_numpy(), tiled["sst_cells"].geometry.to_numpy()
    seams = shapely.union_all(
        [shapely.LineString([(x, 0), (x, 1024)]) for x in range(200, 1024, 200)]
        + [shapely.LineString([(0, y), (1024, y)]) for y in range(200, 1024, 200)]
    )
    on_seam = shapely.intersects(a, seams)
    assert on_seam.sum() > 50  # the test really exercises seams
    # every nucleus of the untiled run is found once, whole, by the tiled run
    tree = shapely.STRtree(b)
    for poly in a[on_seam]:
        hits = tree.query(poly, predicate="intersects")
        ious = [shapely.area(poly & b[j]) / shapely.area(poly | b[j]) for j in hits]
        assert sum(iou > 0.5 for iou in ious) == 1
        assert max(ious) > 0.95
    # windows aligned on 4-pixel blocks: the tiled run reproduces the untiled one exactly
    assert len(a) == len(b)
    assert all(any(shapely.equals_exact(p, b[j], 1e-9) for j in tree.query(p)) for p in a)
    # no two tiled nuclei overlap (a duplicate would)
    left, right = tree.query(b, predicate="intersects")
    pairs = left < right
    overlap = shapely.area(shapely.intersection(b[left[pairs]], b[right[pairs]]))
    smaller = np.minimum(shapely.area(b[left[pairs]]), shapely.area(b[right[pairs]]))
    assert (overlap / smaller < 0.2).all()  # touching borders only


def test_callable_method_and_margin(synthetic_small):
    sdata = _image_only(synthetic_small)

    def darkest(rgb, mpp):
        from scipy import ndimage as ndi

        assert mpp == pytest.approx(0.5)
        return ndi.label(rgb.mean(-1) < 110)[0]

    sst.pp.segment(sdata, method=darkest, tile_size=300, progress=False)
    table = sdata["sst_cells_table"]
    assert table.n_obs > 300
    assert table.uns["scellst"]["segmentation"]["method"] == "darkest"

    def bad(rgb, mpp):
        return np.zeros((3, 3), int)

    with pytest.raises(ValueError, match="one label per pixel"):
        sst.pp.segment(sdata, method=bad, key_added="bad", progress=False)


def test_existing_shapes_are_adopted_without_touching_them(synthetic_small):
    sdata = _image_only(synthetic_small)
    sdata["truth_cells"] = synthetic_small["truth_cells"]
    before = sdata["truth_cells"].copy()
    sst.pp.segment(sdata, shapes_key="truth_cells", key_added="nuclei", progress=False)
    assert len(sdata["nuclei"]) == len(before)
    assert sdata["truth_cells"].equals(before)
    area = sdata["nuclei_table"].obs["area_um2"].to_numpy()
    np.testing.assert_allclose(area, shapely.area(before.geometry.to_numpy()) * 0.25, rtol=1e-6)


def test_blank_and_odd_images_do_not_crash():
    white = np.full((3, 600, 600), 255, np.uint8)
    sdata = _he(white)
    with pytest.raises(ValueError, match="No nuclei found"):
        sst.pp.segment(sdata, progress=False)
    assert "sst_cells" not in sdata
    # uint16 RGBA input is brought to uint8 RGB
    rgba = np.zeros((4, 300, 300), np.uint16)
    rgba[:3] = 60000
    rgba[:3, 100:110, 100:110] = 15000
    sdata = _he(rgba)
    sst.pp.segment(sdata, progress=False)
    # a single-channel image gets a clear error
    gray = np.zeros((1, 100, 100), np.uint8)
    sdata = _he(gray)
    with pytest.raises(ValueError, match="RGB"):
        sst.pp.segment(sdata, progress=False)


def test_existing_output_is_not_overwritten(synthetic_small):
    sdata = _image_only(synthetic_small)
    sst.pp.segment(sdata, progress=False)
    n = len(sdata["sst_cells"])
    with pytest.raises(KeyError, match="overwrite=True"):
        sst.pp.segment(sdata, progress=False)
    sst.pp.segment(sdata, progress=False, overwrite=True, params={"min_area_um2": 30})
    assert len(sdata["sst_cells"]) < n


def test_interrupted_run_resumes_from_checkpoint(synthetic_small, tmp_path):
    from scipy import ndimage as ndi

    calls = []

    def dark(rgb, mpp):
        calls.append(1)
        if fail_after is not None and len(calls) > fail_after:
            raise KeyboardInterrupt("simulated interruption")
        return ndi.label(rgb.mean(-1) < 110)[0]

    reference = _image_only(synthetic_small)
    fail_after = None
    sst.pp.segment(reference, method=dark, tile_size=256, progress=False, n_jobs=1)
    n_tiles = len(calls)
    assert n_tiles == 16

    sdata = _image_only(synthetic_small)
    calls.clear()
    fail_after = 5
    with pytest.raises(KeyboardInterrupt):
        sst.pp.segment(
            sdata,
            method=dark,
            tile_size=256,
            progress=False,
            n_jobs=1,
            checkpoint=tmp_path / "ckpt",
        )
    assert "sst_cells" not in sdata
    calls.clear()
    fail_after = None
    sst.pp.segment(
        sdata, method=dark, tile_size=256, progress=False, n_jobs=1, checkpoint=tmp_path / "ckpt"
    )
    assert len(calls) == n_tiles - 5  # finished tiles were not redone
    a, b = reference["sst_cells"].geometry.to_numpy(), sdata["sst_cells"].geometry.to_numpy()
    assert len(a) == len(b) and all(shapely.equals_exact(a, b, tolerance=1e-9))
    np.testing.assert_allclose(
        reference["sst_cells_table"].obs["area_um2"], sdata["sst_cells_table"].obs["area_um2"]
    )
    # other settings may not reuse the directory
    with pytest.raises(ValueError, match="other settings"):
        sst.pp.segment(
            sdata,
            method=dark,
            tile_size=128,
            progress=False,
            checkpoint=tmp_path / "ckpt",
            key_added="x",
        )


def test_checkpoint_of_an_older_tile_format_is_refused(synthetic_small, tmp_path):
    import json

    sdata = _image_only(synthetic_small)
    ckpt = tmp_path / "ckpt"
    sst.pp.segment(sdata, tile_size=256, progress=False, n_jobs=1, checkpoint=ckpt)
    meta = json.loads((ckpt / "run.json").read_text())
    (ckpt / "run.json").write_text(json.dumps({**meta, "format": 1}))
    with pytest.raises(ValueError, match="format"):
        sst.pp.segment(sdata, tile_size=256, progress=False, checkpoint=ckpt, key_added="again")


def test_tiles_run_on_a_dask_distributed_cluster(synthetic_small):
    from distributed import Client, LocalCluster

    local, remote = _image_only(synthetic_small), _image_only(synthetic_small)
    sst.pp.segment(local, tile_size=300, progress=False)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster),
    ):
        sst.pp.segment(remote, tile_size=300, progress=False)
    np.testing.assert_allclose(
        local["sst_cells_table"].obsm["spatial"], remote["sst_cells_table"].obsm["spatial"]
    )


def test_dark_fluorescence_like_image_is_refused():
    rng = np.random.default_rng(0)
    dark = rng.integers(0, 30, (3, 400, 400)).astype(np.uint8)
    dark[2, 100:120, 100:120] = 250  # a bright "DAPI" nucleus on black
    sdata = _he(dark)
    with pytest.raises(ValueError, match="does not look like a brightfield H&E"):
        sst.pp.segment(sdata, progress=False)


def test_optional_labels_element(synthetic_small):
    sdata = _image_only(synthetic_small)
    sst.pp.segment(sdata, labels_key="nuclei_labels", progress=False)
    labels = np.asarray(sdata["nuclei_labels"].data)
    assert labels.shape == (1024, 1024) and labels.max() == len(sdata["sst_cells"])
    area_px = np.bincount(labels.ravel())[1:]
    np.testing.assert_allclose(
        area_px * 0.25, sdata["sst_cells_table"].obs["area_um2"], rtol=0.15, atol=1.0
    )


def test_solid_colour_image_gives_a_clear_error():
    pink = np.empty((3, 300, 300), np.uint8)
    pink[0], pink[1], pink[2] = 230, 150, 200
    sdata = _he(pink)
    with pytest.raises(ValueError, match="No nuclei found"):
        sst.pp.segment(sdata, progress=False)


def test_imported_nuclei_keep_their_class(synthetic_small, tmp_path):
    import json

    square = lambda x, y: [[x, y], [x + 10, y], [x + 10, y + 10], [x, y + 10], [x, y]]  # noqa: E731
    features = [
        {  # HEST/QuPath style: one MultiPolygon per class, the class as a {"name": ...} object
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[square(100, 100)], [square(200, 100)]],
            },
            "properties": {"classification": {"name": "Neoplastic", "color": [255, 0, 0]}},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [square(300, 300)]},
            "properties": {"classification": {"name": "Inflammatory", "color": [0, 255, 0]}},
        },
    ]
    path = tmp_path / "cellvit.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    sdata = _image_only(synthetic_small)
    sst.io.read_nuclei(path, sdata, key_added="cellvit")
    assert len(sdata["cellvit"]) == 3
    assert list(sdata["cellvit"]["class"]) == ["Neoplastic", "Neoplastic", "Inflammatory"]
    sst.pp.segment(sdata, shapes_key="cellvit", progress=False)
    cells = sdata["sst_cells_table"]
    assert list(cells.obs["class"]) == ["Neoplastic", "Neoplastic", "Inflammatory"]
    np.testing.assert_allclose(cells.obs["area_um2"], 100 * 0.25)
    np.testing.assert_allclose(cells.obsm["spatial"][0], [105, 105])
    with pytest.raises(FileNotFoundError):
        sst.io.read_nuclei(tmp_path / "missing.geojson", sdata)

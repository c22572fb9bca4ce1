"""The learned nucleus segmenter: shipped weights, tiled inference, fine-tuning, save/load."""

import json

import numpy as np
import pytest
import shapely
import spatialdata as sd
import torch

import scellst as sst
from scellst.segmentation.learned import SHIPPED
from scellst.segmentation.nucleus_net import NucleusNet, instances, probabilities
from scellst.segmentation.nucleus_training import targets

from .test_segment import _f1_vs_truth


def _crop(sdata, size=256):
    """The first ``size``² pixels of the synthetic H&E and its true nucleus labels."""
    rgb = np.asarray(sdata["he"].data[:, :size, :size]).transpose(1, 2, 0)
    return np.ascontiguousarray(rgb), np.asarray(sdata["truth_labels"].data[:size, :size])


def test_shipped_weights_are_small_plain_and_documented():
    weights, config = SHIPPED / "weights.pt", json.loads((SHIPPED / "config.json").read_text())
    assert weights.stat().st_size < 20e6  # the budget for the wheel
    state = torch.load(weights, map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert "DSB2018" in config["trained_on"] and "MoNuSeg" not in config["trained_on"]
    assert config["command"].startswith("python benchmarks/train_nucleus_net.py")


def test_shipped_model_finds_the_true_nuclei(synthetic_small):
    sdata = sd.SpatialData(images={"he": synthetic_small["he"]})
    sdata["truth_labels"] = synthetic_small["truth_labels"]
    sst.pp.segment(sdata, method="learned", tile_size=512, progress=False)
    table = sdata["sst_cells_table"]
    info = table.uns["scellst"]["segmentation"]
    assert info["method"] == "learned" and info["params"]["weights"].startswith("shipped:")
    assert _f1_vs_truth(sdata) > 0.8
    assert np.all(shapely.is_valid(sdata["sst_cells"].geometry.values))


def test_windows_stitch_without_seams():
    torch.manual_seed(0)
    net = NucleusNet().eval()
    rgb = np.random.default_rng(0).integers(0, 255, (300, 260, 3), dtype=np.uint8)
    whole = probabilities(net, rgb, window=512)
    tiled = probabilities(net, rgb, window=128, overlap=32)
    assert tiled.shape == whole.shape == (3, 300, 260)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)
    # 32 px of context on each side: the stitched map is the whole-image one, to within the
    # network's receptive field beyond that context
    assert np.median(np.abs(tiled - whole)) < 0.01


def test_instances_split_touching_nuclei_on_the_boundary_class():
    lab = np.zeros((40, 60), np.int32)
    lab[10:30, 5:30], lab[10:30, 30:55] = 1, 2  # two touching squares
    tgt = targets(lab)
    assert set(np.unique(tgt)) == {0, 1, 2} and (tgt[10:30, 29:31] == 2).all()
    prob = np.stack([tgt == 0, tgt == 1, tgt == 2]).astype(np.float32)
    found = instances(prob, 10, 10_000)
    assert len(np.unique(found)) - 1 == 2


def test_fine_tune_save_load_and_segment(synthetic_small, tmp_path):
    rgb, lab = _crop(synthetic_small)
    model = sst.pp.train_segmenter(
        [rgb], [lab], 0.5, steps=3, batch_size=2, patch_px=64, progress=False
    )
    assert model.config["training"]["n_nuclei"] == len(np.unique(lab)) - 1
    assert model.config["base"].startswith("shipped:")
    model.save(tmp_path / "seg")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save(tmp_path / "seg")
    again = sst.pp.NucleusSegmenter(tmp_path / "seg")
    assert again.sha256 == model.sha256
    np.testing.assert_array_equal(model(rgb, 0.5), again(rgb, 0.5))
    sdata = sd.SpatialData(images={"he": synthetic_small["he"]})
    sst.pp.segment(sdata, method=again, progress=False)
    assert sdata["sst_cells_table"].uns["scellst"]["segmentation"]["params"]["weights"] == str(
        tmp_path / "seg"
    )


# QuPath-style GeoJSON in pixel coordinates has no CRS, which pyogrio warns about when writing
@pytest.mark.filterwarnings("ignore:'crs' was not provided")
def test_geojson_annotations(synthetic_small, tmp_path):
    import geopandas as gpd

    from scellst.segmentation.learned import _read_labels

    rgb, lab = _crop(synthetic_small, 128)
    squares = [shapely.box(10, 10, 30, 25), shapely.box(50, 60, 70, 80)]
    path = tmp_path / "nuclei.geojson"
    gpd.GeoDataFrame(geometry=squares).to_file(path, driver="GeoJSON")
    burnt = _read_labels(path, rgb.shape[:2])
    assert burnt.max() == 2 and (burnt == 1).sum() == pytest.approx(20 * 15, rel=0.1)


def test_clear_errors(synthetic_small, tmp_path):
    rgb, lab = _crop(synthetic_small, 64)
    with pytest.raises(ValueError, match="one label image per image"):
        sst.pp.train_segmenter([rgb, rgb], [lab], 0.5)
    with pytest.raises(ValueError, match="shape"):
        sst.pp.train_segmenter([rgb], [lab[:10]], 0.5)
    with pytest.raises(ValueError, match="positive"):
        sst.pp.train_segmenter([rgb], [lab], 0.0)
    with pytest.raises(ValueError, match="no nuclei"):
        sst.pp.train_segmenter([rgb], [np.zeros_like(lab)], 0.5)
    with pytest.raises(FileNotFoundError, match="train_segmenter"):
        sst.pp.NucleusSegmenter(tmp_path)

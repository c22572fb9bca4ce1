"""The learned nucleus segmenter: shipped weights, tiled inference, fine-tuning, save/load."""

import json

import numpy as np
import pytest
import shapely
import spatialdata as sd
import torch
from scipy import ndimage as ndi

import scellst as sst
from scellst.segmentation.learned import SHIPPED
from scellst.segmentation.nucleus_net import NucleusNet, instances, probabilities
from scellst.segmentation.nucleus_training import (
    IGNORE,
    Example,
    _loss,
    _patch,
    stain_jitter,
    targets,
)
from scellst.segmentation.self_training import pseudo_label, pseudo_labelled

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
    # the network the config describes holds exactly the shipped tensors
    net = NucleusNet(config["decoder_width"], config["fine_width"])
    net.load_state_dict(state)


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


def test_instances_split_a_chain_the_boundary_class_leaves_joined():
    yy, xx = np.mgrid[:40, :100]
    discs = sum((yy - 20) ** 2 + (xx - cx) ** 2 <= 81 for cx in (20, 37, 54, 71)) > 0
    prob = np.stack([~discs, discs, np.zeros_like(discs)]).astype(np.float32)  # no boundary
    found = instances(prob, 10, 10_000)
    assert len(np.unique(found)) - 1 == 4
    assert (found[discs] > 0).all() and (found[~discs] == 0).all()


def test_training_patches_keep_boundaries_thin_and_ignored_pixels_out_of_the_loss():
    rng = np.random.default_rng(0)
    lab = np.zeros((80, 80), np.int32)
    lab[20:60, 10:40], lab[20:60, 40:70] = 1, 2
    ignore = np.zeros((80, 80), bool)
    ignore[70:] = True
    rgb = np.full((80, 80, 3), 230, np.uint8)
    rgb[lab == 1], rgb[lab == 2] = (120, 40, 160), (40, 40, 90)  # two colours, two nuclei
    for _ in range(8):  # any scale, rotation and flip
        x, y = _patch(Example(rgb, lab, ignore, pseudo=True), rng, 80, blur=0.0)
        x, y = x.numpy(), y.numpy()
        assert x.shape == (3, 80, 80) and set(np.unique(y)) <= {0, 1, 2, IGNORE}
        # boundaries drawn after rescaling: thin (nothing survives an erosion) and unbroken
        # (no interior pixel touches the other nucleus' interior: neighbours share a colour)
        assert not ndi.binary_erosion(y == 2).any()
        inside = y == 1
        for a, b in (((slice(None), slice(1, None)), (slice(None), slice(None, -1))),
                     ((slice(1, None), slice(None)), (slice(None, -1), slice(None)))):  # fmt: skip
            pair = inside[a] & inside[b]
            assert np.abs(x[:, *a] - x[:, *b]).max(0)[pair].max(initial=0) < 0.5
    logits = torch.zeros(1, 3, 4, 4, requires_grad=True)
    tgt = torch.full((1, 4, 4), IGNORE)
    tgt[0, 0, 0] = 1
    loss = _loss(logits, tgt, torch.ones(3))
    loss.backward()  # only the one labelled pixel has a gradient through the cross-entropy
    assert logits.grad[0, :, 1:, 1:].abs().sum() == 0


def test_eosin_texture_is_painted_into_annotated_patches():
    rgb = np.full((32, 32, 3), 235, np.uint8)  # a pale annotated crop
    eosin = np.full((64, 64), 0.6, np.float32)
    plain = stain_jitter(rgb, np.random.default_rng(0))
    painted = stain_jitter(rgb, np.random.default_rng(0), eosin)
    assert painted.shape == plain.shape and painted.mean() < plain.mean() - 0.05
    # pink: eosin darkens green more than red
    assert (painted[..., 0] - painted[..., 1]).mean() > 0.05


def test_stain_jitter_redraws_colours_within_range():
    rgb = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    a = stain_jitter(rgb, np.random.default_rng(1))
    b = stain_jitter(rgb, np.random.default_rng(2))
    assert a.dtype == np.float32 and a.shape == rgb.shape
    assert a.min() >= 0 and a.max() <= 1 and np.isfinite(a).all()
    assert np.abs(a - b).mean() > 0.005  # another draw, other colours
    # white glass stays white: no stain, nothing to redraw
    white = stain_jitter(np.full((4, 4, 3), 255, np.uint8), np.random.default_rng(1))
    np.testing.assert_allclose(white, 1.0, atol=1e-6)


class _Teacher:
    """A stand-in network: nucleus wherever the image is dark."""

    work_mpp = 0.5

    def probabilities(self, rgb, mpp):
        dark = rgb.mean(-1) < 150
        return np.stack([~dark, dark, np.zeros_like(dark)]).astype(np.float32)


def test_pseudo_labels_where_watershed_and_network_agree():
    rgb = np.full((40, 40, 3), 230, np.uint8)
    rgb[5:15, 5:15] = rgb[25:35, 25:35] = (60, 40, 120)  # two nuclei the teacher sees
    ws = np.zeros((40, 40), np.int32)
    ws[5:15, 5:15] = 1  # the watershed finds the first ...
    ws[20:24, 2:6] = 2  # ... and a speck the network calls background
    ex = pseudo_label(rgb, ws, _Teacher())
    assert ex.pseudo and (ex.labels[5:15, 5:15] == 1).all()
    assert ex.ignore[25:35, 25:35].all()  # network only: unknown
    assert ex.ignore[20:24, 2:6].all() and (ex.labels[20:24, 2:6] == 0).all()  # watershed only
    assert not ex.ignore[0, 39] and ex.labels[0, 39] == 0  # both say background


def test_pseudo_labelled_patches_from_a_slide(synthetic_small):
    from scellst.segmentation.self_training import PseudoLabelSettings, array_slide

    rgb = np.asarray(synthetic_small["he"].data).transpose(1, 2, 0)
    settings = PseudoLabelSettings(patches_per_image=2, patch_px=96, min_nuclei=3)
    out = pseudo_labelled([array_slide(rgb, 0.5)], _Teacher(), settings, progress=False)
    assert len(out) == 2 and all(ex.rgb.shape == (96, 96, 3) for ex in out)
    assert all(len(np.unique(ex.labels)) - 1 >= 1 and ex.ignore.any() for ex in out)
    with pytest.raises(ValueError, match="smaller than one"):
        pseudo_labelled([array_slide(rgb[:50, :50], 0.5)], _Teacher(), settings, progress=False)


def test_self_training_on_unlabeled_slides(synthetic_small):
    rgb, lab = _crop(synthetic_small, 128)
    slide = np.asarray(synthetic_small["he"].data).transpose(1, 2, 0)
    model = sst.pp.train_segmenter(
        [rgb], [lab], 0.5, unlabeled=[slide], unlabeled_microns_per_pixel=0.5,
        patches_per_slide=2, steps=2, batch_size=2, patch_px=64, progress=False,
    )  # fmt: skip
    info = model.config["self_training"]
    assert info["n_slides"] == 1 and info["n_patches"] == 2
    assert info["teacher"].startswith("shipped:")
    with pytest.raises(ValueError, match="unlabeled_microns_per_pixel"):
        sst.pp.train_segmenter([rgb], [lab], 0.5, unlabeled=[slide], steps=1)
    assert model.config["eosin_textures"] > 0
    # from ImageNet without a teacher, the slides only lend their eosin: no pseudo-labels
    first = sst.pp.train_segmenter(
        [rgb], [lab], 0.5, base=None, unlabeled=[slide], unlabeled_microns_per_pixel=0.5,
        steps=1, batch_size=2, patch_px=64, progress=False,
    )  # fmt: skip
    assert "self_training" not in first.config and first.config["eosin_textures"] > 0


def test_precision_choice():
    from scellst.segmentation.nucleus_net import native_bfloat16

    seg = sst.pp.NucleusSegmenter(precision="float32", device="cpu")
    assert seg.params["precision"] == "float32"
    auto = sst.pp.NucleusSegmenter(device="cpu")
    assert auto.precision == ("bfloat16" if native_bfloat16("cpu") else "float32")
    with pytest.raises(ValueError, match="precision"):
        sst.pp.NucleusSegmenter(precision="half")


def test_fine_tune_save_load_and_segment(synthetic_small, tmp_path):
    rgb, lab = _crop(synthetic_small)
    model = sst.pp.train_segmenter(
        [rgb], [lab], 0.5, steps=3, batch_size=2, patch_px=64, progress=False
    )
    assert "self_training" not in model.config
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

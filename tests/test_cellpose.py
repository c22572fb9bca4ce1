"""method="cellpose": weights resolution (never downloads), µm -> pixel rescaling, tiles.

The real cellpose-SAM network is a ViT-L (305 M parameters, ~17 s per 256² patch on 2 CPU
cores). The fast tests use cellpose's own ``CPSAM`` network and ``CellposeModel`` (loaded from a
weights file, real ``eval``) with a tiny randomly initialised ViT encoder; the full-size
network is exercised by a ``slow`` test.
"""

from __future__ import annotations

import importlib
import math
import socket
import time

import numpy as np
import pytest
import shapely
import spatialdata as sd

import scellst as sst
from scellst._sdata import image_level0, read_rgb
from scellst.segmentation.cellpose import (
    MODELS_ENV,
    CellposeSegmenter,
    cellpose_diameter_px,
    resolve_weights,
)
from scellst.segmentation.polygons import owned_nuclei
from scellst.segmentation.tiles import tile_grid

# random weights give random flows and small masks: keep every candidate mask
PERMISSIVE = {"flow_threshold": 0.0, "cellprob_threshold": -1.0, "min_area_um2": 1.0}


@pytest.fixture
def offline(monkeypatch):
    """Any network access fails loudly (and at once)."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


@pytest.fixture
def empty_models_dir(tmp_path, monkeypatch):
    d = tmp_path / "cellpose_models"
    d.mkdir()
    monkeypatch.setenv(MODELS_ENV, str(d))
    return d


def _tiny_sam(checkpoint=None):
    build = importlib.import_module("segment_anything.build_sam")
    return build._build_sam(
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=[1],
        checkpoint=None,
    )


@pytest.fixture
def tiny_weights(tmp_path, monkeypatch):
    """A weights file of cellpose's CPSAM network with a tiny random ViT (0.75 M parameters).

    Cellpose builds its CPSAM around ``sam_model_registry["vit_l"]``; the registry entry is
    shrunk for the test, everything else (file, loading, ``eval``) is cellpose's own.
    """
    import cellpose.vit
    import torch

    monkeypatch.setitem(cellpose.vit.sam_model_registry, "vit_l", _tiny_sam)
    torch.manual_seed(0)
    path = tmp_path / "tiny_cpsam.pth"
    cellpose.vit.CPSAM(dtype=torch.float32).save_model(path)
    return path


def _tissue(shape, seed=0):
    """A noisy pinkish RGB tile with dark blobs (enough optical density to count as tissue)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty((*shape, 3), np.uint8)
    rgb[...] = (220, 160, 200)
    rgb = rgb.astype(int) + rng.integers(-20, 20, rgb.shape)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for _ in range(max(1, shape[0] * shape[1] // 400)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 25] = (70, 40, 120)
    return np.clip(rgb, 0, 255).astype(np.uint8)


# -- weights: found locally or a clear, immediate error -------------------------------------


def test_missing_default_weights_fail_fast_naming_file_and_env(offline, empty_models_dir):
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        CellposeSegmenter()
    elapsed = time.perf_counter() - t0
    assert elapsed < 2.0
    msg = str(err.value)
    assert str(empty_models_dir / "cpsam_v2") in msg
    assert MODELS_ENV in msg and "cpsam_v2" in msg
    assert "never downloads" in msg


def test_missing_weights_path_fails_fast(offline, tmp_path, empty_models_dir):
    missing = tmp_path / "weights" / "my_cpsam.pth"
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        CellposeSegmenter(pretrained_model=missing)
    assert time.perf_counter() - t0 < 2.0
    assert str(missing) in str(err.value) and MODELS_ENV in str(err.value)
    # a folder is not a weights file
    with pytest.raises(FileNotFoundError, match="is a folder"):
        CellposeSegmenter(pretrained_model=tmp_path)


def test_segment_with_missing_weights_fails_before_any_tile(offline, empty_models_dir):
    sdata = sst.datasets.synthetic(shape=(256, 256), seed=0)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError) as err:
        sst.pp.segment(sdata, method="cellpose", params={"pretrained_model": "cpsam"})
    assert time.perf_counter() - t0 < 2.0
    assert str(empty_models_dir / "cpsam") in str(err.value)
    assert "sst_cells" not in sdata.shapes


def test_weights_resolved_from_models_dir_and_paths(tmp_path, empty_models_dir, monkeypatch):
    (empty_models_dir / "cpsam_v2").write_bytes(b"x")
    (empty_models_dir / "mine").write_bytes(b"x")
    assert resolve_weights() == (empty_models_dir / "cpsam_v2").resolve()
    assert resolve_weights("mine") == (empty_models_dir / "mine").resolve()
    other = tmp_path / "elsewhere.pth"
    other.write_bytes(b"x")
    assert resolve_weights(other) == other.resolve()
    assert resolve_weights(str(other)) == other.resolve()
    # without the environment variable: cellpose's default folder
    monkeypatch.delenv(MODELS_ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(FileNotFoundError, match=r"\.cellpose/models/cpsam_v2.*unset") as err:
        resolve_weights()
    assert str(tmp_path / "home" / ".cellpose" / "models" / "cpsam_v2") in str(err.value)


# -- scale, arguments, device ---------------------------------------------------------------


def test_rescaling_from_microns(tiny_weights, monkeypatch):
    # µm -> the diameter cellpose gets, in pixels; cellpose resizes by 30 / diameter
    assert cellpose_diameter_px(8.0, 0.25) == pytest.approx(32.0)
    assert cellpose_diameter_px(8.0, 0.5) == pytest.approx(16.0)
    assert cellpose_diameter_px(7.5, 0.25) == pytest.approx(30.0)  # no resizing
    with pytest.raises(ValueError):
        cellpose_diameter_px(8.0, 0.0)

    seg = CellposeSegmenter(tiny_weights, nucleus_diameter_um=8.0, min_area_um2=10.0)
    args = seg.eval_args(0.5)
    assert args["diameter"] == pytest.approx(16.0) and args["channel_axis"] == -1
    assert args["min_size"] == 40  # 10 µm² at 0.25 µm² per pixel
    assert seg.max_diameter_um == 24.0 and seg.margin_um == 32.0

    # the real network sees the tile resized by 30 / 16
    import cellpose.models

    seen = {}
    real_run_net = cellpose.models.run_net

    def spy(net, imgi, **kwargs):
        seen.update(shape=imgi.shape, rsz=kwargs.get("rsz"))
        return real_run_net(net, imgi, **kwargs)

    monkeypatch.setattr(cellpose.models, "run_net", spy)
    labels = seg(_tissue((100, 60)), 0.5)
    assert seen["rsz"] == pytest.approx(30 / 16)
    assert seen["shape"][1:3] == (100, 60)
    assert labels.shape == (100, 60)


def test_eval_arguments_are_checked(tiny_weights):
    with pytest.raises(TypeError, match="diameter"):
        CellposeSegmenter(tiny_weights, diameter=30)
    with pytest.raises(TypeError, match="min_area_um2"):
        CellposeSegmenter(tiny_weights, min_size=10)
    with pytest.raises(TypeError, match="Unknown cellpose eval arguments"):
        CellposeSegmenter(tiny_weights, flow_treshold=0.2)
    seg = CellposeSegmenter(tiny_weights, flow_threshold=0.2, niter=None)
    assert seg.params["flow_threshold"] == 0.2 and "niter" not in seg.params  # no None in uns


def test_device_follows_cuda_availability(tiny_weights, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = CellposeSegmenter(tiny_weights)
    assert (gpu.device, gpu.batch_size, gpu.use_bfloat16) == ("cuda", 32, True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = CellposeSegmenter(tiny_weights, batch_size=4)
    assert (cpu.device, cpu.batch_size, cpu.use_bfloat16) == ("cpu", 4, False)
    assert cpu._model is None  # nothing loaded until the first tile


# -- the real network on tiles --------------------------------------------------------------


def test_labels_have_the_tile_shape(tiny_weights, monkeypatch):
    seg = CellposeSegmenter(tiny_weights, nucleus_diameter_um=7.5, **PERMISSIVE)
    import cellpose.models

    assert isinstance(seg.model, cellpose.models.CellposeModel)
    assert seg.model.device.type == "cpu"
    for shape in [(64, 64), (37, 301), (300, 1)]:
        labels = seg(_tissue(shape), 0.25)
        assert labels.shape == shape and labels.dtype == np.int32
        assert labels.min() >= 0
    assert seg(_tissue((80, 90)), 0.25).max() > 0  # random weights, permissive: some masks

    # glass: no network run at all
    calls = []
    monkeypatch.setattr(seg.model, "eval", lambda *a, **k: calls.append(1))
    white = np.full((50, 70, 3), 245, np.uint8)
    assert seg(white, 0.25).shape == (50, 70) and not calls
    assert not seg(white, 0.25).any()


def test_segment_runs_cellpose_tile_by_tile(tiny_weights):
    sdata = sst.datasets.synthetic(shape=(256, 256), seed=0, tissue_fraction=1.0)
    image = sd.SpatialData(images={"he": sdata["he"]})
    params = {"pretrained_model": str(tiny_weights), "nucleus_diameter_um": 15.0, **PERMISSIVE}
    t0 = time.perf_counter()
    sst.pp.segment(
        image, method="cellpose", params=params, tile_size=128, margin_um=10, n_jobs=1,
        progress=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - t0
    cells, table = image["sst_cells"], image["sst_cells_table"]
    seg_info = table.uns["scellst"]["segmentation"]
    assert seg_info["method"] == "cellpose"
    assert seg_info["params"]["pretrained_model"] == str(tiny_weights.resolve())
    assert seg_info["params"]["nucleus_diameter_um"] == 15.0
    assert seg_info["params"]["flow_threshold"] == 0.0
    assert seg_info["margin_px"] == 20 and seg_info["tile_size"] == 128
    assert len(cells) == table.n_obs > 0
    geoms = cells.geometry.to_numpy()
    assert shapely.is_valid(geoms).all()

    # stitching: exactly the nuclei each tile's cellpose run owns (centroid in its core)
    seg = CellposeSegmenter(tiny_weights, nucleus_diameter_um=15.0, **PERMISSIVE)
    img = image_level0(image, "he")
    expected = 0
    for tile in tile_grid((256, 256), 128, 20):
        window = read_rgb(img, tile.wy0, tile.wy1, tile.wx0, tile.wx1)
        expected += len(owned_nuclei(seg(window, 0.5), window, tile)["geometry"])
    assert len(cells) == expected
    print(f"segment(method='cellpose'), 256² in 4 tiles, tiny net: {elapsed:.2f} s")


def test_segmenter_instance_as_method(tiny_weights):
    sdata = sst.datasets.synthetic(shape=(256, 256), seed=0, tissue_fraction=1.0)
    image = sd.SpatialData(images={"he": sdata["he"]})
    seg = CellposeSegmenter(tiny_weights, nucleus_diameter_um=15.0, **PERMISSIVE)
    sst.pp.segment(image, method=seg, progress=False, n_jobs=2)
    info = image["sst_cells_table"].uns["scellst"]["segmentation"]
    assert info["method"] == "cellpose" and info["params"]["nucleus_diameter_um"] == 15.0
    assert info["margin_px"] == math.ceil(seg.margin_um / 0.5)  # the segmenter's own margin


# -- the full-size cellpose-SAM network -----------------------------------------------------


@pytest.mark.slow
def test_full_size_cpsam_random_weights(tmp_path, offline):
    """Cellpose-SAM's real ViT-L, random weights saved to a file (~610 MB in bfloat16)."""
    import cellpose.vit
    import torch

    torch.manual_seed(0)
    t0 = time.perf_counter()
    state = cellpose.vit.CPSAM(dtype=torch.float32).state_dict()
    path = tmp_path / "cpsam_random"
    torch.save({k: v.to(torch.bfloat16) if k != "W2" else v for k, v in state.items()}, path)
    del state
    t1 = time.perf_counter()
    seg = CellposeSegmenter(path, nucleus_diameter_um=7.5, device="cpu", **PERMISSIVE)
    assert seg.model.net.encoder.patch_embed.proj.weight.shape[0] == 1024  # ViT-L
    t2 = time.perf_counter()
    labels = seg(_tissue((200, 180)), 0.25)  # 30-px nuclei: one 256² patch
    t3 = time.perf_counter()
    assert labels.shape == (200, 180)
    print(f"full CPSAM: save {t1 - t0:.1f} s, load {t2 - t1:.1f} s, one tile {t3 - t2:.1f} s")

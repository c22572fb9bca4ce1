import numpy as np
import pytest

import scellst as sst
from scellst.embedding.crops import iter_crops
from scellst.mil.evaluate import match_truth_cells


def test_morphology_embedding_table(segmented, synthetic_small):
    sst.tl.embed(segmented, progress=False)
    table = segmented["sst_embedding"]
    cells = segmented["sst_cells_table"]
    X = table.obsm["X_sst"]
    info = table.uns["scellst"]["embedding"]
    assert X.shape == (cells.n_obs, len(info["feature_names"]))
    assert np.isfinite(X).all()
    assert info["encoder"] == "morphology" and info["crop_size_um"] == 18.0
    assert table.uns["spatialdata_attrs"]["region"] == "sst_cells"
    np.testing.assert_array_equal(table.obs["cell_id"].to_numpy(), cells.obs["cell_id"].to_numpy())
    # features are physically meaningful: polygon area equals the cells table's area
    area = X[:, info["feature_names"].index("area_um2")]
    np.testing.assert_allclose(np.median(area), np.median(cells.obs["area_um2"]), rtol=0.05)
    # lymphocytes (small, dark) have darker nuclei than macrophages (pale) in the features
    segmented["truth_labels"] = synthetic_small["truth_labels"]
    segmented["truth_expression"] = synthetic_small["truth_expression"]
    hit, rows = match_truth_cells(segmented, "sst_cells_table")
    types = synthetic_small["truth_expression"].obs["cell_type"].to_numpy()[rows]
    h = X[hit, info["feature_names"].index("h_mean")]
    assert h[types == "lymphocyte"].mean() > h[types == "macrophage"].mean()


def test_embedding_is_deterministic_and_tiling_independent(segmented):
    sst.tl.embed(segmented, progress=False, tile_size=4096)
    sst.tl.embed(segmented, progress=False, tile_size=256, key_added="tiled", n_jobs=2)
    a, b = segmented["sst_embedding"].obsm["X_sst"], segmented["tiled"].obsm["X_sst"]
    # each crop is warped from a source window anchored on its own cell, so the tiling does not
    # change a single pixel (only float summation order may differ)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    # same call twice: bit-identical
    sst.tl.embed(segmented, progress=False, tile_size=256, key_added="tiled2", n_jobs=2)
    np.testing.assert_array_equal(b, segmented["tiled2"].obsm["X_sst"])


def test_crops_have_fixed_physical_size_and_handle_borders(segmented):
    from scellst._sdata import image_level0
    from scellst.embedding.crops import exterior_coords

    img = image_level0(segmented, "he")
    xy = np.array([[2.0, 2.0], [512.0, 512.0]])  # a cell at the corner and one in the middle
    polys = exterior_coords(segmented["sst_cells"].geometry.to_numpy()[:2])
    batches = list(iter_crops(img, 0.5, xy, polys, crop_size_um=18, crop_mpp=0.25, progress=False))
    images = np.concatenate([b.images for b in batches])
    padded = np.concatenate([b.padded for b in batches])
    assert images.shape == (2, 72, 72, 3)
    assert padded.tolist() == [True, False]
    assert (images[0, :10, :10] == 255).all()  # outside the slide is white


def test_custom_encoders(segmented):
    sst.tl.embed(
        segmented,
        encoder=lambda crops: crops.reshape(len(crops), -1, 3).mean(1),
        key_added="rgb",
        progress=False,
    )
    # 3 colour means, then the mean and SD of the neighbours' within 200 µm (default context)
    assert segmented["rgb"].obsm["X_sst"].shape[1] == 3 * 3
    with pytest.raises(ValueError, match="Unknown encoder"):
        sst.tl.embed(segmented, encoder="resnet9000", key_added="x", progress=False)
    with pytest.raises(KeyError, match="overwrite=True"):
        sst.tl.embed(
            segmented, encoder=lambda c: c[:, 0, 0].astype(float), key_added="rgb", progress=False
        )

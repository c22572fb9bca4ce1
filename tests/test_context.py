import numpy as np
import pytest
import spatialdata as sd

import scellst as sst
from scellst._tables import cells_on_image
from scellst.embedding.context import context_feature_names, context_features
from scellst.io._scale import microns_per_pixel
from scellst.mil.spots import check_embedding_context, encoder_reference


def test_context_is_the_hand_computed_neighbour_mean_and_sd():
    # cells 0, 1, 2 within 30 µm of each other, 3 at 25 µm from 2 only, 4 alone
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 20.0], [0.0, 45.0], [500.0, 500.0]])
    x = np.array([[1.0, 10.0], [3.0, 20.0], [5.0, 60.0], [7.0, 0.0], [9.0, 4.0]])
    out = context_features(xy, x, [30.0], ["mean", "sd"])
    assert out.shape == (5, 4)
    mean, sd = out[:, :2], out[:, 2:]
    np.testing.assert_allclose(mean[0], x[[1, 2]].mean(0))  # itself excluded
    np.testing.assert_allclose(mean[2], x[[0, 1, 3]].mean(0))
    np.testing.assert_allclose(sd[2], x[[0, 1, 3]].std(0), rtol=1e-6)
    np.testing.assert_allclose(mean[3], x[2])
    np.testing.assert_allclose(sd[3], 0.0)
    np.testing.assert_allclose(mean[4], x[4])  # no neighbour: its own features, SD 0
    np.testing.assert_allclose(sd[4], 0.0)
    # a second radius and tiny chunks (bounded memory) give the same numbers
    both = context_features(xy, x, [30.0, 1000.0], ["mean", "sd"], max_pairs=2)
    np.testing.assert_allclose(both[:, :4], out, rtol=1e-6)
    np.testing.assert_allclose(both[0, 4:6], x[1:].mean(0), rtol=1e-6)
    assert context_feature_names(["a", "b"], [30.0], ["mean"]) == [
        "a_ctx30um_mean",
        "b_ctx30um_mean",
    ]
    with pytest.raises(ValueError, match="context_stats"):
        context_features(xy, x, [30.0], ["sd"])


def test_chunked_context_matches_brute_force():
    rng = np.random.default_rng(0)
    xy, x = rng.uniform(0, 300, (400, 2)), rng.normal(size=(400, 3))
    out = context_features(xy, x, [25.0, 60.0], ["mean"], max_pairs=300)
    dist = np.linalg.norm(xy[:, None] - xy[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    for k, r in enumerate([25.0, 60.0]):
        adj = dist <= r
        n = adj.sum(1)
        ref = np.where(n[:, None] > 0, adj @ x / np.maximum(n, 1)[:, None], x)
        np.testing.assert_allclose(out[:, 3 * k : 3 * k + 3], ref, rtol=1e-5, atol=1e-6)


def test_embed_appends_context_and_records_it(segmented, tmp_path):
    sst.tl.embed(segmented, context_um=0, progress=False, key_added="plain")
    sst.tl.embed(segmented, context_um=[40, 20], context_stats=["mean"], progress=False)
    own = segmented["plain"].obsm["X_sst"]
    table = segmented["sst_embedding"]
    info = table.uns["scellst"]["embedding"]
    d = own.shape[1]
    assert table.obsm["X_sst"].shape == (own.shape[0], 3 * d)
    np.testing.assert_array_equal(table.obsm["X_sst"][:, :d], own)
    assert info["context"] == {"radii_um": [20.0, 40.0], "stats": ["mean"]}
    assert info["feature_names"][d] == info["feature_names"][0] + "_ctx20um_mean"
    assert segmented["plain"].uns["scellst"]["embedding"]["context"]["radii_um"] == []
    # the context is computed on the whole slide from the centroids in µm
    _, image_key, _, centroids = cells_on_image(segmented, "sst_cells", None)
    xy = centroids * microns_per_pixel(segmented, image_key)
    ctx = context_features(xy, own, [20.0, 40.0], ["mean"])
    np.testing.assert_allclose(table.obsm["X_sst"][:, d:], ctx, rtol=1e-5, atol=1e-5)
    # stored and read back (zarr turns lists into arrays): still the same context
    sst.io.write_zarr(segmented, tmp_path / "s.zarr")
    back = sd.read_zarr(tmp_path / "s.zarr")
    check_embedding_context(
        back["sst_embedding"].uns["scellst"]["embedding"], encoder_reference(info), "sst_embedding"
    )
    with pytest.raises(ValueError, match=r"context \[20.0, 40.0\] µm \(mean\).*context none"):
        check_embedding_context(
            back["plain"].uns["scellst"]["embedding"], encoder_reference(info), "plain"
        )
    # a model from before context was recorded matches only an embedding without context
    check_embedding_context(segmented["plain"].uns["scellst"]["embedding"], {}, "plain")
    with pytest.raises(ValueError, match="context_um=0"):
        check_embedding_context(info, {"encoder": "morphology"}, "sst_embedding")


def test_model_records_the_context_and_a_mismatch_is_refused(fitted):
    sdata, model = fitted
    info = sdata["sst_embedding"].uns["scellst"]["embedding"]
    reference = model.config["encoder_info"]
    assert reference["context"] == {"radii_um": [200.0], "stats": ["mean", "sd"]}  # default
    check_embedding_context(info, reference, "sst_embedding")
    other = dict(info, context={"radii_um": [30.0], "stats": ["mean", "sd"]})
    with pytest.raises(ValueError, match=r"\[200.0\] µm \(mean, sd\).*context_um=\[200.0\]"):
        check_embedding_context(other, reference, "sst_embedding")


def test_predict_and_fit_refuse_another_context_of_the_same_width(fitted):
    # 30 µm and 200 µm give the same number of columns: only the recorded context tells them apart
    sdata, model = fitted
    sst.tl.embed(sdata, context_um=30, progress=False, key_added="emb30")
    assert sdata["emb30"].obsm["X_sst"].shape == sdata["sst_embedding"].obsm["X_sst"].shape
    with pytest.raises(ValueError, match=r"context \[200.0\] µm.*'emb30' has context \[30.0\]"):
        sst.tl.predict(sdata, model, embedding_key="emb30", key_added="expr30")
    assert "expr30" not in sdata.tables
    other = sd.SpatialData(
        images={"he": sdata["he"]},
        shapes={k: sdata[k] for k in sdata.shapes},
        tables={k: sdata[k] for k in sdata.tables if k != "sst_embedding"},
    )
    other.tables["sst_embedding"] = sdata["emb30"]
    with pytest.raises(ValueError, match="neighbourhood contexts"):
        sst.tl.fit([sdata, other], genes=model.genes[:3], max_epochs=1, progress=False)

"""Instance-segmentation metrics on hand-made label images, and rasterising cell polygons."""

import time

import numpy as np
import pytest
import shapely
import spatialdata as sd

import scellst as sst
from scellst.segmentation.rasterize import burn_polygons

metrics = sst.tl.segmentation_metrics


def _three_squares():
    """Three 10x10 true nuclei (ids 1, 2, 3) on a 40x40 image."""
    truth = np.zeros((40, 40), dtype=np.int32)
    truth[2:12, 2:12] = 1
    truth[2:12, 20:30] = 2
    truth[25:35, 5:15] = 3
    return truth


def test_identical_labels_score_one_whatever_the_dtypes_and_ids():
    truth = _three_squares()
    pred = (truth * 7 + (truth > 0) * 1000).astype(np.uint16)  # ids 1007, 1014, 1021
    m = metrics(truth, pred)
    for key in ("f1", "precision", "recall", "aji", "pq", "dq", "sq"):
        assert m[key] == 1.0, key
    assert (m["n_true"], m["n_pred"], m["n_matched"]) == (3, 3, 3)
    assert metrics(truth.astype(np.int64), truth.astype(np.float32))["aji"] == 1.0
    assert metrics(truth > 0, truth > 0)["f1"] == 1.0  # boolean masks: one object each


def test_split_nucleus():
    # true nucleus 1 is 10x20 (200 px); the prediction splits it 120 | 80
    truth = np.zeros((40, 40), dtype=np.int32)
    truth[0:10, 0:20] = 1
    truth[20:30, 0:10] = 2
    truth[20:30, 20:30] = 3
    pred = np.zeros_like(truth)
    pred[0:10, 0:12] = 5  # 120 px, IoU 0.6 with nucleus 1: a match
    pred[0:10, 12:20] = 6  # 80 px, IoU 0.4: a false positive
    pred[20:30, 0:10] = 8
    pred[20:30, 20:30] = 9
    m = metrics(truth, pred)
    tp, fp, fn = 3, 1, 0
    assert m["n_matched"] == tp and m["n_pred"] == 4
    assert m["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))  # 6/7
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == 1.0
    assert m["sq"] == pytest.approx((0.6 + 1 + 1) / 3)
    assert m["dq"] == pytest.approx(6 / 7)
    assert m["pq"] == pytest.approx(6 / 7 * 2.6 / 3)
    # AJI: nucleus 1 pairs with 5 (C += 120, U += 200); 6 is unused (U += 80)
    assert m["aji"] == pytest.approx((120 + 100 + 100) / (200 + 80 + 100 + 100))

    # an even split: IoU 0.5 is not > 0.5, so the nucleus is missed and both halves are FPs
    pred[0:10, 0:10], pred[0:10, 10:20] = 5, 6
    m = metrics(truth, pred)
    assert (m["n_matched"], m["n_pred"]) == (2, 4)
    assert m["f1"] == pytest.approx(4 / (4 + 2 + 1))
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == pytest.approx(2 / 4)
    assert m["pq"] == pytest.approx(4 / 7)  # SQ = 1 over the two exact matches
    assert m["aji"] == pytest.approx((100 + 100 + 100) / (200 + 100 + 100 + 100))


def test_missed_nucleus_lowers_recall_only():
    truth = _three_squares()
    pred = truth.copy()
    pred[pred == 3] = 0
    m = metrics(truth, pred)
    assert m["recall"] == pytest.approx(2 / 3) and m["precision"] == 1.0
    assert m["f1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 1))
    assert m["sq"] == 1.0 and m["pq"] == pytest.approx(m["f1"])
    assert m["aji"] == pytest.approx(200 / 300)  # the missed nucleus' area stays in U


def test_spurious_object_grows_the_aji_denominator_by_its_area():
    truth = _three_squares()
    pred = truth.copy()
    pred[20:24, 30:37] = 9  # 28 px of background
    m = metrics(truth, pred)
    assert m["aji"] == pytest.approx(300 / (300 + 28))
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == 1.0
    assert m["sq"] == 1.0


def test_merge_is_penalised_by_aji():
    truth = np.zeros((20, 30), dtype=np.int32)
    truth[5:15, 2:12] = 1
    truth[5:15, 12:22] = 2
    merged = (truth > 0).astype(np.int32)
    m = metrics(truth, merged)
    # each true nucleus pairs with the merged object: C = 100 + 100, U = 200 + 200
    assert m["aji"] == pytest.approx(0.5)
    assert m["n_matched"] == 0 and m["f1"] == 0.0 and m["pq"] == 0.0
    assert metrics(truth, truth)["aji"] == 1.0


def test_empty_images():
    empty = np.zeros((10, 10), dtype=np.uint8)
    one = empty.copy()
    one[2:5, 2:5] = 4
    both = metrics(empty, empty)
    assert both["f1"] == both["aji"] == both["pq"] == 1.0
    assert (both["n_true"], both["n_pred"]) == (0, 0)
    for m in (metrics(empty, one), metrics(one, empty)):
        assert m["f1"] == m["aji"] == m["pq"] == m["precision"] == m["recall"] == 0.0
    assert metrics(empty, one)["n_pred"] == 1 and metrics(one, empty)["n_true"] == 1


def test_invariant_to_label_permutation():
    rng = np.random.default_rng(0)
    truth = np.zeros((60, 60), dtype=np.int64)
    pred = np.zeros_like(truth)
    for k, (y, x) in enumerate(rng.integers(0, 50, size=(25, 2))):
        truth[y : y + 9, x : x + 9] = k + 1  # overlapping squares: later wins
        dy, dx = rng.integers(-2, 3, size=2)
        pred[max(y + dy, 0) : y + dy + 8, max(x + dx, 0) : x + dx + 10] = k + 1
    base = metrics(truth, pred)
    assert 0 < base["aji"] < 1 and 0 < base["f1"] < 1

    def permute(labels):
        ids = rng.permutation(10**6)[: labels.max() + 1] + 1
        ids[0] = 0
        return ids[labels]

    permuted = metrics(permute(truth), permute(pred).astype(np.uint32))
    for key, value in base.items():
        assert permuted[key] == pytest.approx(value), key


def test_low_threshold_matches_one_to_one():
    truth = np.zeros((10, 30), dtype=np.int32)
    truth[:, 0:10], truth[:, 10:20] = 1, 2
    pred = np.zeros_like(truth)
    pred[:, 3:17] = 1  # IoU 0.41 with each true object
    m = metrics(truth, pred, iou_threshold=0.3)
    assert m["n_matched"] == 1 and m["recall"] == 0.5 and m["precision"] == 1.0
    assert metrics(truth, pred)["n_matched"] == 0


def test_bad_inputs():
    a = np.zeros((10, 10), dtype=int)
    with pytest.raises(ValueError, match="shape"):
        metrics(a, np.zeros((10, 11), dtype=int))
    with pytest.raises(ValueError, match="2-D"):
        metrics(np.zeros((2, 10, 10), dtype=int), np.zeros((2, 10, 10), dtype=int))
    with pytest.raises(ValueError, match="non-integer"):
        metrics(a, a + 0.5)
    with pytest.raises(ValueError, match="negative"):
        metrics(a - 1, a)
    with pytest.raises(ValueError, match="iou_threshold"):
        metrics(a, a, iou_threshold=1.0)


def test_fast_on_a_1000px_image_with_500_nuclei():
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[:1000, :1000]
    truth = np.zeros((1000, 1000), dtype=np.int32)
    centres = rng.uniform(0, 1000, size=(500, 2))
    for k, (cy, cx) in enumerate(centres):
        y0, x0 = int(max(cy - 12, 0)), int(max(cx - 12, 0))
        win = (slice(y0, int(cy + 12)), slice(x0, int(cx + 12)))
        disk = (yy[win] - cy) ** 2 + (xx[win] - cx) ** 2 < 100
        truth[win][disk] = k + 1
    pred = np.roll(truth, 3, axis=1).astype(np.uint16)
    metrics(truth, pred)  # warm-up
    t0 = time.perf_counter()
    m = metrics(truth, pred)
    assert time.perf_counter() - t0 < 0.5
    assert m["n_true"] > 450 and 0.5 < m["aji"] < 1


# --- rasterize_cells -------------------------------------------------------------------------


def test_square_polygon_covers_exactly_its_pixels():
    labels = burn_polygons(np.array([shapely.box(10, 10, 20, 20)]), (40, 40))
    expected = np.zeros((40, 40), dtype=np.int32)
    expected[10:20, 10:20] = 1
    np.testing.assert_array_equal(labels, expected)
    assert labels.dtype == np.int32


def test_burn_order_holes_and_thin_shapes():
    donut = shapely.box(10, 10, 30, 30).difference(shapely.box(15, 15, 25, 25))
    geoms = np.array(
        [
            donut,  # 1: 400 - 100 pixels
            shapely.box(0, 0, 1, 1),  # 2: a single pixel
            shapely.box(3, 3, 5, 4),  # 3: one row of two pixels
            shapely.box(12, 12, 16, 16),  # 4: over the donut, later wins
            None,  # 5: missing geometry: nothing
            shapely.box(38, 38, 45, 45),  # 6: clipped by the image edge
        ],
        dtype=object,
    )
    labels = burn_polygons(geoms, (40, 40))
    counts = np.bincount(labels.ravel(), minlength=7)
    assert counts[1] == 300 - 15 and counts[4] == 16  # (15, 15) is in the hole
    assert counts[2] == 1 and labels[0, 0] == 2
    assert counts[3] == 2 and labels[3, 3:5].tolist() == [3, 3]
    assert counts[5] == 0 and counts[6] == 4
    assert labels[20, 20] == 0  # the hole


def test_rasterized_segmentation_matches_the_true_nuclei():
    sdata = sst.datasets.synthetic(shape=(512, 512), seed=0)
    truth = np.asarray(sdata["truth_labels"].data)
    sst.pp.segment(sdata, progress=False)
    labels = sst.pp.rasterize_cells(sdata)
    assert labels.shape == truth.shape and labels.dtype == np.int32
    n = len(sdata["sst_cells"])
    assert labels.max() == n and np.unique(labels).size > 0.95 * n
    # the polygons give back (nearly) the segmented pixels: areas agree with the table's
    mpp = sdata["sst_cells_table"].uns["scellst"]["segmentation"]["microns_per_pixel"]
    area_px = sdata["sst_cells_table"].obs["area_um2"].to_numpy() / mpp**2
    burnt = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    assert abs(burnt.sum() / area_px.sum() - 1) < 0.03
    m = metrics(truth, labels)
    assert m["f1"] > 0.85 and m["aji"] > 0.7 and m["pq"] > 0.7
    # without an image, `shape` is needed and the polygons' coordinates are pixels
    cells_only = sd.SpatialData(shapes={"sst_cells": sdata["sst_cells"]})
    np.testing.assert_array_equal(sst.pp.rasterize_cells(cells_only, shape=(512, 512)), labels)
    # circles (points with a radius) are burnt as disks
    spots = sst.pp.rasterize_cells(sdata, "spots")
    r = sdata["spots"]["radius"].to_numpy()
    inside = np.bincount(spots.ravel(), minlength=len(r) + 1)[1:]
    full = inside > 0.99 * np.pi * r**2  # spots cut by the image edge are smaller
    assert full.any()
    np.testing.assert_allclose(inside[full], np.pi * r[full] ** 2, rtol=0.01)
    with pytest.raises(KeyError, match="nope"):
        sst.pp.rasterize_cells(sdata, "nope")

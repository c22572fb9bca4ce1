"""Instance-segmentation metrics on label images: F1 at an IoU threshold, AJI and PQ."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

#: Largest dense (true x predicted) contingency table counted with one bincount (32 MB of int64).
_DENSE_PAIRS = 1 << 22


def segmentation_metrics(
    true_labels: np.ndarray,
    pred_labels: np.ndarray,
    *,
    iou_threshold: float = 0.5,
) -> dict[str, float]:
    """Score a predicted instance segmentation against a reference one.

    Both images are 2-D integer label images (0 = background, any other value = one object; ids
    need not be consecutive nor the same in both). Every score is computed from the sparse
    contingency table of (true, predicted) object pairs, counted over the pixels in one pass.

    - **F1**: true and predicted objects are matched one to one when their intersection over
      union (IoU) exceeds ``iou_threshold``; precision = matched / predicted, recall = matched /
      true, F1 = 2 TP / (2 TP + FP + FN). For a threshold of 0.5 or more the matches are unique
      by construction; below 0.5 the matching maximises the number of matches, then their IoU.
    - **AJI** (Aggregated Jaccard Index, Kumar et al. 2017): each true object is paired with the
      predicted object of highest IoU with it (none when nothing overlaps); AJI = C / U with C the
      sum of the intersections of these pairs and U the sum of their unions, plus the areas of
      unpaired true objects and of the predicted objects paired with no true object. A predicted
      object may be paired with several true objects (merges are penalised twice), and spurious
      or over-split objects add their whole area to U.
    - **PQ** (panoptic quality, Kirillov et al. 2019), with the same matches as F1:
      SQ = mean IoU of the matched pairs, DQ = TP / (TP + FP/2 + FN/2) (equal to F1), PQ = DQ x SQ.

    Parameters
    ----------
    true_labels
        Reference label image, shape ``(y, x)``, any integer (or boolean) dtype, 0 = background.
        Floating-point images are accepted when all their values are whole numbers.
    pred_labels
        Predicted label image of the same shape (its dtype may differ).
    iou_threshold
        Minimum IoU (exclusive) of a match for F1, precision, recall, DQ, SQ and PQ; the standard
        value is 0.5 (AJI does not use it).

    Returns
    -------
    dict[str, float]
        ``f1``, ``precision``, ``recall``, ``aji``, ``pq``, ``dq``, ``sq`` (floats in [0, 1]) and
        ``n_true``, ``n_pred``, ``n_matched`` (ints). When both images have no object every score
        is 1.0; when only one of them is empty every score is 0.0. With no match, SQ is 0.

    Raises
    ------
    ValueError
        If the images are not 2-D, differ in shape, contain negative or non-integer labels, or
        ``iou_threshold`` is not in [0, 1).

    References
    ----------
    .. [1] N. Kumar et al., "A Dataset and a Technique for Generalized Nuclear Segmentation for
       Computational Pathology", IEEE Transactions on Medical Imaging 36(7), 2017,
       doi:10.1109/TMI.2017.2677499 (AJI).
    .. [2] A. Kirillov, K. He, R. Girshick, C. Rother, P. Dollár, "Panoptic Segmentation",
       CVPR 2019, doi:10.1109/CVPR.2019.00963 (PQ, SQ, DQ).

    Examples
    --------
    >>> import numpy as np
    >>> import scellst as sst
    >>> truth = np.zeros((8, 8), dtype=int)
    >>> truth[1:4, 1:4], truth[5:8, 5:8] = 1, 2
    >>> pred = np.zeros((8, 8), dtype=np.uint16)
    >>> pred[1:4, 1:4] = 7  # the first nucleus, exactly
    >>> m = sst.tl.segmentation_metrics(truth, pred)
    >>> m["recall"], m["precision"], round(m["f1"], 3), round(m["aji"], 3)
    (0.5, 1.0, 0.667, 0.5)

    Scoring a segmentation of a slide against reference labels (e.g. ``truth_labels`` of
    :func:`scellst.datasets.synthetic`):

    >>> sdata = sst.datasets.synthetic(shape=(512, 512))
    >>> sst.pp.segment(sdata)
    >>> pred = sst.pp.rasterize_cells(sdata)
    >>> sst.tl.segmentation_metrics(sdata["truth_labels"].values, pred)["aji"]  # doctest: +SKIP
    """
    if not 0.0 <= float(iou_threshold) < 1.0:
        raise ValueError(f"`iou_threshold` must be in [0, 1), got {iou_threshold!r}.")
    true = _as_labels(true_labels, "true_labels")
    pred = _as_labels(pred_labels, "pred_labels")
    if true.shape != pred.shape:
        raise ValueError(
            f"true_labels and pred_labels differ in shape: {true.shape} vs {pred.shape}. Both "
            "must be label images of the same region at the same resolution."
        )
    t, n_true = _consecutive(true.ravel())
    p, n_pred = _consecutive(pred.ravel())
    if n_true == 0 or n_pred == 0:
        score = 1.0 if n_true == n_pred else 0.0
        return _result(score, score, score, score, score, score, score, n_true, n_pred, 0)

    area_t = np.bincount(t, minlength=n_true + 1)[1:]
    area_p = np.bincount(p, minlength=n_pred + 1)[1:]
    ti, pj, inter = _overlaps(t, p, n_true, n_pred)
    iou = inter / (area_t[ti] + area_p[pj] - inter)

    # --- one-to-one matches above the IoU threshold (F1 / PQ) -----------------------------------
    candidate = iou > iou_threshold
    mi, mj, miou = ti[candidate], pj[candidate], iou[candidate]
    if iou_threshold < 0.5 and mi.size:
        mi, mj, miou = _best_matching(mi, mj, miou)
    tp = int(mi.size)
    fp, fn = n_pred - tp, n_true - tp
    precision, recall = tp / n_pred, tp / n_true
    f1 = 2 * tp / (2 * tp + fp + fn)
    sq = float(miou.mean()) if tp else 0.0

    # --- AJI: each true object with its best predicted object -----------------------------------
    order = np.lexsort((-iou, ti))  # by true object, best IoU first (ties: lowest predicted id)
    first = order[np.r_[True, ti[order][1:] != ti[order][:-1]]] if order.size else order
    best_t, best_p, best_inter = ti[first], pj[first], inter[first]
    union_pairs = area_t[best_t] + area_p[best_p] - best_inter
    unpaired_true = np.ones(n_true, dtype=bool)
    unpaired_true[best_t] = False
    unused_pred = np.ones(n_pred, dtype=bool)
    unused_pred[best_p] = False
    c = float(best_inter.sum())
    u = float(union_pairs.sum() + area_t[unpaired_true].sum() + area_p[unused_pred].sum())
    aji = c / u

    return _result(f1, precision, recall, aji, f1 * sq, f1, sq, n_true, n_pred, tp)


def _result(f1, precision, recall, aji, pq, dq, sq, n_true, n_pred, n_matched) -> dict:
    return {
        "f1": float(f1),
        "precision": float(precision),
        "recall": float(recall),
        "aji": float(aji),
        "pq": float(pq),
        "dq": float(dq),
        "sq": float(sq),
        "n_true": int(n_true),
        "n_pred": int(n_pred),
        "n_matched": int(n_matched),
    }


def _as_labels(labels, name: str) -> np.ndarray:
    """A 2-D array of non-negative integer labels (int64 or narrower unsigned/signed ints)."""
    a = np.asarray(labels)
    if a.ndim == 3 and a.shape[0] == 1:  # a (1, y, x) label element
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"`{name}` must be a 2-D label image, got shape {a.shape}.")
    if a.dtype == bool:
        return a.astype(np.uint8)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)) or not np.array_equal(a, np.round(a)):
            raise ValueError(
                f"`{name}` has non-integer values: a label image holds integer object ids "
                "(0 = background)."
            )
        a = a.astype(np.int64)
    elif not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"`{name}` must be an integer label image, got dtype {a.dtype}.")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"`{name}` has negative labels; 0 is background and objects are > 0.")
    return a


def _consecutive(flat: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0 (background), 1..n in increasing order of the original ids; return n."""
    if flat.size == 0:
        return flat.astype(np.int64), 0
    top = int(flat.max())
    if top <= 4 * flat.size + 65536:  # look-up table: linear time, no sort
        present = np.bincount(flat, minlength=top + 1) > 0
        present[0] = False
        lut = np.cumsum(present)
        lut[~present] = 0
        return lut[flat], int(present.sum())
    ids, inverse = np.unique(flat, return_inverse=True)
    if ids[0] != 0:  # no background pixel: shift so that ids start at 1
        inverse = inverse + 1
        return inverse.astype(np.int64), int(ids.size)
    return inverse.astype(np.int64), int(ids.size - 1)


def _overlaps(
    t: np.ndarray, p: np.ndarray, n_true: int, n_pred: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sparse contingency table: (true index, predicted index, intersection) of overlapping pairs.

    Indices are 0-based object indices; only pairs sharing at least one pixel are listed.
    """
    both = (t > 0) & (p > 0)
    pair = (t[both] - 1) * n_pred + (p[both] - 1)
    if n_true * n_pred <= _DENSE_PAIRS:
        counts = np.bincount(pair, minlength=n_true * n_pred)
        pair = np.flatnonzero(counts)
        inter = counts[pair]
    else:
        pair, inter = np.unique(pair, return_counts=True)
    return pair // n_pred, pair % n_pred, inter.astype(np.float64)


def _best_matching(
    ti: np.ndarray, pj: np.ndarray, iou: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching among candidate pairs: most matches, then highest total IoU."""
    rows, r = np.unique(ti, return_inverse=True)
    cols, c = np.unique(pj, return_inverse=True)
    weight = np.zeros((rows.size, cols.size))
    # each match is worth 1 plus less than 1/(2 n) of its IoU: the count dominates, IoU breaks ties
    weight[r, c] = 1.0 + iou / (2.0 * min(rows.size, cols.size))
    a, b = linear_sum_assignment(weight, maximize=True)
    keep = weight[a, b] > 0
    a, b = a[keep], b[keep]
    lookup = np.full((rows.size, cols.size), np.nan)
    lookup[r, c] = iou
    return rows[a], cols[b], lookup[a, b]

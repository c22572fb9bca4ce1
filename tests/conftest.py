"""Shared fixtures: small synthetic slides (built once per session) and the real data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import scellst as sst

#: ../shared beside the repository (CI checks it out there); tests that need it skip without it.
SHARED = Path(__file__).resolve().parents[1].parent / "shared"
HER2ST = SHARED / "data" / "her2st"


def requires_her2st():
    if not (HER2ST / "st" / "C2.h5ad").is_file():
        pytest.skip(f"real her2st data not found at {HER2ST} (../shared beside the repository)")
    return HER2ST


@pytest.fixture(scope="session")
def synthetic_small():
    """A 1024² synthetic slide (read-only: copy elements before modifying)."""
    return sst.datasets.synthetic(shape=(1024, 1024), seed=0)


@pytest.fixture(scope="session")
def embedded():
    """A 2048² synthetic slide with dense spots, segmented, assigned and embedded (read-only)."""
    sdata = sst.datasets.synthetic(shape=(2048, 2048), spot_pitch_um=70.0, seed=1)
    sst.pp.segment(sdata, progress=False)
    sst.pp.assign_cells(sdata)
    sst.tl.embed(sdata, progress=False)
    return sdata


@pytest.fixture(scope="session")
def fitted(embedded):
    """(sdata, model) after a quick MSE fit on all genes of the synthetic slide."""
    genes = list(embedded["truth_expression"].var_names)
    model = sst.tl.fit(embedded, genes=genes, max_epochs=150, progress=False, seed=0)
    return embedded, model


def match_truth(sdata, table_key: str):
    """Rows of ``table_key`` whose centroid falls in a true nucleus, and that nucleus' truth row."""
    table = sdata[table_key]
    labels = np.asarray(sdata["truth_labels"].data)
    xy = np.asarray(table.obsm["spatial"])
    rows = np.clip(xy[:, 1].astype(int), 0, labels.shape[0] - 1)
    cols = np.clip(xy[:, 0].astype(int), 0, labels.shape[1] - 1)
    ids = labels[rows, cols]
    truth = sdata["truth_expression"]
    pos = {c: i for i, c in enumerate(truth.obs["cell_id"].to_numpy())}
    hit = np.flatnonzero(ids > 0)
    return hit, np.array([pos[i] for i in ids[hit]], dtype=int)


def pearson_per_column(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(0)
    b = b - b.mean(0)
    return (a * b).sum(0) / np.sqrt((a * a).sum(0) * (b * b).sum(0) + 1e-12)

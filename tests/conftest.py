"""Shared fixtures: small synthetic slides (built once per session) and the real data folder."""

from __future__ import annotations

from pathlib import Path

import pytest
import spatialdata as sd

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


@pytest.fixture()
def segmented(synthetic_small):
    """The image of ``synthetic_small`` alone, segmented (a fresh object per test)."""
    sdata = sd.SpatialData(images={"he": synthetic_small["he"]})
    sst.pp.segment(sdata, progress=False)
    return sdata


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

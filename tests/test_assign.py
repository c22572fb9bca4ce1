import numpy as np
import pytest
import spatialdata as sd
from spatialdata.transformations import Scale, set_transformation

import scellst as sst


@pytest.fixture()
def segmented(synthetic_small):
    sdata = sd.SpatialData(
        images={"he": synthetic_small["he"]},
        shapes={"spots": synthetic_small["spots"].copy()},
        tables={"spots_table": synthetic_small["spots_table"]},
    )
    sst.pp.segment(sdata, progress=False)
    return sdata


def test_assignment_matches_brute_force(segmented):
    sst.pp.assign_cells(segmented)
    table = segmented["sst_cells_table"]
    spots = segmented["spots"]
    xy = table.obsm["spatial"]
    centres = np.column_stack([spots.geometry.x, spots.geometry.y])
    d = np.linalg.norm(xy[:, None, :] - centres[None], axis=-1)
    inside = d <= spots["radius"].to_numpy()[None]
    expected = np.where(inside.any(1), spots.index.to_numpy()[d.argmin(1)], -1)
    np.testing.assert_array_equal(table.obs["spot"].to_numpy(), expected)
    assert (expected >= 0).sum() > 100
    info = table.uns["scellst"]["assignment"]
    assert info["spots_key"] == "spots" and info["n_cells_in_spots"] == (expected >= 0).sum()


def test_assignment_follows_transformations(segmented):
    """Spots stored at half resolution (e.g. a hires frame) are mapped through the shared system."""
    sst.pp.assign_cells(segmented)
    expected = segmented["sst_cells_table"].obs["spot"].to_numpy().copy()
    spots = segmented["spots"].copy()
    spots.geometry = spots.geometry.scale(0.5, 0.5, origin=(0, 0))
    spots["radius"] = spots["radius"] / 2
    for cs in ("global", "microns"):
        set_transformation(
            spots,
            Scale(
                [2.0 * (0.5 if cs == "microns" else 1), 2.0 * (0.5 if cs == "microns" else 1)],
                axes=("x", "y"),
            ),
            cs,
        )
    segmented["spots_half"] = spots
    sst.pp.assign_cells(segmented, spots_key="spots_half", overwrite=True)
    np.testing.assert_array_equal(segmented["sst_cells_table"].obs["spot"].to_numpy(), expected)


def test_assignment_errors(segmented):
    sst.pp.assign_cells(segmented)
    with pytest.raises(KeyError, match="overwrite=True"):
        sst.pp.assign_cells(segmented)
    far = segmented["spots"].copy()
    far.geometry = far.geometry.translate(1e6, 1e6)
    segmented["far_spots"] = far
    with pytest.raises(ValueError, match="overlaps image"):
        sst.pp.assign_cells(segmented, spots_key="far_spots", overwrite=True)
    with pytest.raises(KeyError, match="sst.pp.segment"):
        sst.pp.assign_cells(segmented, cells_key="nothing")

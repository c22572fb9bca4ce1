"""The whole pipeline on a real her2st section (../shared), written to zarr and used downstream."""

import numpy as np
import pytest
import scanpy as sc
import spatialdata as sd
import squidpy as sq

import scellst as sst

from .conftest import requires_her2st


@pytest.fixture(scope="module")
def c2():
    root = requires_her2st()
    sdata = sst.io.read_hest(root, "C2")
    sst.pp.segment(sdata, progress=False)
    sst.pp.assign_cells(sdata)
    sst.tl.embed(sdata, progress=False)
    model = sst.tl.fit(sdata, genes="hvg:50", max_epochs=100, progress=False)
    sst.tl.predict(sdata, model)
    return sdata, model


def test_whole_section_pipeline(c2, tmp_path):
    sdata, model = c2
    cells = sdata["sst_cells_table"]
    assert 15_000 < cells.n_obs < 60_000  # tens of thousands of nuclei (29k measured)
    assign = cells.uns["scellst"]["assignment"]
    assert assign["n_spots_with_cells"] == assign["n_spots"] == 187
    # legacy ST spots (100 µm) hold ~30 nuclei each; most cells lie outside every spot
    per_spot = cells.obs.loc[cells.obs["spot"] >= 0, "spot"].value_counts()
    assert 10 < per_spot.median() < 80
    assert (cells.obs["spot"] == -1).mean() > 0.5
    expr = sdata["sst_expression"]
    assert expr.shape == (cells.n_obs, 50) and np.isfinite(expr.X).all()
    assert expr.X.std(0).min() > 0  # predictions vary between cells

    path = tmp_path / "c2.zarr"
    sst.io.write_zarr(sdata, path)
    back = sd.read_zarr(path)
    for key in ("sst_cells_table", "sst_embedding", "sst_expression"):
        assert back[key].uns["spatialdata_attrs"]["region"] == "sst_cells"
    joined, table = sd.join_spatialelement_table(
        back, spatial_element_names="sst_cells", table_name="sst_expression", how="inner"
    )
    assert len(joined["sst_cells"]) == table.n_obs == cells.n_obs
    assert sst.io.microns_per_pixel(back, "he") == pytest.approx(0.688, abs=1e-3)


def test_predictions_work_in_scanpy_and_squidpy(c2):
    expr = c2[0]["sst_expression"].copy()
    sc.pp.pca(expr, n_comps=20)
    sc.pp.neighbors(expr, n_neighbors=15)
    sc.tl.leiden(expr, resolution=0.5, flavor="igraph", n_iterations=2)
    assert expr.obs["leiden"].nunique() > 1
    sq.gr.spatial_neighbors_knn(expr, n_neighs=6)
    assert expr.obsp["spatial_connectivities"].shape == (expr.n_obs, expr.n_obs)
    sq.gr.nhood_enrichment(expr, cluster_key="leiden", n_perms=20, seed=0, show_progress_bar=False)
    assert "leiden_nhood_enrichment" in expr.uns


def test_spatialdata_plot_snippet_on_whole_section(c2, tmp_path):
    """The data model's spatialdata-plot snippet on a whole real section: above 10,000 shapes
    spatialdata-plot rasterises them with datashader, which requires a "global" frame."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import spatialdata_plot  # noqa: F401  (registers sdata.pl)

    sdata, model = c2
    assert len(sdata["sst_cells"]) > 10_000  # datashader path
    gene = model.genes[0]
    (
        sdata.pl.render_images("he")
        .pl.render_shapes("sst_cells", color=gene, table_name="sst_expression")
        .pl.show(coordinate_systems="microns", save=tmp_path / "c2.png")
    )
    ax = plt.gcf().axes[0]
    height, width = sdata["he"]["scale0"]["image"].shape[1:]
    mpp = sst.io.microns_per_pixel(sdata)
    assert ax.get_xlim()[1] == pytest.approx(width * mpp, rel=0.05)  # axes in µm
    # the H&E and, above it, the datashader raster of the cells (colour where there are cells)
    images = ax.get_images()
    assert len(images) >= 2
    raster = np.asarray(images[-1].get_array())
    assert raster.ndim == 3 and raster.shape[-1] == 4
    drawn = raster[..., 3] > 0
    assert 0.01 < drawn.mean() < 0.9, drawn.mean()
    plt.close("all")

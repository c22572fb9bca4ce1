import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pytest

import scellst as sst


def test_plot_cells_by_gene_and_category(fitted, tmp_path):
    sdata, model = fitted
    sst.tl.predict(sdata, model, overwrite=True)
    gene = model.genes[0]
    ax = sst.pl.cells(
        sdata, color=gene, region=(100, 100, 400, 300), show=False, save=tmp_path / "g.png"
    )
    assert (tmp_path / "g.png").stat().st_size > 10_000
    coll = ax.collections[0]
    # only the cells whose centroid is in the region are drawn, coloured by the gene values
    xy = sdata["sst_expression"].obsm["spatial"] * 0.5
    inside = (xy[:, 0] >= 100) & (xy[:, 0] <= 400) & (xy[:, 1] >= 100) & (xy[:, 1] <= 300)
    assert len(coll.get_paths()) == inside.sum()
    np.testing.assert_allclose(
        coll.get_array(), sdata["sst_expression"][:, gene].X.ravel()[inside], rtol=1e-6
    )
    assert ax.get_xlim() == (100, 400) and ax.get_ylim() == (300, 100)
    assert len(ax.images) == 1  # the H&E underneath
    plt.close("all")
    ax = sst.pl.cells(
        sdata,
        color="spot",
        table_key="sst_cells_table",
        region=(0, 0, 200, 200),
        image=False,
        show=False,
    )
    plt.close("all")
    sdata["sst_cells_table"].obs["in_spot"] = (sdata["sst_cells_table"].obs["spot"] >= 0).astype(
        "category"
    )
    ax = sst.pl.cells(sdata, color="in_spot", table_key="sst_cells_table", show=False)
    assert ax.get_legend() is not None and len(ax.get_legend().get_texts()) == 2
    plt.close("all")
    with pytest.raises(KeyError, match="neither a gene"):
        sst.pl.cells(sdata, color="NOT_A_GENE", show=False)

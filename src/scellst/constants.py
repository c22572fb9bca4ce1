"""Default element keys, column names and coordinate-system names: the one place they are defined.

Everything scellst writes into a :class:`~spatialdata.SpatialData` object is named here, so the
data model (``docs/data_model.md``) and the code cannot drift apart.
"""

from __future__ import annotations

import re

#: Coordinate system in which every scellst-aware element has a ``Scale`` to micrometres.
MICRONS_CS = "microns"
#: The conventional pixel coordinate system of scverse tools (spatialdata-plot's datashader
#: path, napari-spatialdata): the readers register it as the full-resolution pixel frame, besides
#: the sample- or dataset-named one.
GLOBAL_CS = "global"

# --- elements written by scellst -------------------------------------------------------------
#: Shapes element with one polygon per segmented nucleus (image pixel coordinates).
CELLS_KEY = "sst_cells"
#: Suffix of the table that annotates a cell shapes element (``<cells_key>_table``).
CELLS_TABLE_SUFFIX = "_table"
#: Table holding the per-cell embeddings (in ``obsm[EMBEDDING_OBSM]``).
EMBEDDING_KEY = "sst_embedding"
#: Table holding predicted per-cell expression (cells x genes in ``X``).
EXPRESSION_KEY = "sst_expression"

# --- inputs produced by the readers ----------------------------------------------------------
IMAGE_KEY = "he"
SPOTS_KEY = "spots"
SPOTS_TABLE_KEY = "spots_table"

# --- synthetic ground truth ------------------------------------------------------------------
TRUE_LABELS_KEY = "truth_labels"
TRUE_CELLS_KEY = "truth_cells"
TRUE_EXPRESSION_KEY = "truth_expression"
#: Shapes element of the synthetic cells' outlines (nuclei dilated) that split a cell's counts
#: over square bins (``sst.datasets.synthetic(bins_um=...)`` only).
TRUE_CELL_BOUNDARIES_KEY = "truth_cell_boundaries"
#: obsm entry of the synthetic truth table: cells x bins fraction of each cell in each bin.
BIN_OVERLAP_OBSM = "bin_overlap"

# --- table columns ----------------------------------------------------------------------------
REGION_KEY = "region"
CELL_ID = "cell_id"
SPOT_ID = "spot_id"
#: obs column of a cells table holding the spot a cell belongs to (spot instance id, -1 = none).
SPOT_COLUMN = "spot"
#: obs column holding the name of the spots element that ``SPOT_COLUMN`` refers to.
SPOT_ELEMENT_COLUMN = "spot_element"
CELL_TYPE_COLUMN = "cell_type"
SPATIAL_OBSM = "spatial"
EMBEDDING_OBSM = "X_sst"
NO_SPOT = -1
#: obs column of the cells table (``sst.pp.segment``): whether the cell's centroid lies on the
#: slide's tissue mask (False: glass, dust, pen marks far from the tissue).
ON_TISSUE_COLUMN = "on_tissue"
#: Layer of the prediction table: per cell and gene, the standard deviation of the ensemble
#: members' predictions (``log1p`` of counts per 10,000).
SPREAD_LAYER = "spread"
#: obs column of the prediction table: per cell, the mean over genes of the spread divided by
#: the gene's standard deviation across the training spots (0: the members agree).
UNCERTAINTY_COLUMN = "uncertainty"
#: obs columns of the prediction table: distance of the cell's embedding to the training cells'
#: (about 1 for a typical training cell) and whether it lies above the model's threshold.
OOD_DISTANCE_COLUMN = "ood_distance"
OOD_COLUMN = "out_of_distribution"
#: obs columns of a square-bin (Visium HD) table: the bin's row and column on the bin grid.
ARRAY_ROW = "array_row"
ARRAY_COL = "array_col"

# --- spot geometry, recorded in the spots table's ``uns[UNS_KEY]`` -----------------------------
#: ``"circle"`` (Visium, legacy ST: circles with a ``radius`` column) or ``"square"`` (Visium HD
#: bins: square polygons). A spots table without this entry has circles.
SPOT_SHAPE_KEY = "spot_shape"
SPOT_SHAPE_CIRCLE = "circle"
SPOT_SHAPE_SQUARE = "square"
#: Size of a spot in µm: the diameter of a circle, the side of a square bin.
SPOT_SIZE_KEY = "spot_size_um"
#: For square bins: the bin grid, ``scellst.mil.bins.BinGrid.to_dict()`` in full-resolution
#: pixels, whose (row, col) are the table's ``ARRAY_ROW``, ``ARRAY_COL`` columns.
BIN_GRID_KEY = "bin_grid"

#: ``uns`` key under which scellst records parameters and provenance of each step.
UNS_KEY = "scellst"

_VALID_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def cells_table_key(cells_key: str) -> str:
    """Name of the table that annotates the cell shapes ``cells_key``."""
    return f"{cells_key}{CELLS_TABLE_SUFFIX}"


def check_key(key: str, what: str = "key") -> str:
    """Raise a clear error when ``key`` is not a valid SpatialData element/table name."""
    if not isinstance(key, str) or not _VALID_KEY.match(key):
        raise ValueError(
            f"Invalid {what} {key!r}: element and table names may only contain letters, digits, "
            "'_', '.' and '-'."
        )
    return key

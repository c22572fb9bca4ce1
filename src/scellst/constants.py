"""Default element keys, column names and coordinate-system names: the one place they are defined.

Everything scellst writes into a :class:`~spatialdata.SpatialData` object is named here, so the
data model (``docs/data_model.md``) and the code cannot drift apart.
"""

from __future__ import annotations

import re

#: Coordinate system in which every scellst-aware element has a ``Scale`` to micrometres.
MICRONS_CS = "microns"

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

"""Sphinx configuration of the scellst documentation.

Build locally (offline, warnings are errors)::

    python -m sphinx -W --keep-going -b html docs docs/_build/html

Cross-links to Python, NumPy, AnnData, SpatialData and Scanpy (intersphinx) need the network to
fetch the projects' inventories. They are switched on on Read the Docs, or locally with
``SCELLST_DOCS_INTERSPHINX=1``; offline builds leave them out so that they stay warning-free.
"""

from __future__ import annotations

import os
import sys
from datetime import date
from pathlib import Path

HERE = Path(__file__).parent
# let a source checkout be documented without installing it (an installed scellst wins)
sys.path.append(str(HERE.parent / "src"))

import scellst  # noqa: E402

# -- project ------------------------------------------------------------------------------------
project = "scellst"
author = "scellst developers"
copyright = f"{date.today().year}, {author}"
release = scellst.__version__
version = ".".join(release.split(".")[:2])

# -- extensions ---------------------------------------------------------------------------------
extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "numpydoc",
]

# intersphinx needs the network: on Read the Docs, or when asked for explicitly
USE_INTERSPHINX = bool(os.environ.get("READTHEDOCS")) or os.environ.get(
    "SCELLST_DOCS_INTERSPHINX", ""
) not in ("", "0")
if USE_INTERSPHINX:
    extensions.append("sphinx.ext.intersphinx")
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "numpy": ("https://numpy.org/doc/stable", None),
    "anndata": ("https://anndata.readthedocs.io/en/stable", None),
    "spatialdata": ("https://spatialdata.scverse.org/en/stable", None),
    "scanpy": ("https://scanpy.readthedocs.io/en/stable", None),
}
intersphinx_timeout = 10

templates_path = ["_templates"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
master_doc = "index"

# -- MyST / notebooks ---------------------------------------------------------------------------
# notebooks are stored executed; the docs build never runs them (no data, no GPU needed)
nb_execution_mode = "off"
# the tutorials live in the repository's tutorials/ folder (outside the docs source): each
# build copies them into docs/tutorials/ (ignored by git), where the toctree finds them
_TUTORIALS = HERE.parent / "tutorials"
_COPIED = HERE / "tutorials"
_COPIED.mkdir(exist_ok=True)
for _nb in sorted(_TUTORIALS.glob("*.ipynb")):
    _target = _COPIED / _nb.name
    if not _target.exists() or _target.read_bytes() != _nb.read_bytes():
        _target.write_bytes(_nb.read_bytes())
myst_enable_extensions = ["colon_fence", "deflist", "dollarmath"]
myst_heading_anchors = 3

# -- API reference ------------------------------------------------------------------------------
autosummary_generate = True
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_default_options = {"member-order": "bysource"}
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# "Examples" in the docstrings are illustrations, not doctests
numpydoc_use_plots = False

# -- HTML ---------------------------------------------------------------------------------------
html_theme = "sphinx_book_theme"
html_title = f"scellst {release}"
html_theme_options = {
    "repository_url": "https://github.com/scverse/scellst",
    "use_repository_button": True,
    "path_to_docs": "docs",
    "home_page_in_toc": True,
}
html_show_sourcelink = False

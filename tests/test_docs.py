"""Documentation: every public function and class documents itself with an example, and the
Sphinx site builds without a single warning (what Read the Docs runs)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import scellst as sst

ROOT = Path(__file__).resolve().parents[1]


def _public():
    for mod in (sst.io, sst.pp, sst.tl, sst.pl, sst.datasets):
        for name in mod.__all__:
            obj = getattr(mod, name)
            if callable(obj):
                yield f"{mod.__name__}.{name}", obj


@pytest.mark.parametrize("name, obj", list(_public()), ids=[n for n, _ in _public()])
def test_public_api_has_numpydoc_with_examples(name, obj):
    doc = inspect.getdoc(obj) or ""
    assert "Examples\n--------" in doc, f"{name}: no Examples section"
    if inspect.isfunction(obj) and len(inspect.signature(obj).parameters):
        assert "Parameters\n----------" in doc, f"{name}: no Parameters section"


def test_every_public_name_is_in_the_api_reference():
    api = (ROOT / "docs" / "api.md").read_text()
    missing = [name for name, _ in _public() if name.removeprefix("scellst.") not in api]
    assert not missing, f"not in docs/api.md: {missing}"


def test_docs_build_without_warnings(tmp_path):
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    out = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         str(ROOT / "docs"), str(tmp_path / "html"), "-d", str(tmp_path / "doctrees")],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-5000:]
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api.html").is_file()

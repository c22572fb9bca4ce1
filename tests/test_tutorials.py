"""The tutorials: stored executed, top to bottom, without errors; and they still run.

Executing them takes minutes (the her2st one needs ../shared), so that part is marked slow:
``pytest -m slow tests/test_tutorials.py``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from .conftest import HER2ST, SHARED

TUTORIALS = Path(__file__).resolve().parents[1] / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("*.ipynb"))


def _read(path):
    nbformat = pytest.importorskip("nbformat")
    return nbformat.read(path, as_version=4)


def test_the_three_tutorials_exist():
    assert [p.stem for p in NOTEBOOKS] == ["01_quickstart", "02_her2st", "03_your_own_data"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_tutorial_is_stored_executed_in_order_without_errors(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code" and c.source.strip()]
    counts = [c.execution_count for c in code]
    assert None not in counts, f"{path.name}: cells not executed"
    assert counts == list(range(counts[0], counts[0] + len(counts))), "not run top to bottom"
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: {errors[0].ename}: {errors[0].evalue}"
    figures = [o for c in code for o in c.outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, f"{path.name}: the figures are not stored"


def _outputs(nb):
    """(cell index, output) of every stored output of the code cells."""
    return [(i, o) for i, c in enumerate(nb.cells) if c.cell_type == "code" for o in c.outputs]


def _text(output) -> str:
    data = output.get("data", {})
    return output.get("text", "") + "".join(
        v for k, v in data.items() if k.startswith("text/") and isinstance(v, str)
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_figure_is_stored_twice_and_no_object_reprs(path):
    """A plot that shows its figure and also returns it is drawn twice by Jupyter; a returned
    Axes adds an ``<Axes: ...>`` line under the figure."""
    seen: dict[str, int] = {}
    for i, out in _outputs(_read(path)):
        png = out.get("data", {}).get("image/png")
        if png is not None:
            digest = hashlib.sha256(png.encode()).hexdigest()
            assert digest not in seen, (
                f"{path.name}: cell {i} repeats the image of cell {seen[digest]}"
            )
            seen[digest] = i
        if out.output_type == "execute_result":
            text = out.get("data", {}).get("text/plain", "")
            assert not re.match(r"<(Axes|Figure|matplotlib)", text), (
                f"{path.name}: cell {i}: {text}"
            )


#: What a reader should not see in a stored output: this machine's paths, terminal colour codes.
_NOT_IN_OUTPUTS = {
    "a developer path": re.compile(r"(/work/|/tmp/|/root/|/home/|site-packages)"),
    "an ANSI colour code": re.compile("\x1b\\["),
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_outputs_are_clean(path):
    for i, out in _outputs(_read(path)):
        text = _text(out)
        for what, pattern in _NOT_IN_OUTPUTS.items():
            match = pattern.search(text)
            assert match is None, f"{path.name}: cell {i} shows {what}: {text[:200]!r}"
        if out.output_type == "stream" and out.name == "stderr":
            assert "Warning" not in text, f"{path.name}: cell {i} shows a warning: {text[:300]}"


def _execute(path, tmp_path):
    nbclient = pytest.importorskip("nbclient")
    nb = _read(path)
    # the notebooks call `!scellst`: the console script of this environment
    env_path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    os.environ["PATH"] = env_path
    client = nbclient.NotebookClient(
        nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()
    return nb


@pytest.mark.slow
@pytest.mark.parametrize("name", ["01_quickstart", "03_your_own_data"])
def test_tutorial_runs(name, tmp_path):
    # run from a copy placed like tutorials/, so that ../../shared resolves the same way
    folder = tmp_path / "repo" / "tutorials"
    folder.mkdir(parents=True)
    if SHARED.is_dir():
        (tmp_path / "shared").symlink_to(SHARED)
    shutil.copy(TUTORIALS / f"{name}.ipynb", folder)
    _execute(folder / f"{name}.ipynb", folder)


@pytest.mark.slow
def test_her2st_tutorial_runs(tmp_path, monkeypatch):
    if not (HER2ST / "st" / "C5.h5ad").is_file():
        pytest.skip(f"real her2st data not found at {HER2ST} (../shared beside the repository)")
    monkeypatch.setenv("SCELLST_HER2ST", str(HER2ST))
    _execute(TUTORIALS / "02_her2st.ipynb", tmp_path)

"""The notebooks: each runs top to bottom in its small setting (``UNROLL_NOTEBOOK_SMALL=1``,
which every notebook reads to shrink its sizes; their last cell asserts the claims they
make), and the committed copies carry the outputs of a full run, so they read on the web."""

from __future__ import annotations

import pathlib

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
CELL_TIMEOUT_S = 300


def test_the_notebooks_are_there():
    assert {p.name for p in NOTEBOOKS} >= {"chaos.ipynb", "estimators.ipynb", "custom_system.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_in_its_small_setting(path, monkeypatch):
    """Executes every cell in a fresh kernel (it inherits this process's environment: the
    small setting, and the XLA flags of conftest). A failing cell or assertion raises
    nbclient's CellExecutionError with the cell and its traceback."""
    monkeypatch.setenv("UNROLL_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()
    outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    assert "small setting: True" in outputs and "all checks hold" in outputs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_carries_full_outputs(path):
    """Every code cell ran (in order, without an error) in the full setting, and every
    figure was drawn."""
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "re-run the notebook top to bottom"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for c in code for o in c.outputs)
    assert "small setting: False" in text and "all checks hold" in text
    for cell in code:
        if "plt.show()" in cell.source:
            assert any("image/png" in o.get("data", {}) for o in cell.outputs), cell.source[:80]

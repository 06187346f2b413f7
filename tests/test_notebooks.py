"""The notebooks under notebooks/ are committed without outputs and execute from top to bottom.

Execution uses nbclient (what nbmake runs) on the python3 kernel of this interpreter, with the notebooks'
own tiny settings; every output they write goes under a temporary directory (TOWERREC_NOTEBOOK_DIR). The
executed notebook must have drawn its figures (PNG outputs), so a cell that silently stops plotting fails too.
"""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
MIN_FIGURES = {"quickstart.ipynb": 4, "sweeps.ipynb": 1}  # data, training, K curves, bias


def test_the_notebooks_exist():
    assert {"quickstart.ipynb", "sweeps.ipynb"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebooks_have_no_outputs(name):
    import nbformat

    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name}, cell {i}: outputs are committed; strip them (nbstripout)"
            assert cell.execution_count is None, f"{name}, cell {i}: execution_count {cell.execution_count}"
    assert "widgets" not in nb.metadata, f"{name}: widget state in the metadata; strip it"


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_executes(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("TOWERREC_NOTEBOOK_DIR", str(tmp_path))
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}})
    client.execute()  # raises CellExecutionError, with the cell and its traceback, if a cell fails
    images = sum(1 for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs
                 if "image/png" in out.get("data", {}))
    assert images >= MIN_FIGURES.get(name, 1), f"{name} drew {images} figure(s)"

"""Every tutorial notebook runs in smoke mode (CI=1), and every notebook is listed here.

The notebooks are committed with the outputs of their full runs; the tests execute a
temporary copy, so those outputs are never overwritten.
"""

import shutil
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS_DIR = Path(__file__).resolve().parent.parent / "tutorials"
NOTEBOOKS = [
    "bayesian_gan.ipynb",
    "grammar_rnn.ipynb",
    "implicit_guides.ipynb",
    "introduction.ipynb",
    "lotka_volterra.ipynb",
    "lotka_volterra_large.ipynb",
    "lotka_volterra_mjp.ipynb",
    "simulator_likelihood.ipynb",
]
CELL_TIMEOUT = 120  # seconds per cell; a whole smoke run takes well under a minute


def test_every_tutorial_is_listed():
    found = sorted(p.name for p in TUTORIALS_DIR.iterdir() if p.suffix in {".ipynb", ".py"})
    assert found == sorted(NOTEBOOKS), "tutorials are notebooks listed in NOTEBOOKS in this file"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_holds_its_full_run(name):
    nb = nbformat.read(TUTORIALS_DIR / name, as_version=4)
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(cell.execution_count is not None for cell in code), (
        f"{name} is committed unexecuted: run it fully (without CI) and commit its outputs"
    )
    outputs = [output for cell in code for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"], f"{name} holds an error"
    text = str(outputs)
    assert "smoke run" not in text, f"{name} holds the outputs of a smoke run (CI was set)"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs(name, tmp_path, monkeypatch):
    monkeypatch.setenv("CI", "1")  # the kernel inherits this process's environment
    copy = tmp_path / name
    shutil.copy(TUTORIALS_DIR / name, copy)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError, with the cell and traceback, on an error

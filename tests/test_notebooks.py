"""The Colab notebooks run headless from top to bottom (the install cell skipped)."""

import os

import pytest

from conftest import ROOT, require_module


@pytest.mark.parametrize("name", ["quickstart.ipynb", "deployment.ipynb"])
def test_notebook_runs(name, tmp_path, monkeypatch):
    nbformat = require_module("nbformat", "nbformat")
    nbclient = require_module("nbclient", "nbclient")
    notebook = nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)
    install = [c for c in notebook.cells if "colab-install" in c.metadata.get("tags", [])]
    assert install and install[0] is notebook.cells[1]  # the first code cell installs
    notebook.cells = [c for c in notebook.cells if c not in install]
    monkeypatch.setenv("DPU_NOTEBOOK_SMALL", "1")
    # The kernel starts in a scratch folder; it must import this checkout.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "3")
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError when a cell fails
    text = "\n".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    if name == "deployment.ipynb":
        assert "Python applier reproduces the server's file: True" in text
        assert "C applier reproduces the server's file: True" in text
        assert "identical int8 outputs: True" in text
        assert text.count("refused") == 2
    else:
        assert "DPU" in text and "bytes sent after round 0" in text

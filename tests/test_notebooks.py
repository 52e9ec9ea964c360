"""The Colab notebooks: they run top to bottom, show their plots, and ship executed."""

import configparser
import os
import re
import sys

import pytest

from conftest import ROOT, require_module

sys.path.insert(0, os.path.join(ROOT, "colab"))
import refresh  # noqa: E402  pylint: disable=wrong-import-position

NAMES = ["quickstart.ipynb", "deployment.ipynb"]


def _read(name):
    nbformat = require_module("nbformat", "nbformat")
    return nbformat.read(os.path.join(ROOT, "colab", name), as_version=4)


def _images(notebook):
    return [c for c in notebook.cells if c.cell_type == "code"
            and any("image/png" in o.get("data", {}) for o in c.get("outputs", []))]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_and_shows_its_plots(name, tmp_path, monkeypatch):
    nbclient = require_module("nbclient", "nbclient")
    notebook = _read(name)
    for cell in notebook.cells:   # run afresh, not on the committed outputs
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
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
    # The install cell runs here too: the package is importable, so it installs nothing.
    assert "tf-dpu is already installed" in text
    if name == "deployment.ipynb":
        assert "Python applier reproduces the server's file: True" in text
        assert "C applier reproduces the server's file: True" in text
        assert "identical int8 outputs: True" in text
        assert text.count("refused") == 2
        assert "signed" in text and "unsigned" not in text
        # What the device computes is what the server trained, to a point.
        found = re.search(r"int8 test accuracy ([0-9.]+), float ([0-9.]+)", text)
        assert found and abs(float(found[1]) - float(found[2])) <= 0.01, found
        assert float(found[1]) > 0.5   # a model, not a stale file fed the wrong inputs
        assert re.search(r"catchup brings the device to round \d+: True", text)
    else:
        assert "DPU" in text and "bytes sent after round 0" in text
        # The summary lines agree with the tables they summarise.
        means = dict(re.findall(r"(\w+): mean test accuracy ([0-9.]+) %", text))
        assert set(means) == {"fu", "dpu", "rpu"}
        assert all(40 < float(v) <= 100 for v in means.values())
        sent = {m: int(b.replace(",", "")) for m, b in re.findall(
            r"(\w+): mean test accuracy [0-9.]+ % over rounds 1-\d+, ([0-9,]+) bytes", text)}
        assert sent["dpu"] < sent["fu"] / 5, sent
        # the plot is displayed inline (training does not switch the kernel's backend)
        plots = _images(notebook)
        assert plots and "plt.show()" in plots[0].source


@pytest.mark.parametrize("name", NAMES)
def test_notebooks_are_committed_executed_with_a_working_badge(name):
    notebook = _read(name)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.get("outputs") for c in code), "run `make notebooks` before committing"
    if name == "quickstart.ipynb":
        assert _images(notebook), "the committed quickstart shows its plot"
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    url = config["metadata"]["url"]
    assert notebook.cells[0].source.startswith(refresh.badge_link(url, name))
    install = code[0]
    assert "colab-install" in install.metadata.get("tags", [])
    assert install.source == refresh.INSTALL.format(url=url)

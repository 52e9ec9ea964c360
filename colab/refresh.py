"""Refreshes the notebooks: badge, install cell, and their outputs, executed.

    python colab/refresh.py            (what `make notebooks` runs)

The repository address comes from DPU_REPO_URL or, by default, `url` in
setup.cfg; it goes into each notebook's "Open in Colab" badge and into the
`REPO_URL` of its install cell. Each notebook then runs top to bottom with
its full settings in a scratch folder (so its `runs/` stay out of the
checkout) and is saved with its outputs and plots, for readers on GitHub.
"""

import configparser
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
NOTEBOOKS = ("quickstart.ipynb", "deployment.ipynb")
BADGE = "[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"

INSTALL = '''# Colab: install tf-dpu from its repository. Skipped where the package is already
# importable (a checkout installed by `make test`, or a second run of this cell).
REPO_URL = "{url}"  # the repository this notebook comes from

import importlib.util, subprocess, sys
if importlib.util.find_spec("tf_dpu") is not None:
    print("tf-dpu is already installed")
elif not REPO_URL:
    raise RuntimeError("set REPO_URL above to the repository this notebook comes from")
else:
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q",
                           f"tf-dpu @ git+{{REPO_URL}}"], capture_output=True, text=True)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise RuntimeError(f"pip could not install tf-dpu from REPO_URL={{REPO_URL!r}} "
                           f"({{last}}); set REPO_URL to the repository this notebook comes from")
    print(f"installed tf-dpu from {{REPO_URL}}")'''


def repository_url() -> str:
    url = os.environ.get("DPU_REPO_URL")
    if url:
        return url.rstrip("/")
    config = configparser.ConfigParser()
    config.read(os.path.join(ROOT, "setup.cfg"))
    return config["metadata"]["url"].rstrip("/")


def badge_link(url: str, name: str) -> str:
    """The badge's markdown for a notebook of a GitHub repository."""
    path = url.split("github.com/", 1)[1]
    return f"{BADGE}(https://colab.research.google.com/github/{path}/blob/main/colab/{name})"


def set_header(notebook, name: str, url: str) -> None:
    """Puts the badge atop the first cell and the install code in the install cell."""
    first = notebook.cells[0]
    lines = [l for l in first.source.splitlines() if not l.startswith(BADGE)]
    first.source = "\n".join([badge_link(url, name), ""] + lines).replace("\n\n\n", "\n\n")
    install = next(c for c in notebook.cells if "colab-install" in c.metadata.get("tags", []))
    install.source = INSTALL.format(url=url)


def main() -> int:
    import nbclient  # pylint: disable=import-outside-toplevel
    import nbformat  # pylint: disable=import-outside-toplevel
    url = repository_url()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p), TF_CPP_MIN_LOG_LEVEL="3")
    os.environ.update(env)
    for name in NOTEBOOKS:
        path = os.path.join(HERE, name)
        notebook = nbformat.read(path, as_version=4)
        set_header(notebook, name, url)
        with tempfile.TemporaryDirectory() as scratch:
            print(f"running {name} ...", flush=True)
            nbclient.NotebookClient(notebook, timeout=1800, kernel_name="python3",
                                    resources={"metadata": {"path": scratch}}).execute()
        nbformat.write(notebook, path)
        print(f"wrote {path}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

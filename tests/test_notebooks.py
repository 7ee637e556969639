"""Execute every notebook in ``notebooks/`` in fast mode (``PYRO_VI_FAST=1``).

Each ``notebooks/*.ipynb`` becomes one test, named after the notebook, so new notebooks are picked
up without touching this file. The kernel is this interpreter (``sys.executable``): a kernel spec
written to a temporary folder pins it, so a user-level ``python3`` kernel that points at another
Python cannot shadow the project's virtualenv. Cells run with the notebooks folder as the working
directory; a failing cell fails the test with that cell's source and traceback.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from helpers import marks_for

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from nbclient.exceptions import CellExecutionError, CellTimeoutError  # noqa: E402

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
TIMEOUT = int(os.environ.get("PYRO_VI_NOTEBOOK_TIMEOUT", "600"))  # seconds per cell
KERNEL = "pyro-vi-test"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> Path:
    """A kernel spec that runs ipykernel in this very interpreter."""
    root = tmp_path_factory.mktemp("kernels")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "pyro-vi tests",
        "language": "python",
    }
    (root / KERNEL).mkdir()
    (root / KERNEL / "kernel.json").write_text(json.dumps(spec))
    return root


def _client(nb, cwd: Path, kernel_dir: Path):
    km = KernelManager(
        kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    return nbclient.NotebookClient(
        nb,
        km=km,
        kernel_name=KERNEL,
        timeout=TIMEOUT,
        resources={"metadata": {"path": str(cwd)}},
    )


def unrendered_figures(nb) -> list[str]:
    """Code cells whose output is a figure's bare repr (``<Figure size ...>``) with no
    ``image/png`` beside it: a figure that Jupyter and GitHub's viewer show as text."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            text = data.get("text/plain", "")
            text = "".join(text) if isinstance(text, list) else text
            if text.startswith("<Figure size") and "image/png" not in data:
                found.append(f"cell {i}: {text.strip()}")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_saved_notebook_shows_its_figures(path: Path):
    """The committed outputs: every figure is an image, none is left as its text repr."""
    nb = nbformat.read(path, as_version=4)
    bare = unrendered_figures(nb)
    assert not bare, f"{path.name}: figures saved without an image: {bare}"


def test_a_figure_without_pyplot_renders_as_an_image(kernel_dir: Path, tmp_path: Path):
    """pyro-vi's figures carry a PNG representation: a kernel that never imported pyplot shows
    them as images, and a plain matplotlib Figure there is what the check catches."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("from pyro_vi.diagnostics.plots import elbo_curve\n"
                                  "elbo_curve([{'epoch': 1, 'train_elbo': -3.0}])"),
        nbformat.v4.new_code_cell("from matplotlib.figure import Figure\nFigure()"),
    ]  # fmt: skip
    _client(nb, tmp_path, kernel_dir).execute()
    (shown,) = [out for out in nb.cells[0].outputs if out["output_type"] == "execute_result"]
    assert "image/png" in shown["data"]
    assert unrendered_figures(nb) == ["cell 1: <Figure size 640x480 with 0 Axes>"]


def test_kernel_is_this_interpreter(kernel_dir: Path, tmp_path: Path):
    """The notebooks run in this environment (its packages, the editable pyro_vi)."""
    nb = nbformat.v4.new_notebook()
    code = "import os, sys; print(sys.prefix); print(os.getcwd())"
    nb.cells = [nbformat.v4.new_code_cell(code)]
    _client(nb, tmp_path, kernel_dir).execute()
    prefix, cwd = nb.cells[0].outputs[0]["text"].split()
    assert Path(prefix).resolve() == Path(sys.prefix).resolve()
    assert Path(cwd).resolve() == tmp_path.resolve()


@pytest.mark.skipif(not NOTEBOOKS, reason="no notebooks in notebooks/")
@pytest.mark.parametrize(
    "path",
    [pytest.param(p, marks=marks_for(p.read_text()), id=p.stem) for p in NOTEBOOKS],
)
def test_notebook_runs(path: Path, kernel_dir: Path, monkeypatch):
    monkeypatch.setenv("PYRO_VI_FAST", "1")  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    failure = None
    try:
        _client(nb, path.parent, kernel_dir).execute()
    except CellTimeoutError as e:
        failure = f"{path.name}: a cell ran longer than {TIMEOUT} s\n{e}"
    except CellExecutionError as e:
        failure = f"{path.name}: a cell failed\n{e}"
    if failure is not None:  # outside the except: no chained tracebacks, no terminal colours
        pytest.fail(ANSI.sub("", failure), pytrace=False)
    errors = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]
    assert not errors, f"{path.name}: error outputs {[e.get('ename') for e in errors]}"
    bare = unrendered_figures(nb)
    assert not bare, f"{path.name}: figures shown as text, not images: {bare}"

"""The notebooks must not rot: each runs top to bottom, offline, on a CPU, and is stored without outputs.

Execution uses nbclient with the "python3" kernel in notebooks/ (the notebooks import their helper
`tiny_autoencoder.py` from there), with the repository root on PYTHONPATH and the Hugging Face Hub
switched offline. Each notebook's optional "real weights" cells are guarded by USE_REAL_WEIGHTS = False.
"""
import os
import re
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ["01_forward_diffusion.ipynb", "02_ddim.ipynb", "03_guidance_and_text.ipynb", "04_autoencoder.ipynb",
            "05_algorithm_1.ipynb", "06_blended_diffusion.ipynb"]
CELL_TIMEOUT_S = 600        # per cell; each notebook takes well under 3 minutes on two CPU cores
ALL = sorted(path.name for path in NOTEBOOKS.glob("*.ipynb"))
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


def read(name: str):
    nbformat = pytest.importorskip("nbformat", reason="needs the notebooks extra (`pip install -e .[notebooks]`)")
    return nbformat.read(NOTEBOOKS / name, as_version=4)


def test_the_six_walkthrough_notebooks_are_there():
    missing = [name for name in EXPECTED if name not in ALL]
    assert not missing, f"notebooks/ lacks {missing}; it has {ALL}"


@pytest.mark.parametrize("name", ALL)
def test_notebook_is_stored_without_outputs(name):
    dirty = [index for index, cell in enumerate(read(name).cells)
             if cell.cell_type == "code" and (cell.get("outputs") or cell.get("execution_count") is not None)]
    assert not dirty, (f"notebooks/{name}: cells {dirty} carry outputs; store notebooks without outputs "
                       f"(jupyter nbconvert --clear-output --inplace notebooks/{name})")


@pytest.mark.parametrize("name", ALL)
def test_notebook_real_weights_cells_are_off_by_default(name):
    sources = [cell.source for cell in read(name).cells if cell.cell_type == "code"]
    assert any("USE_REAL_WEIGHTS = False" in source for source in sources), \
        f"notebooks/{name}: expected a flag `USE_REAL_WEIGHTS = False` guarding the cells that need SD weights"
    for source in sources:
        if re.search(r"weights\.load\((?![\"']toy[\"']\))", source):   # every model but the offline toy
            assert source.lstrip().startswith("if USE_REAL_WEIGHTS:"), \
                f"notebooks/{name}: a cell calls weights.load without the USE_REAL_WEIGHTS guard:\n{source[:300]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_notebook_runs_top_to_bottom_offline(name, monkeypatch):
    pytest.importorskip("nbclient", reason="needs the notebooks extra (`pip install -e .[notebooks]`)")
    pytest.importorskip("matplotlib", reason="the notebooks plot with matplotlib (the notebooks extra)")
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    # The kernel inherits this process's environment.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    notebook = read(name)
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOKS)}})
    started = time.monotonic()
    try:
        client.execute()
        return
    except CellExecutionError as error:
        message = ANSI_ESCAPE.sub("", str(error))       # the kernel's traceback comes coloured
    failing = [index for index, cell in enumerate(notebook.cells)
               if any(output.get("output_type") == "error" for output in cell.get("outputs", []))]
    where = f"cell {failing[0]}" if failing else "a cell"
    pytest.fail(f"notebooks/{name}: {where} failed after {time.monotonic() - started:.0f} s:\n{message}",
                pytrace=False)

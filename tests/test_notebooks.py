"""The notebooks run top to bottom (at small sizes) and are committed with their outputs.

Each notebook reads `QUICK = os.environ.get("JAXATTN_NOTEBOOK_QUICK") == "1"` in its first code
cell and shrinks its training runs and timings when it is set. Here every notebook is executed
in a fresh kernel, in a temporary working directory (its runs and data land there), on one CPU
device; a cell that raises fails the test.
"""

import os
import pathlib

import nbformat
import pytest
from nbclient import NotebookClient
from shared import one_device_xla_flags

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))


def _kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    # The suite's 8 fake devices are for sharding tests; a notebook sees what a user sees.
    env["XLA_FLAGS"] = one_device_xla_flags()
    env.update(JAXATTN_NOTEBOOK_QUICK="1", JAX_PLATFORMS="cpu", MPLBACKEND="Agg")
    return env


def test_there_are_notebooks():
    assert [p.name[:3] for p in NOTEBOOKS] == ["01_", "02_", "03_", "04_"], [p.name for p in NOTEBOOKS]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_with_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert code, f"{path.name} has no code"
    unrun = [i for i, cell in enumerate(code) if cell.execution_count is None]
    assert not unrun, f"{path.name}: code cells {unrun} were not executed before committing"
    counts = [cell.execution_count for cell in code]
    assert counts == sorted(counts), f"{path.name}: cells were run out of order: {counts}"
    errors = [o for cell in code for o in cell.outputs if o.output_type == "error"]
    assert not errors, f"{path.name}: committed with an error output: {errors[0].ename}"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_runs_top_to_bottom(path, tmp_path, monkeypatch):
    notebook = nbformat.read(path, as_version=4)
    for key, value in _kernel_env().items():
        monkeypatch.setenv(key, value)
    client = NotebookClient(notebook, timeout=900, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    assert all(cell.execution_count is not None for cell in code)

"""examples/quickstart.ipynb runs top to bottom (tiny budget) in a kernel of this Python.

The kernel inherits this process's environment (PYTHONPATH included), so it imports the
care_tf under test; the notebook runs in a temporary folder outside the checkout.
"""

import json
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")
KERNEL = "care_tf_test"


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
    """A kernel spec for `sys.executable` in a temporary JUPYTER_PATH (nothing global).

    JUPYTER_PATH is searched before the user's and the system's kernel folders, so the
    notebook runs in this interpreter (the venv's) whatever else is installed.
    """
    spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "care_tf test",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("CARE_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return KERNEL


@pytest.mark.slow
def test_quickstart_notebook_runs(kernel_name, tmp_path, fmnist_small):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path / "work"
    workdir.mkdir()
    client = nbclient.NotebookClient(
        nb,
        kernel_name=kernel_name,
        timeout=600,
        resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError with the cell and traceback on failure

    text = "\n".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )
    assert "data: fashion_mnist" in text  # offline: never downloads in tests
    assert "random weights: kNN top-1" in text and "CARE, trained" in text
    assert "linear top-1" in text and "gain over random weights" in text
    figures = [
        out
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if "image/png" in out.get("data", {})
    ]
    assert len(figures) == 3  # loss curves, trained vs random, attention grid
    assert "-> (None, 10)" in text  # backbone.keras + Dense(10) as a keras.Sequential
    assert (workdir / "quickstart_run" / "exported" / "care" / "1" / "saved_model.pb").is_file()
    tflite = workdir / "quickstart_run" / "exported" / "tflite" / "care" / "1" / "care_int8.tflite"
    assert tflite.is_file()
    error = float(text.split("relative error vs Keras: ")[1].split()[0])
    assert error < 1e-4

"""analysis.py is also a notebook: `jupytext --to notebook analysis.py` gives analysis.ipynb, which
runs top to bottom on the results.tsv in its working directory and shows the report and plots."""

import ast
import base64
import json
import shutil
import subprocess
import sys

import jupytext
import nbformat
import pytest
from fixtures_results import ANALYSIS, write_night
from harness import REPO

NOTEBOOK_COMMAND = "jupytext --to notebook analysis.py"


def python3_kernel():
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        return KernelSpecManager().get_kernel_spec("python3")
    except NoSuchKernel:
        return None


def test_the_docstring_documents_the_notebook_command():
    assert NOTEBOOK_COMMAND in ast.get_docstring(ast.parse(ANALYSIS.read_text()))


def test_the_script_is_jupytext_percent_cells_with_a_markdown_intro():
    notebook = jupytext.read(ANALYSIS)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    assert sum(c.cell_type == "markdown" for c in notebook.cells) >= 3
    assert sum(c.cell_type == "code" for c in notebook.cells) >= 5


def test_the_generated_notebook_runs_top_to_bottom_and_shows_the_report_and_plots(tmp_path):
    if python3_kernel() is None:
        pytest.skip("no python3 Jupyter kernel is installed (pip install ipykernel)")
    from nbclient import NotebookClient

    shutil.copy(ANALYSIS, tmp_path / "analysis.py")
    shutil.copytree(REPO / "labbook", tmp_path / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    proc = subprocess.run(
        [sys.executable, "-m", *NOTEBOOK_COMMAND.split()], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    night = write_night(tmp_path)  # the keep rule's night, its commits in a repository right here
    steps = [
        dict(step=i, time=i * 0.5, loss=3.0 / i**0.3, lr=1e-3, tok_per_sec=1000, grad_norm=1.0) for i in range(1, 80)
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps))

    notebook = nbformat.read(tmp_path / "analysis.ipynb", as_version=4)
    NotebookClient(
        notebook, kernel_name="python3", timeout=180, resources={"metadata": {"path": str(tmp_path)}}
    ).execute()

    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert f"best      {night.commits['exp6']}" in text and "sigma     " in text and "kept improvements" in text
    assert f"{night.commits['hack']}: flagged" in text and "crashes" in text
    images = [base64.b64decode(o.data["image/png"]) for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # progress, memory, and the curves of ./metrics.jsonl
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000 for png in images)
    assert (tmp_path / "progress.png").exists() and (tmp_path / "memory.png").exists()

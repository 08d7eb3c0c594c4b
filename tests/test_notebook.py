"""analysis.py is also the morning notebook: jupytext percent cells, the command-line dispatch in
its first code cell, and README's commands (`jupytext --to notebook --execute analysis.py`, then
`jupyter nbconvert --to html analysis.ipynb`) run on a generated night without checkpoints."""

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
from fixtures_results import ANALYSIS
from harness import REPO
from nights import write_night

NOTEBOOK_COMMAND = "jupytext --to notebook analysis.py"
DISPATCH = 'if __name__ == "__main__" and "ipykernel" not in sys.modules:\n    sys.exit(labbook.cli.main())'


def test_the_docstring_documents_the_notebook_commands():
    doc = ast.get_docstring(ast.parse(ANALYSIS.read_text()))
    assert NOTEBOOK_COMMAND in doc and "jupyter nbconvert --to html analysis.ipynb" in doc and "AR_TEST=1" in doc


def test_the_script_is_short_percent_cells_with_the_dispatch_first():
    assert len(ANALYSIS.read_text().splitlines()) <= 200
    notebook = jupytext.read(ANALYSIS)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert DISPATCH in code[0].source and sum(c.cell_type == "markdown" for c in notebook.cells) >= 10


def kernel_env(tmp_path):
    """A python3 kernel spec for this interpreter, found through JUPYTER_PATH (nothing installed)."""
    spec = tmp_path / "jupyter" / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps(dict(argv=argv, display_name="Python 3", language="python")))
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "JUPYTER_PATH": str(tmp_path / "jupyter"), "PATH": bin_dir + os.pathsep + os.environ["PATH"]}


def test_readmes_notebook_commands_run_on_a_night_without_checkpoints(tmp_path):
    lab = tmp_path / "lab"
    write_night(lab, 12)
    shutil.copy(ANALYSIS, lab / "analysis.py")
    shutil.copytree(REPO / "labbook", lab / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    env = kernel_env(tmp_path)
    for command in ("jupytext --to notebook --execute analysis.py", "jupyter nbconvert --to html analysis.ipynb"):
        proc = subprocess.run(command.split(), cwd=lab, env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-3000:]

    notebook = nbformat.read(lab / "analysis.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "12 runs over" in text and "1 kept, 1 crashed" in text
    assert "LR 0.001 → 0.003" in text  # the kept change's diff, condensed
    assert "CUDA out of memory" in text and "weights_edited" in text
    assert "not requested (AR_TEST=1)" in text and "idle gaps" in text
    assert "missing: no checkpoints/" in text  # no curves: said, not failed
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # progress, memory, timeline
    html = (lab / "analysis.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 3


def test_the_command_line_never_runs_the_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ANALYSIS), "curves", "missing.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "progress.png").exists() and proc.stdout == ""

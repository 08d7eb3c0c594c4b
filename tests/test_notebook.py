"""analysis.py is also the morning notebook: jupytext percent cells, the command-line dispatch in
its first code cell, and README's notebook commands, run as printed in a fresh virtual environment
(ipykernel's own kernel spec, nothing written by the test) on a generated night without
checkpoints, leave the clone's `git status` clean.

The fresh environment is made the way README makes it (`python -m venv`, then pip), with the
`[analysis]` extra that runs the notebook, less torch and the model libraries (the notebook never
imports them; their wheels are gigabytes). It is built once per checkout and pyproject.toml
(about 30 s on 2 cores), kept in pytest's cache, and only pip ever writes into it."""

import ast
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jupytext
import nbformat
import pytest
from fixtures_results import ANALYSIS
from harness import REPO
from nights import git, write_night

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

DISPATCH = 'if __name__ == "__main__" and "ipykernel" not in sys.modules:\n    sys.exit(labbook.cli.main())'


def readme_notebook_commands():
    """The fenced block of README.md that runs the notebook, line by line, as printed."""
    blocks = re.findall(r"```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    block = next(b for b in blocks if "jupytext" in b)
    return [line for line in block.splitlines() if line.strip()]


def test_the_docstring_documents_the_notebook_commands():
    doc = ast.get_docstring(ast.parse(ANALYSIS.read_text()))
    assert all(command in doc for command in readme_notebook_commands()) and "AR_TEST=1" in doc
    assert "--status keep" not in doc and "decide --explain" in doc  # the keep rule is decide's, nobody else's


def test_the_script_is_short_percent_cells_with_the_dispatch_first():
    assert len(ANALYSIS.read_text().splitlines()) <= 200
    notebook = jupytext.read(ANALYSIS)
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert DISPATCH in code[0].source and sum(c.cell_type == "markdown" for c in notebook.cells) >= 10


def analysis_requirements():
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    return extras["analysis"]


@pytest.fixture(scope="session")
def fresh_venv(request):
    """bin/ of a virtual environment made by `python -m venv` and pip alone (see the docstring)."""
    requirements = analysis_requirements()
    key = hashlib.sha256(json.dumps([sys.version, requirements]).encode()).hexdigest()[:12]
    venv = Path(request.config.cache.mkdir(f"fresh-venv-{key}"))
    if not (venv / "made").exists():
        shutil.rmtree(venv)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
        subprocess.run([*pip, *requirements], check=True, capture_output=True)
        subprocess.run([*pip, "--no-deps", "-e", str(REPO)], check=True, capture_output=True)
        (venv / "made").write_text("by python -m venv and pip install: nothing else writes here\n")
    return venv / "bin"


def user_shell(bin_dir, home):
    """The environment of a person who activated the venv: no test settings, no Jupyter paths of ours."""
    drop = ("PYTHONPATH", "JUPYTER_PATH", "JUPYTER_CONFIG_DIR", "JUPYTER_DATA_DIR", "IPYTHONDIR", "VIRTUAL_ENV")
    env = {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("AR_")}
    return {**env, "HOME": str(home), "VIRTUAL_ENV": str(bin_dir.parent),
            "PATH": str(bin_dir) + os.pathsep + env["PATH"]}  # fmt: skip


def test_readmes_notebook_commands_run_as_printed_in_a_fresh_venv(tmp_path, fresh_venv):
    lab = tmp_path / "lab"
    write_night(lab, 12)
    for name in (".gitignore", "analysis.py"):
        shutil.copy(REPO / name, lab / name)
    shutil.copytree(REPO / "labbook", lab / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    git(lab, "add", ".")
    git(lab, "commit", "-q", "-m", "the project's files, as a clone has them")
    (lab / "curves.png").write_bytes(b"the agent's last curves")
    home = tmp_path / "home"
    home.mkdir()
    env = user_shell(fresh_venv, home)
    for command in readme_notebook_commands():
        proc = subprocess.run(command, shell=True, cwd=lab, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert "Alternative text is missing" not in proc.stderr

    notebook = nbformat.read(lab / "analysis.ipynb", as_version=4)
    outputs = [o for cell in notebook.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "12 runs over" in text and "2 kept, 1 crashed" in text  # lr 3e-3 and the ff mult 3 simplification
    assert "LR 0.001 → 0.003" in text  # the kept change's diff, condensed
    assert "CUDA out of memory" in text and "weights_edited" in text
    assert "not requested (AR_TEST=1)" in text and "idle gaps" in text
    assert "missing: no checkpoints/" in text  # no curves: said, not failed
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) == 3  # progress, memory, timeline
    html = (lab / "analysis.html").read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', html)) == 3
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', html)  # each figure says what it shows (title, axes, legend)
    titles = [a.split(". y: ")[0] for a in alts]
    assert len(titles) == 3 and titles[0].startswith(
        "12 runs: the baseline, 1 kept improvement and 1 kept simplification"
    )
    assert titles[1] == "peak CUDA memory allocated per run (NVIDIA H100 80GB HBM3)"
    assert titles[2].startswith("the night in ") and titles[2].endswith("-minute bins: 12 runs")
    assert git(lab, "status", "--porcelain") == ""  # program.md's clean-tree check still passes
    assert (lab / "curves.png").read_bytes() == b"the agent's last curves"


def test_the_command_line_never_runs_the_report(tmp_path):
    proc = subprocess.run([sys.executable, str(ANALYSIS), "curves", "missing.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and not (tmp_path / "progress.png").exists() and proc.stdout == ""

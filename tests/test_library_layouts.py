"""The libraries where an offline GPU box keeps them: a run ends with a score whatever the layout.

bench/gpu_session.sh installs the wheels with `pip install --target /tmp/site` and puts that folder
on PYTHONPATH, under a python that has no torch of its own. The harness starts its processes (the
supervisor, the sandboxed trainer, the sealed scorer) with `python -I -S`, which ignores PYTHONPATH:
each gets the first process's sys.path instead, or every run on that box would crash at scoring.
Here the same layout on a CPU: the interpreter this venv was made from (no
torch) with PYTHONPATH naming the venv's site-packages, the folder that holds torch.

A venv (uv's or a plain one) is the layout every other test runs in.
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from harness import REPO, base_env, crash_reason, make_train_copy, parse_summary, run_cold

STEPS = 2
EVAL_BYTES = 4096


def base_python():
    """The interpreter this venv was made from, which has none of the venv's packages."""
    candidates = (getattr(sys, "_base_executable", ""), Path(sys.base_prefix) / "bin" / "python3")
    return next((Path(c) for c in candidates if c and Path(c).exists()), None)


def test_a_run_scores_with_the_libraries_on_pythonpath_only(tmp_path, corpus):
    python = base_python()
    if python is None or sys.prefix == sys.base_prefix:
        pytest.skip(f"no base interpreter apart from this one ({sys.executable}): not running in a venv")
    if subprocess.run([python, "-I", "-c", "import torch"], capture_output=True).returncode == 0:
        pytest.skip(f"{python} imports torch by itself: it cannot stand for a box whose libraries are in a folder")
    libraries = Path(torch.__file__).resolve().parents[1]  # the venv's site-packages, as /tmp/site
    train_py = make_train_copy(tmp_path)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=STEPS, AR_EVAL_BYTES=EVAL_BYTES)
    env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], str(libraries)])  # <checkout>:/tmp/site
    code, log = run_cold(train_py, env, python=python)  # not the tests' warm shim, which has the venv's sys.path
    assert crash_reason(log) is None, log[-3000:]
    assert code == 0, log[-3000:]
    summary = parse_summary(log)
    assert math.isfinite(float(summary["val_bpc"])), log[-3000:]
    # the morning's re-score (labbook's scorer launch) in the same layout: the same number
    harness = str(REPO / "prepare.py")
    rescore = f"from labbook import rescore; print(rescore.rescore_subprocess('checkpoint.pt', open({harness!r}).read())['bpc'])"
    proc = subprocess.run([python, "-c", rescore], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and float(proc.stdout.split()[-1]) == float(summary["val_bpc_exact"]), proc.stderr[
        -3000:
    ]

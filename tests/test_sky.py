"""Clusters: `sky/experiment.yaml`, the SkyPilot task for one experiment, and the RESULT line.

SkyPilot's own loader reads the task file (in a subprocess with a private HOME: no cloud, no
credentials). The task's run section is then executed by bash on this machine, in a temporary
repository standing in for the synced workdir, with a tiny train.py.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
from harness import REPO, base_env, make_train_copy, parse_summary, python

TASK = REPO / "sky" / "experiment.yaml"

LOAD_TASK = textwrap.dedent(
    """
    import json, sys
    import sky

    task = sky.Task.from_yaml(sys.argv[1])
    (resources,) = task.resources
    print(json.dumps(dict(
        name=task.name, run=task.run, setup=task.setup, envs=task.envs, workdir=task.workdir,
        accelerators=resources.accelerators,
    )))
    """
)


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def skypilot_installed():
    """The installed distribution, not `import sky`: this repository's own sky/ folder imports as a
    namespace package from the checkout, so an import check would pass without SkyPilot."""
    try:
        distribution("skypilot")
    except PackageNotFoundError:
        return False
    return True


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The task as SkyPilot parses it: name, run, setup, envs, workdir, accelerators."""
    if not skypilot_installed():
        pytest.skip('SkyPilot is not installed (pip install -e ".[sky]"): the task file is not parsed')
    home = tmp_path_factory.mktemp("sky_home")
    env = {**os.environ, "HOME": str(home)}
    proc = subprocess.run(  # run from the private home, so `import sky` is SkyPilot and not ./sky/
        [sys.executable, "-c", LOAD_TASK, str(TASK)], env=env, cwd=home, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.splitlines()[-1])


def make_workdir(path):
    """A repository like the synced ~/sky_workdir: a tiny train.py, the tools, analysis.py and labbook/.
    Returns (path, baseline commit, experiment commit on another branch)."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Autoresearch Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "commit.gpgsign", "false")
    make_train_copy(path)
    (path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "workers.py", path / "tools" / "workers.py")
    shutil.copy(REPO / "analysis.py", path / "analysis.py")
    shutil.copytree(REPO / "labbook", path / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / ".gitignore", path / ".gitignore")
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "baseline")
    baseline = git(path, "rev-parse", "HEAD")
    git(path, "checkout", "-q", "-b", "autoresearch/t-gpu1")
    make_train_copy(path, LR=0.003)
    git(path, "commit", "-q", "-am", "lr 0.003")
    experiment = git(path, "rev-parse", "HEAD")
    git(path, "checkout", "-q", "main")
    return path, baseline, experiment


def run_section(task, workdir, home, **envs):
    """Execute the task's run section with bash the way SkyPilot does: in the workdir, with the
    task's envs (overridden by `envs`) exported, and `python` the interpreter of these tests."""
    env = base_env(home, HOME=home, **{**task["envs"], **envs})
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(
        ["bash", "-c", task["run"]], cwd=workdir, env=env, capture_output=True, text=True, timeout=300
    )
    return proc.returncode, proc.stdout, proc.stderr


def result_lines(output):
    return [line.split("\t") for line in re.findall(r"RESULT\t.*", output)]


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory, task, corpus):
    """The run section, trained once on this machine: a commit of a worker branch, not HEAD."""
    tmp = tmp_path_factory.mktemp("sky_run")
    workdir, baseline, experiment = make_workdir(tmp / "sky_workdir")
    home = tmp / "home"
    home.mkdir()
    code, out, err = run_section(
        task,
        workdir,
        home,
        EXPERIMENT_ID="exp1",
        DESCRIPTION="lr 0.003",
        COMMIT=experiment,
        AR_DATA=corpus,
        AR_TIME_BUDGET=2,
        AR_EVAL_BYTES=4096,
    )
    return dict(workdir=workdir, home=home, baseline=baseline, experiment=experiment, code=code, out=out, err=err)


def test_skypilot_parses_the_task_one_h100_with_the_experiment_envs(task):
    assert task["accelerators"] == {"H100": 1}
    assert {"EXPERIMENT_ID", "DESCRIPTION", "COMMIT"} <= set(task["envs"])
    assert task["workdir"] == "."
    assert "pip install -e ." in task["setup"] and "python prepare.py" in task["setup"]
    assert 'tools/workers.py" result-line' in task["run"]


def test_the_run_section_prints_the_summary_and_one_result_line_for_the_requested_commit(cluster_run):
    assert cluster_run["code"] == 0, cluster_run["out"][-3000:] + cluster_run["err"][-3000:]
    log = (cluster_run["home"] / "experiments" / "exp1" / "run.log").read_text()
    summary = parse_summary(log)
    assert parse_summary(cluster_run["out"]) == summary, "the job output must carry the run's summary block"
    (result,) = result_lines(cluster_run["out"])
    assert result == ["RESULT", "exp1", cluster_run["experiment"][:7], summary["val_bpc"], summary["peak_vram_mb"]] + [
        "ok",
        "lr 0.003",
    ]


def test_the_run_trains_in_its_own_clone_and_leaves_the_synced_workdir_alone(cluster_run):
    workdir = cluster_run["workdir"]
    assert git(workdir, "rev-parse", "HEAD") == cluster_run["baseline"]
    assert git(workdir, "status", "--porcelain") == ""
    assert not (workdir / "run.log").exists()
    clone = cluster_run["home"] / "experiments" / "exp1"
    assert "LR = 0.003" in (clone / "train.py").read_text()
    assert (clone / "metrics.jsonl").exists() and (clone / "checkpoint.pt").exists()


def test_a_collected_cluster_log_records_into_results_with_the_clusters_name(cluster_run, tmp_path):
    """The documented collection: copy run.log home, then record it from a checkout of its commit."""
    workdir = cluster_run["workdir"]
    runs = workdir / "runs"
    runs.mkdir()
    shutil.copy(cluster_run["home"] / "experiments" / "exp1" / "run.log", runs / "exp1.log")
    git(workdir, "worktree", "add", "-q", "--detach", str(tmp_path / "checkout"), cluster_run["experiment"])
    env = {**os.environ, "AR_WORKER": "exp1"}
    record = [python(), str(workdir / "analysis.py"), "record", "--status", "keep"]
    record += ["--description", "[exp1] lr 0.003", str(runs / "exp1.log")]
    proc = subprocess.run(record, cwd=tmp_path / "checkout", env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    header, row = (workdir / "results.tsv").read_text().splitlines()
    row = dict(zip(header.split("\t"), row.split("\t")))
    (result,) = result_lines(cluster_run["out"])
    assert (row["commit"], row["val_bpc"], row["worker"], row["note"]) == (result[2], result[3], "exp1", "")


def test_the_run_section_refuses_to_start_without_an_experiment_id(task, tmp_path):
    workdir, _, _ = make_workdir(tmp_path / "sky_workdir")
    code, out, err = run_section(task, workdir, tmp_path)
    assert code != 0 and "EXPERIMENT_ID" in err
    assert not (tmp_path / "experiments").exists()


def test_the_run_section_reports_an_unknown_commit_without_training(task, tmp_path):
    workdir, _, _ = make_workdir(tmp_path / "sky_workdir")
    code, out, err = run_section(task, workdir, tmp_path, EXPERIMENT_ID="exp2", COMMIT="0123456789abcdef")
    assert code != 0 and not result_lines(out)
    assert not (tmp_path / "experiments" / "exp2" / "run.log").exists()


SUMMARY_LOG = """\
step 00100 | 300.0s/300s (100.0%) | loss 1.0000 | lr 0.00e+00 | 1,000,000 tok/s
---
val_bpc:          {val_bpc}
training_seconds: 300.1
peak_vram_mb:     {peak}
commit:           {commit}
"""


def result_line(log_path, *args, cwd=None):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "workers.py"), "result-line", str(log_path), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stdout.splitlines()
    return line.split("\t")


def test_result_line_of_a_finished_run_carries_its_summary_numbers(tmp_path):
    log = tmp_path / "run.log"
    log.write_text(SUMMARY_LOG.format(val_bpc="1.234567", peak="54321.5", commit="abc1234"))
    fields = result_line(log, "--id", "exp7", "--description", "wider\tMLP")
    assert fields == ["RESULT", "exp7", "abc1234", "1.234567", "54321.5", "ok", "wider MLP"]


def test_result_line_of_a_crash_reports_zeros_and_the_checkouts_commit(tmp_path):
    workdir, baseline, _ = make_workdir(tmp_path / "repo")
    log = workdir / "run.log"
    log.write_text("model: 1.00M parameters\ncrash: out of memory (peak 81,000 MB, 900.0M parameters)\n")
    fields = result_line(log, "--id", "exp8", cwd=tmp_path)
    assert fields == ["RESULT", "exp8", baseline[:7], "0.000000", "0.0", "crash", ""]


def test_result_line_of_a_missing_log_is_a_crash(tmp_path):
    fields = result_line(tmp_path / "run.log", "--id", "exp9", cwd=tmp_path)
    assert fields[:2] == ["RESULT", "exp9"] and fields[3:6] == ["0.000000", "0.0", "crash"]

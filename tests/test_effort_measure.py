"""A run not measured like the effort's runs is refused before it trains, naming each difference and
the exports that fix it; `decide` and `record` charge that refusal to the environment, not the idea.

`record` writes how the baseline (and every keep) was measured to measure.json in the git directory;
prepare.py compares every later `python train.py` with it: a Resume from a fresh shell that lost
README's rehearsal exports is the case the issue met (the rerun went looking for enwik8).
"""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from fixtures_results import run_cli
from harness import PREPARE, base_env, make_train_copy, python, run_train, write_corpus

import prepare
from labbook.keeprule import RUN_TAIL
from labbook.recording import with_effort_settings


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def effort(tmp_path_factory):
    """A repository whose baseline ran with AR_STEPS, AR_DATA and AR_EVAL_BYTES and was recorded."""
    root = tmp_path_factory.mktemp("effort")
    corpus = write_corpus(root / "corpus.txt", seed=3)
    repo = root / "repo"
    make_train_copy(repo)
    shutil.copy(PREPARE, repo / "prepare.py")  # the audit reads the baseline's prepare.py from git
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "T"], ["config", "user.email", "t@x.invalid"]):
        git(repo, *args)
    git(repo, "add", "train.py", "prepare.py")
    git(repo, "commit", "-q", "-m", "baseline")
    setup_env = base_env(root, AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096)
    code, log = run_train(repo / "train.py", setup_env)
    assert code == 0, log[-2000:]
    decided = run_cli("decide", cwd=repo, env=base_env(root))  # a fresh shell, before measure.json exists
    recorded = run_cli("record", "--description", "baseline", cwd=repo, env=setup_env)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    return repo, corpus, root, decided.stdout


def test_record_of_the_baseline_writes_how_the_efforts_runs_are_measured(effort):
    repo, corpus, _, _ = effort
    measure = json.loads((repo / ".git" / "autoresearch" / "measure.json").read_text())
    assert measure["overrides"] == {"AR_DATA": str(corpus), "AR_STEPS": "3", "AR_EVAL_BYTES": "4096"}
    assert measure["budget"] == "3steps" and measure["eval_bytes"] == 4096
    assert measure["data"].startswith("custom:") and measure["data_path"] == str(corpus.resolve())


def test_a_run_from_a_fresh_shell_is_refused_before_it_reads_data_and_decide_says_run_it_again(effort):
    repo, corpus, root, _ = effort
    fresh_shell = base_env(root, AR_EVAL_BYTES=4096)  # AR_STEPS and AR_DATA lost with the shell
    code, log = run_train(repo / "train.py", fresh_shell)
    assert code == 2, log
    assert log.rstrip("\n").splitlines()[-1] == (
        "crash: this run is not measured like the effort's runs: "
        f"AR_DATA is unset (the effort's runs: AR_DATA={corpus}), AR_STEPS is unset (the effort's runs: AR_STEPS=3): "
        f"export AR_DATA={corpus} AR_STEPS=3, as at setup (a fresh shell loses exports)"
    )
    assert not re.search(r"^(data|downloading|step) ", log, flags=re.M), "it looked for data or trained"
    decided = run_cli("decide", cwd=repo, env=fresh_shell)
    lines = decided.stdout.splitlines()
    assert lines[0] == "crash" and "not the idea's crash" in lines[1], decided.stdout
    assert "git reset" not in decided.stdout
    # the replicate, again, with the effort's settings in front: it works in a shell that has none
    rerun = f"AR_SEED=1 AR_DATA={corpus} AR_EVAL_BYTES=4096 AR_STEPS=3 timeout -k 30 600 python train.py > run.log 2>&1"
    assert lines[-1].strip() == rerun, decided.stdout
    recorded = run_cli("record", "--description", "noise: again", cwd=repo, env=fresh_shell)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    row = (repo / "results.tsv").read_text().splitlines()[-1].split("\t")
    assert row[3] == "crash" and "environment" in row
    assert recorded.stdout.rstrip().splitlines()[-1].strip() == rerun
    view = json.loads(run_cli("--json", cwd=repo, env=fresh_shell).stdout)
    assert view["run"] == rerun.removeprefix("AR_SEED=1 ")  # an experiment's first run, for program.md's loop

    no_exports = base_env(root)
    no_exports["PATH"] = os.pathsep.join([str(Path(python()).parent), no_exports["PATH"]])
    ran = subprocess.run(rerun, shell=True, cwd=repo, env=no_exports, capture_output=True, text=True, timeout=300)
    log = (repo / "run.log").read_text()
    assert ran.returncode == 0 and "crash:" not in log and re.search(r"^val_bpc: ", log, flags=re.M), log[-2000:]
    recorded = run_cli("record", "--description", "noise: again", cwd=repo, env=no_exports)
    assert recorded.returncode == 0, recorded.stdout + recorded.stderr
    row = (repo / "results.tsv").read_text().splitlines()[-1].split("\t")
    assert row[3] == "keep" and "replicate" in row


def test_the_baselines_decide_prints_its_replicate_with_the_runs_settings_before_record_keeps_them(effort):
    repo, corpus, _, decided = effort
    assert decided.splitlines()[0] == "keep", decided
    settings = f"AR_DATA={corpus} AR_EVAL_BYTES=4096 AR_STEPS=3 "
    assert decided.rstrip().splitlines()[-2].strip() == f"AR_SEED=1 {settings}{RUN_TAIL}", decided


def test_a_hint_that_names_the_run_command_carries_the_settings_too():
    hint = f"# the next experiment: edit train.py, git commit -am '...', {RUN_TAIL}"
    assert with_effort_settings(hint, "AR_STEPS=50 ") == hint.replace(RUN_TAIL, f"AR_STEPS=50 {RUN_TAIL}")
    assert with_effort_settings(RUN_TAIL, "") == RUN_TAIL  # a night without overrides: as program.md prints it
    assert with_effort_settings("git reset --hard HEAD~1", "AR_STEPS=50 ") == "git reset --hard HEAD~1"


def test_the_same_path_with_other_bytes_is_refused_before_any_step(effort, tmp_path):
    repo, corpus, root, _ = effort
    other = write_corpus(tmp_path / "corpus.txt", seed=4)
    measure_file = repo / ".git" / "autoresearch" / "measure.json"
    measure = json.loads(measure_file.read_text())
    env = base_env(root, AR_DATA=other, AR_STEPS=3, AR_EVAL_BYTES=4096)
    measure_file.write_text(
        json.dumps(dict(measure, data_path=str(other), overrides=dict(measure["overrides"], AR_DATA=str(other))))
    )
    try:
        code, log = run_train(repo / "train.py", env)
    finally:
        measure_file.write_text(json.dumps(measure))
    assert code == 2, log
    last = log.rstrip("\n").splitlines()[-1]
    assert last.startswith("crash: this run is not measured like the effort's runs: the data is custom:"), last
    assert f"(the effort's runs: {measure['data']} at {other})" in last
    assert not re.search(r"^step ", log, flags=re.M)


def test_a_fresh_effort_has_nothing_to_be_measured_against(tmp_path):
    journal = tmp_path / "autoresearch" / "journal.jsonl"
    assert prepare.effort_measure(journal) is None  # no measure.json
    journal.parent.mkdir()
    (journal.parent / "measure.json").write_text(json.dumps(dict(results=str(tmp_path / "results.tsv"))))
    assert prepare.effort_measure(journal) is None  # the results.tsv it describes is gone: a new effort
    (tmp_path / "results.tsv").write_text("commit\n")
    assert prepare.effort_measure(journal) is not None

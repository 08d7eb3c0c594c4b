"""A program is judged once: a new commit whose train.py is a program the effort already ran (only
comments, docstrings or formatting differ) ends at `python train.py`, before its first step, naming
the commit that ran it; a rerun of a recorded commit (a replicate, a confirmation) still runs."""

import re

import pytest
from fixtures_results import commit_change, fake_journal, git, head, write_log  # noqa: F401  (fake_journal: autouse)
from harness import PREPARE, TINY, TRAIN, base_env, crash_reason, edit_constants, run_train

import prepare
from labbook import cli, sources


def write_run(repo, commit, val_bpc, **summary):
    """A run.log of `commit` (labbook's fake, scored by the log itself) whose prepare.py is the real one."""
    log = write_log(repo, commit, val_bpc=val_bpc, **summary)
    harness = f"prepare_hash:     {prepare.prepare_hash(PREPARE.read_text())}"
    log.write_text(re.sub(r"^prepare_hash: .*$", harness, log.read_text(), flags=re.M))


@pytest.fixture
def effort(tmp_path, monkeypatch):
    """A repository whose train.py is the tiny one, after setup (the baseline and 4 replicates) and
    one discarded idea, recorded by the rule: (repository, the idea's commit)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "T"], ["config", "user.email", "t@x.invalid"]):
        git(repo, *args)
    (repo / "train.py").write_text(edit_constants(TRAIN.read_text(), **TINY))
    (repo / "prepare.py").write_text(PREPARE.read_text())
    git(repo, "add", "train.py", "prepare.py")
    git(repo, "commit", "-q", "-m", "baseline")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("AR_WORKER", raising=False)
    base = head(repo)
    for seed, value in enumerate([1.3, 1.302, 1.298, 1.301, 1.299]):
        write_run(repo, base, value, **({"seed": seed} if seed else {}))
        assert cli.main(["record", "--description", "baseline" if seed == 0 else f"seed {seed}"]) == 0
    (repo / "train.py").write_text(edit_constants((repo / "train.py").read_text(), LR=3e-3))
    idea = commit_change(repo, message="lr 3e-3")
    write_run(repo, idea, 1.301)
    assert cli.main(["record", "--description", "lr 3e-3"]) == 0
    return repo, idea


def test_a_comment_only_commit_of_a_tried_idea_ends_before_its_first_step_naming_the_commit(effort, capsys):
    repo, idea = effort
    (repo / "train.py").write_text((repo / "train.py").read_text() + "# lr 3e-3, one more time\n")
    retry = commit_change(repo, message="lr 3e-3 again")
    code, log = run_train(repo / "train.py", base_env(repo))
    assert code == 2, log[-2000:]
    reason = crash_reason(log)
    assert reason.startswith(f"train.py at {retry} is the same program as at {idea} (results.tsv line 7, discard")
    assert "change the code itself" in reason
    assert "step " not in log and "data:" not in log  # refused before the data, let alone a step
    (repo / "run.log").write_text(log)
    capsys.readouterr()
    assert cli.main(["decide"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("crash\nnot a new experiment") and "git reset --hard HEAD~1" in out
    assert "--amend" not in out  # no typo to fix: the code itself must change


def test_a_rerun_of_a_recorded_commit_is_not_refused_as_a_twin(effort):
    repo, idea = effort
    assert head(repo) == idea  # a confirmation of the idea, with a seed of its own
    code, log = run_train(repo / "train.py", base_env(repo, AR_SEED=5))
    assert "same program" not in log
    assert crash_reason(log).startswith("could not download")  # it went on to the data, which this test lacks


def test_the_harness_and_the_lab_book_agree_on_what_a_program_is():
    source = TRAIN.read_text()
    variants = [source, source.replace("# model width", "# the width"), source.replace("DIM = 512", "DIM = 768")]
    assert [prepare.program_key(s) for s in variants] == [sources.program_key(s) for s in variants]
    assert prepare.program_key(variants[1]) == prepare.program_key(source) != prepare.program_key(variants[2])

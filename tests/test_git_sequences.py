"""The git moves of program.md's loop never lose a results.tsv row or the last run.log:
commit, run, record, then keep or `git reset --hard HEAD~1`; crashes; even `git clean -fdx`."""

import json

import pytest
from fixtures_results import commit_change, data_lines, fake_journal, git, head, make_repo, run_cli, write_log  # noqa: F401

from labbook import cli


@pytest.fixture
def repo(tmp_path, monkeypatch):
    path = make_repo(tmp_path / "repo")
    monkeypatch.chdir(path)
    return path


def run_and_record(repo, status, description, val_bpc=None, crash=None):
    """'Run' the current HEAD (a run.log naming it) and record it as the agent does."""
    write_log(repo, head(repo), val_bpc=val_bpc, crash=crash)
    code = cli.main(["record", "--status", status, "--description", description])
    assert code == 0
    return head(repo)


def descriptions(repo):
    return [row[4].split(" (crash:")[0] for row in data_lines(repo / "results.tsv")]


def test_keep_then_discard_with_reset_keeps_every_row_and_the_run_log(repo):
    baseline = run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    commit_change(repo, lr=0.002)
    kept = run_and_record(repo, "keep", "lr 2e-3", val_bpc=1.45)
    commit_change(repo, lr=0.02)
    discarded = run_and_record(repo, "discard", "lr 2e-2", val_bpc=1.90)
    git(repo, "reset", "--hard", "HEAD~1")

    assert head(repo) == kept
    assert [r[0] for r in data_lines(repo / "results.tsv")] == [baseline, kept, discarded]
    assert descriptions(repo) == ["baseline", "lr 2e-3", "lr 2e-2"]
    assert "val_bpc:          1.900000" in (repo / "run.log").read_text()


def test_a_crash_then_a_discard_both_reverted_leave_every_row(repo):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    commit_change(repo, lr=1.0)
    crashed = run_and_record(repo, "crash", "lr 1.0", crash="loss exploded to 41.2 at step 30")
    git(repo, "reset", "--hard", "HEAD~1")
    commit_change(repo, lr=0.0005)
    discarded = run_and_record(repo, "discard", "lr 5e-4", val_bpc=1.52)
    git(repo, "reset", "--hard", "HEAD~1")

    rows = data_lines(repo / "results.tsv")
    assert [r[:4] for r in rows[1:]] == [
        [crashed, "0.000000", "0.0", "crash"],
        [discarded, "1.520000", "3.0", "discard"],
    ]
    assert "loss exploded" in rows[1][4]
    assert (repo / "run.log").exists()


def test_git_clean_fdx_removes_results_tsv_but_restore_brings_every_row_back(repo):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    commit_change(repo, lr=0.002)
    run_and_record(repo, "keep", "lr 2e-3", val_bpc=1.45)
    commit_change(repo, lr=0.02)
    run_and_record(repo, "discard", "lr 2e-2", val_bpc=1.90)
    git(repo, "reset", "--hard", "HEAD~1")
    before = (repo / "results.tsv").read_text()
    git(repo, "clean", "-q", "-fdx")
    assert not (repo / "results.tsv").exists()

    proc = run_cli("restore", cwd=repo)
    assert proc.returncode == 0, proc.stderr
    assert (repo / "results.tsv").read_text() == before


def test_rows_recorded_after_a_clean_are_merged_with_the_restored_ones_in_order(repo, capsys):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    commit_change(repo, lr=0.002)
    run_and_record(repo, "keep", "lr 2e-3", val_bpc=1.45)
    git(repo, "clean", "-q", "-fdx")
    commit_change(repo, lr=0.004)
    run_and_record(repo, "discard", "lr 4e-3", val_bpc=1.47)
    assert "restore" in capsys.readouterr().out  # the agent is told the file was lost
    assert cli.main(["restore"]) == 0
    assert descriptions(repo) == ["baseline", "lr 2e-3", "lr 4e-3"]


def test_three_crashes_in_a_row_show_as_a_crash_streak_that_says_change_direction(repo, capsys):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    for lr in (0.5, 0.6, 0.7):
        commit_change(repo, lr=lr)
        run_and_record(repo, "crash", f"lr {lr}", crash=f"loss is nan at step {int(lr * 10)}")
        git(repo, "reset", "--hard", "HEAD~1")
    capsys.readouterr()
    assert cli.main(["--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["crashes_in_a_row"] == 3
    assert cli.main(["--no-plots"]) == 0
    text = capsys.readouterr().out
    assert "crash streak 3" in text and "change direction" in text

    commit_change(repo, lr=0.0015)
    run_and_record(repo, "discard", "lr 1.5e-3", val_bpc=1.51)
    capsys.readouterr()
    assert cli.main(["--json", "--no-plots"]) == 0
    assert json.loads(capsys.readouterr().out)["crashes_in_a_row"] == 0


def test_a_crash_fixed_by_an_amend_is_named_by_audit_and_report_and_decide_asks_for_the_runs_own_words(repo, capsys):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    for seed in range(1, 5):  # setup's replicates, so that decide judges the experiment
        write_log(repo, head(repo), val_bpc=1.50 + 0.001 * seed, seed=seed)
        assert cli.main(["record", "--description", f"noise: seed {seed}"]) == 0
    commit_change(repo, lr=0.5, message="shift_tokens (1, 2)")
    crashed = run_and_record(repo, "crash", "shift_tokens (1, 2)", crash="NameError: name 'shfit' is not defined")
    (repo / "train.py").write_text((repo / "train.py").read_text() + "SHIFT = (1, 1, 2, 2)\n")
    git(repo, "commit", "-q", "-a", "--amend", "--no-edit")  # program.md's fix of a typo crash
    fixed = head(repo)
    write_log(repo, fixed, val_bpc=1.52)
    capsys.readouterr()

    assert cli.main(["decide"]) == 0
    lines = capsys.readouterr().out.splitlines()
    note = next(line for line in lines if line.startswith("note: "))
    assert note.startswith(f"note: {fixed} amends {crashed} (line 7, crash)") and "--description" in note
    assert lines.index(note) < lines.index("next:")  # read before the record command it changes
    assert cli.main(["record", "--description", "shift_tokens (1, 1, 2, 2)"]) == 0
    capsys.readouterr()

    assert cli.main(["audit"]) == 0  # a note, not a flag: the run happened, its row describes its code
    audit_text = capsys.readouterr().out
    named = f"  line 7 {crashed} (crash, 'shift_tokens (1, 2)'): replaced by {fixed} ('shift_tokens (1, 2)')"
    assert "note: 1 row ran code that `git commit --amend` replaced (on no branch now)" in audit_text
    assert named in audit_text.splitlines()
    assert cli.main(["--no-plots"]) == 0
    assert named in capsys.readouterr().out.splitlines()
    assert descriptions(repo)[-2:] == ["shift_tokens (1, 2)", "shift_tokens (1, 1, 2, 2)"]


def test_a_discarded_commit_reset_away_is_not_called_amended(repo, capsys):
    run_and_record(repo, "keep", "baseline", val_bpc=1.50)
    commit_change(repo, lr=0.02)
    run_and_record(repo, "discard", "lr 2e-2", val_bpc=1.90)
    git(repo, "reset", "--hard", "HEAD~1")
    capsys.readouterr()
    assert cli.main(["audit"]) == 0
    assert "amend" not in capsys.readouterr().out

"""`python analysis.py record`: one row per run, parsed from run.log, never typed, never lost."""

import json
from datetime import datetime
from pathlib import Path

import pytest
from fixtures_results import (  # noqa: F401  (fake_journal: an autouse fixture)
    HEADER5,
    RULE_NIGHT,
    commit_change,
    copy_run,
    data_lines,
    fake_journal,
    git,
    head,
    make_repo,
    results_text,
    run_cli,
    tiny_lab,
    write_log,
    write_night,
)

from labbook import cli, ledger, runlog


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """A temporary repository as the agent's working directory."""
    path = make_repo(tmp_path / "repo")
    monkeypatch.chdir(path)
    monkeypatch.delenv("AR_WORKER", raising=False)
    return path


def record(capsys, *args):
    code = cli.main(["record", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_keep_appends_the_header_and_one_row_with_numbers_from_the_summary(repo, capsys):
    commit = head(repo)
    write_log(repo, commit, val_bpc=1.2345674, peak_vram_mb=12345.6, seed=7)
    code, out, _ = record(capsys, "--status", "keep", "--description", "baseline")
    assert code == 0
    lines = (repo / "results.tsv").read_text().splitlines()
    assert lines[0].startswith(HEADER5 + "\t")
    assert {"fingerprint", "gpu", "seed", "recorded_at"} <= set(lines[0].split("\t"))
    assert len(lines) == 2
    row = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
    assert [row[c] for c in ("commit", "val_bpc", "memory_gb", "status", "description")] == [
        commit,
        "1.234567",
        f"{12345.6 / 1024:.1f}",
        "keep",
        "baseline",
    ]
    assert row["fingerprint"] == "f1f2f3f4f5f6" and row["gpu"] == "NVIDIA H100 80GB HBM3" and row["seed"] == "7"
    assert datetime.fromisoformat(row["recorded_at"]).tzinfo is not None
    assert row["worker"] == "repo" and row["note"] == ""
    assert commit in out


def test_record_reads_the_log_path_it_is_given(repo, capsys):
    (repo / "logs").mkdir()
    write_log(repo / "logs", head(repo), val_bpc=1.5, name="attempt.log")
    code, _, _ = record(capsys, "--status", "discard", "--description", "wider", "logs/attempt.log")
    assert code == 0
    assert data_lines(repo / "results.tsv")[0][1:4] == ["1.500000", "3.0", "discard"]


def test_a_crash_records_head_zeros_and_the_crash_reason(repo, capsys):
    write_log(repo, "ignored", crash="out of memory (peak 80,123 MB, 412.0M parameters)")
    code, _, _ = record(capsys, "--status", "crash", "--description", "depth 48")
    assert code == 0
    commit, val, mem, status, description = data_lines(repo / "results.tsv")[0][:5]
    assert (commit, val, mem, status) == (head(repo), "0.000000", "0.0", "crash")
    assert description.startswith("depth 48") and "out of memory (peak 80,123 MB" in description


def test_a_keep_or_discard_without_val_bpc_is_refused(repo, capsys):
    write_log(repo, head(repo), crash="loss is nan at step 40")
    for status in ("keep", "discard"):
        code, _, err = record(capsys, "--status", status, "--description", "lr 1e-1")
        assert code != 0 and "val_bpc" in err and "--status crash" in err
    assert not (repo / "results.tsv").exists()


def test_a_log_from_another_commit_is_refused_unless_forced_and_the_row_says_so(repo, capsys):
    old = head(repo)
    commit_change(repo, lr=0.002)
    write_log(repo, old, val_bpc=1.4)
    code, _, err = record(capsys, "--status", "keep", "--description", "lr 2e-3")
    assert code != 0 and old in err and "--force" in err
    assert not (repo / "results.tsv").exists()

    code, _, _ = record(capsys, "--status", "keep", "--description", "lr 2e-3", "--force")
    assert code == 0
    lines = (repo / "results.tsv").read_text().splitlines()
    row = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
    assert row["commit"] == old and row["note"].startswith("forced") and old in row["note"]


def test_a_log_from_uncommitted_code_is_refused_unless_forced(repo, capsys):
    write_log(repo, head(repo) + "-dirty", val_bpc=1.4)
    code, _, err = record(capsys, "--status", "discard", "--description", "untested edit")
    assert code != 0 and "-dirty" in err
    code, _, _ = record(capsys, "--status", "discard", "--description", "untested edit", "--force")
    assert code == 0
    fields = data_lines(repo / "results.tsv")[0]
    assert fields[0] == head(repo) and any("dirty" in f for f in fields[5:])


def test_descriptions_with_tabs_or_line_breaks_are_refused(repo, capsys):
    write_log(repo, head(repo), val_bpc=1.4)
    for description in ("a\tb", "first line\nsecond line", "a\r\nb", "   "):
        code, _, err = record(capsys, "--status", "discard", "--description", description)
        assert code != 0 and "description" in err
    assert not (repo / "results.tsv").exists()


def test_appending_to_a_file_without_header_is_refused_with_the_fix_and_changes_nothing(repo, capsys):
    original = results_text([("aaaaaaa", 1.5, 2.0, "keep", "baseline")], header=False).encode()
    (repo / "results.tsv").write_bytes(original)
    write_log(repo, head(repo), val_bpc=1.4)
    code, _, err = record(capsys, "--status", "keep", "--description", "next")
    assert code != 0 and "header" in err and "fix-header" in err
    assert (repo / "results.tsv").read_bytes() == original

    assert cli.main(["fix-header"]) == 0
    fixed = (repo / "results.tsv").read_bytes()
    assert fixed.startswith(HEADER5.encode() + b"\n") and fixed.endswith(original)
    code, _, _ = record(capsys, "--status", "keep", "--description", "next")
    assert code == 0
    assert [f[4] for f in data_lines(repo / "results.tsv")] == ["baseline", "next"]


def test_a_file_with_the_original_five_columns_gets_five_column_rows(repo, capsys):
    (repo / "results.tsv").write_text(results_text([("aaaaaaa", 1.5, 2.0, "keep", "baseline")]))
    write_log(repo, head(repo) + "-dirty", val_bpc=1.4)
    code, _, _ = record(capsys, "--status", "discard", "--description", "try", "--force")
    assert code == 0
    rows = data_lines(repo / "results.tsv")
    assert [len(r) for r in rows] == [5, 5]
    assert rows[1][4].startswith("try") and "forced" in rows[1][4]  # the note rides in the description
    assert ledger.read_results(repo / "results.tsv").malformed == []


def test_every_row_is_also_appended_to_a_backup_inside_the_git_directory(repo, capsys):
    for i, status in enumerate(("keep", "discard")):
        write_log(repo, head(repo), val_bpc=1.5 - i / 10, seed=None if i == 0 else i)  # the replicate: the named seed
        assert record(capsys, "--status", status, "--description", f"run {i}")[0] == 0
    backup = repo / ".git" / "autoresearch" / "results.tsv"
    assert backup.read_text() == (repo / "results.tsv").read_text()


def test_restore_merges_the_backup_back_in_order_without_duplicates(repo, capsys):
    rows = [(f"c{i:06d}", 1.5 - i / 100, 2.0, "discard", f"row {i}") for i in range(7)]
    backup = repo / ".git" / "autoresearch" / "results.tsv"
    backup.parent.mkdir(parents=True)
    # the backup missed row 4 (its disk was full for a moment); the live file was later replaced
    # by an older copy that ends at row 4, losing rows 5 and 6
    backup.write_text(results_text([rows[i] for i in (0, 1, 2, 3, 5, 6)]))
    (repo / "results.tsv").write_text(results_text(rows[:5]))
    assert cli.main(["restore"]) == 0
    assert [r[4] for r in data_lines(repo / "results.tsv")] == [f"row {i}" for i in range(7)]
    assert cli.main(["restore"]) == 0  # a second restore adds nothing
    assert len(data_lines(repo / "results.tsv")) == 7


def test_restore_recreates_a_deleted_results_tsv(repo, capsys):
    for i in range(3):
        write_log(repo, head(repo), val_bpc=1.5 - i / 10)
        record(capsys, "--status", "keep", "--description", f"run {i}")
    before = (repo / "results.tsv").read_text()
    (repo / "results.tsv").unlink()
    assert cli.main(["restore"]) == 0
    assert (repo / "results.tsv").read_text() == before


def test_restore_without_a_backup_says_so(tmp_path, capsys):
    code = cli.main(["restore", "--tsv", str(tmp_path / "results.tsv")])
    assert code != 0 and "no backup" in capsys.readouterr().err


def test_recording_from_a_second_worktree_lands_in_the_main_worktrees_results(tmp_path):
    """A real tiny run (tiny_lab's run A), recorded by `analysis.py record` in a second worktree:
    the re-score runs in a subprocess and the row lands in the main worktree's results.tsv."""
    lab = tiny_lab()
    repo = tmp_path / "repo"
    git(tmp_path, "clone", "-q", str(lab.repo), str(repo))  # same commits: the log's commit is HEAD
    worktree = tmp_path / "agent-2"
    git(repo, "worktree", "add", "-q", "-b", "agent-2", str(worktree))
    copy_run(lab.run_a, worktree)
    proc = run_cli("record", "--status", "keep", "--description", "baseline", cwd=worktree)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (worktree / "results.tsv").exists()
    rows = data_lines(repo / "results.tsv")
    summary = runlog.parse_summary((lab.run_a / "run.log").read_text())
    assert [r[:4] for r in rows] == [[lab.c1, f"{float(summary['val_bpc_exact']):.6f}", rows[0][2], "keep"]]
    row = dict(zip(ledger.COLUMNS, rows[0]))
    assert row["worker"] == "agent-2" and row["run_id"] == summary["run_id"] and row["rescore_seconds"] != ""
    assert data_lines(repo / ".git" / "autoresearch" / "results.tsv") == rows
    assert (repo / "checkpoints" / f"{lab.c1}.pt").is_file(), "a keep's weights are saved next to results.tsv"


def test_a_keep_saves_its_checkpoint_and_metrics_under_checkpoints(repo, capsys):
    write_log(repo, head(repo), val_bpc=1.45)
    (repo / "checkpoint.pt").write_bytes(b"weights of the kept run")
    (repo / "metrics.jsonl").write_text('{"step": 1, "time": 0.0, "loss": 5.5}\n')
    code, out, _ = record(capsys, "--status", "keep", "--description", "baseline")
    assert code == 0
    saved = repo / "checkpoints" / f"{head(repo)}.pt"
    assert saved.read_bytes() == b"weights of the kept run"
    assert saved.with_suffix(".metrics.jsonl").read_text() == (repo / "metrics.jsonl").read_text()
    assert str(saved) in out


def test_a_discard_saves_no_checkpoint_and_a_keep_without_one_says_so(repo, capsys):
    write_log(repo, head(repo), val_bpc=1.45)
    (repo / "checkpoint.pt").write_bytes(b"weights")
    code, _, _ = record(capsys, "--status", "discard", "--description", "worse")
    assert code == 0 and not (repo / "checkpoints").exists()
    assert not (repo / "checkpoint.pt").exists(), "a recorded discard's checkpoint is deleted (retention rule)"
    write_log(repo, head(repo), val_bpc=1.44, seed=1)  # the next run, with the seed the rule named
    code, out, _ = record(capsys, "--status", "keep", "--description", "better")
    assert code == 0 and "no checkpoint at" in out and "not saved" in out


def test_tsv_overrides_the_results_path_before_or_after_the_subcommand(repo, tmp_path, capsys):
    write_log(repo, head(repo), val_bpc=1.45)
    first, second = tmp_path / "a" / "results.tsv", tmp_path / "b.tsv"
    assert cli.main(["--tsv", str(first), "record", "--status", "keep", "--description", "x"]) == 0
    assert cli.main(["record", "--tsv", str(second), "--status", "keep", "--description", "y"]) == 0
    assert [r[4] for r in data_lines(first)] == ["x"] and [r[4] for r in data_lines(second)] == ["y"]
    assert not Path(repo / "results.tsv").exists()


def test_a_run_repeating_a_recorded_runs_commit_and_seed_is_refused_naming_the_next_seed(repo, capsys):
    commit = head(repo)
    write_log(repo, commit, val_bpc=1.50, seed=911603)
    assert record(capsys, "--status", "keep", "--description", "baseline")[0] == 0
    write_log(repo, commit, val_bpc=1.50, seed=911603)  # a "confirmation" with the first run's seed: the same run
    for command in (
        ["decide"],
        ["record", "--description", "again"],
        ["record", "--status", "keep", "--description", "x"],
    ):
        code = cli.main(command)
        _, err = capsys.readouterr()
        assert code == 2 and "used AR_SEED=911603, as line 2 of results.tsv did" in err and "AR_SEED=1" in err, err
    assert len(data_lines(repo / "results.tsv")) == 1
    write_log(repo, commit, val_bpc=1.52, seed=1)  # the seed it names
    assert record(capsys, "--description", "noise")[0] == 0


def write_journal(repo, *entries):
    """Scores in the sealed scorer's journal of `repo`: (run_id, val_bpc_exact, commit) each."""
    path = repo / ".git" / "autoresearch" / "journal.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(dict(run_id=r, val_bpc_exact=v, summary=dict(commit=c))) + "\n" for r, v, c in entries]
    with path.open("a") as f:
        f.writelines(lines)


def test_a_row_keeps_the_runs_sandbox_and_a_summary_from_before_it_leaves_the_column_empty(repo, capsys):
    commit = head(repo)
    write_log(repo, commit, val_bpc=1.5, sandbox="landlock ABI 7")
    assert record(capsys, "--status", "keep", "--description", "baseline")[0] == 0
    write_log(repo, commit, val_bpc=1.51, seed=1)  # an older harness: no sandbox key
    assert record(capsys, "--description", "noise")[0] == 0
    assert [r.extra["sandbox"] for r in ledger.read_results(repo / "results.tsv").rows] == ["landlock ABI 7", ""]


def test_two_seeds_of_one_commit_with_bit_identical_scores_are_refused(repo, capsys):
    commit = head(repo)
    write_log(repo, commit, val_bpc=1.5)
    assert record(capsys, "--status", "keep", "--description", "baseline")[0] == 0
    write_log(repo, commit, val_bpc=1.5, seed=1)  # another seed, the same score: train.py seeds itself
    code, _, err = record(capsys, "--description", "noise")
    assert code == 2 and err.count("\n") == 1, err
    assert "the seeds gave bit-identical scores" in err and "re-seeds" in err and "remove the re-seeding" in err
    assert len(data_lines(repo / "results.tsv")) == 1
    # where the journal holds the recorded run, its exact float decides: these two only print alike
    (row,) = ledger.read_results(repo / "results.tsv").rows
    write_journal(repo, (row.extra["run_id"], 1.5000000001, commit))
    assert record(capsys, "--description", "noise")[0] == 0


def test_a_replicate_must_use_the_seed_decide_named_and_a_stopped_one_runs_again_with_it(repo, capsys):
    commit = head(repo)
    write_log(repo, commit, val_bpc=1.5)
    assert record(capsys, "--description", "baseline")[0] == 0  # its verdict names AR_SEED=1
    write_log(repo, commit, val_bpc=1.51, seed=3)
    code, _, err = record(capsys, "--status", "keep", "--description", "noise")
    assert code == 2 and err.count("\n") == 1 and "used AR_SEED=3, but decide named AR_SEED=1" in err, err
    assert "Run it again: AR_SEED=1 timeout -k 30 600 python train.py > run.log 2>&1" in err
    write_log(repo, commit, crash="interrupted (SIGTERM) after 40 s")  # the replicate, stopped by a signal
    assert record(capsys, "--description", "noise")[0] == 0
    write_log(repo, commit, val_bpc=1.51, seed=1)  # run again with the seed it had
    code, out, _ = record(capsys, "--description", "noise")
    assert code == 0 and "AR_SEED=2 timeout" in out


def test_a_confirmation_must_use_the_seed_decide_named_and_a_new_commits_first_run_never_is(
    tmp_path, monkeypatch, capsys
):
    night = write_night(tmp_path / "lab", RULE_NIGHT[:15])  # setup, ..., and lr 3e-3 sent to a confirmation
    monkeypatch.chdir(night.repo)
    exp6 = night.commits["exp6"]
    write_log(night.repo, exp6, val_bpc=1.401, seed=7)
    code, _, err = record(capsys, "--description", "lr 3e-3")
    assert code == 2 and "used AR_SEED=7, but decide named AR_SEED=1 for its next run" in err, err
    write_log(night.repo, exp6, val_bpc=1.401, seed=1)
    assert cli.main(["decide"]) == 0 and capsys.readouterr().out.startswith("keep\n")
    fresh = commit_change(night.repo, lr=0.5, message="lr 0.5")
    write_log(night.repo, fresh, val_bpc=1.6, seed=861234)  # no AR_SEED: train.py's own seed
    assert cli.main(["decide"]) == 0 and capsys.readouterr().out.startswith("discard\n")


def test_record_lists_the_journals_scored_runs_of_the_commit_that_were_never_recorded(repo, capsys):
    commit = head(repo)
    log = write_log(repo, commit, val_bpc=1.5)
    this_run = runlog.parse_summary(log.read_text())["run_id"]
    other = ("aaaaaaa", 1.2, "aaaaaaa")  # another commit's run
    dirty = ("d1d1d1d1d1d1", 1.1, f"{commit}-dirty")  # uncommitted code: not a run of this commit
    write_journal(repo, ("c0ffee000001", 1.4987654, commit), other, dirty, (this_run, 1.5, commit))
    write_journal(repo, ("c0ffee000002", 1.51, commit))
    code, out, _ = record(capsys, "--status", "keep", "--description", "baseline")
    assert code == 0
    assert (
        f"note: the journal holds 2 scored runs of {commit} that were never recorded: c0ffee000001 (val_bpc "
        "1.498765), c0ffee000002 (val_bpc 1.510000); a run is evidence whether or not it is recorded"
    ) in out.splitlines()

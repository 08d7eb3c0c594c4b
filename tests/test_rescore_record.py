"""`record` writes the sealed scorer's number, from the journal in the git directory, never run.log's
text: real tiny CPU runs in a temporary repository, and the attacks a reward-hacking agent would try."""

import json
import re
import subprocess

import pytest
from fixtures_results import copy_run, tiny_lab

from labbook import cli, ledger, recording, report, rescore, runlog


@pytest.fixture(scope="module")
def lab():
    """The shared lab, with run A recorded as the baseline keep in lab.main_tsv."""
    lab = tiny_lab()
    if not lab.main_tsv.exists():
        log = copy_run(lab.run_a, lab.root / "main" / "a")
        with pytest.MonkeyPatch.context() as mp:
            mp.chdir(lab.repo)
            assert (
                cli.main(["record", "--tsv", str(lab.main_tsv), "--status", "keep", "--description", "base", str(log)])
                == 0
            )
    return lab


@pytest.fixture(autouse=True)
def in_lab_repo(lab, monkeypatch):
    """Reports and audits run where the agent runs them: inside the repository."""
    monkeypatch.chdir(lab.repo)


def record(capsys, cwd, tsv, log, status="keep", *extra):
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)
        code = cli.main(["record", "--tsv", str(tsv), "--status", status, "--description", "try", *extra, str(log)])
    out, err = capsys.readouterr()
    return code, out, err


def rows(tsv):
    return ledger.read_results(tsv).rows


def summary_of(log_path):
    return runlog.parse_summary(log_path.read_text())


def journal(lab):
    return rescore.journal_entries(lab.repo / ".git" / "autoresearch" / "journal.jsonl")


def test_the_recorded_val_bpc_is_the_sealed_score_from_the_journal(lab):
    (row,) = rows(lab.main_tsv)
    entry = journal(lab)[row.extra["run_id"]]
    reported = float(summary_of(lab.run_a / "run.log")["val_bpc_exact"])
    assert row.status == "keep" and row.val_bpc == pytest.approx(entry["val_bpc_exact"], abs=5e-7)
    assert float(row.extra["reported_bpc"]) == reported == entry["val_bpc_exact"]  # run.log prints the scorer's
    assert entry["checkpoint_sha256"] == rescore.file_sha256(lab.run_a / "checkpoint.pt")
    assert entry["spec"] == summary_of(lab.run_a / "run.log")["spec"]
    assert (lab.main_tsv.parent / "checkpoints" / f"{lab.c1}.pt").exists()
    assert not (lab.main_tsv.parent / "checkpoints" / "rescores.json").exists()
    for part in ("prepare_hash", "libraries", "budget", "eval_bytes", "data", "run_id", "flags", "train_bpc"):
        assert row.extra[part], part


def test_a_run_is_recorded_once(lab, capsys):
    code, _, err = record(capsys, lab.repo, lab.main_tsv, copy_run(lab.run_a, lab.root / "again"))
    assert code == 2 and err.count("error:") == 1 and "already recorded" in err
    assert len(rows(lab.main_tsv)) == 1


def test_decide_and_record_read_the_same_journal_entry(lab, tmp_path, monkeypatch):
    log = copy_run(lab.run_a, tmp_path / "a")
    monkeypatch.chdir(lab.repo)
    summary, problem = recording.sealed_run(log)
    entry = journal(lab)[summary["run_id"]]
    assert problem is None and float(summary["val_bpc_exact"]) == entry["val_bpc_exact"]
    # the decision rests on the journal's number as results.tsv stores it (six decimals), so the
    # verdict's means are the ones the report later computes from the rows
    assert recording.candidate_value(lab.main_tsv, log) == float(f"{entry['val_bpc_exact']:.6f}")


def test_an_edited_val_bpc_and_a_planted_cache_do_not_change_the_recorded_number(lab, tmp_path, capsys):
    text = (lab.run_a / "run.log").read_text()
    text = re.sub(r"^val_bpc:.*$", "val_bpc:          1.000000", text, flags=re.M)
    text = re.sub(r"^val_bpc_exact:.*$", "val_bpc_exact:    1.0", text, flags=re.M)
    text = re.sub(r"^flags:.*$", "flags:            none", text, flags=re.M)
    tsv = lab.root / "tamper" / "results.tsv"
    log = copy_run(lab.run_a, tsv.parent / "a", text)
    run_id = summary_of(log)["run_id"]
    (tsv.parent / "checkpoints").mkdir()
    planted = {run_id: {"key": {}, "answer": {"bpc": 1.0, "seconds": 0.0, "summary": {}}}}
    (tsv.parent / "checkpoints" / "rescores.json").write_text(json.dumps(planted))  # the old cache, forged
    code, out, _ = record(capsys, lab.repo, tsv, log, "discard")
    (row,) = rows(tsv)
    assert code == 0 and row.val_bpc == pytest.approx(journal(lab)[run_id]["val_bpc_exact"], abs=5e-7)
    assert row.extra["reported_bpc"] == "1.0" and "its text is not the score" in out


def test_a_run_with_no_journal_entry_is_refused_in_one_line(lab, tmp_path, capsys):
    other = tmp_path / "elsewhere"  # a repository whose journal never saw this run
    other.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=other, check=True)
    log = copy_run(lab.run_a, tmp_path / "a")
    (lab.repo / ".git" / "autoresearch" / "journal.jsonl").rename(tmp_path / "journal.jsonl")
    try:
        code, _, err = record(capsys, lab.repo, other / "results.tsv", log)
    finally:
        (tmp_path / "journal.jsonl").rename(lab.repo / ".git" / "autoresearch" / "journal.jsonl")
    assert code == 2 and err.count("\n") == 1 and "no score in the journal" in err
    assert not (other / "results.tsv").exists()


def test_a_second_summary_block_from_train_py_is_a_crash(lab, capsys):
    tsv = lab.main_tsv.parent / "atexit.tsv"
    code, _, _ = record(capsys, lab.attack_worktree, tsv, copy_run(lab.run_b, lab.root / "b_raw"))
    (row,) = rows(tsv)
    assert code == 1 and row.status == "crash" and "summary blocks" in row.description


def test_a_crash_line_after_the_summary_is_a_crash(lab, tmp_path, capsys):
    text = (lab.run_a / "run.log").read_text() + "crash: something after the summary\n"
    tsv = lab.main_tsv.parent / "late-crash.tsv"
    code, _, _ = record(capsys, lab.repo, tsv, copy_run(lab.run_a, tmp_path / "a", text))
    assert code == 1 and rows(tsv)[0].status == "crash" and "after its summary" in rows(tsv)[0].description


def seeded_tsv(lab, name):
    """A results file that starts with the genuine baseline row of the main one."""
    tsv = lab.main_tsv.parent / name
    tsv.write_text(lab.main_tsv.read_text())
    return tsv


def honest_b_log(lab, dest):
    """Run B's log without the fake block its train.py printed: only the edited prepare.py remains."""
    text = (lab.run_b / "run.log").read_text()
    fake = (
        "---\nval_bpc:          0.500000\nval_bpc_exact:    0.5\n"  # printed as the trainer exits: before the real one
    )
    assert text.count(fake) == 1
    return copy_run(lab.run_b, dest, text.replace(fake, ""))


def test_a_checkpoint_swapped_after_the_run_is_refused(lab, tmp_path, capsys):
    log = copy_run(lab.run_a, tmp_path / "a")
    (tmp_path / "a" / "checkpoint.pt").write_bytes((lab.run_b / "checkpoint.pt").read_bytes())
    tsv = tmp_path / "swap.tsv"
    code, _, err = record(capsys, lab.repo, tsv, log)
    assert code == 2 and "not the checkpoint the sealed scorer scored" in err and err.count("\n") == 1
    assert not tsv.exists()


def test_a_prepare_py_edited_at_the_runs_commit_is_flagged_and_never_best(lab, tmp_path, capsys):
    tsv = seeded_tsv(lab, "edited.tsv")
    code, out, _ = record(capsys, lab.attack_worktree, tsv, honest_b_log(lab, tmp_path / "b"))
    assert code == 0, out
    assert rows(tsv)[-1].status == "keep"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(lab.repo)
        assert cli.main(["audit", "--tsv", str(tsv)]) == 1
    out = capsys.readouterr().out
    assert f"prepare.py at {lab.c2}" in out and "differs from the baseline's" in out
    summary = report.summarize(ledger.read_results(tsv))
    assert summary["best_commit"] == lab.c1 and summary["baseline"]["commit"] == lab.c1


def test_a_forced_row_is_flagged_and_never_best(lab, tmp_path, capsys):
    tsv = seeded_tsv(lab, "forced.tsv")
    code, _, _ = record(capsys, lab.repo, tsv, honest_b_log(lab, tmp_path / "b"), "keep", "--force")
    assert code == 0 and rows(tsv)[-1].extra["note"].startswith("forced:")
    summary = report.summarize(ledger.read_results(tsv))
    assert summary["best_commit"] == lab.c1
    assert any("--force" in " ".join(f["reasons"]) for f in summary["flagged_rows"])


def test_a_hand_made_row_with_a_copied_fingerprint_and_an_unknown_commit_is_flagged(lab, capsys):
    tsv = seeded_tsv(lab, "forged.tsv")
    results = ledger.read_results(tsv)
    values = {**results.rows[0].as_dict(), "commit": "deadbee", "val_bpc": "0.100000", "reported_bpc": "0.1"}
    values["run_id"] = "0123456789ab"
    with open(tsv, "a") as f:
        f.write(ledger.format_row({k: str(v) for k, v in values.items()}, results.columns))
    summary = report.summarize(ledger.read_results(tsv))
    assert summary["best_commit"] == lab.c1 and summary["best"]["mean"] > 1
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(lab.repo)
        assert cli.main(["audit", "--tsv", str(tsv)]) == 1
    assert "git does not know commit deadbee" in capsys.readouterr().out


def test_the_json_holds_no_test_number_and_the_plain_report_scores_no_test_split(lab, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(rescore, "rescore_subprocess", lambda *a, **k: calls.append(a) or {"bpc": 9.0})
    monkeypatch.chdir(lab.repo)
    assert cli.main(["--tsv", str(lab.main_tsv), "--json", "--no-plots"]) == 0
    assert "test" not in capsys.readouterr().out.lower().replace("latest", "") and calls == []
    assert cli.main(["--tsv", str(lab.main_tsv), "--no-plots"]) == 0
    assert [c[2] for c in calls] == ["val"]  # the morning check re-scores the kept checkpoint on val only
    calls.clear()
    assert cli.main(["--tsv", str(lab.main_tsv), "--no-plots", "--test"]) == 0
    assert "test" in [c[2] for c in calls] and "9.000000" in capsys.readouterr().out
    assert not list(lab.main_tsv.parent.rglob("*.test.json"))


def test_the_morning_check_re_scores_each_kept_checkpoint_beside_its_recorded_value(lab, capsys):
    assert cli.main(["--tsv", str(lab.main_tsv), "--no-plots"]) == 0
    out = capsys.readouterr().out
    (row,) = rows(lab.main_tsv)
    line = next(line for line in out.splitlines() if line.strip().startswith(lab.c1) and "re-scored" in line)
    assert f"recorded {row.val_bpc:.6f}" in line and f"re-scored {row.val_bpc:.6f}" in line and "agrees" in line


def test_a_second_journal_line_for_a_run_is_refused(lab, tmp_path, capsys):
    log = copy_run(lab.run_a, tmp_path / "a")
    path = lab.repo / ".git" / "autoresearch" / "journal.jsonl"
    before = path.read_text()
    entry = json.loads(next(line for line in before.splitlines() if summary_of(log)["run_id"] in line))
    try:
        path.write_text(before + json.dumps(dict(entry, val_bpc_exact=entry["val_bpc_exact"] - 0.05)) + "\n")
        code, _, err = record(capsys, lab.repo, tmp_path / "dup.tsv", log)
    finally:
        path.write_text(before)
    assert code == 2 and "more than one score in the journal" in err and not (tmp_path / "dup.tsv").exists()

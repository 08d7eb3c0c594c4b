"""`record` writes the harness's own re-score, from a fresh process on the baseline's prepare.py:
real tiny CPU runs in a temporary repository, and the attacks a reward-hacking train.py would try."""

import json
import re

import pytest
from fixtures_results import copy_run, tiny_lab

from labbook import cli, ledger, report, rescore


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
    return ledger.parse_summary(log_path.read_text())


def test_the_recorded_val_bpc_is_the_rescore_and_the_reported_value_is_kept_apart(lab):
    (row,) = rows(lab.main_tsv)
    reported = float(summary_of(lab.run_a / "run.log")["val_bpc_exact"])
    assert row.status == "keep" and float(row.extra["reported_bpc"]) == reported
    cache = json.loads((lab.main_tsv.parent / "checkpoints" / "rescores.json").read_text())
    rescored = cache[row.extra["run_id"]]["answer"]["bpc"]
    assert abs(rescored - reported) <= rescore.RESCORE_TOLERANCE
    assert row.val_bpc == pytest.approx(rescored, abs=5e-7)
    # the rule's dry run re-scored it once; record reused that answer from the cache
    assert cache[row.extra["run_id"]]["answer"]["wall_seconds"] > 0 and float(row.extra["rescore_seconds"]) == 0
    assert (lab.main_tsv.parent / "checkpoints" / f"{lab.c1}.pt").exists()
    for part in ("prepare_hash", "libraries", "budget", "eval_bytes", "data", "run_id", "flags", "train_bpc"):
        assert row.extra[part], part


def test_a_run_is_recorded_once(lab, capsys):
    code, _, err = record(capsys, lab.repo, lab.main_tsv, copy_run(lab.run_a, lab.root / "again"))
    assert code == 2 and err.count("error:") == 1 and "already recorded" in err
    assert len(rows(lab.main_tsv)) == 1


def test_decide_and_record_share_one_rescore_through_the_cache(lab, tmp_path, monkeypatch):
    log = copy_run(lab.run_a, tmp_path / "a")
    monkeypatch.chdir(lab.repo)
    tsv = lab.main_tsv.parent / "shared.tsv"  # same checkpoints dir as the baseline: its cache
    answer, problem, reported = ledger.rescore_run(tsv, log)
    assert problem is None and answer["cached"] and answer["bpc"] == pytest.approx(reported, abs=1e-6)


def test_a_tampered_val_bpc_line_records_a_crash_with_both_numbers(lab, tmp_path, capsys):
    text = (lab.run_a / "run.log").read_text()
    text = re.sub(r"^val_bpc:.*$", "val_bpc:          1.000000", text, flags=re.M)
    text = re.sub(r"^val_bpc_exact:.*$", "val_bpc_exact:    1.0", text, flags=re.M)
    tsv = lab.main_tsv.parent / "tamper.tsv"
    code, out, _ = record(capsys, lab.repo, tsv, copy_run(lab.run_a, tmp_path / "a", text))
    (row,) = rows(tsv)
    assert code == 1 and row.status == "crash" and "re-scored val_bpc" in row.description
    assert "1.0" in row.description and "crash:" in out
    assert report.summarize(ledger.read_results(tsv))["best"] is None


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
    first = text.index("---\n")
    second = text.index("---\n", first + 4)
    return copy_run(lab.run_b, dest, text[:second])


def test_a_checkpoint_swapped_for_another_runs_is_a_crash(lab, tmp_path, capsys):
    log = copy_run(lab.run_a, tmp_path / "a")
    (tmp_path / "a" / "checkpoint.pt").write_bytes((lab.run_b / "checkpoint.pt").read_bytes())
    tsv = lab.main_tsv.parent / "swap.tsv"
    code, _, _ = record(capsys, lab.repo, tsv, log)
    (row,) = rows(tsv)
    assert code == 1 and row.status == "crash" and "not this run's checkpoint" in row.description


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
    assert "test" not in capsys.readouterr().out.lower().replace("latest", "")
    assert cli.main(["--tsv", str(lab.main_tsv), "--no-plots"]) == 0
    assert calls == []
    assert cli.main(["--tsv", str(lab.main_tsv), "--no-plots", "--test"]) == 0
    assert calls and calls[0][2] == "test" and "9.000000" in capsys.readouterr().out
    assert not list(lab.main_tsv.parent.rglob("*.test.json"))

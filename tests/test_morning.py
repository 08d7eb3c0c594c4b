"""The morning notebook's tables say what the report says: a kept commit's mean over all its
runs, an environment crash told apart from the idea's, a confirmation table that starts at the
first measured run. The night: a baseline with four replicates, then an experiment whose first
attempt was refused for its settings (a fresh shell), run again, confirmed and replicated."""

import os
import subprocess
import sys

import pytest
from fixtures_results import ANALYSIS, set_column, write_night

from labbook import morning, report
from labbook.ledger import read_results

REFUSED = "lr 3e-3 (crash: this run is not measured like the effort's runs: AR_STEPS is unset (the effort's runs: AR_STEPS=50))"
ROWS = [("base", 1.30, "keep", "baseline", "baseline")]
ROWS += [("base", 1.30 + 0.002 * s * (-1) ** s, "keep", f"noise: seed {s}", "replicate") for s in range(1, 5)]
ROWS += [
    ("lr", 0, "crash", REFUSED, "environment"),
    ("lr", 1.251, "discard", "lr 3e-3", "experiment"),
    ("lr", 1.249, "keep", "lr 3e-3", "confirm"),
    ("lr", 1.2531, "keep", "noise: seed 5", "replicate"),
    ("lr", 1.2507, "keep", "noise: seed 6", "replicate"),
]


@pytest.fixture
def night(tmp_path):
    return morning.load(write_night(tmp_path / "lab", ROWS).tsv)


def test_an_environment_crash_is_counted_apart_from_the_ideas(night):
    text = morning.overview_text(night)
    # as the report's header: the environment crash is no experiment's, so the experiment did not crash
    assert "1 experiment, 1 kept, 0 crashed; 1 environment crash besides (the run's environment, not an idea" in text
    (header, *_) = report.text_header(report.summarize(read_results(night.tsv)))
    assert "1 experiment + " in header and "1 environment crash" in header


def test_the_night_says_which_rows_ran_without_the_kernel_sandbox(tmp_path):
    lab = write_night(tmp_path / "lab", ROWS)
    set_column(lab.tsv, "sandbox", ["landlock ABI 7"] * 8 + ["none (no Landlock in this kernel)", ""])
    text = morning.overview_text(morning.load(lab.tsv))
    assert (
        "1 row was measured without the kernel sandbox (sandbox: none (no Landlock in this kernel); line 10): "
        "nothing kept train.py from the corpus or the checkpoints while it trained."
    ) in text.splitlines()


def test_the_kept_table_shows_the_decisions_mean_and_delta_from_the_same_runs_and_the_mean_now_apart(night):
    (kept,) = report.summarize(read_results(night.tsv))["improvements"]
    header, line = morning.kept_table(night).splitlines()
    cells = line.split()
    assert header.split()[:4] == ["commit", "mean", "at", "decision"]
    decision = (1.251 + 1.249) / 2  # the two runs the keep was decided on
    assert cells[1:4] == [f"{decision:.6f}", "2", f"{decision - kept['reference']:+.6f}"]
    assert cells[4:6] == [f"{kept['mean']:.6f}", str(kept["runs"])] and kept["runs"] == 4


def test_the_confirmation_table_starts_at_the_first_measured_run(night):
    _, line = morning.confirmations_table(night).splitlines()
    assert line.split()[1:3] == ["1.251000", "1.249000"]


def test_the_reports_header_adds_up_to_its_rows_with_an_environment_crash(night):
    (header, *_) = report.text_header(report.summarize(read_results(night.tsv)))
    parts = header.split(" rows = ")[1].split(" | ")[0].split(" + ")
    assert "1 environment crash" in parts and "1 confirmation run" in parts and "1 experiment" in parts
    assert sum(int(p.split()[0]) for p in parts) == len(ROWS) == int(header.split(": ")[1].split()[0])


@pytest.mark.parametrize(
    ("budget", "data", "said"),
    [
        ("50steps", "custom:0123456789abcdef", "50 training steps a run (AR_STEPS=50: a rehearsal's budget, not the "
         "timed one), on a custom corpus (AR_DATA, custom:0123456789abcdef)"),
        ("300s", "enwik8:a1fa5ffddb56f4953e226637dabbb36a", "300 s of training a run, on enwik8"),
    ],
)  # fmt: skip
def test_the_reports_header_names_the_budget_and_corpus_the_runs_were_measured_by(tmp_path, budget, data, said):
    lab = write_night(tmp_path / "lab", ROWS)
    set_column(lab.tsv, "budget", [budget] * len(ROWS))
    set_column(lab.tsv, "data", [data] * len(ROWS))
    lines = report.text_header(report.summarize(read_results(lab.tsv)))
    assert lines[1] == f"measure   {said}"


def test_output_piped_into_a_reader_that_went_away_is_not_an_error(tmp_path):
    # `python analysis.py ... | head -1`: head exits after one line; the command's later lines have no reader
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = subprocess.run(
            [sys.executable, str(ANALYSIS), "decide", "--explain"], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 0 and "error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_test_table_compares_a_checkpoints_test_score_with_the_val_of_that_same_run(night, monkeypatch):
    from labbook.base import checkpoints_dir

    lr = [r for r in night.rows if r.commit == night.rows[5].commit and r.measured]
    saved = lr[1]  # the confirmation that was kept: record saved its weights; the replicates did not
    assert saved.status == "keep" and saved.val_bpc == 1.249
    checkpoints_dir(night.tsv).mkdir(exist_ok=True)
    for commit in {r.commit for r in night.rows}:
        (checkpoints_dir(night.tsv) / f"{commit}.pt").write_bytes(b"weights")
    answer = {"bpc": 1.2, "summary": {"run_id": saved.extra["run_id"]}}
    monkeypatch.setattr(morning, "rescore_subprocess", lambda *a, **k: answer)
    (item,) = [i for i in morning.test_gaps(night, compute=True) if i["commit"] == saved.commit]
    assert item["line"] == saved.line and item["val"] == 1.249 and abs(item["gap"] - (1.2 - 1.249)) < 1e-12
    assert abs(item["mean"] - (1.251 + 1.249 + 1.2531 + 1.2507) / 4) < 1e-9  # the mean stands apart
    header, *lines = morning.test_table(night, compute=True).splitlines()
    assert "checkpoint's run (line)" in header and "test - its val" in header
    assert [c for c in lines[-1].split()][:5] == [saved.commit, str(saved.line), "1.249000", "1.200000", "-0.049000"]

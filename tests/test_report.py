"""`python analysis.py` (text and --json), its plots, metrics curves and the integrity audit."""

import json
import statistics

import numpy as np
import pytest
from fixtures_results import (  # noqa: F401  (fake_journal: an autouse fixture)
    NIGHT,
    RULE_NIGHT,
    commit_change,
    fake_journal,
    head,
    is_real_png,
    make_repo,
    results_text,
    set_column,
    write_log,
    write_night,
)
from nights import night_rows

from labbook import cli, keeprule, ledger, outcomes, plots, recording, report, rescore


@pytest.fixture
def night(tmp_path):
    """The keep rule's night in a real repository: results.tsv, its commits, its line numbers."""
    return write_night(tmp_path / "lab")


def report_json(capsys, tsv, *extra):
    assert cli.main(["--tsv", str(tsv), "--full", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def report_text(capsys, tsv, *extra):
    assert cli.main(["--tsv", str(tsv), "--no-plots", *extra]) == 0
    return capsys.readouterr().out


def rows_of(tsv, drop=()):
    return [r for r in ledger.read_results(tsv).rows if r.commit not in drop]


def test_the_report_shows_the_keep_rules_numbers_never_its_own(night, capsys):
    rows = rows_of(night.tsv, drop=[night.commits["hack"]])  # the flagged row never counts
    now = outcomes.standing(rows)
    text = report_text(capsys, night.tsv)
    c = night.commits
    assert now["tip"]["commit"] == c["exp7"] and now["best"]["commit"] == c["exp6"]
    assert f"tip       {c['exp7']:<8} {now['tip']['mean']:.6f}  mean of 1 run (the reference)" in text
    assert f"best      {c['exp6']:<8} {now['best']['mean']:.6f}  mean of 4 runs" in text
    assert f"sigma     {now['sigma']:.6f} ({now['df']} df" in text
    assert f"rerun below {now['next']['rerun_below']:.6f}" in text
    assert "noise floor" not in text and "keep threshold" not in text
    base = keeprule.commit_values(rows, c["base"])  # the baseline and its replicates, as setup's verdicts used
    assert len(base) == 5 and f"baseline  {c['base']:<8} {sum(base) / 5:.6f}  mean of 5 runs" in text


def test_improvements_carry_their_deltas_and_simplifications_are_listed_apart(night, capsys):
    text = report_text(capsys, night.tsv)
    c = night.commits

    def listed(start, end):  # the commits a section lists, in order
        section = text[text.index(start) : text.index(end)].splitlines()[1:]
        return [line.split()[2] for line in section if line.startswith("  line")]

    improvements = listed("kept improvements", "kept simplifications")
    assert improvements == [c["exp6"], c["exp2"], c["exp7"]], "best gain first; a flagged row is never listed"
    delta = statistics.fmean([1.45, 1.451]) - statistics.fmean([1.5, 1.501, 1.499, 1.5006, 1.4996])
    # the mean and the delta of the same two runs (the commit's later replicates move its mean, not its decision)
    assert f"{c['exp2']}  mean 1.450500 (2 runs)  delta {delta:+.6f} vs 1.500040 ({c['base']})  SwiGLU" in text
    assert listed("kept simplifications", "near-misses") == [c["exp5"]]
    assert listed("near-misses", "\ncrashes") == [c["exp4"]]


def test_crashes_are_listed_with_their_reasons_and_the_streak(night, capsys):
    text = report_text(capsys, night.tsv)
    crashes = text[text.index("\ncrashes") : text.index("audit:")]
    assert "depth 24: out of memory" in crashes and "fp8 everywhere: float8 needs sm89" in crashes
    assert "batch 256: no reason given" in crashes and "crash streak 2" in text


def test_a_flagged_row_is_never_the_tip_or_the_best_for_report_decide_and_the_agent(night, capsys):
    hack = night.commits["hack"]
    full = report_json(capsys, night.tsv)
    assert full["standing"]["tip"]["commit"] == night.commits["exp7"]
    assert full["standing"]["best"]["commit"] == night.commits["exp6"]
    assert [f["commit"] for f in full["audit"]["not_comparable"]] == [hack]
    assert "differs from the baseline's" in full["audit"]["not_comparable"][0]["reason"]
    assert cli.main(["--tsv", str(night.tsv), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["tip"]["commit"] == night.commits["exp7"] and view["best"]["commit"] == night.commits["exp6"]
    assert view["flagged_rows"] == 1
    judged = recording.judged_rows(night.tsv)
    assert hack not in {r.commit for r in judged} and len(judged) == len(rows_of(night.tsv)) - 1
    verdict = keeprule.decide(judged, keeprule.Candidate("abc1234", 1.3999, "next idea"))
    assert verdict.reference_commit == night.commits["exp7"]


def test_the_audit_exits_1_for_flags_only_and_notes_small_gains_apart(night, tmp_path, capsys):
    assert cli.main(["audit", "--tsv", str(night.tsv)]) == 1
    text = capsys.readouterr().out
    assert f"{night.commits['hack']}: flagged: prepare.py at" in text
    assert f"{night.commits['exp7']}: kept with a gain of" in text and "not flags" in text
    assert cli.main(["audit", "--json", "--tsv", str(night.tsv)]) == 1
    found = json.loads(capsys.readouterr().out)
    assert [g["commit"] for g in found["small_gains"]] == [night.commits["exp7"]]
    assert found["small_gains"][0]["gain"] == pytest.approx(statistics.fmean([1.4, 1.401, 1.4005, 1.3995]) - 1.4004)
    clean = write_night(tmp_path / "clean", [r for r in RULE_NIGHT if r[0] != "hack"])
    assert cli.main(["audit", "--tsv", str(clean.tsv)]) == 0, "a small gain is a note, not a flag"
    assert "kept with a gain of" in capsys.readouterr().out


def test_audit_and_report_say_which_rows_were_measured_without_the_kernel_sandbox(tmp_path, capsys):
    night = write_night(tmp_path / "lab", RULE_NIGHT[:6] + RULE_NIGHT[10:11])  # setup, an experiment, a crash
    none = "none (the kernel has no Landlock)"
    set_column(night.tsv, "sandbox", [none, none, "landlock ABI 7", "", none, "landlock ABI 7", none])
    line = (
        "3 rows were measured without the kernel sandbox (sandbox: none (the kernel has no Landlock); lines 2-3, 6): "
        "nothing kept train.py from the corpus or the checkpoints while it trained"
    )
    assert cli.main(["audit", "--tsv", str(night.tsv)]) == 0, "a note, not a flag: the rows still count"
    assert f"note: {line}" in capsys.readouterr().out.splitlines()
    assert f"note: {line}" in report_text(capsys, night.tsv).splitlines()
    set_column(night.tsv, "sandbox", [""] * 7)  # rows from before the column: nothing is said about them
    assert "sandbox" not in report_text(capsys, night.tsv)


def test_rows_without_provenance_are_flagged_and_never_count(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(results_text(NIGHT))
    text = report_text(capsys, path)
    assert "baseline  none yet" in text and "audit: 4 flagged" in text and "\ntip " not in text
    assert "no provenance" in text and "crash streak 1" in text


@pytest.mark.parametrize("content", ["", "\t".join(ledger.COLUMNS)])
def test_an_empty_or_header_only_file_gets_a_friendly_message_and_no_plots(tmp_path, capsys, content):
    path = tmp_path / "results.tsv"
    path.write_text(content + ("\n" if content else ""))
    assert cli.main(["--tsv", str(path)]) == 0
    assert "No experiments" in capsys.readouterr().out
    assert not (tmp_path / "progress.png").exists()
    report = report_json(capsys, path)
    assert report["totals"]["rows"] == 0 and report["standing"]["best"] is None and report["sigma"] is None


def test_the_report_draws_progress_and_memory_next_to_the_results(night, tmp_path, capsys):
    assert cli.main(["--tsv", str(night.tsv)]) == 0
    out = capsys.readouterr().out
    for name in ("progress.png", "memory.png"):
        assert is_real_png(night.tsv.parent / name) and str(night.tsv.parent / name) in out
    figures = tmp_path / "figures"
    assert cli.main(["--tsv", str(night.tsv), "--out", str(figures)]) == 0
    assert is_real_png(figures / "progress.png") and is_real_png(figures / "memory.png")


def _run(capsys, argv):
    assert cli.main(argv) == 0
    return capsys.readouterr().out


def write_metrics(path, commit, losses, step_seconds=0.5):
    rows = [
        dict(step=i, time=i * step_seconds, loss=v, lr=1e-3, tok_per_sec=1000, grad_norm=1.0)
        for i, v in enumerate(losses, 1)
    ]
    rows.append({"summary": {"commit": commit, "val_bpc": 1.4}})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json: a torn last line")
    return path


def test_curves_plot_one_run_or_overlay_several(tmp_path, capsys):
    decay = np.exp(-np.linspace(0, 3, 200))
    best = write_metrics(tmp_path / "best.jsonl", "abc1234", list(2.5 * decay + 1.0))
    last = write_metrics(tmp_path / "last.jsonl", "def5678", list(2.5 * decay + 1.1 + 0.05 * np.sin(np.arange(200))))
    one, both = tmp_path / "one.png", tmp_path / "both.png"
    assert cli.main(["curves", str(best), "--out", str(one)]) == 0
    assert cli.main(["curves", str(best), str(last), "--out", str(both)]) == 0
    assert is_real_png(one) and is_real_png(both)
    assert one.read_bytes() != both.read_bytes()
    steps, summary = plots.read_metrics(last)
    assert len(steps) == 200 and summary["commit"] == "def5678"


def test_curves_refuse_files_without_per_step_rows(tmp_path, capsys):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"summary": {"commit": "abc1234"}}\n')
    assert cli.main(["curves", str(empty), "--out", str(tmp_path / "c.png")]) != 0
    assert "per-step" in capsys.readouterr().err


def test_a_night_of_crashes_only_still_reports_and_plots(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(results_text([(f"c{i:06d}", 0.0, 0.0, "crash", f"try {i} (crash: oom)") for i in range(3)]))
    assert cli.main(["--tsv", str(path)]) == 0
    assert "crash streak 3" in capsys.readouterr().out
    assert is_real_png(tmp_path / "progress.png") and is_real_png(tmp_path / "memory.png")
    assert report_json(capsys, path)["standing"]["best"] is None


def test_a_crash_reason_keeps_its_own_closing_parentheses():
    from labbook import report

    rows = [
        ledger.Row(1, "c1", 0.0, 0.0, "crash", "muon lr x2 (crash: interrupted (SIGTERM))", {}, "experiment"),
        ledger.Row(
            2,
            "c2",
            0.0,
            0.0,
            "crash",
            "dim 4096 (crash: out of memory (peak 7,900 MB, 85.1M parameters))",
            {},
            "experiment",
        ),
    ]
    assert [(c["description"], c["reason"]) for c in report.crashes(rows)] == [
        ("muon lr x2", "interrupted (SIGTERM)"),
        ("dim 4096", "out of memory (peak 7,900 MB, 85.1M parameters)"),
    ]


def test_one_run_reads_as_one_run_the_baseline_itself_and_setup_incomplete(tmp_path, capsys):
    lab = write_night(tmp_path / "lab", RULE_NIGHT[:3])  # the baseline and two replicates
    text = report_text(capsys, lab.tsv)
    assert "mean of 3 runs  the baseline itself" in text and "-0.000000" not in text and "-0.00%" not in text
    assert "setup     incomplete:" in text and "lacks 2 replicates" in text and "AR_SEED=1 timeout" in text  # seeds 42
    assert "next      rerun below" not in text  # no bounds for experiments that would be refused
    one = write_night(tmp_path / "one", RULE_NIGHT[:1])
    assert "mean of 1 run (first: line 2)" in report_text(capsys, one.tsv)


def test_the_report_lists_the_runs_decide_and_record_refused(tmp_path, monkeypatch, capsys):
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    write_log(repo, head(repo), val_bpc=1.3)
    assert cli.main(["record", "--description", "baseline"]) == 0
    early = commit_change(repo, lr=0.003, message="lr 3e-3")
    write_log(repo, early, val_bpc=1.29)
    assert cli.main(["decide"]) == 2 and cli.main(["record", "--description", "lr 3e-3"]) == 2
    capsys.readouterr()
    text = report_text(capsys, repo / "results.tsv")
    section = text.split("refused by decide or record (never recorded as these runs)\n", 1)[1].split("\n\n")[0]
    assert section.count("\n") == 0 and f"{early:<8} decide+record: setup is not complete" in section


def test_the_report_shows_the_time_between_records_and_what_crashes_cost(tmp_path, capsys):
    values = night_rows(tmp_path / "lab", 12)
    tsv = tmp_path / "lab" / "results.tsv"
    tsv.write_text("\t".join(ledger.COLUMNS) + "\n" + "".join(ledger.format_row(v, ledger.COLUMNS) for v in values))
    rows = ledger.read_results(tsv).rows
    times = [report.recorded_at(r) for r in rows]
    minutes = [(b - a).total_seconds() / 60 for a, b in zip(times, times[1:])]
    crashed = [m for m, r in zip(minutes, rows[1:]) if r.status == "crash"]
    assert crashed and max(minutes) > 40  # the generated night has a crash and an idle gap
    text = report_text(capsys, tsv)
    median, longest, cost = (report.duration(m) for m in (statistics.median(minutes), max(minutes), sum(crashed)))
    assert f"{median} between records (median), the longest {longest} (ending at line" in text
    assert f"crashes cost {cost} ({len(crashed)} run" in text
    span = (times[-1] - times[0]).total_seconds() / 60
    assert f"time      {report.duration(span)} from the first record to the last ({times[0]:%a %H:%M:%S} to " in text


def test_gaps_under_a_minute_show_seconds_not_zero_minutes():
    assert [report.duration(m) for m in (29 / 60, 0.3, 16.3, 150)] == ["29 s", "18 s", "16.3 min", "2.5 h"]


def test_the_report_notebook_and_timeline_show_one_span_and_the_rate_from_it(tmp_path, capsys):
    from datetime import datetime, timedelta

    from labbook import morning

    values = night_rows(tmp_path / "lab", 12)
    first = datetime(2026, 12, 8, 0, 50, 46)
    for i, v in enumerate(values):  # a rehearsal's night: 20 s apart, 3 min 40 s in all
        v["recorded_at"] = (first + timedelta(seconds=20 * i)).isoformat()
    tsv = tmp_path / "lab" / "results.tsv"
    tsv.write_text("\t".join(ledger.COLUMNS) + "\n" + "".join(ledger.format_row(v, ledger.COLUMNS) for v in values))
    said = "3.7 min from the first record to the last (Tue 00:50:46 to 00:54:26)"
    text = report_text(capsys, tsv)
    assert f"time      {said}; 20 s between records (median), the longest 20 s" in text
    night = morning.load(tsv)
    assert f"12 runs over {said}:" in morning.overview_text(night)
    rate = 60 * 11 / (220 / 60)  # 11 records after the first, in 220 s
    assert morning.timeline_text(night).startswith(
        f"{rate:.1f} runs an hour (11 records after the first, over 3.7 min from the first record to the last)"
    )


def test_the_morning_check_names_the_run_it_scored_again_and_the_runs_behind_the_mean_it_did_not(night):
    rows = ledger.read_results(night.tsv).rows
    saved = next(r for r in rows if r.commit == night.commits["exp2"] and r.kind == "confirm")
    check = dict(commit=night.commits["exp2"], recorded=1.451, rescored=1.451, test=None, note="agrees")
    check.update(rescore.runs_checked(rows, night.commits["exp2"], {"run_id": saved.extra["run_id"]}))
    (line,) = rescore.rescore_lines([check])[2:]
    first, *others = night.lines["exp2"]
    others = [n for n in night.lines["exp2"] if n != saved.line]
    assert line.endswith(
        f"agrees  (line {saved.line}; not the commit's other runs behind its mean (lines "
        f"{', '.join(map(str, others))}: weights not kept))"
    )
    assert len(others) == 3 and first in others

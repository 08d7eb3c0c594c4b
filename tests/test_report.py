"""`python analysis.py` (text and --json), its plots, metrics curves and the integrity audit."""

import json

import numpy as np
import pytest
from fixtures_results import NIGHT, commit_change, head, is_real_png, make_repo, results_text

from labbook import cli, ledger, plots


def expected_noise_floor(rows):
    values = [rows[0][1]] + [r[1] for r in rows if r[4].startswith("noise:")]
    return float(np.std(values, ddof=1))


@pytest.fixture
def night(tmp_path):
    path = tmp_path / "results.tsv"
    path.write_text(results_text(NIGHT, provenance=True))
    return path


def report_json(capsys, tsv, *extra):
    assert cli.main(["--tsv", str(tsv), "--json", "--no-plots", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def report_text(capsys, tsv, *extra):
    assert cli.main(["--tsv", str(tsv), "--no-plots", *extra]) == 0
    return capsys.readouterr().out


def test_the_json_gives_the_agent_best_commit_noise_floor_threshold_and_streaks(night, capsys):
    report = report_json(capsys, night)
    floor = expected_noise_floor(NIGHT)
    assert report["best_commit"] == "exp0006" and report["best_val_bpc"] == pytest.approx(1.3999)
    assert report["noise_floor"] == pytest.approx(floor) and report["noise_replicates"] == 3
    assert report["keep_threshold"] == pytest.approx(2 * floor)
    assert report["experiments_since_improvement"] == 3  # exp0007, exp0008, exp0009
    assert report["crash_streak"] == 2
    assert [m["commit"] for m in report["near_misses"]] == ["exp0004"]
    assert report["near_misses"][0]["margin"] == pytest.approx(1.4505 - 1.45)
    assert report["totals"] == dict(rows=13, experiments=10, noise_runs=3, keep=4, discard=6, crash=3)
    assert report["keep_rate"] == pytest.approx(4 / 10)
    assert report["baseline"]["commit"] == "base000"
    assert report["improvement"] == pytest.approx(1.5 - 1.3999)


def test_kept_rows_carry_deltas_and_the_top_improvements_are_ranked(night, capsys):
    report = report_json(capsys, night)
    assert [k["commit"] for k in report["kept"]] == ["base000", "exp0002", "exp0005", "exp0006"]
    assert [k["delta"] for k in report["kept"]] == [None, *map(pytest.approx, [-0.05, -0.05, -0.0001])]
    assert report["kept"][-1]["vs_baseline"] == pytest.approx(1.3999 - 1.5)
    ranked = [k["delta"] for k in report["top_improvements"]]
    assert ranked == sorted(ranked) and report["top_improvements"][-1]["commit"] == "exp0006"


def test_the_text_report_shows_totals_kept_list_noise_floor_and_threshold(night, capsys):
    text = report_text(capsys, night)
    floor = expected_noise_floor(NIGHT)
    assert "13 rows = 10 experiments + 3 noise runs" in text and "keep rate 40.0%" in text
    assert "baseline  base000" in text and "best      exp0006  1.399900" in text
    assert f"noise floor {floor:.6f}" in text and f"keep threshold {2 * floor:.6f}" in text
    kept = text[text.index("kept, in order") : text.index("top improvements")]
    assert all(commit in kept for commit in ("base000", "exp0002", "exp0005", "exp0006"))
    assert f"{-0.05:+.6f}" in kept and "exp0001" not in kept
    assert "top improvements" in text and "near misses" in text and "crash streak 2" in text


def test_the_noise_floor_is_unknown_with_fewer_than_two_replicates(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(results_text([r for r in NIGHT if r[0] != "nse0002" and r[0] != "nse0003"]))
    report = report_json(capsys, path)
    assert report["noise_floor"] is None and report["keep_threshold"] is None and report["noise_replicates"] == 1
    assert "noise floor unknown" in report_text(capsys, path)


def test_rows_with_and_without_provenance_columns_report_the_same_numbers(tmp_path, capsys):
    plain, rich = tmp_path / "plain.tsv", tmp_path / "rich.tsv"
    plain.write_text(results_text(NIGHT))
    rich.write_text(results_text(NIGHT, provenance=True))
    a, b = report_json(capsys, plain), report_json(capsys, rich)
    for key in ("best_commit", "noise_floor", "keep_threshold", "totals", "crash_streak", "keep_rate"):
        assert a[key] == b[key]
    assert [m["line"] for m in a["near_misses"]] == [m["line"] for m in b["near_misses"]]
    assert "fingerprint" in b["best"] and "fingerprint" not in a["best"]


@pytest.mark.parametrize("content", ["", "\t".join(ledger.COLUMNS)])
def test_an_empty_or_header_only_file_gets_a_friendly_message_and_no_plots(tmp_path, capsys, content):
    path = tmp_path / "results.tsv"
    path.write_text(content + ("\n" if content else ""))
    assert cli.main(["--tsv", str(path)]) == 0
    assert "No experiments" in capsys.readouterr().out
    assert not (tmp_path / "progress.png").exists()
    report = report_json(capsys, path)
    assert report["totals"]["rows"] == 0 and report["best_commit"] is None and report["noise_floor"] is None


def test_the_report_draws_progress_and_memory_next_to_the_results(night, capsys):
    assert cli.main(["--tsv", str(night)]) == 0
    out = capsys.readouterr().out
    for name in ("progress.png", "memory.png"):
        assert is_real_png(night.parent / name) and str(night.parent / name) in out


def test_plots_go_to_the_out_directory_when_asked(night, tmp_path, capsys):
    out_dir = tmp_path / "figures"
    report = json.loads(_run(capsys, ["--tsv", str(night), "--json", "--out", str(out_dir)]))
    assert sorted(report["plots"]) == [str(out_dir / "memory.png"), str(out_dir / "progress.png")]
    assert all(is_real_png(p) for p in report["plots"])
    assert not (night.parent / "progress.png").exists()


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


def test_the_audit_flags_a_different_fingerprint(tmp_path, capsys):
    rows = [(*r, "f1f2f3f4f5f6") for r in NIGHT[:6]]
    rows[4] = (*NIGHT[4], "0badf00d0bad")
    path = tmp_path / "results.tsv"
    path.write_text(results_text(rows, provenance=True))
    assert cli.main(["audit", "--tsv", str(path)]) == 1
    text = capsys.readouterr().out
    assert "exp0001: not comparable" in text and "0badf00d0bad" in text
    report = report_json(capsys, path)
    assert [f["commit"] for f in report["audit"]["not_comparable"]] == ["exp0001"]


def test_the_audit_compares_fixed_regions_in_git_when_rows_have_no_fingerprint(tmp_path, capsys):
    repo = make_repo(tmp_path / "repo")
    base = head(repo)
    editable = commit_change(repo, lr=0.002)
    fixed = commit_change(repo, eval_bytes=1024, message="shrink the evaluation")
    path = repo / "results.tsv"
    rows = [(base, 1.5, 2.0, "keep", "baseline"), (editable, 1.4, 2.0, "keep", "lr 2e-3")]
    path.write_text(
        results_text(rows + [(fixed, 1.3, 2.0, "discard", "eval"), ("deadbee", 1.6, 2.0, "discard", "gone")])
    )
    assert cli.main(["audit", "--tsv", str(path)]) == 1
    assert f"{fixed}: not comparable" in capsys.readouterr().out
    found = report_json(capsys, path)["audit"]
    assert [f["commit"] for f in found["not_comparable"]] == [fixed]
    assert [f["commit"] for f in found["unverifiable"]] == ["deadbee"]
    path.write_text(results_text(rows))
    assert cli.main(["audit", "--tsv", str(path)]) == 0


def test_the_audit_flags_keeps_whose_gain_is_below_the_keep_threshold(night, capsys):
    assert cli.main(["audit", "--tsv", str(night)]) == 1
    capsys.readouterr()
    report = report_json(capsys, night)
    assert [f["commit"] for f in report["audit"]["small_gains"]] == ["exp0006"]
    assert report["audit"]["small_gains"][0]["gain"] == pytest.approx(0.0001)
    assert "kept with a gain of +0.000100" in report_text(capsys, night)


def test_a_night_of_crashes_only_still_reports_and_plots(tmp_path, capsys):
    path = tmp_path / "results.tsv"
    path.write_text(results_text([r for r in NIGHT if r[3] == "crash"]))
    assert cli.main(["--tsv", str(path)]) == 0
    assert "crash streak 3" in capsys.readouterr().out
    assert is_real_png(tmp_path / "progress.png") and is_real_png(tmp_path / "memory.png")
    assert report_json(capsys, path)["best_commit"] is None

"""The plots that show the night (labbook/plots.py), checked on generated 12- and 100-row nights
through the data each plot draws: every non-crash run is a point (on the axes or marked
off-scale), crashes are marked, the steps and labels come from the keep rule, ticks are integers,
and the loss curve ends at the real final loss. `curves` refuses bad inputs with one error line."""

import json
import statistics
import subprocess
import sys
from datetime import timedelta

import pytest
from fixtures_results import ANALYSIS, is_real_png
from nights import night_rows, write_night

from labbook import cli, keeprule, ledger, morning, outcomes, plots


@pytest.fixture(scope="module", params=[12, 100])
def night(request, tmp_path_factory):
    directory = tmp_path_factory.mktemp(f"night{request.param}")
    write_night(directory, request.param, seed=request.param)
    return morning.load(directory / "results.tsv")


def test_the_generated_night_has_every_kind_of_row(night):
    kinds = {(night.kinds[r.line], r.status) for r in night.rows}
    assert {"baseline", "replicate", "experiment", "simplification", "confirm"} <= {k for k, _ in kinds}
    assert {"keep", "discard", "crash"} <= {s for _, s in kinds}
    assert any("weights_edited" in " ".join(why) for why in night.flagged.values())


def test_every_non_crash_row_is_a_point_on_the_axes_or_marked_off_scale(night):
    data = plots.progress_data(night.rows, night.flagged)
    lo, hi = data["ylim"]
    measured = [r.line for r in night.rows if r.measured]
    assert sorted(p["line"] for p in data["points"]) == sorted(measured)
    assert len(data["crashes"]) == sum(not r.measured for r in night.rows)
    for p in data["points"]:
        assert lo <= p["shown"] <= hi
        assert p["offscale"] == (not lo <= p["y"] <= hi)
    assert hi - lo > 0.004  # never a 0.001-wide range under an offset label
    flagged = [p for p in data["points"] if p["flagged"]]
    assert flagged and not any(p["kept"] for p in flagged)


def test_a_wild_run_is_drawn_at_the_edge_with_its_value(night):
    wild = ledger.Row(9999, "wild000", night.rows[-1].val_bpc + 3.0, 20.0, "discard", "lr 1", {}, "experiment")
    data = plots.progress_data([*night.rows, wild], night.flagged)
    point = next(p for p in data["points"] if p["line"] == 9999)
    assert point["offscale"] and point["shown"] == data["ylim"][1] and point["y"] == wild.val_bpc


def test_the_running_best_is_the_best_kept_mean_so_far_and_every_kept_commit_is_labelled(night):
    data = plots.progress_data(night.rows, night.flagged)
    for x, value in data["best"]:  # from the runs up to x only: a later replicate never moves it earlier
        seen = [r for r in night.rows[:x] if r.line not in night.flagged]
        kept = {r.commit for r in seen if r.status == "keep"}
        means = [statistics.fmean(keeprule.commit_values(seen, c)) for c in kept if keeprule.commit_values(seen, c)]
        assert value == pytest.approx(min(means))
    assert data["best"][-1][1] == pytest.approx(outcomes.best_commit(night.sound)["mean"])
    kept = {e["commit"] for e in keeprule.history(night.sound) if e["status"] == "keep"}
    assert len(data["labels"]) == len(kept)
    assert data["reference"][-1][1] == pytest.approx(outcomes.standing(night.sound)["tip"]["mean"])


def test_memory_has_every_row_with_its_commit(night):
    data = plots.memory_data(night.rows, night.flagged)
    assert [(d["x"], d["commit"]) for d in data] == [(i, r.commit) for i, r in enumerate(night.rows, start=1)]


def test_the_plots_are_written(night, tmp_path):
    results = ledger.read_results(night.tsv)
    paths = plots.write_plots(results, tmp_path, night.flagged)
    paths.append(plots.plot_timeline(morning.timeline(night), tmp_path / "timeline.png"))
    assert [p.name for p in paths] == ["progress.png", "memory.png", "timeline.png"]
    assert all(is_real_png(p) for p in paths)


@pytest.mark.parametrize("n", [1, 3, 12, 100])
def test_ticks_are_integers(n):
    fig = plots.new_figure()
    ax = fig.add_subplot()
    ax.plot(range(1, n + 1), range(n))
    plots.integer_ticks(ax, n)
    fig.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks)


def test_the_smoothed_curve_is_not_dragged_to_a_noisy_last_step_which_is_marked_apart(tmp_path):
    losses = [2.45 - 0.001 * i for i in range(99)] + [2.63]  # a trend near 2.35, then one noisy last step
    for window in (None, 3, 5, 21):
        curve = plots.smoothed(losses, window)
        assert curve[-1] < 2.45 and abs(curve[50] - losses[50]) < 1e-9  # a straight trend is kept as it is
    metrics = tmp_path / "m.jsonl"
    metrics.write_text("".join(json.dumps(dict(step=i, time=i, loss=v)) + "\n" for i, v in enumerate(losses)))
    (_, _, raw, smooth), *_ = plots.curve_data([metrics])[0]
    assert raw[-1] == 2.63 and smooth[-1] < 2.45
    out = plots.plot_curves([metrics], tmp_path / "c.png", labels=["baseline"])
    assert is_real_png(out)
    alt = plots.png_alt(out)  # the legend a person reads: the line's end and the raw dot, apart
    assert "last step's raw loss 2.6300" in alt and f"smoothed, ends at {smooth[-1]:.4f}" in alt


def test_the_notebook_finds_the_best_and_baseline_curves_or_says_they_are_missing(night):
    found, missing = morning.curve_files(night)
    assert not found and len(missing) == 2 and all("metrics.jsonl" in m for m in missing)


def test_a_kept_change_is_summarized_from_its_diff(night):
    changes = morning.kept_changes(night)
    assert changes and changes[0]["diff"] == "LR 0.001 → 0.003"


@pytest.mark.parametrize("case", ["missing", "directory", "no_steps", "unwritable_out"])
def test_curves_refuses_bad_inputs_with_one_error_line(case, tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps(dict(step=1, time=0.5, loss=2.0)) + "\n")
    (tmp_path / "empty.jsonl").write_text('{"summary": {"commit": "abc"}}\n')
    args = {
        "missing": [str(tmp_path / "missing.jsonl")],
        "directory": [str(tmp_path)],
        "no_steps": [str(tmp_path / "empty.jsonl")],
        "unwritable_out": [str(good), "--out", str(tmp_path / "no" / "such" / "dir.png")],
    }[case]
    assert cli.main(["curves", *args]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("warning:")]
    assert len(err) == 1 and err[0].startswith("error: ")


def test_the_command_line_says_one_error_line_for_a_missing_metrics_file(tmp_path):
    proc = subprocess.run([sys.executable, str(ANALYSIS), "curves", "missing.jsonl"], cwd=tmp_path,
                          capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: cannot read missing.jsonl: No such file or directory"
    ]


def first_rows(tmp_path, n):
    """The first `n` rows of a generated night (one run, setup only, ...) in a results.tsv of their own."""
    values = night_rows(tmp_path / "lab", 12)[:n]
    tsv = tmp_path / "lab" / "results.tsv"
    tsv.write_text("\t".join(ledger.COLUMNS) + "\n" + "".join(ledger.format_row(v, ledger.COLUMNS) for v in values))
    return morning.load(tsv)


def drawn(night):
    results = ledger.read_results(night.tsv)
    fig = plots.progress_figure(results, night.flagged)
    fig.canvas.draw()
    return fig, plots.progress_data(night.rows, night.flagged)


def test_crashes_are_marked_in_a_strip_below_the_values_never_among_them(night):
    fig, data = drawn(night)
    values, strip = fig.axes[:2]
    assert strip.get_ylabel() == "crash" and not strip.get_yticks().size
    assert sorted(x for c in strip.collections for x, _ in c.get_offsets()) == sorted(data["crashes"])
    assert not {x for c in values.collections for x, _ in c.get_offsets()} & set(data["crashes"])


def test_the_title_counts_the_baseline_improvements_and_simplifications_apart(night, tmp_path):
    fig, _ = drawn(first_rows(tmp_path, 1))
    assert fig.axes[0].get_title().startswith("1 run: the baseline, 0 kept improvements and 0 kept simplifications; ")
    assert len(fig.axes) == 1  # no crash, no strip
    fig, _ = drawn(night)
    improvements, simplifications = len(outcomes.improvements(night.sound)), len(outcomes.simplifications(night.sound))
    assert simplifications >= 1 or len(night.rows) < 100  # the long night keeps one
    assert f": the baseline, {plots.plural(improvements, 'kept improvement')} and " in fig.axes[0].get_title()
    assert f" and {plots.plural(simplifications, 'kept simplification')}; " in fig.axes[0].get_title()


@pytest.mark.parametrize("n", [1, 12])
def test_the_value_axis_follows_the_data_one_run_in_its_middle(n, tmp_path):
    night = first_rows(tmp_path, n)
    fig, data = drawn(night)
    lo, hi = fig.axes[0].get_ylim()
    values = [p["y"] for p in data["points"] if not p["offscale"]]
    assert lo < min(values) and max(values) < hi
    assert min(values) - lo < 0.1 * (hi - lo) or n == 1 and abs((lo + hi) / 2 - values[0]) < 1e-9
    assert hi - max(values) < 0.1 * (hi - lo) or n == 1
    assert hi - lo < 0.05  # a CPU rehearsal's values under 2.33 never get an axis to 3.5


def test_kept_labels_are_whole_up_to_40_characters_and_clear_of_the_legend(night, tmp_path):
    fig, data = drawn(night)
    long = "warmdown 50% and a longer description of it"
    assert plots.shorten(long, plots.LABEL_CHARS) == long[:39] + "…"
    described = {r.description for r in night.rows}
    assert all(lab["text"] in described for lab in data["labels"])  # every label whole in these nights
    renderer = fig.canvas.get_renderer()
    legend = fig.axes[0].get_legend().get_window_extent(renderer)
    texts = [t for t in fig.axes[0].texts if t.get_text() in {lab["text"] for lab in data["labels"]}]
    assert texts and not any(t.get_window_extent(renderer).overlaps(legend) for t in texts)
    path = plots.plot_progress(ledger.read_results(night.tsv), tmp_path / "p.png", night.flagged)
    assert plots.png_alt(path).startswith(fig.axes[0].get_title() + ". y: val_bpc")


def cpu_night(tmp_path, n=12, seconds_apart=42):
    """The first `n` rows of a generated night as a CPU rehearsal recorded them: device cpu, 50 steps,
    a run every `seconds_apart` seconds, and the journal holding each run's unrounded peak memory."""
    values = night_rows(tmp_path / "lab", 12)[:n]
    start = morning.when(ledger.parse_row(ledger.format_row(values[0], ledger.COLUMNS).rstrip("\n"), ledger.COLUMNS, 2))
    journal = tmp_path / "lab" / ".git" / "autoresearch" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    entries = []
    for i, v in enumerate(values):
        v.update(device="cpu", gpu="", budget="50steps", memory_gb="0.4" if v["status"] != "crash" else "0.0",
                 recorded_at=(start + timedelta(seconds=seconds_apart * i)).isoformat(timespec="seconds"))  # fmt: skip
        entries.append(json.dumps(dict(run_id=v["run_id"], summary=dict(peak_vram_mb=f"{431.0 + 7 * i:.1f}"))))
    journal.write_text("\n".join(entries) + "\n")
    tsv = tmp_path / "lab" / "results.tsv"
    tsv.write_text("\t".join(ledger.COLUMNS) + "\n" + "".join(ledger.format_row(v, ledger.COLUMNS) for v in values))
    return morning.load(tsv)


def test_memory_on_a_cpu_says_resident_memory_in_unrounded_mb_and_colours_runs_by_their_commits_fate(tmp_path):
    night = cpu_night(tmp_path)
    results = ledger.read_results(night.tsv)
    fig = plots.memory_figure(results, night.flagged)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "peak resident memory (MB)" and "trainer process" in ax.get_title()
    assert "CPU" in ax.get_title() and "rounded" not in ax.get_title()
    heights = sorted(round(b.get_height(), 1) for b in ax.patches if b.get_height() > 0)
    assert heights[:2] == [431.0, 438.0]  # the journal's values, no 0.1 GB staircase
    data = plots.memory_data(results.rows, night.flagged)
    fate = outcomes.commit_outcomes(night.sound)
    provisional = [
        d for d in data if d["kind"] == "experiment" and d["status"] != "keep" and fate.get(d["commit"]) == "keep"
    ]
    assert provisional and all(d["outcome"] == "keep" for d in provisional)  # a first run kept later is kept


def test_a_48_minute_night_has_5_minute_bins_and_replicates_are_not_counted_as_keeps(tmp_path):
    night = cpu_night(tmp_path, n=12, seconds_apart=240)  # 12 runs over 44 minutes
    line = morning.timeline(night)
    assert line["minutes"] == 5 and len(line["bins"]) <= 10
    totals = {name: sum(c[name] for _, c in line["bins"]) for name in morning.TIMELINE_CLASSES}
    # the kept ideas the report lists (improvements and simplifications): the baseline is no idea
    kept = [e for e in keeprule.history(night.sound) if e["status"] == "keep" and e["kind"] != "baseline"]
    assert kept and totals["new idea, kept"] == len(kept)
    assert totals["baseline, replicate or confirmation"] == sum(
        night.kinds[r.line] in ("baseline", "replicate", "confirm") for r in night.rows
    )
    fig = plots.timeline_figure(line)
    assert fig.axes[0].get_title() == "the night in 5-minute bins: 12 runs"
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"new idea, kept ({len(kept)})" in legend and not any("replicates included" in t for t in legend)
    assert "runs an hour (11 records after the first, over 44.0 min from the first record to the last)" in (
        morning.timeline_text(night)
    )


def test_curves_of_step_counted_runs_use_steps_and_the_zoom_keeps_the_slow_runs_start(tmp_path):
    def metrics(name, seconds_per_step, losses):
        path = tmp_path / f"{name}.jsonl"
        rows = [dict(step=s, time=s * seconds_per_step, loss=v) for s, v in enumerate(losses, start=1)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows) + json.dumps({"summary": {"budget": "50steps"}}))
        return path

    baseline = metrics("baseline", 5.4, [4.0 - 0.03 * s for s in range(50)])  # 268 s under load
    best = metrics("best", 0.08, [3.9 - 0.035 * s for s in range(50)])  # 4 s
    out = plots.plot_curves([baseline, best], tmp_path / "curves.png", labels=["baseline", "best"])
    assert "x: training step (AR_STEPS: a step-counted budget)." in plots.png_alt(out)
    curves, _ = plots.curve_data([baseline, best], x="step")
    assert all(xs[-1] == 50 for _, xs, _, _ in curves)
    lo, hi, x0 = plots.curve_ylim(curves)
    assert x0 == 5
    assert all(lo <= v <= hi for _, xs, _, smooth in curves for x, v in zip(xs, smooth) if x >= x0)

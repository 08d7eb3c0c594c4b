"""The morning notebook's helpers (analysis.py): what the night was, its tables, its timeline and
a one-line summary of each kept change's diff. Everything reads results.tsv and git; checkpoints
and metrics files are optional, and a missing one is said, never raised.

The numbers come from the keep rule (labbook/keeprule.py: kinds, history; labbook/outcomes.py: standing,
near-misses, the best commit) and
the audit (labbook/audit.py: flagged rows, through the report), never recomputed here."""

import os
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from labbook import keeprule, outcomes
from labbook.audit import unsandboxed_note
from labbook.base import checkpoints_dir, git, results_repo
from labbook.ledger import read_results
from labbook.report import gaps_text, plural, rate_text, runs, span_text, summarize
from labbook.report import recorded_at as when
from labbook.rescore import RescoreError, harness_text, rescore_subprocess

IDLE_MINUTES = 15  # a gap between two recorded runs longer than a run and this: the agent was idle
RUN_MINUTES = 6  # about one run: 5 minutes of training, start-up and the re-score


@dataclass
class Night:
    tsv: Path
    repo: Path
    rows: list  # every readable row
    kinds: dict  # line -> kind
    flagged: dict  # line -> [reasons] (the report's audit): never a reference, a keep or the best
    report: dict = field(default_factory=dict)

    @property
    def sound(self):
        return [r for r in self.rows if r.line not in self.flagged]


def load(tsv="results.tsv"):
    tsv = Path(tsv)
    results = read_results(tsv)
    repo = results_repo(tsv)
    report = summarize(results, repo) if results.rows else {}
    flagged = {f["line"]: f["reasons"] for f in report.get("flagged_rows", [])}
    kinds = {row.line: kind for row, kind in keeprule.kinds(results.rows)}
    return Night(tsv, repo, results.rows, kinds, flagged, report)


def short(text, width=40):
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


def table(rows, columns):
    """A plain-text table of dicts; `columns` are (key, title) pairs. Floats get 6 decimals."""
    if not rows:
        return "(none)"

    def cell(value):
        if value is None:
            return "-"
        return f"{value:+.6f}" if isinstance(value, float) and abs(value) < 0.5 else (
            f"{value:.6f}" if isinstance(value, float) else str(value))  # fmt: skip

    cells = [[cell(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max(len(t), *(len(c[i]) for c in cells)) for i, (_, t) in enumerate(columns)]
    lines = ["  ".join(t.ljust(w) for (_, t), w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in cells]
    return "\n".join(lines)


# What the night was


def overview(night):
    rows = night.rows
    first_runs = [r for r in rows if night.kinds[r.line] in keeprule.FIRST_KINDS]
    history = keeprule.history(night.sound)
    kept = [e for e in history if e["status"] == "keep" and e["kind"] != "baseline"]
    return dict(
        rows=len(rows), experiments=len(first_runs), keeps=len(kept),
        # the experiments' crashes: an environment crash is no experiment's (the report's header counts it apart)
        crashes=sum(r.status == "crash" and night.kinds[r.line] != keeprule.ENVIRONMENT for r in rows),
        environment=sum(night.kinds[r.line] == keeprule.ENVIRONMENT for r in rows),
        replicates=sum(night.kinds[r.line] == "replicate" for r in rows),
        confirmations=sum(night.kinds[r.line] == "confirm" for r in rows), flagged=len(night.flagged),
    )  # fmt: skip


def overview_text(night):
    if not night.rows:
        return f"No rows in {night.tsv}: nothing ran yet (or the file is elsewhere: python analysis.py --tsv PATH)."
    o = overview(night)
    t = night.report.get("time")  # the report's one span: first record to last
    span = f"over {span_text(t)}" if t else "(no times)"
    text = (
        f"{runs(o['rows'])} {span}: {plural(o['experiments'], 'experiment')}, {o['keeps']} kept, {o['crashes']} crashed"
        + (
            f"; {plural(o['environment'], 'environment crash', 'environment crashes')} besides (the run's "
            "environment, not an idea: run again)"
            if o["environment"]
            else ""
        )
        + "; "
        f"{o['replicates']} replicates, {o['confirmations']} confirmation runs; {o['flagged']} rows flagged by the "
        "audit (they never count)."
    )
    if problem := night.report.get("setup_incomplete"):
        text += "\nSetup is incomplete: " + problem.removeprefix("setup is not complete: ")
    if unsandboxed := unsandboxed_note(night.rows):
        text += f"\n{unsandboxed}."
    return text


def standing_text(night):
    s = outcomes.standing(night.sound)
    if not s["tip"]:
        return "Nothing kept yet: no baseline."
    base = next((e for e in keeprule.history(night.sound) if e["kind"] == "baseline"), None)
    lines = []
    for name in ("best", "tip"):
        e = s[name]
        vs = f", {e['mean'] - base['mean']:+.6f} vs the baseline {base['mean']:.6f}" if base else ""
        if base and e["commit"] == base["commit"]:
            vs = ": the baseline itself"
        lines.append(f"{name:<4} {e['commit']}  mean val_bpc {e['mean']:.6f} of {runs(e['runs'])}{vs}")
    if s["sigma"] is not None:
        lines.append(f"sigma {s['sigma']:.6f} ({s['df']} df), pooled from the unselected runs nearest the tip")
    return "\n".join(lines)


# Tables: keeps with their diffs, simplifications, crashes, near-misses, confirmations


ASSIGN = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*[:=]\s*(.+?)\s*(#.*)?$")


def diff_summary(repo, commit, parent=None):
    """train.py's change from `parent` (default commit^) to `commit`, condensed: `NAME a -> b`
    for changed assignments, then a count of the other changed lines."""
    parent = parent or f"{commit}^"
    diff = git(["diff", "--unified=0", parent, commit, "--", "train.py"], repo)
    if diff is None:
        return f"(git does not know {commit} or {parent} here)"
    removed, added, other = {}, {}, 0
    for line in diff.splitlines():
        if line.startswith(("+++", "---", "@@", "diff ", "index ")):
            continue
        if line[:1] in "+-" and line[1:].strip() and not line[1:].strip().startswith("#"):
            match = ASSIGN.match(line[1:])
            if match and "(" not in match.group(1):
                (added if line[0] == "+" else removed)[match.group(1)] = short(match.group(2).rstrip(","), 24)
            else:
                other += 1
    parts = [f"{k} {removed.get(k, '∅')} → {added.get(k, '∅')}" for k in dict.fromkeys([*removed, *added])]
    parts = [p for p in parts if removed.get(p.split()[0]) != added.get(p.split()[0])]
    if other:
        parts.append(f"{other} other line{'s' * (other != 1)}")
    return "; ".join(parts) or "no change to train.py"


def kept_changes(night):
    """Kept experiments in the order they were kept, with delta, runs and the diff's summary."""
    out = []
    for e in keeprule.history(night.sound):
        if e["status"] == "keep" and e["kind"] in keeprule.FIRST_KINDS:
            diff = diff_summary(night.repo, e["commit"], e["reference_commit"])
            out.append({**e, "description": short(e["description"]), "diff": diff})
    return out


def kept_table(night, kind="experiment"):
    rows = [e for e in kept_changes(night) if e["kind"] == kind]
    columns = [
        ("commit", "commit"),
        ("decision_mean", "mean at decision"),
        ("decision_runs", "runs at decision"),
        ("delta", "delta (same runs)"),
        ("mean", "mean now"),
        ("runs", "runs now"),
    ]
    return table(rows, columns + [("description", "description"), ("diff", "train.py change")])


def crash_reason(row):
    match = re.search(r"\(crash: (.*)\)\s*$", row.description)
    return match.group(1) if match else "no reason recorded (see the run's log)"


def crashes_table(night):
    rows = [dict(line=r.line, commit=r.commit, description=short(re.sub(r"\s*\(crash: .*\)\s*$", "", r.description)),
                 reason=short(crash_reason(r), 70)) for r in night.rows if r.status == "crash"]  # fmt: skip
    return table(rows, [("line", "line"), ("commit", "commit"), ("description", "tried"), ("reason", "reason")])


def refusals_table(night):
    """The runs `decide` or `record` refused (refusals.log): never rows, so never in the tables above."""
    rows = [dict(when=r["when"][11:16], commit=r["commit"], command="+".join(r["commands"]),
                 message=short(r["message"], 100)) for r in night.report.get("refused", [])]  # fmt: skip
    return table(rows, [("when", "at"), ("commit", "commit"), ("command", "refused by"), ("message", "why")])


def near_misses_table(night):
    rows = [{**e, "description": short(e["description"])} for e in outcomes.near_misses(night.sound)]
    return table(rows, [("commit", "commit"), ("decision_mean", "mean"), ("delta", "delta"), ("description", "tried")])


def confirmations_table(night):
    """Commits whose first run was provisional: the first run, the confirmation(s), the outcome."""
    out = []
    for e in keeprule.history(night.sound):
        runs = [r for r in night.sound if r.commit == e["commit"] and keeprule.measured(r)]
        confirms = [r for r in runs if night.kinds[r.line] == "confirm"]
        if confirms:
            out.append(dict(commit=e["commit"], first=runs[0].val_bpc,
                            confirm=", ".join(f"{r.val_bpc:.6f}" for r in confirms), delta=e["delta"],
                            outcome=e["status"], description=short(e["description"])))  # fmt: skip
    columns = [("commit", "commit"), ("first", "first run"), ("confirm", "confirmation"), ("delta", "delta of mean")]
    return table(out, columns + [("outcome", "outcome"), ("description", "tried")])


def flagged_table(night):
    by_line = {r.line: r for r in night.rows}
    rows = [
        dict(line=n, commit=by_line[n].commit, reasons=short("; ".join(why), 90)) for n, why in night.flagged.items()
    ]
    return table(rows, [("line", "line"), ("commit", "commit"), ("reasons", "why it does not count")])


# Val against test: only when the person asks (AR_TEST=1)


def test_requested():
    return os.environ.get("AR_TEST", "") == "1"


def checkpoint_run(night, commit, run_id=None):
    """The row of the run whose weights checkpoints/<commit>.pt holds: the one its summary's run_id
    names, else the commit's first kept run (record saves that one; a replicate never replaces it)."""
    rows = [r for r in night.sound if r.commit == commit and r.measured]
    by_id = next((r for r in rows if run_id and r.extra.get("run_id", "").strip() == run_id), None)
    return by_id or next((r for r in rows if r.status == "keep"), rows[0] if rows else None)


def test_gaps(night, compute=None):
    """Each kept commit's checkpoint run (its line) and that run's val_bpc and, when asked, the
    checkpoint's test_bpc (scored by the baseline's prepare.py with the checkpoint's own settings,
    never cached) and the gap between the two: both of the same weights. The commit's val mean over
    all its runs stands apart: one checkpoint's test score against several runs' mean would mix the
    runs' noise into the gap. A score whose device or data differ from the run's row is labelled
    not comparable."""
    compute = test_requested() if compute is None else compute
    base = next((e for e in keeprule.history(night.sound) if e["kind"] == "baseline"), None)
    out = []
    for e in keeprule.history(night.sound):
        if e["status"] != "keep" or e["mean"] is None:
            continue
        row = checkpoint_run(night, e["commit"])
        item = dict(commit=e["commit"], line=row.line, val=row.val_bpc, mean=e["mean"], test=None, gap=None,
                    note="not requested (AR_TEST=1)")  # fmt: skip
        checkpoint = checkpoints_dir(night.tsv) / f"{e['commit']}.pt"
        if compute and not checkpoint.is_file():
            item["note"] = f"no checkpoint {checkpoint.name}"
        elif compute:
            try:
                answer = rescore_subprocess(checkpoint, harness_text(base and base["commit"], night.repo), "test")
            except RescoreError as err:
                item["note"] = short(str(err), 70)
            else:
                saved = answer.get("summary", {})
                row = checkpoint_run(night, e["commit"], str(saved.get("run_id", "")).strip())
                item.update(line=row.line, val=row.val_bpc, test=answer["bpc"], gap=answer["bpc"] - row.val_bpc)
                item["note"] = "comparable"
                differ = [k for k in ("device", "data", "eval_bytes") if saved.get(k) and row.extra.get(k)
                          and str(saved[k]).strip() != row.extra[k].strip()]  # fmt: skip
                if differ:
                    item["note"] = "NOT comparable: " + ", ".join(f"{k} {saved[k]} vs {row.extra[k]}" for k in differ)
        out.append(item)
    return out


def test_table(night, compute=None):
    rows = test_gaps(night, compute)
    return table(rows, [("commit", "commit"), ("line", "checkpoint's run (line)"), ("val", "its val_bpc"),
                        ("test", "test_bpc"), ("gap", "test - its val"), ("mean", "val mean, all runs"),
                        ("note", "note")])  # fmt: skip


# The timeline


BIN_MINUTES = (5, 10, 15, 20, 30, 60, 120)  # the timeline's bins: the smallest giving at most MAX_BINS
MAX_BINS = 16
REPEAT = "baseline, replicate or confirmation"  # no new idea: the baseline measures the starting point
TIMELINE_CLASSES = ("new idea, kept", "new idea, not kept", REPEAT, "crash")


def bin_minutes(span_minutes):
    """The timeline's bin: the smallest of BIN_MINUTES that covers the night in MAX_BINS bars."""
    return next((m for m in BIN_MINUTES if span_minutes <= m * MAX_BINS), BIN_MINUTES[-1])


def timeline_class(row, kind, outcomes):
    """Which bar a run adds to: a crash, the baseline or a repeat of a commit (replicate,
    confirmation), or a new idea's first run by its commit's outcome (outcomes.commit_outcomes: a
    pending one is not kept). The baseline is kept but is no idea: counted as one, it would make the
    legend's kept ideas one more than the report's."""
    if row.status == "crash":
        return "crash"
    if kind not in keeprule.FIRST_KINDS:
        return REPEAT
    return "new idea, kept" if outcomes.get(row.commit) == "keep" else "new idea, not kept"


def timeline(night):
    """{"start", "minutes" (a bin), "runs": [(minutes since start, row)], "bins": [(bin index,
    {class: runs})], "gaps": [(from minutes, to minutes, minutes)]}; None without recorded times."""
    timed = [(when(r), r) for r in night.rows if when(r) is not None]
    if not timed:
        return None
    first = min(t for t, _ in timed)
    span = (max(t for t, _ in timed) - first).total_seconds() / 60
    minutes = bin_minutes(span + RUN_MINUTES)
    start = first.replace(second=0, microsecond=0) - timedelta(
        minutes=first.minute % minutes if minutes <= 60 else first.minute
    )
    runs = sorted(((t - start).total_seconds() / 60, r) for t, r in timed)
    fate = outcomes.commit_outcomes(night.sound)
    bins = [(b, dict.fromkeys(TIMELINE_CLASSES, 0)) for b in range(int(runs[-1][0] // minutes) + 1)]
    for at, row in runs:
        bins[int(at // minutes)][1][timeline_class(row, night.kinds[row.line], fate)] += 1
    gaps = [(a, b, round(b - a)) for (a, _), (b, _) in zip(runs, runs[1:]) if b - a > RUN_MINUTES + IDLE_MINUTES]
    return dict(start=start, minutes=minutes, runs=runs, bins=bins, gaps=gaps, span=span)


def timeline_text(night):
    t = timeline(night)
    if t is None:
        return "No recorded_at times in the rows: no timeline."
    gaps = ", ".join(f"{m} min from {t['start'] + timedelta(minutes=a):%H:%M}" for a, _, m in t["gaps"]) or "none"
    text = f"idle gaps over {IDLE_MINUTES + RUN_MINUTES} min: {gaps}"
    if wall := night.report.get("time"):  # the report's span and rate, so the views agree
        text = f"{rate_text(wall)}; {text}\n{gaps_text(wall)}"
    return text


# Loss curves: the best run against the baseline


def curve_files(night):
    """[(label, path)] of the baseline's and the best commit's saved metrics, and what is missing."""
    history = keeprule.history(night.sound)
    base = next((e for e in history if e["kind"] == "baseline"), None)
    best = outcomes.best_commit(night.sound)
    found, missing = [], []
    for label, e in (("baseline", base), ("best", best)):
        if e is None:
            missing.append(f"no {label} commit")
            continue
        path = checkpoints_dir(night.tsv) / f"{e['commit']}.metrics.jsonl"
        if path.is_file():
            found.append((f"{label} {e['commit']}", path))
        else:
            missing.append(f"no {path.relative_to(night.tsv.resolve().parent)} ({label})")
    unique = list(dict((p, (lab, p)) for lab, p in found).values())
    return unique, missing

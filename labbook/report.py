"""The report of a results file: the keep rule's numbers (labbook/keeprule.py, labbook/outcomes.py:
tip, reference, sigma, best, improvements, simplifications, near-misses) over the rows the audit
(labbook/audit.py) does not flag, the crashes with their reasons, the audit's findings, and the
report as text. The command line (labbook/cli.py) adds the plots."""

import json
import re
import statistics
from collections import Counter
from datetime import datetime
from pathlib import Path

from labbook import keeprule, outcomes
from labbook.audit import amended_note, audit, flag_rows
from labbook.base import Refusal, results_repo
from labbook.ledger import read_results
from labbook.refusals import read_refusals

TEST_SPLIT_NOTE = (
    "The test split is for the person reading the results in the morning, never for the agent's "
    "keep/discard decisions: those rest on val_bpc alone."
)


def crashes(rows):
    """Every crash row with the reason its description carries."""
    out = []
    for row in rows:
        if row.status == "crash":
            head, _, reason = row.description.partition(" (crash: ")
            out.append(
                {"line": row.line, "commit": row.commit, "description": head, "reason": reason.removesuffix(")")}
            )
    return out


def recorded_at(row):
    """When `record` wrote the row (its recorded_at column), or None."""
    try:
        return datetime.fromisoformat(row.extra.get("recorded_at", "").strip())
    except ValueError:
        return None


def duration(minutes):
    """Seconds below a minute (a rehearsal's records are seconds apart: "0 min" would hide them),
    minutes below an hour, hours above."""
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    return f"{minutes:.1f} min" if minutes < 60 else f"{minutes / 60:.1f} h"


def wall_times(rows):
    """Where the night's time went: the one span (first record to last) the report, the notebook and
    the timeline all show, the rate of runs from it, the minutes between each row's record and the
    one before it (a run's wall time with the agent's turn around it), their median, the longest,
    and the minutes that ended in crashes. None without two recorded times."""
    timed = sorted(((t, r) for r in rows if (t := recorded_at(r)) is not None), key=lambda x: x[0])
    if len(timed) < 2:
        return None
    gaps = [((b - a).total_seconds() / 60, row) for (a, _), (b, row) in zip(timed, timed[1:])]
    longest = max(gaps, key=lambda g: g[0])
    crashed = [m for m, row in gaps if row.status == "crash"]
    span = (timed[-1][0] - timed[0][0]).total_seconds() / 60
    return {
        "first": timed[0][0],
        "last": timed[-1][0],
        "span_minutes": span,
        "hours": span / 60,
        "records": len(timed),
        # the records after the first, over the span: each ends a run begun inside it
        "runs_per_hour": 60 * (len(timed) - 1) / span if span > 0 else None,
        "median_minutes": statistics.median(m for m, _ in gaps),
        "longest_minutes": longest[0],
        "longest_line": longest[1].line,
        "crash_minutes": sum(crashed),
        "crash_runs": len(crashed),
    }


def span_text(t):
    """The night's one span, as every view shows it."""
    clock = "%a %H:%M:%S" if t["last"].date() != t["first"].date() else "%H:%M:%S"
    return f"{duration(t['span_minutes'])} from the first record to the last ({t['first']:%a %H:%M:%S} to {t['last']:{clock}})"


def rate_text(t):
    """Runs an hour, and how it is measured."""
    if t["runs_per_hour"] is None:
        return "no rate (every record at the same time)"
    return (
        f"{t['runs_per_hour']:.1f} runs an hour ({t['records'] - 1} records after the first, over "
        f"{duration(t['span_minutes'])} from the first record to the last)"
    )


def gaps_text(t):
    return (
        f"{duration(t['median_minutes'])} between records (median), the longest {duration(t['longest_minutes'])} "
        f"(ending at line {t['longest_line']}); "
        + (
            f"crashes cost {duration(t['crash_minutes'])} ({runs(t['crash_runs'])}, each from the record before "
            "it to its own: the agent's turn included)"
            if t["crash_runs"]
            else "no crashes"
        )
    )


def summarize(results, repo=None):
    """Everything the report shows, as plain data. The numbers are the keep rule's over the
    comparable rows; flagged rows count in the totals only."""
    rows = results.rows
    repo = results_repo(results.path) if repo is None else repo
    baseline, flagged = flag_rows(rows, repo)
    sound = [r for r in rows if r.line not in flagged]
    tagged = keeprule.kinds(sound)
    counts = Counter(outcomes.run_outcomes(rows))  # a first run sent to a confirmation counts with its commit
    replicates = sum(k == "replicate" for _, k in tagged)
    experiments = [r for r, k in tagged if k in keeprule.FIRST_KINDS]
    now = outcomes.standing(sound)
    best = now["best"]
    base_values = keeprule.commit_values(sound, baseline.commit) if baseline else []
    base_mean = statistics.fmean(base_values) if base_values else None  # what setup's verdicts used
    improvement = base_mean - best["mean"] if best and base_mean is not None else None
    tip = now["tip"]["commit"] if now["tip"] else None
    return {
        "file": str(results.path),
        "totals": {
            "rows": len(rows),
            "experiments": len(experiments),
            "replicates": replicates,
            "baselines": sum(k == "baseline" for _, k in tagged),
            "confirmations": sum(k == "confirm" for _, k in tagged),
            "environment": sum(k == keeprule.ENVIRONMENT for _, k in tagged),
            "flagged": len(flagged),
            **{outcome: counts[outcome] for outcome in outcomes.RUN_OUTCOMES},
        },
        "baseline": {**baseline.as_dict(), "mean": base_mean, "runs": len(base_values)} if baseline else None,
        "measure": measure_text(baseline or next((r for r in rows if r.measured), rows[0])) if rows else None,
        "tip": now["tip"],
        "best": best,
        "best_commit": best["commit"] if best else None,
        "sigma": now["sigma"],
        "sigma_df": now["df"],
        "next": now["next"],
        "improvement": improvement,
        "improvement_pct": 100 * improvement / base_mean if improvement is not None else None,
        "history": keeprule.history(sound),
        "improvements": outcomes.improvements(sound),
        "simplifications": outcomes.simplifications(sound),
        "near_misses": outcomes.near_misses(sound),
        "crashes": crashes(rows),
        "crash_streak": outcomes.crash_streak(rows),
        "setup_incomplete": keeprule.setup_problem(sound, tip) if tip else None,
        "refused": read_refusals(results.path),
        "time": wall_times(rows),
        "flagged_rows": [{"line": n, "reasons": why} for n, why in sorted(flagged.items())],
        "header_missing": results.header_missing,
        "malformed": [{"line": n, "reason": reason} for n, reason in results.malformed],
    }


# The report as text


def num(value, fmt="{:.6f}"):
    return "-" if value is None else fmt.format(value)


def plural(n, word, many=None):
    return f"{n} {word if n == 1 else many or word + 's'}"


def measure_text(row):
    """How the effort's runs are measured, from a row's provenance (the baseline's): the budget, in
    steps under AR_STEPS or seconds, and the corpus. None for a row that does not say."""
    budget, data = row.extra.get("budget", "").strip(), row.extra.get("data", "").strip()
    if not budget and not data:
        return None
    if steps := re.fullmatch(r"(\d+)\s*steps", budget):
        budget = f"{steps[1]} training steps a run (AR_STEPS={steps[1]}: a rehearsal's budget, not the timed one)"
    elif seconds := re.fullmatch(r"([\d.]+)\s*s", budget):
        budget = f"{seconds[1]} s of training a run"
    else:
        budget = f"budget {budget or 'not recorded'}"
    if data.startswith("enwik8:"):
        corpus = "enwik8"
    elif data.startswith("custom:"):
        corpus = f"a custom corpus (AR_DATA, {data})"
    else:
        corpus = data or "a corpus not recorded"
    return f"{budget}, on {corpus}"


def text_header(report):
    totals = report["totals"]
    parts = [
        plural(totals["experiments"], "experiment"),
        f"{totals['baselines']} baseline",
        plural(totals["replicates"], "replicate"),
        plural(totals["confirmations"], "confirmation run"),
    ]
    if totals["environment"]:
        parts.append(plural(totals["environment"], "environment crash", "environment crashes"))
    parts.append(f"{totals['flagged']} flagged")
    head = (
        f"{report['file']}: {plural(totals['rows'], 'row')} = {' + '.join(parts)} | {totals['keep']} keep, "
        f"{totals['discard']} discard, "
        + (f"{totals['pending']} awaiting a confirmation, " if totals.get("pending") else "")
        + f"{totals['crash']} crash (a first run sent to a confirmation counts as its commit's decision)"
    )
    lines = [head]
    if report.get("measure"):
        lines.append(f"measure   {report['measure']}")
    if report["header_missing"]:
        lines.append("warning: the header line is missing; rows were read in the standard column order")
    lines += [f"warning: skipped line {m['line']}: {m['reason']}" for m in report["malformed"]]
    return lines


def text_standing(report, test_bpc, test_note):
    base, tip, best = report["baseline"], report["tip"], report["best"]
    lines = [""]
    if base is None:
        lines.append("baseline  none yet: nothing has been kept")
    else:
        mean = base["mean"] if base["mean"] is not None else base["val_bpc"]
        lines.append(
            f"baseline  {base['commit']:<8} {mean:.6f}  mean of {runs(base['runs'])} (first: line {base['line']})"
        )
    if tip:
        lines.append(f"tip       {tip['commit']:<8} {tip['mean']:.6f}  mean of {runs(tip['runs'])} (the reference)")
    if best:
        change = ""
        if base is not None and best["commit"] == base["commit"]:
            change = "  the baseline itself: nothing has beaten it"
        elif report["improvement"] is not None:
            change = f"  {-report['improvement']:+.6f} ({-report['improvement_pct']:+.2f}%) vs the baseline"
        lines.append(f"best      {best['commit']:<8} {best['mean']:.6f}  mean of {runs(best['runs'])}{change}")
    if report.get("setup_incomplete"):
        lines.append("setup     incomplete: " + report["setup_incomplete"].removeprefix("setup is not complete: "))
    if test_bpc is not None:
        lines.append(f"          test_bpc {test_bpc:.6f} of the best (held-out, for the person, never for decisions)")
    if test_note:
        lines.append(f"          {test_note}")
    if report["sigma"] is None:
        lines.append("sigma unknown: setup runs the baseline and its replicates (python analysis.py decide --explain)")
    else:
        lines.append(
            f"sigma     {report['sigma']:.6f} ({report['sigma_df']} df, pooled from the unselected runs nearest the tip)"
        )
    if report["next"] and not report.get("setup_incomplete"):
        nxt = report["next"]
        lines.append(
            f"next      rerun below {nxt['rerun_below']:.6f}, keep a mean of 2 below {nxt['keep_mean_of_2_below']:.6f}, "
            f"a simplification up to {nxt['simplification_up_to']:.6f}"
        )
    if report.get("time"):
        t = report["time"]
        lines.append(f"time      {span_text(t)}; {gaps_text(t)}")
    lines.append(f"crash streak {report['crash_streak']}")
    if report["crash_streak"] >= 3:
        lines.append(f"warning: the last {report['crash_streak']} runs crashed: change direction")
    return lines


def runs(n):
    return f"{n} run{'s' if n != 1 else ''}"


def entry_line(e):
    """The decision's mean and delta, from the same runs; a margin in standard errors for a near-miss."""
    margin = f" ({e['margin']:.1f} SE)" if "margin" in e else ""
    return (
        f"  line {e['line']:>4}  {e['commit']:<8} mean {num(e['decision_mean'])} ({runs(e['decision_runs'])})  "
        f"delta {num(e['delta'], '{:+.6f}')}{margin} vs {num(e['reference'])} ({e['reference_commit']})  {e['description']}"
    )


def text_lists(report):
    lines = []
    sections = (
        ("improvements", "kept improvements (delta: the decision's mean minus the reference it beat)"),
        ("simplifications", "kept simplifications (apart: never counted as gains)"),
        (
            "near_misses",
            f"near-misses (discarded experiments that beat the reference by {keeprule.NEAR_MISS_SE:g}+ standard errors, not by the bound)",
        ),
    )
    for key, title in sections:
        if report[key]:
            lines += ["", title] + [entry_line(e) for e in report[key]]
    if report.get("refused"):
        lines += ["", "refused by decide or record (never recorded as these runs)"]
        for r in report["refused"]:
            lines.append(f"  {r['when'][:16]}  {r['commit']:<8} {'+'.join(r['commands'])}: {r['message']}")
    if report["crashes"]:
        lines += ["", "crashes"]
        for c in report["crashes"]:
            lines.append(
                f"  line {c['line']:>4}  {c['commit']:<8} {c['description']}: {c['reason'] or 'no reason given'}"
            )
    return lines


def text_audit(found):
    lines = ["", f"audit: {found['flagged']} flagged (never the baseline, the reference, the tip or the best)"]
    for item in found["not_comparable"]:
        lines.append(f"  line {item['line']} {item['commit']}: flagged: {item['reason']}")
    if found["small_gains"]:
        lines.append("note: keeps that gained less than the rule's keep bound (may be noise; not flags)")
    for item in found["small_gains"]:
        bound = "" if item["bound"] is None else f", below the keep bound {item['bound']:.6f}"
        lines.append(f"  line {item['line']} {item['commit']}: kept with a gain of {item['gain']:+.6f}{bound}")
    if found.get("unsandboxed"):
        lines.append(f"note: {found['unsandboxed']}")
    return lines + amended_note(found.get("amended"))


def format_report(report, test_bpc=None, test_note=None):
    if not report["totals"]["rows"]:
        return "\n".join(
            text_header(report)[1:]
            + [
                f"No experiments in {report['file']} yet. Record the first run (the baseline) with "
                '`python analysis.py record --description "baseline"`.'
            ]
        )
    lines = text_header(report) + text_standing(report, test_bpc, test_note) + text_lists(report)
    if "audit" in report:
        lines += text_audit(report["audit"])
    if report.get("plots"):
        lines += ["", "plots: " + ", ".join(report["plots"])]
    return "\n".join(lines)


def build_report(tsv):
    """(the results of `tsv`, its report with the audit's findings), without plots."""
    results = read_results(tsv)
    report = summarize(results)
    report["audit"] = audit(results, report)
    return results, report


def show_audit(tsv, as_json=False):
    """`analysis.py audit`: exit 1 only for flagged rows; the small-gain note never changes it."""
    if not Path(tsv).is_file():
        raise Refusal(f"no results file at {tsv}: nothing to audit")
    results = read_results(tsv)
    report = summarize(results)
    found = audit(results, report)
    if as_json:
        print(json.dumps(found, indent=1))
    else:
        print("\n".join(text_header(report) + text_audit(found)))
    return 1 if found["flagged"] else 0

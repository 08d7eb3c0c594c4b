"""The report of a results file: the keep rule's numbers (labbook/keeprule.py: tip, reference,
sigma, best, improvements, simplifications, near-misses) over the rows the integrity audit does
not flag, the crashes with their reasons, the audit itself, and the report as text or JSON."""

import contextlib
import hashlib
import json
import math
import re
import statistics
from collections import Counter
from datetime import datetime
from pathlib import Path

from labbook import keeprule
from labbook.ledger import FORCED_PREFIX, STATUSES, Refusal, git, git_show, read_results, results_repo
from labbook.refusals import read_refusals
from labbook.rescore import best_test_bpc, kept_rescores, rescore_lines, tolerance

TEST_SPLIT_NOTE = (
    "The test split is for the person reading the results in the morning, never for the agent's "
    "keep/discard decisions: those rest on val_bpc alone."
)


# The rows the keep rule sees
#
# Only rows the audit does not flag count (see "Integrity audit" below): a flagged row never
# becomes the baseline, the reference, the tip or the best. `comparable_rows` is the one place
# that filters them; the report, `decide`, `record` and the agent's JSON all read through it.


def baseline_row(rows, repo=None, cache=None):
    """The baseline (keeprule.baseline_commit) among rows with sound provenance (row_problems):
    its first measured row, or None."""
    cache = {} if cache is None else cache
    sound = [r for r in rows if r.measured and not row_problems(r, repo, cache)]
    commit = keeprule.baseline_commit(sound)
    return next((r for r in sound if r.commit == commit), None)


def comparable_rows(results, repo=None):
    """The rows of `results` minus the audit's flagged rows, in file order (crash rows stay)."""
    repo = results_repo(results.path) if repo is None else repo
    _, flagged = flag_rows(results.rows, repo)
    return [r for r in results.rows if r.line not in flagged]


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


def wall_times(rows):
    """Where the night's time went: minutes between each row's record and the one before it (a
    run's wall time with the agent's turn around it), their median, the longest, and the minutes
    that ended in crashes. None without two recorded times."""
    timed = [(t, r) for r in rows if (t := recorded_at(r)) is not None]
    if len(timed) < 2:
        return None
    gaps = [((b - a).total_seconds() / 60, row) for (a, _), (b, row) in zip(timed, timed[1:])]
    longest = max(gaps, key=lambda g: g[0])
    crashed = [m for m, row in gaps if row.status == "crash"]
    return {
        "hours": (timed[-1][0] - timed[0][0]).total_seconds() / 3600,
        "median_minutes": statistics.median(m for m, _ in gaps),
        "longest_minutes": longest[0],
        "longest_line": longest[1].line,
        "crash_minutes": sum(crashed),
        "crash_runs": len(crashed),
    }


def summarize(results, repo=None):
    """Everything the report shows, as plain data. The numbers are the keep rule's over the
    comparable rows; flagged rows count in the totals only."""
    rows = results.rows
    repo = results_repo(results.path) if repo is None else repo
    baseline, flagged = flag_rows(rows, repo)
    sound = [r for r in rows if r.line not in flagged]
    tagged = keeprule.kinds(sound)
    counts = Counter(r.status for r in rows)
    replicates = sum(k == "replicate" for _, k in tagged)
    experiments = [r for r, k in tagged if k in keeprule.FIRST_KINDS]
    now = keeprule.standing(sound)
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
            "flagged": len(flagged),
            **{status: counts[status] for status in STATUSES},
        },
        "baseline": {**baseline.as_dict(), "mean": base_mean, "runs": len(base_values)} if baseline else None,
        "tip": now["tip"],
        "best": best,
        "best_commit": best["commit"] if best else None,
        "sigma": now["sigma"],
        "sigma_df": now["df"],
        "next": now["next"],
        "improvement": improvement,
        "improvement_pct": 100 * improvement / base_mean if improvement is not None else None,
        "history": keeprule.history(sound),
        "improvements": keeprule.improvements(sound),
        "simplifications": keeprule.simplifications(sound),
        "near_misses": keeprule.near_misses(sound),
        "crashes": crashes(rows),
        "crash_streak": keeprule.crash_streak(rows),
        "setup_incomplete": keeprule.setup_problem(sound, tip) if tip else None,
        "refused": read_refusals(results.path),
        "time": wall_times(rows),
        "flagged_rows": [{"line": n, "reasons": why} for n, why in sorted(flagged.items())],
        "header_missing": results.header_missing,
        "malformed": [{"line": n, "reason": reason} for n, reason in results.malformed],
    }


# Integrity audit
#
# Every row's provenance is checked from git: prepare.py at the row's commit must hash to the
# row's prepare_hash and to the baseline's (the fingerprint covers prepare.py's whole text), the
# other fingerprint parts (libraries, budget, eval bytes, data) must equal the baseline's, a keep
# or noise replicate must name a commit git knows, and a measured row must carry provenance, not
# be --force'd, not carry harness flags, and record a re-score that agrees with what it reported.
# Kept experiments that gain less than the rule's keep bound are a separate note: their gain may be noise.

COMPARED_PARTS = ("libraries", "budget", "eval_bytes", "data")


def git_prepare_hash(commit, repo, cache):
    """sha256[:12] of prepare.py at `commit` (prepare.prepare_hash), or None when git does not know it."""
    key = ("prepare", commit)
    if key not in cache:
        text = git_show(commit, "prepare.py", repo) if repo is not None else None
        cache[key] = None if text is None else hashlib.sha256(text.encode()).hexdigest()[:12]
    return cache[key]


def commit_known(commit, repo, cache):
    key = ("commit", commit)
    if key not in cache:
        known = repo is not None and re.fullmatch(r"[0-9a-fA-F]{4,40}", commit)
        cache[key] = bool(known and git(["cat-file", "-e", f"{commit}^{{commit}}"], repo) is not None)
    return cache[key]


def row_problems(row, repo, cache):
    """What makes a row untrustworthy on its own (no baseline needed): a list of reasons."""
    extra, problems = row.extra, []
    if not row.measured:
        return problems  # a crash row is never a number; its description says why it crashed
    if not extra.get("prepare_hash", "").strip() or not extra.get("run_id", "").strip():
        problems.append("no provenance (prepare_hash and run_id): not recorded by this analysis.py")
    if extra.get("note", "").startswith(FORCED_PREFIX) or "[forced:" in row.description:
        problems.append(f"recorded with --force ({extra.get('note', '').removeprefix(FORCED_PREFIX).strip()})")
    if extra.get("flags", "none").strip() not in ("", "none"):
        problems.append(f"harness flags: {extra['flags']}")
    reported = extra.get("reported_bpc", "").strip()
    with contextlib.suppress(ValueError):
        if reported and abs(float(reported) - row.val_bpc) > 5.1e-7 + tolerance(extra.get("device", "")):
            problems.append(f"re-score mismatch: val_bpc {row.val_bpc:.6f}, reported {reported}")
    known = commit_known(row.commit, repo, cache)
    if not known and (row.status == "keep" or row.noise or row.kind == "replicate"):
        problems.append(f"git does not know commit {row.commit}")
    if known and extra.get("prepare_hash", "").strip():
        at_commit = git_prepare_hash(row.commit, repo, cache)
        if at_commit != extra["prepare_hash"].strip():
            problems.append(f"prepare.py at {row.commit} hashes to {at_commit}, the row says {extra['prepare_hash']}")
    return problems


def comparability(row, baseline, repo, cache):
    """Why a row is not comparable with the baseline (a list, empty when it is)."""
    if baseline is None or row is baseline:
        return []
    problems = []
    mine = git_prepare_hash(row.commit, repo, cache) or row.extra.get("prepare_hash", "").strip()
    theirs = git_prepare_hash(baseline.commit, repo, cache)
    if mine and theirs and mine != theirs:
        problems.append(f"prepare.py at {row.commit} ({mine}) differs from the baseline's ({theirs})")
    for part in COMPARED_PARTS:
        a, b = row.extra.get(part, "").strip(), baseline.extra.get(part, "").strip()
        if a and b and a != b:
            problems.append(f"{part} {a} differs from the baseline's {b}")
    return problems


def flag_rows(rows, repo):
    """(the baseline row or None, {line: [reasons]} of every flagged row)."""
    cache = {}
    baseline = baseline_row(rows, repo, cache)
    flagged = {}
    for row in rows:
        reasons = row_problems(row, repo, cache) + (comparability(row, baseline, repo, cache) if row.measured else [])
        if reasons:
            flagged[row.line] = reasons
    return baseline, flagged


def small_gains(report):
    """Kept experiments whose decision mean did not beat the reference by the rule's keep bound
    (t at sigma's degrees of freedom times the standard error of the difference, with today's
    sigma), e.g. keeps by --status override: a note, never a flag."""
    sigma, df, notes = report["sigma"], report["sigma_df"], []
    for entry in report["history"]:
        if entry["status"] != "keep" or entry["kind"] != "experiment" or entry["delta"] is None:
            continue
        bound = None
        if sigma is not None and df >= 1 and entry["decision_runs"] and entry["reference_runs"]:
            se = sigma * math.sqrt(1 / entry["decision_runs"] + 1 / entry["reference_runs"])
            bound = keeprule.t_quantile(1 - keeprule.FALSE_KEEP_RATE, df) * se
        gain = -entry["delta"]
        if gain <= 0 or (bound is not None and gain < bound):
            notes.append({"line": entry["line"], "commit": entry["commit"], "gain": gain, "bound": bound})
    return notes


def audit(results, report):
    """The flagged rows (comparability and integrity: these make `audit` exit 1) and, apart, the
    keeps whose gain is below the rule's keep bound (a note, never an exit code)."""
    by_line = {r.line: r for r in results.rows}
    flagged = [
        {"line": f["line"], "commit": by_line[f["line"]].commit, "reason": "; ".join(f["reasons"])}
        for f in report["flagged_rows"]
    ]
    return {
        "baseline_commit": report["baseline"]["commit"] if report["baseline"] else None,
        "not_comparable": flagged,
        "small_gains": small_gains(report),
        "flagged": len(flagged),
    }


# The report as text


def num(value, fmt="{:.6f}"):
    return "-" if value is None else fmt.format(value)


def text_header(report):
    totals = report["totals"]
    head = (
        f"{report['file']}: {totals['rows']} rows = {totals['experiments']} experiments + {totals['baselines']} "
        f"baseline + {totals['replicates']} replicates + {totals['confirmations']} confirmation runs + "
        f"{totals['flagged']} flagged | {totals['keep']} keep, {totals['discard']} discard, {totals['crash']} crash"
    )
    lines = [head]
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
        lines.append(f"sigma     {report['sigma']:.6f} ({report['sigma_df']} df, pooled from unselected runs)")
    if report["next"] and not report.get("setup_incomplete"):
        nxt = report["next"]
        lines.append(
            f"next      rerun below {nxt['rerun_below']:.6f}, keep a mean of 2 below {nxt['keep_mean_of_2_below']:.6f}, "
            f"a simplification up to {nxt['simplification_up_to']:.6f}"
        )
    if report.get("time"):
        t = report["time"]
        lines.append(
            f"time      {t['hours']:.1f} h between the first and last record; {t['median_minutes']:.1f} min between "
            f"records (median), the longest {t['longest_minutes']:.0f} min (ending at line {t['longest_line']}); "
            + (
                f"crashes took {t['crash_minutes']:.0f} min ({runs(t['crash_runs'])})"
                if t["crash_runs"]
                else "no crashes"
            )
        )
    lines.append(f"crash streak {report['crash_streak']}")
    if report["crash_streak"] >= 3:
        lines.append(f"warning: the last {report['crash_streak']} runs crashed: change direction")
    return lines


def runs(n):
    return f"{n} run{'s' if n != 1 else ''}"


def entry_line(e):
    return (
        f"  line {e['line']:>4}  {e['commit']:<8} mean {num(e['mean'])} ({runs(e['runs'])})  delta {num(e['delta'], '{:+.6f}')} "
        f"vs {num(e['reference'])} ({e['reference_commit']})  {e['description']}"
    )


def text_lists(report):
    lines = []
    sections = (
        ("improvements", "kept improvements (delta: the decision's mean minus the reference it beat)"),
        ("simplifications", "kept simplifications (apart: never counted as gains)"),
        ("near_misses", "near-misses (discarded experiments that beat the reference, not by the bound)"),
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
    return lines


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


def build_report(tsv, out_dir=None, plots=True):
    from labbook.plots import write_plots  # the plots mark this module's flagged rows

    results = read_results(tsv)
    report = summarize(results)
    report["audit"] = audit(results, report)
    if plots:
        flagged = [f["line"] for f in report["flagged_rows"]]
        report["plots"] = [str(p) for p in write_plots(results, out_dir or Path(tsv).resolve().parent, flagged)]
    return results, report


def show_report(args, tsv):
    results, report = build_report(tsv, args.out, plots=not args.no_plots)
    # The test split only when the person asks (--test): scored fresh, never cached.
    test_bpc, note = best_test_bpc(results, report, compute=getattr(args, "test", False))
    print(format_report(report, test_bpc, note))
    if report["totals"]["rows"]:
        print("\n".join(rescore_lines(kept_rescores(results, report, with_test=getattr(args, "test", False)))))
    return 0


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

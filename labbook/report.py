"""The numbers of a results file (baseline, noise floor, keep threshold, kept progression, near
misses, streaks), the integrity audit, and the report as text or JSON."""

import json
import re
import statistics
from collections import Counter
from pathlib import Path

from labbook.ledger import NOISE_PREFIX, STATUSES, git, read_results
from labbook.rescore import best_test_bpc

FIXED_START, FIXED_END = "# ==== FIXED REGION START", "# ==== FIXED REGION END"
TOP_IMPROVEMENTS = 10
TEST_SPLIT_NOTE = (
    "The test split is for the person reading the results in the morning, never for the agent's "
    "keep/discard decisions: those rest on val_bpc alone."
)


# The numbers: baseline, best, noise floor, near-misses, crash streak
#
# The baseline is the first kept row that is not a noise replicate. Rows whose description
# starts with `noise:` rerun the baseline with other seeds; the sample standard deviation of
# the baseline and its replicates is the noise floor, and a keep should beat the best by twice
# that (the keep threshold).


def baseline_row(rows):
    keeps = [r for r in rows if r.status == "keep" and not r.noise]
    return keeps[0] if keeps else (rows[0] if rows else None)


def noise_floor(rows, baseline):
    """(sample std of the baseline and its replicates, or None with fewer than 2, replicates)."""
    replicates = [r.val_bpc for r in rows if r.noise and r.measured]
    if len(replicates) < 2 or baseline is None or not baseline.measured:
        return None, len(replicates)
    return statistics.stdev([baseline.val_bpc, *replicates]), len(replicates)


def kept_progression(rows, baseline):
    """Each kept row with its change against the best before it (None for the first)."""
    best, kept = None, []
    for row in rows:
        if row.status != "keep" or row.noise:
            continue
        kept.append(
            {
                **row.as_dict(),
                "delta": None if best is None else row.val_bpc - best.val_bpc,
                "vs_baseline": row.val_bpc - baseline.val_bpc,
            }
        )
        if best is None or row.val_bpc < best.val_bpc:
            best = row
    return kept


def best_row(rows):
    keeps = [r for r in rows if r.status == "keep" and not r.noise]
    return min(keeps, key=lambda r: r.val_bpc) if keeps else None


def near_misses(rows, threshold):
    """Discarded experiments within the keep threshold of the best at the time they ran (with the
    threshold unknown: those that beat it)."""
    best, misses = None, []
    for row in rows:
        if row.status == "keep" and not row.noise:
            best = row.val_bpc if best is None else min(best, row.val_bpc)
        elif row.status == "discard" and not row.noise and best is not None:
            margin = row.val_bpc - best
            if margin < (threshold or 0.0):
                misses.append({**row.as_dict(), "best_at_the_time": best, "margin": margin})
    return misses


def crash_streak(rows):
    streak = 0
    for row in reversed(rows):
        if row.status != "crash":
            break
        streak += 1
    return streak


def since_last_improvement(rows, best):
    experiments = [r for r in rows if not r.noise]
    return len(experiments) - 1 - experiments.index(best) if best else len(experiments)


def summarize(results):
    """Everything the report shows, as plain data: the JSON the agent reads."""
    rows = results.rows
    experiments = [r for r in rows if not r.noise]
    counts = Counter(r.status for r in rows)
    baseline, best = baseline_row(rows), best_row(rows)
    floor, replicates = noise_floor(rows, baseline)
    threshold = 2 * floor if floor is not None else None
    kept = kept_progression(rows, baseline) if baseline else []
    improvement = baseline.val_bpc - best.val_bpc if best and baseline.measured else None
    return {
        "file": str(results.path),
        "totals": {
            "rows": len(rows),
            "experiments": len(experiments),
            "noise_runs": len(rows) - len(experiments),
            **{status: counts[status] for status in STATUSES},
        },
        "keep_rate": sum(r.status == "keep" for r in experiments) / len(experiments) if experiments else None,
        "baseline": baseline.as_dict() if baseline else None,
        "best": best.as_dict() if best else None,
        "best_commit": best.commit if best else None,
        "best_val_bpc": best.val_bpc if best else None,
        "improvement": improvement,
        "improvement_pct": 100 * improvement / baseline.val_bpc if improvement is not None else None,
        "kept": kept,
        "top_improvements": sorted((k for k in kept if k["delta"] is not None), key=lambda k: k["delta"])[
            :TOP_IMPROVEMENTS
        ],
        "noise_floor": floor,
        "noise_replicates": replicates,
        "keep_threshold": threshold,
        "experiments_since_improvement": since_last_improvement(rows, best),
        "near_misses": near_misses(rows, threshold),
        "crash_streak": crash_streak(rows),
        "header_missing": results.header_missing,
        "malformed": [{"line": n, "reason": reason} for n, reason in results.malformed],
    }


# Integrity audit
#
# A row is comparable with the baseline when both ran the same FIXED region of train.py with
# the same budget, evaluation and data: the same `fingerprint`, or, for rows without one, the
# same FIXED region text in git. Kept rows that gain less than the keep threshold are flagged
# too: their gain may be noise.


def fixed_region(source):
    """The lines of every FIXED region block of a train.py source."""
    inside, kept = False, []
    for line in source.splitlines():
        inside = inside or line.startswith(FIXED_START)
        if inside:
            kept.append(line)
        inside = inside and not line.startswith(FIXED_END)
    return "\n".join(kept)


def fixed_region_at(commit, repo, cache):
    """The FIXED region of train.py at `commit`, or None when git does not know the commit."""
    if commit not in cache:
        source = git(["show", f"{commit}:train.py"], repo) if re.fullmatch(r"[0-9a-fA-F]{4,40}", commit) else None
        cache[commit] = None if source is None else fixed_region(source)
    return cache[commit]


def comparability(row, baseline, repo, cache):
    """("ok" | "not comparable" | "unverifiable", reason)."""
    mine, theirs = row.extra.get("fingerprint", "").strip(), baseline.extra.get("fingerprint", "").strip()
    if mine and theirs:
        if mine == theirs:
            return "ok", ""
        return "not comparable", f"fingerprint {mine} differs from the baseline's {theirs}"
    mine, theirs = fixed_region_at(row.commit, repo, cache), fixed_region_at(baseline.commit, repo, cache)
    if mine is None or theirs is None:
        unknown = row.commit if mine is None else baseline.commit
        return "unverifiable", f"no fingerprint, and git does not know commit {unknown}"
    if mine != theirs:
        return (
            "not comparable",
            f"train.py's FIXED region at {row.commit} differs from the baseline's ({baseline.commit})",
        )
    return "ok", ""


def small_gains(report):
    """Kept rows that did not beat the best before them by the keep threshold (or at all)."""
    threshold, flagged = report["keep_threshold"], []
    for kept in report["kept"]:
        gain = None if kept["delta"] is None else -kept["delta"]
        if gain is not None and (gain <= 0 or (threshold is not None and gain < threshold)):
            flagged.append({"line": kept["line"], "commit": kept["commit"], "gain": gain, "threshold": threshold})
    return flagged


def audit(results, report):
    """Rows not comparable with the baseline, rows that cannot be checked, and small-gain keeps."""
    baseline = baseline_row(results.rows)
    found = {"not comparable": [], "unverifiable": []}
    repo, cache = Path(results.path).resolve().parent, {}
    for row in results.rows:
        if row is baseline:
            continue
        verdict, reason = comparability(row, baseline, repo, cache)
        if verdict != "ok":
            found[verdict].append({"line": row.line, "commit": row.commit, "reason": reason})
    gains = small_gains(report)
    return {
        "baseline_commit": baseline.commit if baseline else None,
        "not_comparable": found["not comparable"],
        "unverifiable": found["unverifiable"],
        "small_gains": gains,
        "flagged": len(found["not comparable"]) + len(gains),
    }


# The report as text


def describe_row(row):
    return f"line {row['line']:>4}  {row['commit']:<8} {row['val_bpc']:.6f}  {row['description']}"


def text_header(report):
    totals = report["totals"]
    head = (
        f"{report['file']}: {totals['rows']} rows = {totals['experiments']} experiments + "
        f"{totals['noise_runs']} noise runs | {totals['keep']} keep, {totals['discard']} discard, "
        f"{totals['crash']} crash"
    )
    if report["keep_rate"] is not None:
        head += f" | keep rate {100 * report['keep_rate']:.1f}%"
    lines = [head]
    if report["header_missing"]:
        lines.append("warning: the header line is missing; rows were read in the standard column order")
    lines += [f"skipped line {m['line']}: {m['reason']}" for m in report["malformed"]]
    return lines


def text_standing(report, test_bpc, test_note):
    base, best = report["baseline"], report["best"]
    if best:
        lines = ["", f"baseline  {base['commit']:<8} {base['val_bpc']:.6f}  (line {base['line']})"]
    else:
        lines = ["", "baseline  none yet: nothing has been kept"]
    if best:
        change = f"{-report['improvement']:+.6f} ({-report['improvement_pct']:+.2f}%)" if report["improvement"] else ""
        lines.append(f"best      {best['commit']:<8} {best['val_bpc']:.6f}  {change}")
    if test_bpc is not None:
        lines.append(f"          test_bpc {test_bpc:.6f} of the best (held-out, for the person, never for decisions)")
    if test_note:
        lines.append(f"          {test_note}")
    if report["noise_floor"] is None:
        lines.append(
            f"noise floor unknown ({report['noise_replicates']} replicates): rerun the baseline with other "
            f"AR_SEED values, recorded as discard with a description starting `{NOISE_PREFIX}`, at least twice"
        )
    else:
        lines.append(
            f"noise floor {report['noise_floor']:.6f} (sample std of the baseline and {report['noise_replicates']} "
            f"replicates); keep threshold {report['keep_threshold']:.6f}"
        )
    lines.append(
        f"{report['experiments_since_improvement']} experiments since the last improvement; "
        f"crash streak {report['crash_streak']}"
    )
    if report["crash_streak"] >= 3:
        lines.append(f"warning: the last {report['crash_streak']} runs crashed: change direction")
    return lines


def text_kept(report):
    if not report["kept"]:
        return []
    lines = ["", "kept, in order", f"  {'line':>4}  {'commit':<8} {'val_bpc':>8}  {'delta':>9}  {'vs base':>9}  memory"]
    for k in report["kept"]:
        delta = "-" if k["delta"] is None else f"{k['delta']:+.6f}"
        lines.append(
            f"  {k['line']:>4}  {k['commit']:<8} {k['val_bpc']:.6f}  {delta:>9}  {k['vs_baseline']:+.6f}  "
            f"{k['memory_gb']:5.1f} GB  {k['description']}"
        )
    if report["top_improvements"]:
        lines += ["", "top improvements"]
        for rank, k in enumerate(report["top_improvements"], start=1):
            lines.append(f"  {rank:>2}. {k['delta']:+.6f}  {k['commit']:<8} {k['description']}")
    if report["near_misses"]:
        lines += ["", "near misses (discarded within the keep threshold of the best at the time)"]
        for m in report["near_misses"]:
            lines.append(f"  {describe_row(m)}  ({m['margin']:+.6f} vs {m['best_at_the_time']:.6f})")
    return lines


def text_audit(found):
    unverifiable = f", {len(found['unverifiable'])} unverifiable" if found["unverifiable"] else ""
    lines = ["", f"audit: {found['flagged']} flagged{unverifiable}"]
    for item in found["not_comparable"]:
        lines.append(f"  line {item['line']} {item['commit']}: not comparable: {item['reason']}")
    for item in found["small_gains"]:
        threshold = "" if item["threshold"] is None else f", below the keep threshold {item['threshold']:.6f}"
        lines.append(f"  line {item['line']} {item['commit']}: kept with a gain of {item['gain']:+.6f}{threshold}")
    for item in found["unverifiable"]:
        lines.append(f"  line {item['line']} {item['commit']}: unverifiable: {item['reason']}")
    return lines


def format_report(report, test_bpc=None, test_note=None):
    if not report["totals"]["rows"]:
        return "\n".join(
            text_header(report)[1:]
            + [
                f"No experiments in {report['file']} yet. Record the first run (the baseline) with "
                '`python analysis.py record --status keep --description "baseline"`.'
            ]
        )
    lines = text_header(report) + text_standing(report, test_bpc, test_note) + text_kept(report)
    if "audit" in report:
        lines += text_audit(report["audit"])
    if report.get("plots"):
        lines += ["", "plots: " + ", ".join(report["plots"])]
    return "\n".join(lines)


def build_report(tsv, out_dir=None, plots=True):
    from labbook.plots import write_plots  # the plots use this module's baseline and best

    results = read_results(tsv)
    report = summarize(results)
    report["audit"] = audit(results, report)
    if plots:
        report["plots"] = [str(p) for p in write_plots(results, out_dir or Path(tsv).resolve().parent)]
    return results, report


def show_report(args, tsv):
    results, report = build_report(tsv, args.out, plots=not args.no_plots)
    # The agent's JSON only ever reads a cached test score: it never pays for (or leans on) the test split.
    test_bpc, note = best_test_bpc(results, report, compute=not (args.json or args.no_test))
    if args.json:
        report["informational"] = {"test_bpc_best": test_bpc, "note": TEST_SPLIT_NOTE}
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report, test_bpc, note))
    return 0


def show_audit(tsv):
    results = read_results(tsv)
    report = summarize(results)
    found = audit(results, report)
    print("\n".join(text_header(report) + text_audit(found)))
    return 1 if found["flagged"] else 0

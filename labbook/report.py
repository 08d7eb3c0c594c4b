"""The numbers of a results file (baseline, noise floor, keep threshold, kept progression, near
misses, streaks), the integrity audit, and the report as text or JSON."""

import contextlib
import hashlib
import json
import re
import statistics
from collections import Counter
from pathlib import Path

from labbook.ledger import FORCED_PREFIX, NOISE_PREFIX, STATUSES, Refusal, git, git_show, read_results, results_repo
from labbook.rescore import best_test_bpc, tolerance

TOP_IMPROVEMENTS = 10
TEST_SPLIT_NOTE = (
    "The test split is for the person reading the results in the morning, never for the agent's "
    "keep/discard decisions: those rest on val_bpc alone."
)


# The numbers: baseline, best, noise floor, near-misses, crash streak
#
# Only rows the audit does not flag count (see "Integrity audit" below). The baseline is the
# first such kept row that is not a noise replicate. Rows whose description starts with `noise:`
# rerun the baseline with other seeds; the sample standard deviation of the baseline and its
# replicates is the noise floor, and a keep should beat the best by twice that (the keep threshold).


def baseline_row(rows, repo=None, cache=None):
    """The first kept, non-replicate row that carries sound provenance (see row_problems)."""
    cache = {} if cache is None else cache
    keeps = [r for r in rows if r.status == "keep" and not r.noise and not row_problems(r, repo, cache)]
    return keeps[0] if keeps else None


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
    keeps = [r for r in rows if r.status == "keep" and not r.noise]  # rows: the unflagged ones
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


def summarize(results, repo=None):
    """Everything the report shows, as plain data: the JSON the agent reads. Flagged rows (the
    audit's) are counted in the totals but never become the baseline, a reference or the best."""
    rows = results.rows
    experiments = [r for r in rows if not r.noise]
    counts = Counter(r.status for r in rows)
    repo = results_repo(results.path) if repo is None else repo
    baseline, flagged = flag_rows(rows, repo)
    sound = [r for r in rows if r.line not in flagged]
    best = best_row(sound)
    floor, replicates = noise_floor(sound, baseline)
    threshold = 2 * floor if floor is not None else None
    kept = kept_progression(sound, baseline) if baseline else []
    improvement = baseline.val_bpc - best.val_bpc if best and baseline else None
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
        "near_misses": near_misses(sound, threshold),
        "flagged_rows": [{"line": n, "reasons": why} for n, why in sorted(flagged.items())],
        "crash_streak": crash_streak(rows),
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
# Kept rows that gain less than the keep threshold are a separate note: their gain may be noise.

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
    if not known and (row.status == "keep" or row.noise):
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
    """Kept rows that did not beat the best before them by the keep threshold (or at all)."""
    threshold, flagged = report["keep_threshold"], []
    for kept in report["kept"]:
        gain = None if kept["delta"] is None else -kept["delta"]
        if gain is not None and (gain <= 0 or (threshold is not None and gain < threshold)):
            flagged.append({"line": kept["line"], "commit": kept["commit"], "gain": gain, "threshold": threshold})
    return flagged


def audit(results, report):
    """The flagged rows (comparability and integrity: these make `audit` exit 1) and, apart, the
    keeps whose gain is below the keep threshold (a note, never an exit code)."""
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
    lines += [f"warning: skipped line {m['line']}: {m['reason']}" for m in report["malformed"]]
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
    lines = ["", f"audit: {found['flagged']} flagged (never the baseline, a reference or the best)"]
    for item in found["not_comparable"]:
        lines.append(f"  line {item['line']} {item['commit']}: flagged: {item['reason']}")
    if found["small_gains"]:
        lines.append("note: keeps that gained less than the keep threshold (may be noise; not flags)")
    for item in found["small_gains"]:
        threshold = "" if item["threshold"] is None else f", below the keep threshold {item['threshold']:.6f}"
        lines.append(f"  line {item['line']} {item['commit']}: kept with a gain of {item['gain']:+.6f}{threshold}")
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
    if args.json:  # the agent's JSON never holds a test-split number
        print(json.dumps(report, indent=1))
        return 0
    # The test split only when the person asks (--test): scored fresh, never cached.
    test_bpc, note = best_test_bpc(results, report, compute=getattr(args, "test", False))
    print(format_report(report, test_bpc, note))
    return 0


def show_audit(tsv):
    if not Path(tsv).is_file():
        raise Refusal(f"no results file at {tsv}: nothing to audit")
    results = read_results(tsv)
    report = summarize(results)
    found = audit(results, report)
    print("\n".join(text_header(report) + text_audit(found)))
    return 1 if found["flagged"] else 0

"""What the keep rule's history adds up to (labbook/keeprule.py: `history`): the kept
improvements, the kept simplifications, the near-misses, the best commit, the crash streak, and
the standing the next experiment faces. Pure, like the rule: it reads rows and imports only it."""

import math
import statistics

from labbook.keeprule import (
    ENVIRONMENT,
    FALSE_KEEP_RATE,
    FIRST_KINDS,
    PROVISIONAL_RATE,
    commit_values,
    history,
    kinds,
    pooled_sigma,
    simplification_allowance,
    t_quantile,
    tip_commit,
)


def crash_streak(rows):
    """Crashes in a row at the end of the ledger (the environment's crashes are not the ideas': skipped)."""
    streak = 0
    for row, kind in reversed(kinds(rows)):
        if kind == ENVIRONMENT:
            continue
        if row.status != "crash":
            break
        streak += 1
    return streak


def improvements(rows):
    """Kept experiments (never simplifications), best gain first."""
    kept = [e for e in history(rows) if e["status"] == "keep" and e["kind"] == "experiment" and e["delta"] is not None]
    return sorted(kept, key=lambda e: e["delta"])


def simplifications(rows):
    """Kept simplifications, in order, with what each cost (delta > 0) or gained."""
    return [e for e in history(rows) if e["status"] == "keep" and e["kind"] == "simplification"]


def near_misses(rows):
    """The one definition: discarded experiments whose mean beat the reference they were judged
    against, but not by the threshold. Closest to a keep first."""
    misses = [
        e
        for e in history(rows)
        if e["status"] == "discard" and e["kind"] in FIRST_KINDS and e["delta"] is not None and e["delta"] < 0
    ]
    return sorted(misses, key=lambda e: e["delta"])


def best_commit(rows):
    """The kept commit with the lowest mean (its runs), or None."""
    kept = [e for e in history(rows) if e["status"] == "keep" and e["mean"] is not None]
    return min(kept, key=lambda e: e["mean"]) if kept else None


def standing(rows):
    """Tip, best, sigma and the bounds the next experiment faces: what the agent needs every turn."""
    tip = tip_commit(rows)
    sigma, df = pooled_sigma(rows)
    out = {"tip": None, "best": None, "sigma": sigma, "df": df, "next": None}
    if tip:
        values = commit_values(rows, tip)
        out["tip"] = {"commit": tip, "mean": statistics.fmean(values), "runs": len(values)}
    best = best_commit(rows)
    if best:
        out["best"] = {"commit": best["commit"], "mean": best["mean"], "runs": best["runs"]}
    if tip and sigma is not None and df >= 1:
        n, ref = out["tip"]["runs"], out["tip"]["mean"]
        se1, se2 = sigma * math.sqrt(1 + 1 / n), sigma * math.sqrt(1 / 2 + 1 / n)
        out["next"] = {
            "reference": ref,
            "reference_se": sigma / math.sqrt(n),
            "rerun_below": ref - t_quantile(1 - PROVISIONAL_RATE, df) * se1,
            "keep_mean_of_2_below": ref - t_quantile(1 - FALSE_KEEP_RATE, df) * se2,
            "simplification_up_to": ref + simplification_allowance(rows, sigma),
        }
    return out


def commit_outcomes(rows):
    """{commit: "keep", "discard", "crash" or "pending"}: where each judged commit stands now, by
    the rule's history (once kept, kept). Every figure that colours a run by its commit's fate asks
    this one function, so a first run later kept is drawn kept, and a status the rule adds (a run
    awaiting its confirmation) reads as pending, never as discarded."""
    return {
        e["commit"]: e["status"] if e["status"] in ("keep", "discard", "crash") else "pending" for e in history(rows)
    }

"""What the keep rule's history adds up to (labbook/keeprule.py: `history`): the kept
improvements, the kept simplifications, the near-misses, the best commit, the crash streak, and
the standing the next experiment faces. Pure, like the rule: it reads rows and imports only it."""

import math
import statistics

from labbook.keeprule import (
    CONFIRM_RATE,
    ENVIRONMENT,
    FIRST_KINDS,
    NEAR_MISS_SE,
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
    """The one definition: discarded experiments whose decision mean beat the reference they were
    judged against by at least NEAR_MISS_SE standard errors of the difference (sigma as it stood at
    their first run), but not by the bound. Each entry gains `margin`, that beat in standard errors;
    largest first."""
    misses = []
    for e in history(rows):
        if e["status"] != "discard" or e["kind"] not in FIRST_KINDS or e["delta"] is None or e["delta"] >= 0:
            continue
        sigma, _ = pooled_sigma(rows[: e["at"]])
        if sigma:
            margin = -e["delta"] / (sigma * math.sqrt(1 / e["decision_runs"] + 1 / e["reference_runs"]))
            if margin >= NEAR_MISS_SE:
                misses.append({**e, "margin": margin})
    return sorted(misses, key=lambda e: -e["margin"])


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
            "keep_mean_of_2_below": ref - t_quantile(1 - CONFIRM_RATE, df) * se2,
            "simplification_up_to": ref + simplification_allowance(rows, sigma),
        }
    return out

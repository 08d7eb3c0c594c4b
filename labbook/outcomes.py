"""What the keep rule's history adds up to (labbook/keeprule.py: `history`): the kept
improvements, the kept simplifications, the near-misses, the best commit, the crash streak, and
the standing the next experiment faces, and the rule in sentences (`explain`). Pure, like the rule: it reads
rows and imports only it."""

import math
import statistics

from labbook import keeprule
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
    sent_to_confirmation,
    simplification_allowance,
    t_quantile,
    tip_commit,
)

PENDING = "pending"  # how a first run sent to a confirmation counts until that run is recorded
RUN_OUTCOMES = ("keep", "discard", "crash", PENDING)  # what run_outcomes says a row counts as


def run_outcomes(rows):
    """How each row counts, in order: keep, discard or crash as recorded, except a first run sent to
    a confirmation, which counts with its commit's decision (keep when the confirmation kept it,
    discard when it did not, crashed included) and is PENDING until that run is recorded, and a
    replicate of a kept commit that a worker recorded as a discard, which counts as a keep."""
    tagged, decided = kinds(rows), {}
    for row, kind in tagged:
        if kind != ENVIRONMENT and not sent_to_confirmation(row):
            decided[row.commit] = "keep" if "keep" in (decided.get(row.commit), row.status) else "discard"

    def counted(row, kind):
        if sent_to_confirmation(row):
            return decided.get(row.commit, PENDING)
        if kind == "replicate" and row.measured and decided.get(row.commit) == "keep":
            return "keep"
        return row.status

    return [counted(row, kind) for row, kind in tagged]


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


def commit_outcomes(rows):
    """{commit: "keep", "discard", "crash" or "pending"}: where each judged commit stands now, by
    the rule's history (once kept, kept). Every figure that colours a run by its commit's fate asks
    this one function, so a first run later kept is drawn kept, and a status the rule adds (a run
    awaiting its confirmation) reads as pending, never as discarded."""
    return {
        e["commit"]: e["status"] if e["status"] in ("keep", "discard", "crash") else "pending" for e in history(rows)
    }


def explain():
    """The keep rule in plain sentences, built from its constants (quoted verbatim by program.md and AGENTS.md)."""
    return (
        f"Setup runs the baseline and {keeprule.SETUP_REPLICATES} replicates with AR_SEED=1..{keeprule.SETUP_REPLICATES}. "
        "A commit's value is the mean of all its runs; the reference is the mean of the tip (the last kept "
        "commit). Sigma follows the model: it is pooled from each commit's runs nobody selected (baseline, "
        "replicates, confirmations, and a kept experiment's first run), each around its own commit's mean, the tip's "
        f"group first and every older group weighted {keeprule.NOISE_FADE:g} times the next newer one; pooling stops at the "
        f"first older group whose variance differs from the newer ones' by more than {keeprule.NOISE_RATIO:g} times, and the "
        "degrees of freedom are those of the weights used. "
        "An experiment's first run that beats the reference by more than Student's t "
        f"{1 - keeprule.PROVISIONAL_RATE:.0%} quantile times the standard error of the difference is provisional "
        "(verdict rerun, status provisional): one confirmation run with a fresh AR_SEED follows, and the commit is "
        f"kept only if the mean of its two runs beats the reference by more than the t {1 - keeprule.CONFIRM_RATE:.0%} "
        "quantile times the standard error; otherwise it is discarded. "
        "A simplification is declared with --simplification and must have fewer parameters or a smaller "
        f"train.py syntax tree (a removed statement or keyword counts) than the tip; a first run no worse than the reference by "
        f"more than {keeprule.SIMPLIFICATION_BOUND:g} sigma is provisional too (one confirmation run follows), and it is kept when "
        f"the mean of its two runs is no worse than that either, and the simplifications kept since the last "
        f"kept improvement (or the baseline) cost at most {keeprule.SIMPLIFICATION_BOUND:g} sigma together against its mean. "
        "A commit whose train.py is the program of an earlier commit (only comments, docstrings or formatting "
        "differ) is not judged: it is the same experiment with another seed. "
        f"Every keep is followed by {keeprule.REPLICATES_AFTER_KEEP} replicate run(s) of the new tip. "
        f"A discarded experiment that beat the reference by at least {keeprule.NEAR_MISS_SE:g} standard error(s) is a near-miss. "
        "A run without val_bpc is a crash. "
        "`python analysis.py decide` applies this rule and prints the commands to run next."
    )

"""Under AR_STEPS (a CPU rehearsal), an idea that changes what a step computes.

A step budget gives every run the same steps whatever a step costs, so a bigger batch, a wider or
deeper model or longer windows win there for free: the rehearsal cannot rank such an idea, and
`decide` says so on its reason line (the verdict itself is the rule's, unchanged)."""

from pathlib import Path

from labbook.keeprule import tip_commit
from labbook.rescore import journal_entries, run_journal
from labbook.runlog import number, parse_summary
from labbook.sources import source_at, step_knobs

STEP_SUMMARY_KEYS = ("micro_batch", "num_params_M")  # what the harness measured of a step's work


def step_work_changes(tip_source, source, tip_summary, summary):
    """["BATCH_SIZE 8 -> 16", "micro_batch 8 -> 4", ...]: what differs in a step's work between the
    tip's train.py and run and the candidate's."""
    before, after = step_knobs(tip_source or ""), step_knobs(source or "")
    changes = [f"{k} {before[k]} -> {after[k]}" for k in before if k in after and before[k] != after[k]]
    for key in STEP_SUMMARY_KEYS:
        old, new = tip_summary.get(key), summary.get(key)
        if number(old) is not None and number(new) is not None and differs(str(old), str(new)):
            changes.append(f"{key} {old} -> {new}")
    return changes


def differs(old, new):
    """Whether two numbers differ at the precision of the less precise one: the summary block prints
    num_params_M rounded ("0.6"), the journal holds it whole (0.593026)."""
    decimals = min(len(text.partition(".")[2]) for text in (old.strip(), new.strip()))
    return round(float(old), decimals) != round(float(new), decimals)


def run_summary(log_path, summary):
    """The journal's summary of the run whose block `summary` is (its numbers whole), else the block."""
    journal = journal_entries(path) if (path := run_journal(log_path)) else {}
    entry = journal.get(str(summary.get("run_id", "")).strip())
    return entry["summary"] if entry and entry.get("summary") else summary


def tip_summary(rows, tip, log_path):
    """The journal's summary of a measured run of the tip ({} when there is none)."""
    journal = journal_entries(path) if (path := run_journal(log_path)) else {}
    for row in rows:
        entry = journal.get(row.extra.get("run_id", "").strip()) if row.commit == tip else None
        if entry and entry.get("summary"):
            return entry["summary"]
    return {}


def step_budget_note(rows, candidate, log_path):
    """A sentence for decide's reason when a step budget judged an idea that changes a step's work, else ""."""
    try:
        summary = parse_summary(Path(log_path).read_bytes().decode("utf-8", errors="replace"))
    except OSError:
        return ""
    tip = tip_commit(rows)
    if not str(summary.get("budget", "")).endswith("steps") or tip in (None, candidate.commit) or candidate.crash:
        return ""
    changes = step_work_changes(
        source_at(tip), source_at(candidate.commit), tip_summary(rows, tip, log_path), run_summary(log_path, summary)
    )
    if not changes:
        return ""
    return (
        f". It changes the work per step ({', '.join(changes)}): under a step budget ({summary['budget']}) "
        "every run gets the same steps whatever a step costs, so this rehearsal cannot rank it; on a GPU the "
        "clock charges what a step costs"
    )

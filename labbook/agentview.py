"""What the agent reads every iteration (`python analysis.py --json`): bounded, whatever the night.

The JSON stays under MAX_BYTES however many rows results.tsv holds: the tip and the best (means
of their runs), sigma and the bounds the next experiment faces (labbook/outcomes.py), the last few
rows, the top near-misses, the streaks, machine noise, and a capped one-line-per-idea digest of
what has been tried. `python analysis.py --full` prints everything. No test-split number ever
appears in either: decisions rest on validation alone.
"""

import json

from labbook import keeprule, outcomes
from labbook.audit import audit, comparable_rows
from labbook.ledger import read_results
from labbook.recording import effort_settings, with_effort_settings
from labbook.report import summarize

MAX_BYTES = 4096
LAST_ROWS = 4
TOP_NEAR_MISSES = 3
DESCRIPTION_CHARS = 48
OUTCOME_LETTER = {"keep": "k", "discard": "d", "crash": "c"}  # and "r": a first run sent to a confirmation


def short(text, limit=DESCRIPTION_CHARS):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rounded(value, digits=6):
    return None if value is None else round(value, digits)


def machine_noise(rows, tolerance=keeprule.MACHINE_NOISE_TPS):
    """Commits whose runs differ in tokens/s by more than `tolerance`: those runs measured the
    machine (another job, clocks, thermals), not only the code. One line each."""
    speeds = {}
    for row in rows:
        try:
            tps = float(row.extra.get("tokens_per_sec", "") or "nan")
        except ValueError:
            continue
        if row.status != "crash" and tps == tps and tps > 0:
            speeds.setdefault(row.commit, []).append(tps)
    lines = []
    for commit, values in speeds.items():
        low, high = min(values), max(values)
        if len(values) > 1 and high > low * (1 + tolerance):
            lines.append(
                f"{commit}: tokens/s {low:.0f} to {high:.0f} (+{100 * (high / low - 1):.0f}%) over {len(values)} "
                "runs of the same code: the machine's speed varied"
            )
    return lines


def streaks(rows):
    """Crashes in a row at the end, and experiments (new commits) since the last keep row."""
    crashes = outcomes.crash_streak(rows)
    tagged = keeprule.kinds(rows)
    last_keep = max((i for i, (row, _) in enumerate(tagged) if row.status == "keep"), default=-1)
    since = {row.commit for row, kind in tagged[last_keep + 1 :] if kind in keeprule.FIRST_KINDS}
    return {"crashes_in_a_row": crashes, "experiments_since_keep": len(since)}


def compact_row(row, kind):
    return [row.line, row.commit, rounded(row.val_bpc), row.status, kind, short(row.description, 40)]


def tried_digest(rows):
    """One line per idea (description, deduplicated, truncated) with its outcomes, newest first."""
    ideas = {}
    for row, kind in keeprule.kinds(rows):
        if kind not in keeprule.FIRST_KINDS and kind != "confirm":
            continue
        key = short(row.description.split(" (crash:")[0]).lower()
        entry = ideas.setdefault(key, [short(row.description.split(" (crash:")[0]), "", row.line])
        letter = "r" if keeprule.sent_to_confirmation(row) else OUTCOME_LETTER.get(row.status, "?")
        entry[1] = (entry[1] + letter)[-4:]
        entry[2] = row.line
    ordered = sorted(ideas.values(), key=lambda e: -e[2])
    return [f"{text} [{outcome}]" for text, outcome, _ in ordered]


def entry_view(entry):
    view = {
        "commit": entry["commit"],
        "delta": rounded(entry["delta"]),
        "runs": entry["runs"],
        "description": short(entry["description"]),
    }
    if "margin" in entry:  # a near-miss: its beat in standard errors, as the report's "(1.4 SE)"
        view["margin"] = round(entry["margin"], 2)
    return view


def agent_view(results, max_bytes=MAX_BYTES, rows=None):
    """The bounded JSON-ready dict; the digest fills what the budget leaves. The keep rule's
    numbers are over the comparable rows (audit.comparable_rows: the audit's flagged rows never
    become the tip, the reference or the best)."""
    rows = comparable_rows(results) if rows is None else rows
    now = outcomes.standing(rows)
    kinds = keeprule.kinds(rows)
    view = {
        "rule": "python analysis.py decide --explain",
        "run": with_effort_settings(keeprule.RUN_TAIL, effort_settings(results.path)),
        "tip": round_all(now["tip"]),
        "best": round_all(now["best"]),
        "sigma": rounded(now["sigma"]),
        "sigma_df": now["df"],
        "next": round_all(now["next"]),
        "last_rows": [compact_row(r, k) for r, k in kinds[-LAST_ROWS:]],
        "near_misses": [entry_view(e) for e in outcomes.near_misses(rows)[:TOP_NEAR_MISSES]],
        "simplifications_kept": len(outcomes.simplifications(rows)),
        **streaks(rows),
        "machine_noise": machine_noise(rows)[:2],
        "rows": len(results.rows),
        "flagged_rows": len(results.rows) - len(rows),
        "unreadable_lines": len(results.malformed),
        "tried": [],
        "tried_left_out": 0,
        "more": "python analysis.py --full",
    }
    digest = tried_digest(rows)
    for i, line in enumerate(digest):
        view["tried"].append(line)
        view["tried_left_out"] = len(digest) - i - 1
        if len(dumps(view)) > max_bytes:
            view["tried"].pop()
            view["tried_left_out"] = len(digest) - i
            break
    while len(dumps(view)) > max_bytes and view["last_rows"]:  # only with absurd descriptions
        view["last_rows"].pop(0)
    return view


def round_all(d):
    if d is None:
        return None
    return {k: rounded(v) if isinstance(v, float) else v for k, v in d.items()}


def dumps(view):
    return json.dumps(view, separators=(",", ":"), ensure_ascii=False)


def full_view(results):
    """Everything, for `--full`: the rule's history (every judged commit with its mean and delta),
    improvements and simplifications apart, every near-miss, every row. No test-split number."""
    report = summarize(results)  # the keep rule's numbers over the comparable rows
    found = audit(results, report)
    checks = {k: found[k] for k in ("baseline_commit", "not_comparable", "flagged", "small_gains")}
    flagged = {f["line"] for f in report["flagged_rows"]}
    rows = [r for r in results.rows if r.line not in flagged]
    return {
        "standing": outcomes.standing(rows),
        "sigma": report["sigma"],
        "sigma_df": report["sigma_df"],
        "history": report["history"],
        "improvements": report["improvements"],
        "simplifications": report["simplifications"],
        "near_misses": report["near_misses"],
        "crashes": report["crashes"],
        "machine_noise": machine_noise(rows),
        "tried": tried_digest(rows),
        "rows": [{**r.as_dict(), "kind": k, "flagged": r.line in flagged} for r, k in keeprule.kinds(results.rows)],
        "totals": report["totals"],
        "audit": checks,
        "header_missing": report["header_missing"],
        "malformed": report["malformed"],
        "rule": outcomes.explain(),
    }


def show(tsv, full=False):
    results = read_results(tsv)
    if full:
        print(json.dumps(full_view(results), indent=1, ensure_ascii=False))
    else:
        print(dumps(agent_view(results)))
    return 0

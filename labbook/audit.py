"""The audit: which rows of results.tsv count. A row counts when its provenance checks out from
git and it is comparable with the baseline; a flagged row never becomes the baseline, the
reference, the tip or the best. `comparable_rows` is the one place that filters them: the report,
`decide`, `record` and the agent's JSON all read through it.

Every row's provenance is checked from git: prepare.py at the row's commit must hash to the
row's prepare_hash and to the baseline's (the fingerprint covers prepare.py's whole text), the
other fingerprint parts (libraries, budget, eval bytes, data) must equal the baseline's, a keep
or noise replicate must name a commit git knows, and a measured row must carry provenance, not
be --force'd, not carry harness flags, and record a re-score that agrees with what it reported.
Kept experiments that gain less than the rule's keep bound are a separate note: their gain may be noise,
and so are rows measured without the kernel sandbox (their `sandbox` is `none (...)`): they count, but
nothing kept train.py from the corpus while it trained. Rows of commits that `git commit
--amend` replaced (on no branch now) are a note too: the row describes the code that ran, which no
branch holds any more.
"""

import contextlib
import hashlib
import math
import os
import re

from labbook import keeprule
from labbook.base import git, git_show, results_repo
from labbook.ledger import FORCED_PREFIX, read_results
from labbook.rescore import tolerance

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
            bound = keeprule.t_quantile(1 - keeprule.CONFIRM_RATE, df) * se
        gain = -entry["delta"]
        if gain <= 0 or (bound is not None and gain < bound):
            notes.append({"line": entry["line"], "commit": entry["commit"], "gain": gain, "bound": bound})
    return notes


def unsandboxed(rows):
    """The measured rows whose run had no kernel sandbox (`sandbox: none (<why>)`). A row from before
    the column (no `sandbox`) says nothing either way and is not counted."""
    return [r for r in rows if r.measured and r.extra.get("sandbox", "").strip().startswith("none")]


def line_ranges(numbers):
    """Line numbers as spans: [2, 3, 4, 7] gives "2-4, 7"."""
    spans = []
    for n in numbers:
        if spans and n == spans[-1][1] + 1:
            spans[-1][1] = n
        else:
            spans.append([n, n])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)


def unsandboxed_note(rows):
    """One line on the rows measured without the kernel sandbox, or None when there are none."""
    found = unsandboxed(rows)
    if not found:
        return None
    why = "; ".join(dict.fromkeys(r.extra["sandbox"].strip() for r in found))
    many = len(found) != 1
    return (
        f"{len(found)} row{'s' if many else ''} {'were' if many else 'was'} measured without the kernel sandbox "
        f"(sandbox: {why}; line{'s' if many else ''} {line_ranges([r.line for r in found])}): "
        "nothing kept train.py from the corpus or the checkpoints while it trained"
    )


def amend_pairs(repo):
    """{replaced commit (full hash): the commit that replaced it} from the branches' and HEAD's
    reflogs, whose `commit (amend)` entries say which value an amend moved the ref from."""
    refs = (git(["for-each-ref", "--format=%(refname)", "refs/heads"], repo) or "").split() + ["HEAD"]
    pairs = {}
    for ref in refs:
        log = git(["log", "-g", "--format=%H%x09%gs", ref], repo) or ""
        entries = [line.partition("\t")[::2] for line in log.splitlines()]
        for (new, what), (old, _) in zip(entries, entries[1:]):  # newest first: the entry after is the value before
            if what.startswith("commit (amend)") and old != new:
                pairs[old] = new
    return pairs


def amended_from(commit, repo):
    """The full hash of the commit that `commit` replaced by `git commit --amend`, or None."""
    full = git(["rev-parse", "--verify", "--quiet", f"{commit}^{{commit}}"], repo)
    return next((old for old, new in amend_pairs(repo).items() if new == full), None) if full else None


def amended_subject_note(tsv, commit, description):
    """A note when `commit` replaced a recorded commit by `git commit --amend` and `description` is
    the replaced one's row: the amend kept its subject (`--no-edit`), so the row would describe the
    code that ran before the fix, not this run's. None otherwise."""
    old = amended_from(commit, ".") if commit else None
    if old is None:
        return None
    rows = [r for r in read_results(tsv).rows if old.startswith(r.commit)] if os.path.isfile(tsv) else []
    same = [r for r in rows if r.description.split(" (crash: ")[0] == description]
    if not same:
        return None
    return (
        f"note: {commit} amends {same[-1].commit} (line {same[-1].line}, {same[-1].status}) and keeps its description "
        f"{description!r}: if the fix changed what runs, not just a typo, record with a --description of this run's code"
    )


def on_a_branch(commit, repo):
    return bool(git(["for-each-ref", "--contains", commit, "--format=%(refname)", "refs/heads"], repo))


def amended_away(rows, repo):
    """[{"line", "commit", "status", "description", "replaced_by", "subject"}] of the rows whose commit
    an amend replaced and no branch holds: `subject` is the replacing commit's, for the person to
    compare with the row's description (the one of the code that ran)."""
    pairs = amend_pairs(repo) if repo is not None and rows else {}
    if not pairs:
        return []
    full = {c: git(["rev-parse", "--verify", "--quiet", f"{c}^{{commit}}"], repo) for c in {r.commit for r in rows}}
    found = []
    for row in rows:
        old = full.get(row.commit)
        if old not in pairs or on_a_branch(old, repo):
            continue
        new = pairs[old]
        while new in pairs:  # amended again: name the commit that stands now
            new = pairs[new]
        found.append(dict(line=row.line, commit=row.commit, status=row.status, description=row.description,
                          replaced_by=new[: len(row.commit)], subject=git(["log", "-1", "--format=%s", new], repo)))  # fmt: skip
    return found


def amended_note(found):
    """Report lines on the rows of amended-away commits, or [] when there are none."""
    if not found:
        return []
    lines = [
        f"note: {len(found)} row{'s' * (len(found) != 1)} ran code that `git commit --amend` replaced (on no branch now)"
    ]
    for a in found:
        lines.append(f"  line {a['line']} {a['commit']} ({a['status']}, {a['description'].split(' (crash')[0]!r}): "
                     f"replaced by {a['replaced_by']} ({a['subject']!r})")  # fmt: skip
    return lines


def audit(results, report):
    """The flagged rows (comparability and integrity: these make `audit` exit 1) and, apart, the
    keeps whose gain is below the rule's keep bound and the rows measured without the kernel
    sandbox (notes, never an exit code)."""
    by_line = {r.line: r for r in results.rows}
    flagged = [
        {"line": f["line"], "commit": by_line[f["line"]].commit, "reason": "; ".join(f["reasons"])}
        for f in report["flagged_rows"]
    ]
    return {
        "baseline_commit": report["baseline"]["commit"] if report["baseline"] else None,
        "not_comparable": flagged,
        "small_gains": small_gains(report),
        "unsandboxed": unsandboxed_note(results.rows),
        "amended": amended_away(results.rows, results_repo(results.path)),
        "flagged": len(flagged),
    }


# The rows that count


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


def harness_commit(tsv):
    """The commit whose prepare.py re-scores checkpoints: the baseline's, or None (HEAD) before one exists."""
    results = read_results(tsv)
    baseline = baseline_row(results.rows, results_repo(tsv))
    return baseline.commit if baseline else None

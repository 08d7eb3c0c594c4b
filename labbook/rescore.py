"""Scores from the sealed scorer: the journal `record` reads, and re-scores for the morning.

Every run ends with `prepare.py`'s sealed scorer: a fresh, isolated interpreter that imports only
the harness and the pinned libraries (never train.py), rebuilds the model from the checkpoint's
spec, loads its weights and scores them. It appends (run_id, checkpoint sha256, spec hash,
val_bpc exact, numerics, the completed summary) to the journal inside the git directory,
$(git rev-parse --git-common-dir)/autoresearch/journal.jsonl. `record` and `decide` take a run's
number from there by run_id and check the checkpoint's hash; they never read a score from
run.log's text, and nothing in the working tree caches one.

Entry points for other code:
  journal_score(log_path, summary)                       -> (entry or None, problem or None)
  journal_runs(journal, commit)                          -> the journal's entries of a commit's runs
  rescore_subprocess(checkpoint, prepare_text, split)    -> dict, a fresh sealed score (the morning)
  harness_text(commit, repo)                             -> prepare.py's text at a commit
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labbook.base import Refusal, checkpoints_dir, git, git_common_dir, git_show, results_repo
from labbook.runlog import logged_checkpoint

RESCORE_TOLERANCE = 1e-6  # bits per byte; CPU runs: eval is FP32 and deterministic, measured |diff| = 0.0
RESCORE_TOLERANCE_GPU = 1e-4  # CUDA runs: UNMEASURED until a GPU measures it (BF16 autocast, kernel choice)
RESCORE_TIMEOUT = 1800  # seconds; a full 5 MB val score on a GPU takes ~20 s, a CPU prefix a minute
LIBS_VAR = "AUTORESEARCH_LIBS"  # prepare.LIBS_VAR: the scorer's sys.path, which isolated mode leaves out
JOURNAL = Path("autoresearch") / "journal.jsonl"  # under the git directory: prepare.py's JOURNAL


class RescoreError(Exception):
    """A score that could not be had: the reason, one line."""


def tolerance(device):
    """How far a re-score of a run on `device` (the summary's `device`) may be from its journal score."""
    return RESCORE_TOLERANCE_GPU if str(device).startswith("cuda") else RESCORE_TOLERANCE


# The journal


def journal_path(run_dir):
    """The journal of the repository `run_dir` is in, or None outside git."""
    common = git_common_dir(run_dir)
    return common / JOURNAL if common else None


def run_journal(log_path):
    """The journal a run's score is in: its repository's, else the one recording it (None outside git)."""
    return journal_path(Path(log_path).resolve().parent) or journal_path(".")


def journal_runs(journal, commit):
    """The journal's entries of runs of `commit` (a 7-character commit; a -dirty run is not one), in order."""
    entries = [e for e in journal_entries(journal).values() if e] if journal and commit else []
    logged = [str(e.get("summary", {}).get("commit", "")) for e in entries]
    return [e for e, c in zip(entries, logged) if c[:7] == commit[:7] and not c.endswith("-dirty")]


def journal_lines(path):
    """Every entry of a journal, in order (a torn line is skipped)."""
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("run_id"):
            entries.append(entry)
    return entries


def journal_entries(path):
    """{run_id: entry} of a journal; a run_id written more than once maps to None (the scorer
    writes one line per run: a second is not its own)."""
    entries = {}
    for entry in journal_lines(path):
        entries[entry["run_id"]] = None if entry["run_id"] in entries else entry
    return entries


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def journal_score(log_path, summary, log=""):
    """(the journal entry of the run behind `log_path`, None) or (None, why there is none usable):
    no run_id, no entry for it, no checkpoint, or a checkpoint whose bytes are not the ones scored."""
    run_id = summary.get("run_id", "").strip()
    if not run_id:
        return None, "the summary has no run_id: it was not printed by prepare.py"
    run_dir = Path(log_path).resolve().parent
    journal = run_journal(log_path)
    entries = journal_entries(journal) if journal else {}
    if run_id in entries and entries[run_id] is None:
        return None, f"run {run_id} has more than one score in the journal {journal}: the scorer writes one"
    entry = entries.get(run_id)
    if entry is None:
        where = journal or "(no git repository here)"
        return None, f"run {run_id} has no score in the journal {where}: its run did not reach the sealed scorer"
    checkpoint = logged_checkpoint(log, run_dir)
    if not checkpoint.is_file():
        return None, f"no checkpoint at {checkpoint}: the journal's score of run {run_id} cannot be matched to it"
    if file_sha256(checkpoint) != entry.get("checkpoint_sha256"):
        return None, f"{checkpoint} is not the checkpoint the sealed scorer scored for run {run_id} (sha256 differs)"
    return entry, None


# Fresh sealed scores (the morning check, --test, `analysis.py evaluate`)


def harness_text(commit, repo):
    """prepare.py's text at `commit` (HEAD when None), from git."""
    if commit is None:
        commit = git(["rev-parse", "HEAD"], repo)
    text = git_show(commit, "prepare.py", repo)
    if text is None:
        raise RescoreError(f"git does not know prepare.py at {commit or 'HEAD'} in {Path(repo).resolve()}")
    return text


def clean_env():
    """The caller's environment without AR_* overrides or precision flags (the checkpoint says), with
    this interpreter's libraries for the scorer: found where they are (a venv, a folder on PYTHONPATH),
    never in the caller's own folder (sys.path[0], the checkout: no file of it shadows a library)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in ("USE_FP8", "USE_FP16")}
    libraries = [os.path.abspath(p) for p in sys.path if p and os.path.abspath(p) != os.path.abspath(sys.path[0])]
    return dict(env, **{LIBS_VAR: json.dumps(libraries)})


def rescore_subprocess(checkpoint, prepare_text, split="val", timeout=RESCORE_TIMEOUT):
    """{"split","bpc","seconds","prepare_hash","spec","checkpoint_sha256","summary","wall_seconds"}
    of a checkpoint scored by `prepare_text`'s sealed scorer in a fresh, isolated interpreter.
    Raises RescoreError with the scorer's crash line."""
    checkpoint = str(Path(checkpoint).resolve())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ar-harness-") as tmp:
        Path(tmp, "prepare.py").write_text(prepare_text)
        try:
            proc = subprocess.run(
                [sys.executable, "-I", str(Path(tmp, "prepare.py")), "score", checkpoint, "--split", split],
                cwd=tmp,
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RescoreError(f"the score of {checkpoint} ran past {timeout} s") from None
    crash = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.startswith("crash:")]
    if proc.returncode != 0 or crash:
        tail = crash[-1] if crash else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RescoreError(f"the score failed (exit {proc.returncode}): {tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    try:
        answer = json.loads(lines[-1]) if len(lines) == 1 else None
    except ValueError:
        answer = None
    if not isinstance(answer, dict) or "bpc" not in answer:
        raise RescoreError(f"the scorer printed no answer: {proc.stdout.strip()[-200:]!r}")
    return {**answer, "wall_seconds": round(time.time() - started, 3)}


def evaluate_checkpoint(checkpoint, split="val", repo=".", harness_commit=None):
    """bpc of a checkpoint on `split`, by prepare.py at `harness_commit` (HEAD when None), in a
    fresh process. Never cached. Raises Refusal for a missing or unscorable checkpoint."""
    if not Path(checkpoint).is_file():
        raise Refusal(f"no checkpoint at {checkpoint}")
    try:
        return rescore_subprocess(checkpoint, harness_text(harness_commit, repo), split)["bpc"]
    except RescoreError as e:
        raise Refusal(str(e)) from None


def kept_rescores(results, report, with_test=False):
    """The morning check: every kept commit's saved checkpoint scored again by the baseline's
    prepare.py in the sealed scorer, beside the score the journal holds for those exact bytes
    (what `record` wrote): a list of {"commit", "recorded", "rescored", "test", "note"}."""
    baseline = (report.get("baseline") or {}).get("commit")
    repo = results_repo(results.path)
    journal = journal_path(repo)
    by_sha = {e.get("checkpoint_sha256"): e for e in journal_entries(journal).values() if e} if journal else {}
    out = []
    for commit in dict.fromkeys(r.commit for r in results.rows if r.status == "keep"):
        item = dict(commit=commit, recorded=None, rescored=None, test=None, note="")
        checkpoint = checkpoints_dir(results.path) / f"{commit}.pt"
        if not checkpoint.is_file():
            out.append(dict(item, note=f"no checkpoint {checkpoint.name}"))
            continue
        entry = by_sha.get(file_sha256(checkpoint))
        item["recorded"] = entry["val_bpc_exact"] if entry else None
        item.update(runs_checked(results.rows, commit, entry))
        try:
            text = harness_text(baseline, repo)
            item["rescored"] = rescore_subprocess(checkpoint, text, "val")["bpc"]
            if with_test:
                item["test"] = rescore_subprocess(checkpoint, text, "test")["bpc"]
        except RescoreError as e:
            item["note"] = str(e)
        if entry is None:
            item["note"] = item["note"] or "no journal score has these checkpoint bytes: the file was replaced"
        elif item["rescored"] is not None:
            device = entry.get("summary", {}).get("device", "")
            agrees = abs(item["rescored"] - item["recorded"]) <= tolerance(device)
            item["note"] = "agrees" if agrees else "DIFFERS from the recorded score"
        out.append(item)
    return out


def runs_checked(rows, commit, entry):
    """{"checked": the line of the run whose saved weights are scored again (the journal entry's
    run_id), or None, "unchecked": the lines of the commit's other measured runs}: a kept commit's
    mean rests on all its runs, but only one run's weights are kept."""
    run_id = (entry or {}).get("run_id")
    measured = [r for r in rows if r.commit == commit and r.measured]
    checked = next((r.line for r in measured if r.extra.get("run_id", "").strip() == run_id), None)
    return dict(checked=checked, unchecked=[r.line for r in measured if r.line != checked])


def checked_words(check):
    """Which runs a check covers, in words: the line scored again and the lines it leaves out."""
    seen = f"line {check['checked']}" if check.get("checked") else "a run no row records"
    others = check.get("unchecked") or []
    if not others:
        return seen
    return (
        f"{seen}; not the commit's other runs behind its mean (lines {', '.join(map(str, others))}: weights not kept)"
    )


def rescore_lines(checks):
    """The morning check as report lines, each naming the run it scored again."""
    if not checks:
        return []
    lines = [
        "",
        "morning check: each kept commit's saved checkpoint (one run's weights) scored again in the sealed scorer",
    ]
    for c in checks:
        test = "" if c["test"] is None else f"  test {c['test']:.6f}"
        recorded = "-" if c["recorded"] is None else f"{c['recorded']:.6f}"
        rescored = "-" if c["rescored"] is None else f"{c['rescored']:.6f}"
        runs = f"  ({checked_words(c)})" if "checked" in c else ""
        lines.append(f"  {c['commit']:<8} recorded {recorded}  re-scored {rescored}{test}  {c['note']}{runs}")
    return lines


def best_test_bpc(results, report, compute):
    """(test_bpc of the best kept commit's checkpoint or None, a note when it could not be had).
    For the person only: computed when asked (`python analysis.py --test`), never cached, so
    nothing the agent reads (`--json`, record, decide) can lean on it."""
    if not compute or not report.get("best_commit"):
        return None, None
    checkpoint = checkpoints_dir(results.path) / f"{report['best_commit']}.pt"
    if not checkpoint.exists():
        return None, f"no checkpoint {checkpoint} to score on the test split"
    baseline = (report.get("baseline") or {}).get("commit")
    try:
        return evaluate_checkpoint(checkpoint, "test", results_repo(results.path), baseline), None
    except Refusal as e:  # a broken checkpoint must not take the report down with it
        return None, f"could not evaluate {checkpoint} on the test split: {e}"

"""The record and decide use case: a run.log turned into the keep rule's verdict (`decide`) and into
one row of results.tsv (`record`), with the kept run's weights saved.

`record` parses the summary block of run.log itself, so no number is ever typed, checks that the
log belongs to the current commit and says one thing, takes the run's score from the sealed
scorer's journal (labbook/rescore.py) and records it as val_bpc. A run that fails any check is
recorded as a crash with the reason, so the history stays complete. `decide` judges the same run
with the keep rule (labbook/keeprule.py) over the rows the audit lets count (labbook/audit.py).

Checkpoint retention: the baseline's and every keep's checkpoint.pt (and metrics.jsonl) are copied
to checkpoints/<commit>.pt (.metrics.jsonl) next to results.tsv; every other run's checkpoint is
removed once it is recorded (a run is recorded once, so it is never needed again).

The one seam tests replace is `sealed_run` (the journal's summary of a run): `decide` and `record`
both read a run's score through it.
"""

import contextlib
import json
import math
import os
import re
import shlex
from datetime import datetime
from pathlib import Path

from labbook.audit import amended_subject_note, comparable_rows
from labbook.base import (
    Refusal,
    checkpoints_dir,
    copy_atomically,
    default_tsv,
    git,
    git_common_dir,
    in_side_worktree,
    locked,
    results_repo,
    write_atomically,
)
from labbook.keeprule import (
    NOISE_PREFIX,
    RESCORE_REFUSED,
    RUN_TAIL,
    Candidate,
    CannotJudge,
    crash_of,
    decide,
    next_seed,
    row_kind,
    run_command,
    tip_commit,
    verdict_note,
)
from labbook.ledger import (
    BASE_COLUMNS,
    FORCED_PREFIX,
    STATUSES,
    SUMMARY_TO_ROW,
    append_row,
    backup_path,
    file_layout,
    finite_number,
    format_row,
    read_results,
    recorded_run_ids,
)
from labbook.outcomes import explain
from labbook.rescore import journal_entries, journal_runs, journal_score, run_journal
from labbook.runlog import crash_reason, integrity_problem, logged_checkpoint, number, parse_summary
from labbook.sources import programs_at, statements_at
from labbook.stepwork import step_budget_note

# prepare.py's UNMEASURED_VARS: the AR_* settings a run may change without being measured otherwise
UNMEASURED_VARS = ("AR_SEED", "AR_METRICS", "AR_CHECKPOINT", "AR_HARD_LIMIT", "AR_DEVICE", "AR_DATA_URL")


# A run and its sealed score


def read_log(path):
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise Refusal(f"cannot read the run log {path}: {e.strerror}") from None


def sealed_run(log_path, log=None):
    """(the journal's summary of the run behind `log_path`, as text, None), or (None, why the log is
    not one finished run: it records as a crash). The number and every provenance field come from
    the sealed scorer's journal entry, never from run.log's text; a run with no usable entry there
    (none for its run_id, a checkpoint that is not the one scored) is a Refusal: nothing to record."""
    log = read_log(log_path) if log is None else log
    if problem := integrity_problem(log):
        return None, problem
    entry, problem = journal_score(log_path, parse_summary(log), log)
    if problem:
        raise Refusal(
            f"{problem}. Nothing was recorded: rerun the commit (the run command: python analysis.py --json, run)"
        )
    return {k: str(v) for k, v in entry["summary"].items()}, None


def candidate_value(tsv, log_path):
    """The val_bpc a decision rests on: the sealed scorer's score of the run, from the journal
    (labbook/rescore.py), or None when the run records as a crash. Raises Refusal when the journal
    holds no usable score for it (then `record` refuses too). Rounded as results.tsv stores it, so
    the verdict's means are the ones the report computes from the rows."""
    summary, problem = sealed_run(log_path)
    return None if problem else float(f"{float(summary['val_bpc_exact']):.6f}")


def reported_value(summary):
    """(the run's exact val_bpc as run.log prints it, or None, why it cannot be read)."""
    try:
        shown = finite_number(summary.get("val_bpc", ""), "val_bpc")
        exact = finite_number(summary.get("val_bpc_exact", ""), "val_bpc_exact")
    except ValueError as e:
        return None, f"the summary reports {e}"
    if abs(shown - exact) > 5.1e-7:
        return None, f"the summary's val_bpc {shown:.6f} disagrees with its val_bpc_exact {exact!r}"
    return exact, None


def summary_params(metrics):
    """num_params_M with every digit, from the summary line of a metrics.jsonl (the log prints one decimal)."""
    try:
        lines = [line for line in Path(metrics).read_text().splitlines() if line.strip()]
        return float(json.loads(lines[-1])["summary"]["num_params_M"])
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None


def params_of_kept(tsv, commit):
    """num_params_M of a kept commit's run, from its saved metrics.jsonl."""
    return summary_params(checkpoints_dir(tsv) / f"{commit}.metrics.jsonl")


def candidate_from_log(tsv, log_path, description="", simplification=False, recorded=None):
    """The Candidate of a run.log: its commit, value (through candidate_value, or the row that
    already `recorded` it: its checkpoint has moved on), seed, speed, size."""
    try:
        log = Path(log_path).read_bytes().decode("utf-8", errors="replace")
    except OSError:
        log = ""
    summary = parse_summary(log)
    commit = summary.get("commit", "").removesuffix("-dirty")[:7] or (
        git(["rev-parse", "--short=7", "HEAD"], ".") or ""
    )
    try:
        if recorded is not None:
            value = None if recorded.status == "crash" else recorded.val_bpc
        else:
            value = candidate_value(tsv, log_path) if "val_bpc" in summary else None
    except ValueError:
        value = None
    if value is not None and not (math.isfinite(value) and value > 0):
        value = None
    crash = crash_reason(log)
    if value is None and "val_bpc" in summary and not crash:
        crash = f"{RESCORE_REFUSED} (a second summary block, or a crash line after it)"
    explicit = bool(description)
    if not description:
        description = git(["log", "-1", "--format=%s", commit], ".") or "experiment" if commit else "experiment"
    return Candidate(
        commit=commit,
        val_bpc=value,
        description=description,
        simplification=simplification,
        params=summary_params(Path(log_path).resolve().parent / "metrics.jsonl") or number(summary.get("num_params_M")),
        statements=statements_at(commit),
        seed=number(summary.get("seed"), int),
        tokens_per_sec=number(summary.get("tokens_per_sec")),
        explicit=explicit,
        crash=crash,
    )


# Deciding: the keep rule's verdict on a run


def judged_rows(tsv):
    """The rows a decision rests on: results.tsv minus the audit's flagged rows (labbook/audit.py)."""
    return comparable_rows(read_results(tsv), results_repo(tsv))


def recorded_row(tsv, log_path):
    """The row of results.tsv that already records this run.log's run (its run_id), or None."""
    try:
        run_id = parse_summary(Path(log_path).read_bytes().decode("utf-8", errors="replace")).get("run_id", "").strip()
    except OSError:
        return None  # no log: nothing recorded from it
    rows = read_results(tsv).rows if run_id and Path(tsv).is_file() else []
    return next((r for r in rows if r.extra.get("run_id", "").strip() == run_id), None)


def verdict_on(tsv, rows, candidate, programs):
    """The keep rule's verdict on `candidate` after `rows`; a declared simplification is compared
    with the tip's kept run (its parameters) and train.py (its syntax tree)."""
    tip = tip_commit(rows)
    reference = {"programs": programs}
    if candidate.simplification and tip:
        reference.update(reference_params=params_of_kept(tsv, tip), reference_statements=statements_at(tip))
    return decide(rows, candidate, **reference)


def verdict_for_log(tsv, log_path, description="", simplification=False):
    """(Candidate, Verdict) for a run.log against the comparable rows of the results file `tsv`.
    A run already recorded is judged against the rows before its own, as `record` judged it, and
    its verdict says so and offers no second record command. A new run of a recorded commit is
    refused when it cannot be new evidence (refuse_unfit_run)."""
    rows = judged_rows(tsv)
    recorded = recorded_row(tsv, log_path)
    if recorded is not None:
        rows = [r for r in rows if r.line < recorded.line]
    candidate = candidate_from_log(tsv, log_path, description, simplification, recorded)
    programs = programs_at([*(r.commit for r in rows), candidate.commit])
    candidate.program = programs.get(candidate.commit)
    if recorded is None and candidate.crash is None:
        refuse_unfit_run(tsv, log_path, rows, candidate, programs)
    verdict = verdict_on(tsv, rows, candidate, programs)
    verdict.reason += step_budget_note(rows, candidate, log_path)
    settings = effort_settings(tsv, log_path)
    verdict.commands = [with_effort_settings(c, settings) for c in verdict.commands]
    if recorded is not None:
        verdict.record_command = ""
        verdict.reason += (
            f" (already recorded: line {recorded.line} of {Path(tsv).name}, {recorded.status}; run what follows)"
        )
    return candidate, verdict


# A new run of a recorded commit: its seed and its score
#
# A replicate or a confirmation is evidence only as a fresh draw: another seed than every recorded
# run of its commit (the same seed is the same run again, bit for bit on a CPU), the one the rule
# named (it shares no seed with the runs it is compared against), and a score of its own (seeds
# that score bit for bit alike mean train.py re-seeds itself, so every seed is one run).


def candidate_of_row(row, journal, programs):
    """The Candidate the rule judged when `row` was recorded: its commit, score, seed and crash line,
    whether it was judged a simplification (its kind), its size (the journal's summary of its run)."""
    entry = journal.get(row.extra.get("run_id", "").strip()) or {}
    return Candidate(
        commit=row.commit,
        val_bpc=row.val_bpc if row.measured else None,
        description=row.description,
        simplification=row_kind(row) == "simplification",
        params=number(entry.get("summary", {}).get("num_params_M")),
        statements=statements_at(row.commit),
        seed=number(row.extra.get("seed"), int),
        crash=None if row.measured else crash_of(row),
        program=programs.get(row.commit),
    )


def named_seed(tsv, rows, commit, journal, programs):
    """The AR_SEED that decide named for the next run of `commit` (a replicate, a confirmation, or a
    crashed run's own seed after its environment stopped it), or None when it named none. The rule
    keeps no state: this is its verdict on the commit's last recorded run, given the rows before it."""
    mine = [r for r in rows if r.commit == commit]
    if not mine:
        return None
    last = mine[-1]
    try:
        verdict = verdict_on(
            tsv, [r for r in rows if r.line < last.line], candidate_of_row(last, journal, programs), programs
        )
    except CannotJudge:
        return None  # recorded with --status over a refusal: no verdict named a seed
    return verdict.next_seed


def twin_score(log_path, candidate, recorded, journal):
    """The `recorded` measured row of the candidate's commit, run with another seed, whose score is the
    run's bit for bit (the journal's exact float where it holds the row's run, else the row's value), or None."""
    exact = None
    for row in recorded:
        seed = number(row.extra.get("seed"), int)
        if row.commit != candidate.commit or not row.measured or seed in (None, candidate.seed):
            continue
        if candidate.val_bpc is None or f"{row.val_bpc:.6f}" != f"{candidate.val_bpc:.6f}":
            continue
        entry = journal.get(row.extra.get("run_id", "").strip())
        exact = exact or number(sealed_run(log_path)[0]["val_bpc_exact"])
        if entry is None or number(entry.get("val_bpc_exact")) == exact:
            return row
    return None


def repeated_seed(recorded, commit, seed):
    """The `recorded` row of `commit` that already ran with `seed`, or None: the same program and the
    same seed is the same run again (bit for bit on a CPU), no new evidence for the mean."""
    same = [r for r in recorded if r.commit[:7] == commit[:7] and r.measured and r.extra.get("seed", "").strip()]
    return next((r for r in same if seed is not None and r.extra["seed"].strip() == str(seed)), None)


def refuse_unfit_run(tsv, log_path, rows, candidate, programs):
    """Refuse a run of a recorded commit that repeats a recorded seed, scores bit for bit what another
    seed scored, or ran with another seed than the one decide named for it."""
    commit, seed, name, recorded = candidate.commit, candidate.seed, Path(tsv).name, read_results(tsv).rows
    journal = journal_entries(path) if (path := run_journal(log_path)) else {}
    named = named_seed(tsv, rows, commit, journal, programs)
    rerun = with_effort_settings(run_command(named or next_seed(recorded, commit)), effort_settings(tsv))
    if row := repeated_seed(recorded, commit, seed):
        raise Refusal(
            f"this run of {commit[:7]} used AR_SEED={seed}, as line {row.line} of {name} did: the same commit and "
            f"seed repeat a recorded run and add no evidence. Run it again: {rerun}"
        )
    if seed is not None and (row := twin_score(log_path, candidate, recorded, journal)):
        raise Refusal(
            f"this run of {commit[:7]} with AR_SEED={seed} scored {candidate.val_bpc:.6f}, bit for bit what AR_SEED="
            f"{row.extra['seed'].strip()} scored (line {row.line} of {name}): the seeds gave bit-identical scores. "
            "A train.py that re-seeds (its own torch.manual_seed or random.seed) makes every seed the same run: "
            "remove the re-seeding, commit, and run again"
        )
    # workers run replicates of the tip in parallel (docs/scale-out.md), each with a seed no row has used
    unused = commit == tip_commit(rows) and all(number(r.extra.get("seed"), int) != seed for r in recorded)
    if named is not None and seed not in (None, named) and not (unused and in_side_worktree(Path(log_path).parent)):
        raise Refusal(
            f"this run of {commit[:7]} used AR_SEED={seed}, but decide named AR_SEED={named} for its next run (a "
            f"replicate or confirmation shares no seed with the runs it is compared against). Run it again: {rerun}"
        )


def decide_command(args, tsv):
    """`python analysis.py decide`: the verdict on ./run.log, its numbers, the commands to run next."""
    if args.explain:
        print(explain())
        return 0
    try:
        candidate, verdict = verdict_for_log(tsv, args.log, args.description or "", args.simplification)
    except CannotJudge as e:
        raise Refusal(str(e)) from None
    if note := amended_subject_note(tsv, candidate.commit, candidate.description):
        verdict.notes.append(note)
    print(verdict.text())
    return 0


# Recording: one row of results.tsv, and measure.json after a keep


def measure_path(tsv):
    """Where `record` leaves how the effort's runs are measured, for prepare.py to check every run
    against (its MEASURE, beside the journal and the backup); None outside git or for a results
    file that is not the effort's one results.tsv."""
    tsv = Path(tsv).resolve()
    common = git_common_dir(tsv.parent) if tsv.parent.is_dir() else None
    if common is None or tsv != default_tsv(tsv.parent):
        return None
    return common / "autoresearch" / "measure.json"


def overrides_of(summary):
    """{AR_*: value} of a summary's `overrides` line ("AR_STEPS=50 AR_DATA=/a b.txt"), minus those a run may change."""
    pairs = re.findall(r"(AR_\w+)=(.*?)(?= AR_\w+=|$)", summary.get("overrides", ""))
    return {k: v for k, v in pairs if k not in UNMEASURED_VARS}


def write_measure(tsv, summary):
    """measure.json from a baseline's or a keep's sealed summary: the budget, the AR_* settings that
    measure a run, the data and the scored bytes. prepare.py refuses a run measured otherwise."""
    path = measure_path(tsv)
    if path is None:
        return
    measure = dict(
        budget=summary.get("budget", ""),
        overrides=overrides_of(summary),
        data=summary.get("data", ""),
        data_path=summary.get("data_path", ""),
        eval_bytes=int(summary["eval_bytes"]) if str(summary.get("eval_bytes", "")).isdigit() else None,
        results=str(Path(tsv).resolve()),
        commit=summary.get("commit", ""),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, (json.dumps(measure, indent=1) + "\n").encode())
    except OSError as e:
        print(f"warning: cannot write {path} ({e.strerror or e}): runs are not checked against this effort's settings")


def effort_settings(tsv, log_path=None):
    """The AR_* settings the effort's runs are measured with (measure.json), as a shell prefix
    ("AR_DATA=/a.txt AR_STEPS=50 "), or "" for a night run without overrides. Before the baseline
    is recorded there is no measure.json: the settings of the run in `log_path`, which its record
    will keep. Every run command decide prints carries them, so it works in a fresh shell."""
    path = measure_path(tsv)
    try:
        overrides = json.loads(path.read_text()).get("overrides", {}) if path and path.is_file() else None
    except (OSError, ValueError, AttributeError):
        return ""
    if overrides is None and log_path is not None:
        try:
            overrides = overrides_of(parse_summary(Path(log_path).read_bytes().decode("utf-8", errors="replace")))
        except OSError:
            overrides = {}
    if not isinstance(overrides, dict):
        return ""
    return "".join(f"{k}={shlex.quote(str(v))} " for k, v in sorted(overrides.items()) if k.startswith("AR_"))


def with_effort_settings(command, settings):
    """A command or hint of the keep rule with the effort's settings in front of its run command."""
    if not settings or RUN_TAIL not in command or settings in command:
        return command
    head, _, tail = command.partition(RUN_TAIL)  # head: "", "AR_SEED=5 " or a hint's words
    return f"{head}{settings}{RUN_TAIL}{tail}"


def one_line(text):
    return re.sub(r"[\t\r\n]+", " ", str(text)).strip()


def checked_description(text):
    if re.search(r"[\t\r\n]", text):
        raise Refusal("the description contains a tab or a line break: write it on one line, without tabs")
    if not text.strip():
        raise Refusal("the description is empty: say what this experiment changed")
    return text.strip()


def commit_problem(log_commit, head):
    """Why a run log's commit is not the clean code of HEAD, or None when it is."""
    if log_commit.endswith("-dirty"):
        return f"run.log says commit {log_commit}: train.py or prepare.py had uncommitted changes when it ran"
    if not log_commit or log_commit == "none" or not head.startswith(log_commit):
        return f"run.log is from commit {log_commit or '(none)'}, but HEAD is {head[:7]}"
    return None


def worker_name(cwd="."):
    top = git(["rev-parse", "--show-toplevel"], cwd)
    return os.environ.get("AR_WORKER") or (Path(top).name if top else "")


def row_values(tsv, log_path, log, status, description, head, force=False, kind="", note=""):
    """(column name -> text of the row that `record` appends, the problem that made it a crash)."""
    logged = parse_summary(log)
    problem = integrity_problem(log)
    if status != "crash" and "val_bpc" not in logged and not problem:
        raise Refusal(
            f"{log_path} has no val_bpc in a summary block (the lines after the last `---`): "
            "the run did not finish; record it with --status crash"
        )
    run_id = logged.get("run_id", "").strip()
    if run_id and run_id in recorded_run_ids(tsv):
        raise Refusal(f"run {run_id} ({log_path}) is already recorded in {tsv}: a run is recorded once")
    summary, sealed = logged, None
    if status != "crash" and not problem:
        sealed, problem = sealed_run(log_path, log)
        summary = sealed or logged
    git_problem = commit_problem(summary.get("commit", ""), head) if summary and not problem else None
    if git_problem and not force:
        raise Refusal(f"{git_problem}. Commit, rerun and record; or pass --force to record it anyway (the row says so)")
    run_id = summary.get("run_id", "").strip()
    description = checked_description(description)
    reported = reported_value(logged)[0] if logged.get("val_bpc_exact") else None
    if sealed is not None:
        score = float(sealed["val_bpc_exact"])
        edited = "" if reported == score else f"; run.log says {reported!r}: its text is not the score"
        print(f"score: val_bpc {score:.6f} from the sealed scorer's journal (run {run_id}){edited}")
    crashed = status == "crash" or problem is not None
    if problem:
        description += f" (crash: {one_line(problem)})"
    elif status == "crash" and (reason := crash_reason(log)):
        description += f" (crash: {one_line(reason)})"
    commit = summary.get("commit", "").removesuffix("-dirty")
    values = dict(
        commit=commit[:7] if git_problem and re.fullmatch(r"[0-9a-f]{7,40}", commit) else head[:7],
        val_bpc="0.000000" if crashed else f"{float(summary['val_bpc_exact']):.6f}",
        memory_gb="0.0" if crashed else f"{float(summary.get('peak_vram_mb') or 0) / 1024:.1f}",
        status="crash" if crashed else status,
        description=description,
        reported_bpc="" if reported is None else repr(reported),
        rescore_seconds="" if crashed else f"{float(summary.get('eval_seconds') or 0):.1f}",
        recorded_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        worker=worker_name(),
        note="; ".join(filter(None, [f"{FORCED_PREFIX} {git_problem}" if git_problem else "", note])),
        kind=kind,
    )
    values.update({key: one_line(summary.get(key, "")) for key in SUMMARY_TO_ROW})
    return values, problem


def unrecorded_runs_note(tsv, log_path, commit):
    """A note on the journal's scored runs of `commit` that no row records (refused, or never
    recorded), or None: they are evidence too, and the morning should not learn of them by chance."""
    recorded = recorded_run_ids(tsv)
    journal = run_journal(log_path)
    runs = [e for e in journal_runs(journal, commit) if e["run_id"] not in recorded] if journal else []
    if not runs:
        return None
    scores = [number(e.get("val_bpc_exact")) for e in runs]
    listed = ", ".join(f"{e['run_id']} (val_bpc {'-' if v is None else f'{v:.6f}'})" for e, v in zip(runs, scores))
    held = "1 scored run" if len(runs) == 1 else f"{len(runs)} scored runs"
    were = "was" if len(runs) == 1 else "were"
    return (
        f"note: the journal holds {held} of {commit} that {were} never recorded: {listed}; "
        "a run is evidence whether or not it is recorded"
    )


def save_keep_artifacts(tsv, checkpoint, commit):
    """A kept run's checkpoint (and the metrics.jsonl next to it) as checkpoints/<commit>.pt(.metrics.jsonl)."""
    run_dir = Path(checkpoint).parent
    if not Path(checkpoint).exists():
        print(f"note: no checkpoint at {checkpoint}: the weights of this keep are not saved")
        return None
    dest = checkpoints_dir(tsv) / f"{commit}.pt"
    copy_atomically(checkpoint, dest)
    if (run_dir / "metrics.jsonl").exists():
        copy_atomically(run_dir / "metrics.jsonl", dest.with_suffix(".metrics.jsonl"))
    print(f"saved the weights as {dest}")
    return dest


def drop_checkpoint(tsv, checkpoint):
    """Remove a recorded non-keep run's checkpoint (never one under checkpoints/)."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file() and checkpoints_dir(tsv) not in checkpoint.resolve().parents:
        with contextlib.suppress(OSError):
            checkpoint.unlink()


def record_run(tsv, log_path, status, description, force=False, kind="", note=""):
    """Record the run of `log_path` with `status` (keep/discard/crash, e.g. a keep rule's
    decision). Returns 0, or 1 when the run was recorded as a crash though asked otherwise."""
    log = read_log(log_path)
    head = git(["rev-parse", "HEAD"], ".")
    if not head:
        raise Refusal("not inside a git repository with a commit: record from the worktree that ran the experiment")
    if status not in STATUSES:
        raise Refusal(f"status {status!r} is not one of {', '.join(STATUSES)}")
    file_layout(tsv)  # a results file that cannot take a row refuses before anything else is checked
    values, problem = row_values(tsv, log_path, log, status, description, head, force, kind, note)
    with locked(tsv):
        if values["run_id"] and values["run_id"] in recorded_run_ids(tsv):
            raise Refusal(f"run {values['run_id']} ({log_path}) is already recorded in {tsv}: a run is recorded once")
        was_missing = not Path(tsv).exists()
        columns = append_row(tsv, values)
    backup = backup_path(tsv)
    print(f"recorded in {tsv}: " + format_row(values, BASE_COLUMNS).rstrip("\n"))
    if was_missing and backup and len(read_results(backup).rows) > 1:
        print(f"warning: {tsv} was missing, but the backup has earlier rows: run `python analysis.py restore`")
    if "fingerprint" not in columns:
        print(f"note: {tsv} has the original five columns; provenance is kept in the backup {backup}")
    if unrecorded := unrecorded_runs_note(tsv, log_path, values["commit"]):
        print(unrecorded)
    checkpoint = logged_checkpoint(log, Path(log_path).resolve().parent)
    saved = (checkpoints_dir(tsv) / f"{values['commit']}.pt").exists()
    if values["status"] == "keep":
        write_measure(tsv, sealed_run(log_path, log)[0])
    if values["status"] == "keep" and not (values.get("kind") == "replicate" and saved):
        save_keep_artifacts(tsv, checkpoint, values["commit"])
    else:  # a replicate keeps the commit's first saved weights: the baseline's stay the baseline's
        drop_checkpoint(tsv, checkpoint)
    if problem and status != "crash":
        print(f"crash: recorded as a crash, not a {status}: {problem}. Reset this commit and move on.")
        return 1
    return 0


def record_with_rule(args, tsv):
    """`python analysis.py record`: without --status it records the rule's verdict; with --status,
    the person's override (noted in the row). Prints the verdict and the commands to run next.
    Returns 0, or 1 when the run was recorded as a crash though asked otherwise."""
    file_layout(tsv)  # a results file that cannot take a row refuses before the run is judged
    try:
        _, verdict = verdict_for_log(tsv, args.log, args.description, getattr(args, "simplification", False))
    except CannotJudge as e:
        if not args.status:
            raise Refusal(str(e)) from None
        verdict = None
    status, description = args.status, args.description
    if status:
        kind = verdict.kind if verdict else ""
        rule = verdict.verdict if verdict else "not ready"
        differs = verdict is not None and verdict.status != status
        note = f"override: --status {status}, the rule said {rule}" if differs else ""
    else:
        status, kind, note = verdict.status, verdict.kind, verdict_note(verdict)
        if verdict.kind == "replicate" and not description.startswith(NOISE_PREFIX):
            description = f"{NOISE_PREFIX} {description}"
    code = record_run(tsv, args.log, status, description, force=args.force, kind=kind, note=note)
    if verdict is not None:
        settings = effort_settings(tsv)  # the baseline's record has just written them
        verdict.commands = [with_effort_settings(c, settings) for c in verdict.commands]
        print(verdict.text(with_record=False))
    return code

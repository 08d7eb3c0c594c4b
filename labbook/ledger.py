"""results.tsv: reading it, appending a run under a lock, its backup in the git directory, restoring.

There is one results.tsv per research effort, at the top of the main git worktree (every other
worktree records there too); it is git-ignored, and every row is also appended to a backup inside
the git directory, $(git rev-parse --git-common-dir)/autoresearch/results.tsv, which neither
`git reset --hard` nor `git clean -fdx` touch.
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from labbook.runlog import crash_reason, integrity_problem, logged_checkpoint, parse_summary

BASE_COLUMNS = ("commit", "val_bpc", "memory_gb", "status", "description")  # the originals' five
PROVENANCE_COLUMNS = (
    "reported_bpc",  # val_bpc_exact as run.log prints it; val_bpc is the sealed scorer's, from its journal
    "run_id",  # the run's id (summary): a run is recorded once
    "prepare_hash",  # the fingerprint's parts, each checked by `audit`: prepare.py's text ...
    "libraries",  # ... the installed x-transformers and adam-atan2-pytorch ...
    "budget",  # ... the training budget ...
    "eval_bytes",  # ... the scored bytes ...
    "data",  # ... and the data's identity
    "flags",  # what the harness saw (warmup_tokens, weights_edited, val_below_train) or none
    "train_bpc",
    "fingerprint",  # hash of the five parts above: equal means comparable
    "device",
    "gpu",
    "seed",
    "precision",
    "training_seconds",
    "num_steps",
    "tokens_per_sec",
    "rescore_seconds",  # what the sealed scorer's evaluation took
    "recorded_at",  # local ISO time of the `record` command
    "worker",  # AR_WORKER, or the name of the worktree that recorded the row
    "note",  # e.g. why the row was recorded with --force
)
CHECKSUM_COLUMN = "crc"  # always last: first 8 hex of sha256 of the rest of the line
COLUMNS = BASE_COLUMNS + PROVENANCE_COLUMNS + ("kind", CHECKSUM_COLUMN)  # kind: see labbook/keeprule.py
STATUSES = ("keep", "discard", "crash")
NOISE_PREFIX = "noise:"  # description of a baseline replicate run with another AR_SEED
# the provenance columns copied from the summary as they are; the others `record` computes
SUMMARY_TO_ROW = tuple(
    c for c in PROVENANCE_COLUMNS if c not in ("reported_bpc", "rescore_seconds", "recorded_at", "worker", "note")
)
FORCED_PREFIX = "forced:"
# prepare.py's UNMEASURED_VARS: the AR_* settings a run may change without being measured otherwise
UNMEASURED_VARS = ("AR_SEED", "AR_METRICS", "AR_CHECKPOINT", "AR_HARD_LIMIT", "AR_DEVICE", "AR_DATA_URL")


class Refusal(Exception):
    """Something analysis.py will not do, with the reason and the fix: printed as one line."""


# Where results live: git worktrees, the backup, the lock


def git(args, cwd):
    """Output of a git command run in `cwd`, or None when it fails (no repository, unknown commit)."""
    try:
        proc = subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_show(commit, path, cwd):
    """The exact text of `path` at `commit`, or None when git does not know it."""
    if not re.fullmatch(r"[0-9a-fA-F]{4,40}", commit or ""):
        return None
    try:
        proc = subprocess.run(["git", "-C", str(cwd), "show", f"{commit}:{path}"], capture_output=True)
    except OSError:
        return None
    return proc.stdout.decode("utf-8", errors="replace") if proc.returncode == 0 else None


def git_common_dir(cwd):
    """The .git directory that every worktree of the repository shares."""
    out = git(["rev-parse", "--path-format=absolute", "--git-common-dir"], cwd)
    return Path(out) if out else None


def main_worktree_top(cwd):
    common = git_common_dir(cwd)
    if common is None:
        return None
    if common.name == ".git":
        return common.parent
    top = git(["rev-parse", "--show-toplevel"], cwd)  # a submodule or a separate git dir
    return Path(top) if top else None


def default_tsv(cwd="."):
    """The effort's one results.tsv: top of the main worktree, or `cwd` outside git."""
    return (main_worktree_top(cwd) or Path(cwd).resolve()) / "results.tsv"


def backup_path(tsv):
    """Where rows appended to `tsv` are also kept: inside the git directory, out of reach of
    `git reset` and `git clean`. None when `tsv` is not inside a git repository."""
    tsv = Path(tsv).resolve()
    common = git_common_dir(tsv.parent) if tsv.parent.is_dir() else None
    if common is None:
        return None
    canonical = tsv == default_tsv(tsv.parent)
    name = "results.tsv" if canonical else f"results-{hashlib.sha1(str(tsv).encode()).hexdigest()[:10]}.tsv"
    return common / "autoresearch" / name


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


def results_repo(tsv):
    """The git repository a results file's commits live in: the one holding it, else the current one."""
    parent = Path(tsv).resolve().parent
    return parent if parent.is_dir() and git_common_dir(parent) else Path(".").resolve()


def checkpoints_dir(tsv):
    return Path(tsv).resolve().parent / "checkpoints"


@contextlib.contextmanager
def locked(tsv):
    """Exclusive lock on results.tsv.lock: one writer at a time, across processes and worktrees."""
    tsv = Path(tsv)
    tsv.parent.mkdir(parents=True, exist_ok=True)
    with open(tsv.with_name(tsv.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield  # closing the file releases the lock


def write_all(fd, data):
    """os.write until every byte is out (a full disk raises OSError(ENOSPC))."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def stage_file(path, data):
    """A temporary file next to `path` holding `data`, flushed to disk: (temporary path)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    os.close(fd)
    return Path(tmp)


def write_atomically(path, data):
    """Replace `path` with `data` (bytes): readers see the old file or the new one, never half."""
    tmp = stage_file(path, data)
    try:
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def copy_atomically(src, dest):
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.")
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    finally:
        Path(tmp).unlink(missing_ok=True)


# Reading results.tsv
#
# Every reader accepts the originals' five columns and the provenance columns after them, a
# missing header, CRLF line endings and a last line that a crash cut short. Rows that cannot
# be read are listed with their line numbers and skipped.


@dataclass
class Row:
    line: int  # 1-based line number in the file
    commit: str
    val_bpc: float
    memory_gb: float
    status: str
    description: str
    extra: dict = field(default_factory=dict)  # provenance columns, as text
    kind: str = ""  # baseline, replicate, experiment, simplification, confirm (labbook/keeprule.py)

    @property
    def noise(self):
        return self.description.startswith(NOISE_PREFIX)

    @property
    def measured(self):
        return self.status != "crash"

    def as_dict(self):
        base = dict(line=self.line, commit=self.commit, val_bpc=self.val_bpc, memory_gb=self.memory_gb)
        return {**base, "status": self.status, "description": self.description, **self.extra}


@dataclass
class Results:
    path: Path
    rows: list
    malformed: list  # (line number, reason)
    header_missing: bool = False
    columns: tuple = COLUMNS


def header_columns(line):
    """The column names of a header line, or None when `line` is not a header."""
    names = tuple(name.strip() for name in line.lstrip("\ufeff").rstrip("\r\n").split("\t"))
    if names[0] != "commit" or not set(BASE_COLUMNS) <= set(names):
        return None
    return names


def finite_number(text, name):
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{name} is {text}")
    return value


def row_crc(body):
    """The checksum of a row: first 8 hex of sha256 of the line without its `crc` field."""
    return hashlib.sha256(body.encode()).hexdigest()[:8]


def checksum_problem(line, columns):
    """Why a line of a file whose header has `crc` fails its checksum, or None."""
    if CHECKSUM_COLUMN not in columns:
        return None
    body, _, crc = line.rpartition("\t")
    if len(line.split("\t")) != len(columns):
        return f"{len(line.split(chr(9)))} columns, expected {len(columns)} (torn or hand-edited)"
    if row_crc(body) != crc.strip():
        return "checksum mismatch (torn or hand-edited)"
    return None


def parse_row(line, columns, number):
    if header_columns(line):
        raise ValueError("a second header line")
    if problem := checksum_problem(line, columns):
        raise ValueError(problem)
    fields = line.split("\t")
    if not len(BASE_COLUMNS) <= len(fields) <= len(columns):
        expected = len(columns) if len(columns) == len(BASE_COLUMNS) else f"{len(BASE_COLUMNS)} to {len(columns)}"
        raise ValueError(f"{len(fields)} columns, expected {expected}")
    values = dict(zip(columns, fields))
    status = values["status"].strip()
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    val_bpc = finite_number(values["val_bpc"], "val_bpc")
    if status != "crash" and val_bpc <= 0:
        raise ValueError(f"a {status} row with val_bpc {values['val_bpc']}")
    commit = values["commit"].strip()
    if not commit:
        raise ValueError("no commit")
    extra = {k: v for k, v in values.items() if k not in BASE_COLUMNS and k != CHECKSUM_COLUMN}
    memory = finite_number(values["memory_gb"], "memory_gb")
    return Row(number, commit, val_bpc, memory, status, values["description"], extra, extra.get("kind", "").strip())


def read_results(path):
    """Every readable row of a results file; unreadable lines go to `malformed`, never raise."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return Results(path, [], [])
    except OSError as e:  # a directory, no permission
        raise Refusal(f"cannot read {path}: {e.strerror}") from None
    lines = text.split("\n")  # a final "" when the file ends with a newline
    columns = header_columns(lines[0]) if lines[0].strip() else None
    results = Results(path, [], [], header_missing=columns is None and bool(text.strip()), columns=columns or COLUMNS)
    if results.header_missing:  # the layout fix-header would give it
        results.columns = headerless_columns(text.encode())
    for number, raw in enumerate(lines, start=1):
        line = raw.rstrip("\r")
        if (number == 1 and columns) or not line.strip():
            continue
        try:
            results.rows.append(parse_row(line, results.columns, number))
        except ValueError as e:
            cut_short = number == len(lines) and not text.endswith("\n")
            results.malformed.append((number, f"{e}{' (last line, cut short)' if cut_short else ''}"))
    return results


# Recording a run
#
# `record` parses the summary block of run.log itself, so no number is ever typed, checks that
# the log belongs to the current commit and says one thing, re-scores the run's checkpoint with
# the baseline's prepare.py (labbook/rescore.py) and records that re-score as val_bpc. A run that
# fails any check is recorded as a crash with the reason, so the history stays complete.
#
# Checkpoint retention: the baseline's and every keep's checkpoint.pt (and metrics.jsonl) are
# copied to checkpoints/<commit>.pt (.metrics.jsonl) next to results.tsv; every other run's
# checkpoint is removed once it is recorded (a run is recorded once, so it is never needed again).


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


def harness_commit(tsv):
    """The commit whose prepare.py re-scores checkpoints: the baseline's, or None (HEAD) before one exists."""
    from labbook.report import baseline_row  # the report is built on this module

    results = read_results(tsv)
    baseline = baseline_row(results.rows, results_repo(tsv))
    return baseline.commit if baseline else None


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


def sealed_run(log_path, log=None):
    """(the journal's summary of the run behind `log_path`, as text, None), or (None, why the log is
    not one finished run: it records as a crash). The number and every provenance field come from
    the sealed scorer's journal entry, never from run.log's text; a run with no usable entry there
    (none for its run_id, a checkpoint that is not the one scored) is a Refusal: nothing to record."""
    from labbook.rescore import journal_score

    log = read_log(log_path) if log is None else log
    if problem := integrity_problem(log):
        return None, problem
    entry, problem = journal_score(log_path, parse_summary(log), log)
    if problem:
        raise Refusal(f"{problem}. Nothing was recorded: rerun the commit (python train.py > run.log 2>&1)")
    return {k: str(v) for k, v in entry["summary"].items()}, None


def recorded_run_ids(tsv):
    ids = {row.extra.get("run_id", "").strip() for row in read_results(tsv).rows}
    backup = backup_path(tsv)
    if backup is not None:
        ids |= {row.extra.get("run_id", "").strip() for row in read_results(backup).rows}
    return ids - {""}


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


def format_row(values, columns):
    """One line for a file with these columns, its checksum last when the file has a `crc`
    column. A file without a `note` column carries the note in the description, so a forced row
    is visible in every layout."""
    values = dict(values)
    if values.get("note") and "note" not in columns:
        values["description"] += f" [{values['note']}]"
    body = "\t".join(values.get(name, "") for name in columns if name != CHECKSUM_COLUMN)
    if CHECKSUM_COLUMN in columns:
        body += "\t" + row_crc(body)
    return body + "\n"


def file_layout(path):
    """(header columns or None for an empty/absent file, the file's bytes).
    Refuses a non-empty file that does not start with the header: appending would bury it."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        return None, b""
    except OSError as e:
        raise Refusal(f"cannot read {path}: {e.strerror}") from None
    if not data:
        return None, b""
    columns = header_columns(data.split(b"\n", 1)[0].decode("utf-8", errors="replace"))
    if columns is None:
        raise Refusal(
            f"{path} does not start with the header line, so no row was appended. Add it with "
            f"`python analysis.py fix-header{tsv_flag(path)}` (it keeps every row), or by hand: " + "\\t".join(COLUMNS)
        )
    return columns, data


def tsv_flag(path):
    return "" if Path(path).resolve() == default_tsv().resolve() else f" --tsv {path}"


def appended(path, values):
    """(columns, the whole new content of `path` with the row appended). A header is written
    first into an empty file; a torn last line stays a line of its own, never glued to the row."""
    columns, data = file_layout(path)
    row = format_row(values, columns or COLUMNS).encode()
    if columns is None:
        return COLUMNS, ("\t".join(COLUMNS) + "\n").encode() + row
    return columns, data + (b"\n" if not data.endswith(b"\n") else b"") + row


def append_row(tsv, values):
    """Append one row to results.tsv and its backup in one step: both new files are written in
    full next to the old ones, then renamed over them; a failed write (a full disk) leaves both
    untouched and is one Refusal. The caller holds the lock. Returns the columns of results.tsv."""
    targets = [Path(tsv)]
    backup = backup_path(tsv)
    if backup is not None:
        targets.append(backup)
    staged, columns = [], None
    try:
        for path in targets:
            path.parent.mkdir(parents=True, exist_ok=True)
            cols, data = appended(path, values)
            columns = columns or cols
            staged.append((stage_file(path, data), path))
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as e:
        raise Refusal(
            f"cannot write {path}: {e.strerror or e}; no row was recorded (free space, then record again)"
        ) from None
    finally:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
    return columns


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


def record(args, tsv):
    """`analysis.py record`: see record_run."""
    kind, note = getattr(args, "kind", ""), getattr(args, "note", "")  # set by the keep rule
    return record_run(tsv, args.log, args.status, args.description, force=args.force, kind=kind, note=note)


def record_run(tsv, log_path, status, description, force=False, kind="", note=""):
    """Record the run of `log_path` with `status` (keep/discard/crash, e.g. a keep rule's
    decision). Returns 0, or 1 when the run was recorded as a crash though asked otherwise."""
    log = read_log(log_path)
    head = git(["rev-parse", "HEAD"], ".")
    if not head:
        raise Refusal("not inside a git repository with a commit: record from the worktree that ran the experiment")
    if status not in STATUSES:
        raise Refusal(f"status {status!r} is not keep, discard or crash")
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


def read_log(path):
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise Refusal(f"cannot read the run log {path}: {e.strerror}") from None


# Restoring from the backup


def split_header(lines):
    """(columns or None, data lines) of a file's lines, blank lines dropped."""
    lines = [line.rstrip("\r") for line in lines if line.strip()]
    if lines and (columns := header_columns(lines[0])):
        return columns, lines[1:]
    return None, lines


def file_lines(path):
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace").split("\n")
    except FileNotFoundError:
        return []


def sound_lines(lines, columns):
    """The lines that pass their checksum (all of them in a file without a `crc` column)."""
    return [line for line in lines if checksum_problem(line, columns) is None]


def convert_line(line, source, target):
    """A data line of a file with columns `source`, laid out for a file with columns `target`."""
    fields = line.split("\t")
    if source == target or not len(BASE_COLUMNS) <= len(fields) <= len(source):
        return line  # same layout, or not a readable row: kept as it is
    values = dict(zip(source, fields))
    return format_row(values, target).rstrip("\n")


def row_key(line):
    return tuple(line.split("\t")[: len(BASE_COLUMNS)])


def merge_lines(backup, live):
    """Every data line of both files once, in the backup's order; a line only the live file has
    goes right after the line that precedes it there. Equal rows are matched one to one."""
    positions = {}
    for i, line in enumerate(backup):
        positions.setdefault(row_key(line), []).append(i)
    used, after, anchor = Counter(), {}, -1
    for line in live:
        key = row_key(line)
        if used[key] < len(positions.get(key, [])):
            anchor = positions[key][used[key]]
            used[key] += 1
        else:
            after.setdefault(anchor, []).append(line)
    merged = list(after.get(-1, []))
    for i, line in enumerate(backup):
        merged += [line, *after.get(i, [])]
    return merged


def restore(tsv):
    """Merge the backup's rows back into results.tsv. A row that fails its checksum (torn, or
    edited by hand) in the backup is never brought back."""
    backup = backup_path(tsv)
    if backup is None or not backup.exists():
        raise Refusal(f"there is no backup of {tsv} (looked for {backup}): nothing to restore")
    with locked(tsv):
        b_columns, b_lines = split_header(file_lines(backup))
        l_columns, l_lines = split_header(file_lines(tsv))
        b_columns, l_columns = b_columns or COLUMNS, l_columns or COLUMNS
        columns = b_columns if b_lines or not l_lines else l_columns
        skipped = len(b_lines) - len(b_lines := sound_lines(b_lines, b_columns))
        live = [convert_line(line, l_columns, columns) for line in l_lines]
        merged = merge_lines([convert_line(line, b_columns, columns) for line in b_lines], live)
        write_atomically(tsv, ("\n".join(["\t".join(columns), *merged]) + "\n").encode())
    added = len(merged) - len(live)
    print(f"restored {tsv}: {len(merged)} rows, {added} of them brought back from {backup}")
    if skipped:
        print(f"warning: {skipped} row(s) of the backup failed their checksum and were not brought back")
    return 0


def headerless_columns(data):
    """The columns of a file without a header: as many of COLUMNS as its widest line has."""
    widest = max((len(line.split(b"\t")) for line in data.split(b"\n") if line.strip()), default=len(COLUMNS))
    return COLUMNS if widest >= len(COLUMNS) else COLUMNS[: max(widest, len(BASE_COLUMNS))]


def fix_header(tsv):
    """Put the header on top of a headerless file, keeping every byte of its rows."""
    with locked(tsv):
        try:
            data = Path(tsv).read_bytes() if Path(tsv).exists() else b""
        except OSError as e:
            raise Refusal(f"cannot read {tsv}: {e.strerror}") from None
        first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        if header_columns(first):
            print(f"{tsv} already starts with the header line")
            return 0
        columns = headerless_columns(data)
        write_atomically(tsv, "\t".join(columns).encode() + b"\n" + data.lstrip(b"\r\n"))
    print(f"added the header line ({len(columns)} columns) to {tsv}")
    return 0

"""results.tsv: reading it, appending a run under a lock, its backup in the git directory, restoring.

There is one results.tsv per research effort, at the top of the main git worktree (every other
worktree records there too); it is git-ignored, and every row is also appended to a backup inside
the git directory, $(git rev-parse --git-common-dir)/autoresearch/results.tsv, which neither
`git reset --hard` nor `git clean -fdx` touch.
"""

import contextlib
import fcntl
import hashlib
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from labbook.runlog import crash_reason, parse_summary

BASE_COLUMNS = ("commit", "val_bpc", "memory_gb", "status", "description")  # the originals' five
PROVENANCE_COLUMNS = (
    "fingerprint",  # hash of train.py's FIXED region + budget + eval bytes + data: equal means comparable
    "gpu",
    "seed",
    "precision",
    "training_seconds",
    "num_steps",
    "tokens_per_sec",
    "recorded_at",  # local ISO time of the `record` command
    "worker",  # AR_WORKER, or the name of the worktree that recorded the row
    "note",  # e.g. why the row was recorded with --force
)
COLUMNS = BASE_COLUMNS + PROVENANCE_COLUMNS + ("kind",)  # kind: see labbook/keeprule.py
STATUSES = ("keep", "discard", "crash")
NOISE_PREFIX = "noise:"  # description of a baseline replicate run with another AR_SEED
SUMMARY_TO_ROW = ("fingerprint", "gpu", "seed", "precision", "training_seconds", "num_steps", "tokens_per_sec")


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


def write_atomically(path, data):
    """Replace `path` with `data` (bytes): readers see the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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


def parse_row(line, columns, number):
    fields = line.split("\t")
    if not len(BASE_COLUMNS) <= len(fields) <= len(columns):
        expected = len(columns) if len(columns) == len(BASE_COLUMNS) else f"{len(BASE_COLUMNS)} to {len(columns)}"
        raise ValueError(f"{len(fields)} columns, expected {expected}")
    values = dict(zip(columns, fields))
    if header_columns(line):
        raise ValueError("a second header line")
    status = values["status"].strip()
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not keep, discard or crash")
    val_bpc = finite_number(values["val_bpc"], "val_bpc")
    if status != "crash" and val_bpc <= 0:
        raise ValueError(f"a {status} row with val_bpc {values['val_bpc']}")
    commit = values["commit"].strip()
    if not commit:
        raise ValueError("no commit")
    extra = {k: v for k, v in values.items() if k not in BASE_COLUMNS}
    memory = finite_number(values["memory_gb"], "memory_gb")
    return Row(number, commit, val_bpc, memory, status, values["description"], extra, extra.get("kind", "").strip())


def read_results(path):
    """Every readable row of a results file; unreadable lines go to `malformed`, never raise."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return Results(path, [], [])
    lines = text.split("\n")  # a final "" when the file ends with a newline
    columns = header_columns(lines[0]) if lines[0].strip() else None
    results = Results(path, [], [], header_missing=columns is None and bool(text.strip()), columns=columns or COLUMNS)
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
# the log belongs to the current commit, and appends one row under a lock with one write.


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
        return f"run.log says commit {log_commit}: train.py had uncommitted changes when it ran"
    if not log_commit or log_commit == "none" or not head.startswith(log_commit):
        return f"run.log is from commit {log_commit or '(none)'}, but HEAD is {head[:7]}"
    return None


def worker_name(cwd="."):
    top = git(["rev-parse", "--show-toplevel"], cwd)
    return os.environ.get("AR_WORKER") or (Path(top).name if top else "")


def row_values(args, log, head):
    """Column name -> text of the row that `record` appends, or a Refusal."""
    summary = parse_summary(log)
    crashed = args.status == "crash"
    if not crashed and "val_bpc" not in summary:
        raise Refusal(
            f"{args.log} has no val_bpc in a summary block (the lines after the last `---`): "
            "the run did not finish; record it with --status crash"
        )
    problem = commit_problem(summary.get("commit", ""), head) if summary else None
    if problem and not args.force:
        raise Refusal(f"{problem}. Commit, rerun and record; or pass --force to record it anyway (the row says so)")
    logged = summary.get("commit", "").removesuffix("-dirty")
    description = checked_description(args.description)
    if crashed and (reason := crash_reason(log)):
        description += f" (crash: {one_line(reason)})"
    values = dict(
        commit=logged[:7] if problem and re.fullmatch(r"[0-9a-f]{7,40}", logged) else head[:7],
        val_bpc="0.000000" if crashed else f"{checked_val_bpc(summary['val_bpc']):.6f}",
        memory_gb="0.0" if crashed else f"{float(summary.get('peak_vram_mb') or 0) / 1024:.1f}",
        status=args.status,
        description=description,
        recorded_at=datetime.now().astimezone().isoformat(timespec="seconds"),
        worker=worker_name(),
        note="; ".join(filter(None, [f"forced: {problem}" if problem else "", getattr(args, "note", "")])),
        kind=getattr(args, "kind", ""),
    )
    values.update({key: one_line(summary.get(key, "")) for key in SUMMARY_TO_ROW})
    return values


def checked_val_bpc(text):
    try:
        return finite_number(text, "val_bpc")
    except ValueError as e:
        raise Refusal(f"run.log reports {e}: record it with --status crash") from None


def format_row(values, columns):
    """One line for a file with these columns. A file without a `note` column carries the note in
    the description, so a forced row is visible in every layout."""
    values = dict(values)
    if values.get("note") and "note" not in columns:
        values["description"] += f" [{values['note']}]"
    return "\t".join(values.get(name, "") for name in columns) + "\n"


def file_layout(path):
    """(header columns or None for an empty/absent file, whether the last line lacks its newline).
    Refuses a non-empty file that does not start with the header: appending would bury it."""
    try:
        with open(path, "rb") as f:
            first = f.readline().decode("utf-8", errors="replace")
            size = f.seek(0, os.SEEK_END)
            f.seek(max(size - 1, 0))
            cut_short = size > 0 and f.read(1) != b"\n"
    except FileNotFoundError:
        return None, False
    if size == 0:
        return None, False
    columns = header_columns(first)
    if columns is None:
        raise Refusal(
            f"{path} does not start with the header line, so no row was appended. Add it with "
            f"`python analysis.py fix-header{tsv_flag(path)}` (it keeps every row), or by hand: " + "\\t".join(COLUMNS)
        )
    return columns, cut_short


def tsv_flag(path):
    return "" if Path(path).resolve() == default_tsv().resolve() else f" --tsv {path}"


def append_row(path, values):
    """Append one row with a single os.write and an fsync; the caller holds the lock. A header
    is written first into an empty file. Returns the columns of the file."""
    columns, cut_short = file_layout(path)
    data = format_row(values, columns or COLUMNS)
    if columns is None:
        data = "\t".join(COLUMNS) + "\n" + data
    elif cut_short:  # a torn last line stays a line of its own, never glued to this row
        data = "\n" + data
    payload = data.encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.write(fd, payload) != len(payload):
            raise OSError(f"short write to {path}")
        os.fsync(fd)
    finally:
        os.close(fd)
    return columns or COLUMNS


def append_backup(tsv, values):
    """The same row in the backup inside the git directory. Never stops a record."""
    backup = backup_path(tsv)
    if backup is None:
        return None
    try:
        backup.parent.mkdir(parents=True, exist_ok=True)
        append_row(backup, values)
    except (Refusal, OSError) as e:
        print(f"warning: the backup {backup} was not updated: {e}", file=sys.stderr)
    return backup


def save_keep_artifacts(tsv, log_path, commit):
    """A kept run's checkpoint.pt (and metrics.jsonl) as checkpoints/<commit>.pt(.metrics.jsonl)."""
    run_dir = Path(log_path).resolve().parent
    checkpoint = run_dir / "checkpoint.pt"
    if not checkpoint.exists():
        print(f"note: no checkpoint.pt in {run_dir}: the weights of this keep are not saved")
        return None
    dest = checkpoints_dir(tsv) / f"{commit}.pt"
    copy_atomically(checkpoint, dest)
    if (run_dir / "metrics.jsonl").exists():
        copy_atomically(run_dir / "metrics.jsonl", dest.with_suffix(".metrics.jsonl"))
    print(f"saved the weights as {dest}")
    return dest


def record(args, tsv):
    log = read_log(args.log)
    head = git(["rev-parse", "HEAD"], ".")
    if not head:
        raise Refusal("not inside a git repository with a commit: record from the worktree that ran the experiment")
    values = row_values(args, log, head)
    with locked(tsv):
        was_missing = not Path(tsv).exists()
        columns = append_row(tsv, values)
        backup = append_backup(tsv, values)
    print(f"recorded in {tsv}: " + format_row(values, BASE_COLUMNS).rstrip("\n"))
    if was_missing and backup and len(read_results(backup).rows) > 1:
        print(f"warning: {tsv} was missing, but the backup has earlier rows: run `python analysis.py restore`")
    if "fingerprint" not in columns:
        print(f"note: {tsv} has the original five columns; provenance is kept in the backup {backup}")
    if args.status == "keep":
        save_keep_artifacts(tsv, args.log, values["commit"])
        warn_if_small_gain(tsv)
    return 0


def read_log(path):
    try:
        return Path(path).read_bytes().decode("utf-8", errors="replace")
    except OSError as e:
        raise Refusal(f"cannot read the run log {path}: {e.strerror}") from None


def warn_if_small_gain(tsv):
    from labbook.report import summarize  # the report is built on this module

    report = summarize(read_results(tsv))
    last = report["kept"][-1] if report["kept"] else None
    threshold = report["keep_threshold"]
    if last and last["delta"] is not None and threshold is not None and -last["delta"] < threshold:
        print(f"warning: this keep gains {-last['delta']:.6f} over the best, below the keep threshold {threshold:.6f}")


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


def convert_line(line, source, target):
    """A data line of a file with columns `source`, laid out for a file with columns `target`."""
    fields = line.split("\t")
    if source == target or not len(BASE_COLUMNS) <= len(fields) <= len(source):
        return line  # same layout, or not a readable row: kept as it is
    values = dict(zip(source, fields))
    return "\t".join(values.get(name, "") for name in target)


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
    backup = backup_path(tsv)
    if backup is None or not backup.exists():
        raise Refusal(f"there is no backup of {tsv} (looked for {backup}): nothing to restore")
    with locked(tsv):
        b_columns, b_lines = split_header(file_lines(backup))
        l_columns, l_lines = split_header(file_lines(tsv))
        columns = b_columns or l_columns or COLUMNS
        live = [convert_line(line, l_columns or COLUMNS, columns) for line in l_lines]
        merged = merge_lines([convert_line(line, b_columns or COLUMNS, columns) for line in b_lines], live)
        write_atomically(tsv, ("\n".join(["\t".join(columns), *merged]) + "\n").encode())
    added = len(merged) - len(live)
    print(f"restored {tsv}: {len(merged)} rows, {added} of them brought back from {backup}")
    return 0


def fix_header(tsv):
    """Put the header on top of a headerless file, keeping every byte of its rows."""
    with locked(tsv):
        data = Path(tsv).read_bytes() if Path(tsv).exists() else b""
        first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace")
        if header_columns(first):
            print(f"{tsv} already starts with the header line")
            return 0
        widest = max((len(line.split(b"\t")) for line in data.split(b"\n") if line.strip()), default=len(COLUMNS))
        columns = COLUMNS[: min(max(widest, len(BASE_COLUMNS)), len(COLUMNS))]
        write_atomically(tsv, "\t".join(columns).encode() + b"\n" + data.lstrip(b"\r\n"))
    print(f"added the header line ({len(columns)} columns) to {tsv}")
    return 0

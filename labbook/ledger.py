"""results.tsv: its columns, reading it, appending a row (with its backup in the git directory),
restoring from the backup and fixing a missing header. Nothing else: what a row says about a run
is the record use case's (labbook/recording.py), which rows count is the audit's (labbook/audit.py).

There is one results.tsv per research effort, at the top of the main git worktree (every other
worktree records there too); it is git-ignored, and every row is also appended to a backup inside
the git directory, $(git rev-parse --git-common-dir)/autoresearch/results.tsv, which neither
`git reset --hard` nor `git clean -fdx` touch. The caller of append_row holds the lock (labbook/base.py).
"""

import hashlib
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from labbook.base import Refusal, default_tsv, git_common_dir, locked, stage_file, write_atomically
from labbook.keeprule import NOISE_PREFIX

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
    "sandbox",  # the trainer's kernel boundary: `landlock ABI <n>`, or `none (<why>)`; empty before it was recorded
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
STATUSES = ("keep", "discard", "provisional", "crash")  # provisional: sent to a confirmation run
# the provenance columns copied from the summary as they are; the others `record` computes
SUMMARY_TO_ROW = tuple(
    c for c in PROVENANCE_COLUMNS if c not in ("reported_bpc", "rescore_seconds", "recorded_at", "worker", "note")
)
FORCED_PREFIX = "forced:"


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
        raise ValueError(f"status {status!r} is not keep, discard, provisional or crash")
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


# Appending a row
#
# A row is appended to results.tsv and its backup in one step, under the lock (labbook/base.py).


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


def recorded_run_ids(tsv):
    ids = {row.extra.get("run_id", "").strip() for row in read_results(tsv).rows}
    backup = backup_path(tsv)
    if backup is not None:
        ids |= {row.extra.get("run_id", "").strip() for row in read_results(backup).rows}
    return ids - {""}


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

# %% [markdown]
# # Autoresearch: what happened overnight
#
# `results.tsv` holds one row per experiment: the commit, its `val_bpc`, peak memory, whether the
# agent kept it, and what it tried. This notebook reads the `results.tsv` in its working
# directory and shows the report the command line prints: totals, the kept changes and their
# gains, the noise floor, near-misses, the integrity audit, and the progress and memory plots.

# %%
"""Record experiments in results.tsv and report on them: the night's memory and the morning's view.

Usage:
  python analysis.py record --status keep --description "SwiGLU feed-forward"   # reads ./run.log
  python analysis.py record --status crash --description "depth 16" path/to/run.log
  python analysis.py                  # report: totals, kept changes, noise floor, audit; writes
                                      # progress.png and memory.png next to results.tsv (or --out DIR)
  python analysis.py --json           # the same for the agent (never evaluates the test split)
  python analysis.py audit            # rows not comparable with the baseline; exit 1 if any
  python analysis.py curves metrics.jsonl checkpoints/abc1234.metrics.jsonl --out curves.png
  python analysis.py evaluate checkpoints/abc1234.pt --split test   # for the person, in the morning
  python analysis.py restore          # bring back rows lost from results.tsv, from the backup
  python analysis.py fix-header       # put the header line back on top of a headerless results.tsv
  python analysis.py --tsv other.tsv audit    # --tsv works with every subcommand

Noise floor: rerun the baseline with AR_SEED=1, 2, ... and record each as
  python analysis.py record --status discard --description "noise: AR_SEED=1"
Twice the sample std of the baseline and its replicates is the keep threshold the report uses.

There is one results.tsv per research effort, at the top of the main git worktree (every other
worktree records there too); it is git-ignored, and every row is also appended to a backup inside
the git directory, $(git rev-parse --git-common-dir)/autoresearch/results.tsv, which neither
`git reset --hard` nor `git clean -fdx` touch.

As a notebook: `jupytext --to notebook analysis.py` writes analysis.ipynb, which runs top to
bottom on the results.tsv in its working directory.
"""

import argparse
import contextlib
import fcntl
import hashlib
import importlib.util
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

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
COLUMNS = BASE_COLUMNS + PROVENANCE_COLUMNS
STATUSES = ("keep", "discard", "crash")
NOISE_PREFIX = "noise:"  # description of a baseline replicate run with another AR_SEED
SUMMARY_TO_ROW = ("fingerprint", "gpu", "seed", "precision", "training_seconds", "num_steps", "tokens_per_sec")
FIXED_START, FIXED_END = "# ==== FIXED REGION START", "# ==== FIXED REGION END"
TOP_IMPROVEMENTS = 10
TEST_SPLIT_NOTE = (
    "The test split is for the person reading the results in the morning, never for the agent's "
    "keep/discard decisions: those rest on val_bpc alone."
)
IN_NOTEBOOK = __name__ == "__main__" and "ipykernel" in sys.modules


class Refusal(Exception):
    """Something analysis.py will not do, with the reason and the fix: printed as one line."""


# %% [markdown]
# ## Where results live: git worktrees, the backup, the lock

# %%


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


# %% [markdown]
# ## Reading results.tsv
#
# Every reader accepts the originals' five columns and the provenance columns after them, a
# missing header, CRLF line endings and a last line that a crash cut short. Rows that cannot
# be read are listed with their line numbers and skipped.

# %%


@dataclass
class Row:
    line: int  # 1-based line number in the file
    commit: str
    val_bpc: float
    memory_gb: float
    status: str
    description: str
    extra: dict = field(default_factory=dict)  # provenance columns, as text

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
    return Row(number, commit, val_bpc, memory, status, values["description"], extra)


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


def parse_summary(log):
    """The `key: value` lines after the last line that is exactly `---` ({} when there is none)."""
    lines = [line.rstrip("\r") for line in log.split("\n")]
    if "---" not in lines:
        return {}
    start = len(lines) - lines[::-1].index("---")
    summary = {}
    for line in lines[start:]:
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"\w+", key):  # total_tokens_M and num_params_M have capitals
            summary[key] = value.strip()
    return summary


def crash_reason(log):
    """The message of the last `crash:` line of a run log, or None."""
    reasons = [line[len("crash:") :].strip() for line in log.split("\n") if line.startswith("crash:")]
    return reasons[-1] if reasons else None


# %% [markdown]
# ## Recording a run
#
# `record` parses the summary block of run.log itself, so no number is ever typed, checks that
# the log belongs to the current commit, and appends one row under a lock with one write.

# %%


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
        note=f"forced: {problem}" if problem else "",
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
    report = summarize(read_results(tsv))
    last = report["kept"][-1] if report["kept"] else None
    threshold = report["keep_threshold"]
    if last and last["delta"] is not None and threshold is not None and -last["delta"] < threshold:
        print(f"warning: this keep gains {-last['delta']:.6f} over the best, below the keep threshold {threshold:.6f}")


# %% [markdown]
# ## Restoring from the backup

# %%


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


# %% [markdown]
# ## The numbers: baseline, best, noise floor, near-misses, crash streak
#
# The baseline is the first kept row that is not a noise replicate. Rows whose description
# starts with `noise:` rerun the baseline with other seeds; the sample standard deviation of
# the baseline and its replicates is the noise floor, and a keep should beat the best by twice
# that (the keep threshold).

# %%


def baseline_row(rows):
    keeps = [r for r in rows if r.status == "keep" and not r.noise]
    return keeps[0] if keeps else (rows[0] if rows else None)


def noise_floor(rows, baseline):
    """(sample std of the baseline and its replicates, or None with fewer than 2, replicates)."""
    replicates = [r.val_bpc for r in rows if r.noise and r.measured]
    if len(replicates) < 2 or baseline is None or not baseline.measured:
        return None, len(replicates)
    return statistics.stdev([baseline.val_bpc, *replicates]), len(replicates)


def kept_progression(rows, baseline):
    """Each kept row with its change against the best before it (None for the first)."""
    best, kept = None, []
    for row in rows:
        if row.status != "keep" or row.noise:
            continue
        kept.append(
            {
                **row.as_dict(),
                "delta": None if best is None else row.val_bpc - best.val_bpc,
                "vs_baseline": row.val_bpc - baseline.val_bpc,
            }
        )
        if best is None or row.val_bpc < best.val_bpc:
            best = row
    return kept


def best_row(rows):
    keeps = [r for r in rows if r.status == "keep" and not r.noise]
    return min(keeps, key=lambda r: r.val_bpc) if keeps else None


def near_misses(rows, threshold):
    """Discarded experiments within the keep threshold of the best at the time they ran (with the
    threshold unknown: those that beat it)."""
    best, misses = None, []
    for row in rows:
        if row.status == "keep" and not row.noise:
            best = row.val_bpc if best is None else min(best, row.val_bpc)
        elif row.status == "discard" and not row.noise and best is not None:
            margin = row.val_bpc - best
            if margin < (threshold or 0.0):
                misses.append({**row.as_dict(), "best_at_the_time": best, "margin": margin})
    return misses


def crash_streak(rows):
    streak = 0
    for row in reversed(rows):
        if row.status != "crash":
            break
        streak += 1
    return streak


def since_last_improvement(rows, best):
    experiments = [r for r in rows if not r.noise]
    return len(experiments) - 1 - experiments.index(best) if best else len(experiments)


def summarize(results):
    """Everything the report shows, as plain data: the JSON the agent reads."""
    rows = results.rows
    experiments = [r for r in rows if not r.noise]
    counts = Counter(r.status for r in rows)
    baseline, best = baseline_row(rows), best_row(rows)
    floor, replicates = noise_floor(rows, baseline)
    threshold = 2 * floor if floor is not None else None
    kept = kept_progression(rows, baseline) if baseline else []
    improvement = baseline.val_bpc - best.val_bpc if best and baseline.measured else None
    return {
        "file": str(results.path),
        "totals": {
            "rows": len(rows),
            "experiments": len(experiments),
            "noise_runs": len(rows) - len(experiments),
            **{status: counts[status] for status in STATUSES},
        },
        "keep_rate": sum(r.status == "keep" for r in experiments) / len(experiments) if experiments else None,
        "baseline": baseline.as_dict() if baseline else None,
        "best": best.as_dict() if best else None,
        "best_commit": best.commit if best else None,
        "best_val_bpc": best.val_bpc if best else None,
        "improvement": improvement,
        "improvement_pct": 100 * improvement / baseline.val_bpc if improvement is not None else None,
        "kept": kept,
        "top_improvements": sorted((k for k in kept if k["delta"] is not None), key=lambda k: k["delta"])[
            :TOP_IMPROVEMENTS
        ],
        "noise_floor": floor,
        "noise_replicates": replicates,
        "keep_threshold": threshold,
        "experiments_since_improvement": since_last_improvement(rows, best),
        "near_misses": near_misses(rows, threshold),
        "crash_streak": crash_streak(rows),
        "header_missing": results.header_missing,
        "malformed": [{"line": n, "reason": reason} for n, reason in results.malformed],
    }


# %% [markdown]
# ## Integrity audit
#
# A row is comparable with the baseline when both ran the same FIXED region of train.py with
# the same budget, evaluation and data: the same `fingerprint`, or, for rows without one, the
# same FIXED region text in git. Kept rows that gain less than the keep threshold are flagged
# too: their gain may be noise.

# %%


def fixed_region(source):
    """The lines of every FIXED region block of a train.py source."""
    inside, kept = False, []
    for line in source.splitlines():
        inside = inside or line.startswith(FIXED_START)
        if inside:
            kept.append(line)
        inside = inside and not line.startswith(FIXED_END)
    return "\n".join(kept)


def fixed_region_at(commit, repo, cache):
    """The FIXED region of train.py at `commit`, or None when git does not know the commit."""
    if commit not in cache:
        source = git(["show", f"{commit}:train.py"], repo) if re.fullmatch(r"[0-9a-fA-F]{4,40}", commit) else None
        cache[commit] = None if source is None else fixed_region(source)
    return cache[commit]


def comparability(row, baseline, repo, cache):
    """("ok" | "not comparable" | "unverifiable", reason)."""
    mine, theirs = row.extra.get("fingerprint", "").strip(), baseline.extra.get("fingerprint", "").strip()
    if mine and theirs:
        if mine == theirs:
            return "ok", ""
        return "not comparable", f"fingerprint {mine} differs from the baseline's {theirs}"
    mine, theirs = fixed_region_at(row.commit, repo, cache), fixed_region_at(baseline.commit, repo, cache)
    if mine is None or theirs is None:
        unknown = row.commit if mine is None else baseline.commit
        return "unverifiable", f"no fingerprint, and git does not know commit {unknown}"
    if mine != theirs:
        return (
            "not comparable",
            f"train.py's FIXED region at {row.commit} differs from the baseline's ({baseline.commit})",
        )
    return "ok", ""


def small_gains(report):
    """Kept rows that did not beat the best before them by the keep threshold (or at all)."""
    threshold, flagged = report["keep_threshold"], []
    for kept in report["kept"]:
        gain = None if kept["delta"] is None else -kept["delta"]
        if gain is not None and (gain <= 0 or (threshold is not None and gain < threshold)):
            flagged.append({"line": kept["line"], "commit": kept["commit"], "gain": gain, "threshold": threshold})
    return flagged


def audit(results, report):
    """Rows not comparable with the baseline, rows that cannot be checked, and small-gain keeps."""
    baseline = baseline_row(results.rows)
    found = {"not comparable": [], "unverifiable": []}
    repo, cache = Path(results.path).resolve().parent, {}
    for row in results.rows:
        if row is baseline:
            continue
        verdict, reason = comparability(row, baseline, repo, cache)
        if verdict != "ok":
            found[verdict].append({"line": row.line, "commit": row.commit, "reason": reason})
    gains = small_gains(report)
    return {
        "baseline_commit": baseline.commit if baseline else None,
        "not_comparable": found["not comparable"],
        "unverifiable": found["unverifiable"],
        "small_gains": gains,
        "flagged": len(found["not comparable"]) + len(gains),
    }


# %% [markdown]
# ## The morning test score
#
# A checkpoint is scored by the train.py that trained it (its own saved source), so a later
# change to the evaluation can never rewrite an old result.

# %%


def repo_dir():
    """The repository holding analysis.py and train.py (the working directory in a notebook)."""
    return Path(globals().get("__file__", "analysis.py")).resolve().parent


def load_source_module(source):
    """The checkpoint's train.py source imported as a module, written next to the repository's
    train.py so that its REPO_DIR finds the same data. Returns (module, temporary path)."""
    fd, tmp = tempfile.mkstemp(dir=repo_dir(), prefix=".checkpoint_source_", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    name = Path(tmp).stem.lstrip(".")
    spec = importlib.util.spec_from_file_location(name, tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module, Path(tmp)


def evaluate_checkpoint(checkpoint, split="val"):
    """Bits per byte of a checkpoint's model on the first eval bytes of `split`, under the same
    AR_* environment as train.py."""
    import torch

    try:
        # the summary's torch version is a TorchVersion, a str subclass that weights_only does not know
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged, truncated, or not a torch file at all
        raise Refusal(f"cannot load {checkpoint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(saved, dict) or not {"model", "source"} <= saved.keys():
        raise Refusal(f"{checkpoint} has no model and source: it was not written by train.py's save_checkpoint")
    tmp = None
    try:
        module, tmp = load_source_module(saved["source"])
        try:
            run = module.setup()
            model = module.prepare_model(run, module.build_model())
            model.load_state_dict(saved["model"])
            bpc, _ = module.evaluate(run, model.net, split)
        except getattr(module, "HarnessError", ()) as e:
            raise Refusal(str(e)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return bpc


def heldout_cache_key(checkpoint):
    st = Path(checkpoint).stat()
    env = {k: os.environ.get(k, "") for k in ("AR_DATA", "AR_EVAL_BYTES", "AR_DEVICE", "USE_FP8", "USE_FP16")}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **env}


def heldout_bpc(checkpoint, compute):
    """test_bpc of a checkpoint from its cache file next to it; computed and cached when asked."""
    cache = Path(checkpoint).with_suffix(".test.json")
    key = heldout_cache_key(checkpoint)
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["test_bpc"]
    if not compute:
        return None
    with contextlib.redirect_stdout(sys.stderr):  # train.py's setup lines are not the report
        value = evaluate_checkpoint(checkpoint, "test")
    write_atomically(cache, json.dumps({"test_bpc": value, "key": key}, indent=1).encode())
    return value


def best_test_bpc(results, report, compute):
    """(test_bpc of the best kept commit's checkpoint or None, a note when it could not be had)."""
    if not report["best_commit"]:
        return None, None
    checkpoint = checkpoints_dir(results.path) / f"{report['best_commit']}.pt"
    if not checkpoint.exists():
        return None, None
    try:
        return heldout_bpc(checkpoint, compute), None
    except Exception as e:  # a broken checkpoint must not take the report down with it
        return None, f"could not evaluate {checkpoint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"


# %% [markdown]
# ## Plots

# %%


def new_figure(width=12.0, height=6.0):
    """A figure on the Agg canvas, outside pyplot: nothing global, nothing shown."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def value_range(rows, baseline, best):
    """y limits that show the kept progress, not the worst discards."""
    values = [r.val_bpc for r in rows if r.measured] or [0.0, 1.0]  # a night of crashes only
    lo, hi = min(values), max(values)
    if baseline and best and baseline.measured:
        span = max(baseline.val_bpc - best.val_bpc, 1e-3)
        hi = min(hi, baseline.val_bpc + span)
        lo = best.val_bpc - 0.15 * span
    pad = max(hi - lo, 1e-3) * 0.05
    return lo - pad, hi + pad


def plot_progress(results, path):
    rows = results.rows
    baseline, best = baseline_row(rows), best_row(rows)
    fig = new_figure()
    ax = fig.add_subplot()
    lo, hi = value_range(rows, baseline, best)
    x = {id(r): i for i, r in enumerate(rows, start=1)}
    styles = {
        "discard": dict(color="0.6", s=18, label="discarded"),
        "keep": dict(color="tab:green", s=50, zorder=3, edgecolor="black", label="kept"),
    }
    for status, style in styles.items():
        chosen = [r for r in rows if r.status == status and not r.noise]
        ax.scatter([x[id(r)] for r in chosen], [min(r.val_bpc, hi) for r in chosen], **style)
    noise = [r for r in rows if r.noise and r.measured]
    if noise:
        ax.scatter([x[id(r)] for r in noise], [r.val_bpc for r in noise], facecolor="none", edgecolor="tab:blue", s=30)
        ax.scatter([], [], facecolor="none", edgecolor="tab:blue", label="noise replicates")
    crashes = [x[id(r)] for r in rows if r.status == "crash"]
    if crashes:
        ax.scatter(crashes, [lo + 0.02 * (hi - lo)] * len(crashes), marker="x", color="tab:red", s=40, label="crash")
    steps, running, best_so_far = [], [], None
    for row in rows:
        if row.status == "keep" and not row.noise:
            best_so_far = row.val_bpc if best_so_far is None else min(best_so_far, row.val_bpc)
        if best_so_far is not None:
            steps.append(x[id(row)])
            running.append(best_so_far)
    ax.step(steps, running, where="post", color="tab:green", alpha=0.7, label="running best")
    for row in rows:
        if row.status == "keep" and not row.noise:
            label = row.description if len(row.description) <= 40 else row.description[:37] + "..."
            ax.annotate(
                label, (x[id(row)], row.val_bpc), xytext=(4, 6), textcoords="offset points", rotation=25, fontsize=7
            )
    ax.set_ylim(lo, hi)
    ax.set_xlabel("experiment (in the order recorded)")
    ax.set_ylabel("val_bpc (lower is better)")
    kept = sum(r.status == "keep" and not r.noise for r in rows)
    ax.set_title(f"{len(rows)} runs, {kept} kept" + (f": best {best.val_bpc:.6f} ({best.commit})" if best else ""))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right", fontsize=8)
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def plot_memory(results, path):
    rows = results.rows
    fig = new_figure(12.0, 4.0)
    ax = fig.add_subplot()
    colors = {"keep": "tab:green", "discard": "0.6", "crash": "tab:red"}
    ax.bar(range(1, len(rows) + 1), [r.memory_gb for r in rows], color=[colors[r.status] for r in rows])
    crashes = [i for i, r in enumerate(rows, start=1) if r.status == "crash"]
    ax.scatter(crashes, [0] * len(crashes), marker="x", color="tab:red", s=40, zorder=3)
    for status, color in colors.items():
        ax.bar([0], [0], color=color, label=status)
    ax.set_xlim(0.3, len(rows) + 0.7)
    ax.set_xlabel("experiment (in the order recorded)")
    ax.set_ylabel("peak memory (GB)")
    ax.set_title("peak memory per experiment (crashes record 0)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.savefig(path, bbox_inches="tight")
    return Path(path)


def write_plots(results, out_dir):
    """progress.png and memory.png in `out_dir`; nothing for a file without rows."""
    if not results.rows:
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return [plot_progress(results, out_dir / "progress.png"), plot_memory(results, out_dir / "memory.png")]


def read_metrics(path):
    """(per-step rows, summary dict or None) of a metrics.jsonl; unreadable lines are skipped."""
    steps, summary = [], None
    for line in Path(path).read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("summary"), dict):
            summary = row["summary"]
        elif isinstance(row, dict) and {"time", "loss"} <= row.keys():
            steps.append(row)
    return steps, summary


def smoothed(values, beta=0.9):
    """Bias-corrected exponential moving average, as most training dashboards draw it."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = beta * avg + (1 - beta) * v
        out.append(avg / (1 - beta**i))
    return out


def plot_curves(paths, out):
    """Training loss against training time for one run, or several overlaid."""
    fig = new_figure(10.0, 6.0)
    ax = fig.add_subplot()
    drawn = 0
    for path in paths:
        steps, summary = read_metrics(path)
        if not steps:
            print(f"warning: {path} has no per-step rows: left out of the plot", file=sys.stderr)
            continue
        label = str(path) + (f" ({summary['commit']})" if summary and summary.get("commit") else "")
        times, losses = [s["time"] for s in steps], [s["loss"] for s in steps]
        (line,) = ax.plot(times, smoothed(losses), label=label)
        ax.plot(times, losses, color=line.get_color(), alpha=0.25, linewidth=0.8)
        drawn += 1
    if not drawn:
        raise Refusal("none of the metrics files has per-step rows: nothing to plot")
    ax.set_xlabel("training time (s)")
    ax.set_ylabel("training loss (nats per byte)")
    ax.set_title("training loss (smoothed; raw values faint)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out, bbox_inches="tight")
    return Path(out)


# %% [markdown]
# ## The report as text

# %%


def describe_row(row):
    return f"line {row['line']:>4}  {row['commit']:<8} {row['val_bpc']:.6f}  {row['description']}"


def text_header(report):
    totals = report["totals"]
    head = (
        f"{report['file']}: {totals['rows']} rows = {totals['experiments']} experiments + "
        f"{totals['noise_runs']} noise runs | {totals['keep']} keep, {totals['discard']} discard, "
        f"{totals['crash']} crash"
    )
    if report["keep_rate"] is not None:
        head += f" | keep rate {100 * report['keep_rate']:.1f}%"
    lines = [head]
    if report["header_missing"]:
        lines.append("warning: the header line is missing; rows were read in the standard column order")
    lines += [f"skipped line {m['line']}: {m['reason']}" for m in report["malformed"]]
    return lines


def text_standing(report, test_bpc, test_note):
    base, best = report["baseline"], report["best"]
    if best:
        lines = ["", f"baseline  {base['commit']:<8} {base['val_bpc']:.6f}  (line {base['line']})"]
    else:
        lines = ["", "baseline  none yet: nothing has been kept"]
    if best:
        change = f"{-report['improvement']:+.6f} ({-report['improvement_pct']:+.2f}%)" if report["improvement"] else ""
        lines.append(f"best      {best['commit']:<8} {best['val_bpc']:.6f}  {change}")
    if test_bpc is not None:
        lines.append(f"          test_bpc {test_bpc:.6f} of the best (held-out, for the person, never for decisions)")
    if test_note:
        lines.append(f"          {test_note}")
    if report["noise_floor"] is None:
        lines.append(
            f"noise floor unknown ({report['noise_replicates']} replicates): rerun the baseline with other "
            f"AR_SEED values, recorded as discard with a description starting `{NOISE_PREFIX}`, at least twice"
        )
    else:
        lines.append(
            f"noise floor {report['noise_floor']:.6f} (sample std of the baseline and {report['noise_replicates']} "
            f"replicates); keep threshold {report['keep_threshold']:.6f}"
        )
    lines.append(
        f"{report['experiments_since_improvement']} experiments since the last improvement; "
        f"crash streak {report['crash_streak']}"
    )
    if report["crash_streak"] >= 3:
        lines.append(f"warning: the last {report['crash_streak']} runs crashed: change direction")
    return lines


def text_kept(report):
    if not report["kept"]:
        return []
    lines = ["", "kept, in order", f"  {'line':>4}  {'commit':<8} {'val_bpc':>8}  {'delta':>9}  {'vs base':>9}  memory"]
    for k in report["kept"]:
        delta = "-" if k["delta"] is None else f"{k['delta']:+.6f}"
        lines.append(
            f"  {k['line']:>4}  {k['commit']:<8} {k['val_bpc']:.6f}  {delta:>9}  {k['vs_baseline']:+.6f}  "
            f"{k['memory_gb']:5.1f} GB  {k['description']}"
        )
    if report["top_improvements"]:
        lines += ["", "top improvements"]
        for rank, k in enumerate(report["top_improvements"], start=1):
            lines.append(f"  {rank:>2}. {k['delta']:+.6f}  {k['commit']:<8} {k['description']}")
    if report["near_misses"]:
        lines += ["", "near misses (discarded within the keep threshold of the best at the time)"]
        for m in report["near_misses"]:
            lines.append(f"  {describe_row(m)}  ({m['margin']:+.6f} vs {m['best_at_the_time']:.6f})")
    return lines


def text_audit(found):
    unverifiable = f", {len(found['unverifiable'])} unverifiable" if found["unverifiable"] else ""
    lines = ["", f"audit: {found['flagged']} flagged{unverifiable}"]
    for item in found["not_comparable"]:
        lines.append(f"  line {item['line']} {item['commit']}: not comparable: {item['reason']}")
    for item in found["small_gains"]:
        threshold = "" if item["threshold"] is None else f", below the keep threshold {item['threshold']:.6f}"
        lines.append(f"  line {item['line']} {item['commit']}: kept with a gain of {item['gain']:+.6f}{threshold}")
    for item in found["unverifiable"]:
        lines.append(f"  line {item['line']} {item['commit']}: unverifiable: {item['reason']}")
    return lines


def format_report(report, test_bpc=None, test_note=None):
    if not report["totals"]["rows"]:
        return "\n".join(
            text_header(report)[1:]
            + [
                f"No experiments in {report['file']} yet. Record the first run (the baseline) with "
                '`python analysis.py record --status keep --description "baseline"`.'
            ]
        )
    lines = text_header(report) + text_standing(report, test_bpc, test_note) + text_kept(report)
    if "audit" in report:
        lines += text_audit(report["audit"])
    if report.get("plots"):
        lines += ["", "plots: " + ", ".join(report["plots"])]
    return "\n".join(lines)


def build_report(tsv, out_dir=None, plots=True):
    results = read_results(tsv)
    report = summarize(results)
    report["audit"] = audit(results, report)
    if plots:
        report["plots"] = [str(p) for p in write_plots(results, out_dir or Path(tsv).resolve().parent)]
    return results, report


def show_report(args, tsv):
    results, report = build_report(tsv, args.out, plots=not args.no_plots)
    # The agent's JSON only ever reads a cached test score: it never pays for (or leans on) the test split.
    test_bpc, note = best_test_bpc(results, report, compute=not (args.json or args.no_test))
    if args.json:
        report["informational"] = {"test_bpc_best": test_bpc, "note": TEST_SPLIT_NOTE}
        print(json.dumps(report, indent=1))
    else:
        print(format_report(report, test_bpc, note))
    return 0


def show_audit(tsv):
    results = read_results(tsv)
    report = summarize(results)
    found = audit(results, report)
    print("\n".join(text_header(report) + text_audit(found)))
    return 1 if found["flagged"] else 0


# %% [markdown]
# ## Command line

# %%


def build_parser():
    tsv_option = argparse.ArgumentParser(add_help=False)
    tsv_option.add_argument("--tsv", type=Path, default=argparse.SUPPRESS, help="results file (default: main worktree)")
    parser = argparse.ArgumentParser(
        prog="analysis.py",
        description=__doc__.split("\n\n")[0],
        epilog=TEST_SPLIT_NOTE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--tsv", type=Path, default=None, help="results file (default: top of the main worktree)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON, for the agent")
    parser.add_argument("--out", type=Path, help="directory for progress.png and memory.png (default: next to results)")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNGs")
    parser.add_argument("--no-test", action="store_true", help="do not evaluate the best checkpoint on the test split")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    rec = sub.add_parser("record", parents=[tsv_option], help="append one run from its run.log")
    rec.add_argument("--status", required=True, choices=STATUSES)
    rec.add_argument("--description", required=True, help="one line: what this experiment changed")
    rec.add_argument("--force", action="store_true", help="record a log from another or a dirty commit (noted)")
    rec.add_argument("log", nargs="?", default="run.log", help="the run's log (default: run.log)")

    sub.add_parser("restore", parents=[tsv_option], help="merge rows back from the backup in the git directory")
    sub.add_parser("fix-header", parents=[tsv_option], help="add the missing header line, keeping every row")
    sub.add_parser("audit", parents=[tsv_option], help="flag rows not comparable with the baseline; exit 1 if any")

    curves = sub.add_parser("curves", parents=[tsv_option], help="training loss against time, one or more runs")
    curves.add_argument("metrics", nargs="+", type=Path, help="metrics.jsonl files")
    curves.add_argument("--out", type=Path, default=Path("curves.png"), help="image to write (default: curves.png)")

    ev = sub.add_parser(
        "evaluate", parents=[tsv_option], help="score a checkpoint with its own train.py", epilog=TEST_SPLIT_NOTE
    )
    ev.add_argument("checkpoint", type=Path)
    ev.add_argument("--split", choices=("val", "test"), default="val", help="test: for the person, never for decisions")
    return parser


def run_command(args, tsv):
    if args.command == "record":
        return record(args, tsv)
    if args.command == "restore":
        return restore(tsv)
    if args.command == "fix-header":
        return fix_header(tsv)
    if args.command == "audit":
        return show_audit(tsv)
    if args.command == "curves":
        print(f"wrote {plot_curves(args.metrics, args.out)}")
        return 0
    if args.command == "evaluate":
        if not args.checkpoint.exists():
            raise Refusal(f"no checkpoint at {args.checkpoint}")
        bpc = evaluate_checkpoint(args.checkpoint, args.split)
        print(f"{args.split}_bpc: {bpc:.6f}")
        return 0
    return show_report(args, tsv)


def main(argv=None):
    args = build_parser().parse_args(argv)
    tsv = args.tsv or default_tsv()
    try:
        return run_command(args, tsv)
    except Refusal as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


# %% [markdown]
# ## In the notebook: the report for ./results.tsv

# %%
if IN_NOTEBOOK:
    NOTEBOOK_TSV = Path("results.tsv")
    notebook_results, notebook_report = build_report(NOTEBOOK_TSV, Path("."))
    notebook_test, notebook_note = best_test_bpc(notebook_results, notebook_report, compute=True)
    print(format_report(notebook_report, notebook_test, notebook_note))

# %% [markdown]
# Progress (running best, kept, discarded and crashed runs) and peak memory per experiment.

# %%
if IN_NOTEBOOK:
    from IPython.display import Image, display

    for png in notebook_report.get("plots", []):
        display(Image(filename=png))

# %% [markdown]
# Training loss of the last run (`metrics.jsonl`), when there is one.

# %%
if IN_NOTEBOOK and Path("metrics.jsonl").exists():
    display(Image(filename=str(plot_curves([Path("metrics.jsonl")], Path("curves.png")))))

# %%
if __name__ == "__main__" and not IN_NOTEBOOK:
    sys.exit(main())

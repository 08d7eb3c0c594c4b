"""The bottom layer: `Refusal`, git, where an effort's files live, the lock on results.tsv, and
atomic writes. It imports no other labbook module.

There is one results.tsv per research effort, at the top of the main git worktree (every other
worktree records there too); it is git-ignored, and every row is also appended to a backup inside
the git directory, $(git rev-parse --git-common-dir)/autoresearch/, which neither `git reset
--hard` nor `git clean -fdx` touch. Kept runs' weights sit in checkpoints/ next to results.tsv.
"""

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path


class Refusal(Exception):
    """Something analysis.py will not do, with the reason and the fix: printed as one line."""


# git


def git_process(args, cwd):
    """The finished `git -C cwd args` process, its output as text (OSError when git cannot run)."""
    return subprocess.run(["git", "-C", str(cwd), *args], capture_output=True, text=True)


def git(args, cwd):
    """Output of a git command run in `cwd`, or None when it fails (no repository, unknown commit)."""
    try:
        proc = git_process(args, cwd)
    except OSError:
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_or_refuse(args, cwd):
    """Output of a git command run in `cwd`; a Refusal with git's own message when it fails."""
    proc = git_process(args, cwd)
    if proc.returncode != 0:
        raise Refusal(f"git {' '.join(args)} failed in {cwd}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc.stdout.strip()


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


# Where an effort's files live


def main_worktree_top(cwd):
    common = git_common_dir(cwd)
    if common is None:
        return None
    if common.name == ".git":
        return common.parent
    top = git(["rev-parse", "--show-toplevel"], cwd)  # a submodule or a separate git dir
    return Path(top) if top else None


def in_side_worktree(cwd):
    """Whether `cwd` is in another worktree of its repository than the main one (a worker's)."""
    top, main = git(["rev-parse", "--show-toplevel"], cwd), main_worktree_top(cwd)
    return bool(top and main) and Path(top).resolve() != main.resolve()


def default_tsv(cwd="."):
    """The effort's one results.tsv: top of the main worktree, or `cwd` outside git."""
    return (main_worktree_top(cwd) or Path(cwd).resolve()) / "results.tsv"


def results_repo(tsv):
    """The git repository a results file's commits live in: the one holding it, else the current one."""
    parent = Path(tsv).resolve().parent
    return parent if parent.is_dir() and git_common_dir(parent) else Path(".").resolve()


def checkpoints_dir(tsv):
    return Path(tsv).resolve().parent / "checkpoints"


# The lock and atomic writes


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

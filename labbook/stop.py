"""`python analysis.py stop`: end the run this checkout started, and only that one.

While a run lives, its supervisor (what `python train.py` becomes) keeps a file beside train.py,
`.supervisor-<pid>.json` (prepare.py's SUPERVISOR_FILE), with its pid, its start time and where
its output goes. The stop signals that pid once its start time matches (a reused pid is another
process), waits for the run to end and prints the run's last word from its log. No process is
found by its command line, so neither the caller's shell nor another directory's run is touched.
"""

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from labbook.base import git
from labbook.runlog import crash_reason, parse_summary

SUPERVISOR_GLOB = ".supervisor-*.json"  # prepare.py's SUPERVISOR_FILE (labbook never imports the harness)
STOP_TIMEOUT = 60.0  # seconds to wait for the run: the trainer's 10 s to end, the reaping, a scorer's stop


def checkout_top(cwd="."):
    """The folder train.py runs from: the top of this worktree, or `cwd` outside git."""
    top = git(["rev-parse", "--show-toplevel"], cwd)
    return Path(top) if top else Path(cwd).resolve()


def start_ticks(pid):
    """Process `pid`'s start time in clock ticks since boot, or None when no such process is running
    (a zombie has ended: only its parent has not read its exit status yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else int(fields[19])


def running_supervisors(folder):
    """The announcements ({pid, start, log}) of the runs alive in `folder`; the files of runs that
    ended without removing theirs (SIGKILL) are removed."""
    alive = []
    for path in sorted(Path(folder).glob(SUPERVISOR_GLOB)):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written or removed right now
        if start_ticks(run["pid"]) == run["start"]:
            alive.append(run)
        else:
            path.unlink(missing_ok=True)
    return alive


def wait_until_ended(runs, timeout=STOP_TIMEOUT):
    """The runs still alive after `timeout` seconds (none when all ended)."""
    deadline = time.monotonic() + timeout
    while (left := [r for r in runs if start_ticks(r["pid"]) == r["start"]]) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def last_word(log_path):
    """The line a run ended with, from its log: the crash line, or val_bpc for a run that finished."""
    try:
        log = Path(log_path).read_text(errors="replace")
    except (OSError, TypeError):
        return f"its output went to {log_path or 'no file'}: read the crash line there"
    if reason := crash_reason(log):
        return f"crash: {reason}"
    if "val_bpc" in (summary := parse_summary(log)):
        return f"val_bpc: {summary['val_bpc']} (it had finished)"
    return f"{log_path} ends without a crash line or a summary"


def stop_runs(cwd="."):
    """Send SIGTERM to every run of this checkout, wait for each to end and print its last word.
    Exit status: 0 when the runs ended or none was running, 1 when one still runs after STOP_TIMEOUT."""
    folder = checkout_top(cwd)
    runs = running_supervisors(folder)
    if not runs:
        print(f"no run to stop: no python train.py is running in {folder}")
        return 0
    for run in runs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(run["pid"], signal.SIGTERM)
        print(f"stopping the run in {folder} (supervisor pid {run['pid']}, SIGTERM)")
    if left := wait_until_ended(runs):
        pids = " ".join(str(r["pid"]) for r in left)
        print(f"still running after {STOP_TIMEOUT:.0f} s (supervisor pid {pids}): run python analysis.py stop again")
        return 1
    for run in runs:
        print(last_word(run["log"]))
    return 0

"""What a run.log says: its summary block, its crash line, the checkpoint it wrote, and whether
it can be trusted to say one thing (one summary, no crash after it)."""

import re
from pathlib import Path

UNCAUGHT = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception): ")  # the last line of a Python traceback


def log_lines(log):
    return [line.rstrip("\r") for line in log.split("\n")]


def parse_summary(log):
    """The `key: value` lines after the last line that is exactly `---` ({} when there is none)."""
    lines = log_lines(log)
    if "---" not in lines:
        return {}
    start = len(lines) - lines[::-1].index("---")
    summary = {}
    for line in lines[start:]:
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"\w+", key):  # total_tokens_M and num_params_M have capitals
            summary[key] = value.strip()
    return summary


def number(text, kind=float):
    """A summary value as `kind`, or None when it is missing or not a number."""
    try:
        return kind(text)
    except (TypeError, ValueError):
        return None


def crash_reason(log):
    """The message of the last `crash:` line of a run log; without one, the exception that ended
    Python before the harness ran (a syntax error or a failed import in train.py prints a traceback,
    never a crash line); else None (the run was killed)."""
    lines = log_lines(log)
    reasons = [line[len("crash:") :].strip() for line in lines if line.startswith("crash:")]
    if reasons:
        return reasons[-1]
    last = next((line for line in reversed(lines) if line.strip()), "")
    return last.strip() if UNCAUGHT.match(last) else None


def integrity_problem(log):
    """Why a log cannot be read as one finished run, or None: prepare.py prints exactly one
    `---` summary block, last; a second block (printed by train.py, say from an atexit hook) or a
    `crash:` line after the summary means the summary is not the harness's last word."""
    lines = log_lines(log)
    blocks = [i for i, line in enumerate(lines) if line == "---"]
    if len(blocks) > 1:
        return f"run.log has {len(blocks)} `---` summary blocks: prepare.py prints one"
    if blocks and any(line.startswith("crash:") for line in lines[blocks[0] :]):
        return "run.log has a `crash:` line after its summary block"
    return None


def logged_checkpoint(log, run_dir):
    """The checkpoint a run wrote: AR_CHECKPOINT as the log's `override:` line names it (relative
    to the run's directory), else ./checkpoint.pt next to run.log."""
    path = "checkpoint.pt"
    for line in log_lines(log):
        if line.startswith("override: AR_CHECKPOINT="):
            path = line.partition("=")[2].strip() or path
    return (Path(run_dir) / Path(path).expanduser()).resolve()

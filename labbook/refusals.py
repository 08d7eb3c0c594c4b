"""The runs `decide` and `record` refused, one line each in refusals.log next to results.tsv
(git-ignored, like every log), so the morning report can list what the agent was told no."""

import contextlib
from datetime import datetime
from pathlib import Path

from labbook.runlog import parse_summary

FILE_NAME = "refusals.log"


def refusals_path(tsv):
    return Path(tsv).resolve().parent / FILE_NAME


def note_refusal(tsv, command, log_path, message):
    """Append `command`'s refusal of the run in `log_path`; a file that cannot be written is skipped
    (the refusal itself was printed)."""
    try:
        summary = parse_summary(Path(log_path).read_bytes().decode("utf-8", errors="replace"))
    except OSError:
        summary = {}
    when = datetime.now().astimezone().isoformat(timespec="seconds")
    fields = [when, command, summary.get("commit", "-") or "-", summary.get("run_id", "-") or "-"]
    line = "\t".join(fields + [" ".join(str(message).split())]) + "\n"
    with contextlib.suppress(OSError), open(refusals_path(tsv), "a", encoding="utf-8") as f:
        f.write(line)


def read_refusals(tsv):
    """[{when, commands, commit, run_id, message}] in order: one entry per run and message, however
    many times (decide, then record) it was refused."""
    try:
        lines = refusals_path(tsv).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return []
    entries = {}
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 5:
            continue
        when, command, commit, run_id, message = parts
        entry = entries.setdefault((commit, run_id, message), dict(when=when, commands=[], commit=commit,
                                                                   run_id=run_id, message=message))  # fmt: skip
        if command not in entry["commands"]:
            entry["commands"].append(command)
    return list(entries.values())

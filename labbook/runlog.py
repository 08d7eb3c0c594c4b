"""What a run.log says: its summary block and its crash line."""

import re


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

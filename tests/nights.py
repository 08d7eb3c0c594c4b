"""Generated nights for the notebook and plot tests: every kind of row, decided by the real keep rule.

`write_night(directory, n_rows)` makes `directory` a git repository whose commits are the night's
train.py edits (knobs changed, discarded commits reset away), writes results.tsv with
`ledger.format_row(values, ledger.COLUMNS)` and returns the rows' values. The night holds a
baseline, its replicates, experiments kept and discarded, provisional runs and their
confirmations, a kept simplification, crashes, a row the harness flagged (weights_edited) and an
idle gap, whatever `n_rows` (>= 12).
"""

import hashlib
import random
import subprocess
import uuid
from datetime import datetime, timedelta
from pathlib import Path

from labbook import keeprule, ledger

PREPARE = "# the harness (a stand-in)\n"
PREPARE_HASH = hashlib.sha256(PREPARE.encode()).hexdigest()[:12]
KNOBS = {"LR": 0.001, "DEPTH": 8, "DIM": 512, "WARMDOWN": 0.2, "ROTARY_BASE": 10000, "FF_MULT": 4}
IDEAS = [
    ("LR", 0.003, "lr 3e-3", -0.012),
    ("DEPTH", 10, "depth 10", 0.004),
    ("DIM", 768, "dim 768", None),
    ("FF_MULT", 3, "ff mult 3 (fewer parameters)", 0.0005),
    ("WARMDOWN", 0.5, "warmdown 50%", -0.009),
    ("ROTARY_BASE", 50000, "rotary base 50000", 0.001),
    ("LR", 0.01, "lr 1e-2", 0.08),
    ("DEPTH", 6, "depth 6", 0.02),
    ("DIM", 640, "dim 640", -0.007),
]
SIGMA = 0.002


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def train_source(knobs, extra=""):
    return "".join(f"{k} = {v!r}\n" for k, v in knobs.items()) + "\n\ndef main():\n    return DEPTH\n" + extra


def init_repo(repo):
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Night"), ("user.email", "night@example.invalid"), ("commit.gpgsign", "false")):
        git(repo, "config", key, value)
    (repo / "prepare.py").write_text(PREPARE)
    (repo / "train.py").write_text(train_source(KNOBS, "# a spare line\nSPARE = 1\n"))
    (repo / ".gitignore").write_text("results.tsv\ncheckpoints/\n*.png\n*.ipynb\n*.html\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "baseline")
    return git(repo, "rev-parse", "--short=7", "HEAD")


def commit(repo, knobs, message, simplify=False):
    extra = "" if simplify else "# a spare line\nSPARE = 1\n"
    (repo / "train.py").write_text(train_source(knobs, extra))
    git(repo, "commit", "-q", "--allow-empty", "-am", message)
    return git(repo, "rev-parse", "--short=7", "HEAD")


def night_rows(repo, n_rows, seed=0):
    """The values of `n_rows` rows (dicts of column -> text), decided by keeprule.decide."""
    rng = random.Random(seed)
    rows, values = [], []
    tip = init_repo(repo)
    true, knobs_at = {tip: 1.5}, {tip: dict(KNOBS)}
    clock = datetime(2025, 3, 5, 22, 0, 0).astimezone()
    pending = (tip, 42, "baseline")  # (commit, seed, description) of the next run
    ideas = list(IDEAS)
    flagged_done = False
    while len(rows) < n_rows:
        current, run_seed, description = pending
        crash = true.get(current) is None
        value = None if crash else round(true[current] + rng.gauss(0, SIGMA), 6)
        simplification = description.startswith("ff mult")
        candidate = keeprule.Candidate(
            commit=current, val_bpc=value, description=description, simplification=simplification,
            params=24.0 if simplification else 25.3, seed=run_seed, tokens_per_sec=1.7e6,
        )  # fmt: skip
        verdict = keeprule.decide(rows, candidate, reference_params=25.3, reference_statements=None)
        flags = "none"
        if not flagged_done and verdict.kind == "experiment" and verdict.status == "discard" and len(rows) >= 8:
            flags, flagged_done = "weights_edited", True
        if len(rows) == n_rows // 2:
            clock += timedelta(minutes=47)  # the agent stalled: an idle gap
        clock += timedelta(minutes=2 if crash else 6, seconds=rng.randint(0, 40))
        knobs = knobs_at[current]
        memory = (
            0.0 if crash else round(20.0 + 8 * (knobs["DIM"] / 512 - 1) + knobs["DEPTH"] / 4 + rng.uniform(0, 0.3), 1)
        )
        if crash:
            description = f"{description} (crash: CUDA out of memory: tried to allocate 2.00 GiB)"
        row_values = dict(
            commit=current, val_bpc=f"{value or 0.0:.6f}", memory_gb=f"{memory:.1f}", status=verdict.status,
            description=description,
            reported_bpc="" if crash else f"{value:.6f}", run_id=uuid.uuid4().hex[:12], prepare_hash=PREPARE_HASH,
            libraries="334368abb933", budget="300s", eval_bytes="5000000", data="enwik8:a1fa5f", flags=flags,
            train_bpc="" if crash else f"{value - 0.012:.6f}", fingerprint="f1f2f3f4f5f6", device="cuda",
            gpu="NVIDIA H100 80GB HBM3", seed=str(run_seed), precision="BF16", training_seconds="300.1",
            num_steps="1953", tokens_per_sec="" if crash else str(int(1.7e6 * rng.uniform(0.97, 1.03))),
            rescore_seconds="20.1", recorded_at=clock.isoformat(timespec="seconds"), worker="wt",
            note=keeprule.verdict_note(verdict), kind=verdict.kind,
        )  # fmt: skip
        values.append(row_values)
        rows.append(
            ledger.parse_row(ledger.format_row(row_values, ledger.COLUMNS).rstrip("\n"), ledger.COLUMNS, len(rows) + 2)
        )
        # what the agent runs next
        if verdict.next_seed is not None and verdict.verdict != "crash":
            pending = (verdict.commit, verdict.next_seed, f"noise: {verdict.commit}, seed {verdict.next_seed}")
            if verdict.verdict == "rerun":
                pending = (verdict.commit, verdict.next_seed, description)
            continue
        if verdict.commit != keeprule.tip_commit(rows):
            git(repo, "reset", "-q", "--hard", "HEAD~1")
        tip = keeprule.tip_commit(rows)
        if not ideas:
            knob = rng.choice(["DEPTH", "LR", "WARMDOWN", "FF_MULT", "DIM"])
            value = dict(DEPTH=rng.randint(5, 12), LR=round(rng.uniform(1e-3, 5e-3), 4), DIM=rng.choice([384, 640, 1024]),
                         WARMDOWN=round(rng.uniform(0.1, 0.6), 2), FF_MULT=rng.choice([2, 3]))[knob]  # fmt: skip
            effect = rng.choice([0.003, 0.01, 0.0, -0.006, 0.03, None])
            name = "ff mult" if knob == "FF_MULT" else knob.lower()
            ideas = [(knob, value, f"{name} {value}", effect)]
        knob, knob_value, what, effect = ideas.pop(0)
        knobs = {**knobs_at[tip], knob: knob_value}
        new = commit(repo, knobs, what, simplify=what.startswith("ff mult"))
        knobs_at[new] = knobs
        true[new] = None if effect is None else true[tip] + effect
        pending = (new, 42, what)
    return values


def write_night(directory, n_rows, seed=0):
    directory = Path(directory)
    values = night_rows(directory, n_rows, seed)
    text = "\t".join(ledger.COLUMNS) + "\n" + "".join(ledger.format_row(v, ledger.COLUMNS) for v in values)
    (directory / "results.tsv").write_text(text)
    return values

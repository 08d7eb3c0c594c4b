"""Helpers for the results tests: temporary git repositories, fake run logs, generated results files.

A "run" here is a run.log whose summary block names the current HEAD, written the way train.py
prints it; train.py itself is exercised by the training tests.
"""

import shutil
import subprocess
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import REPO

from labbook import cli, ledger, plots, rescore, runlog

ANALYSIS = REPO / "analysis.py"
HEADER5 = "commit\tval_bpc\tmemory_gb\tstatus\tdescription"

# (commit, val_bpc, memory_gb, status, description): a baseline, three noise replicates, then a night
NIGHT = [
    ("base000", 1.500000, 2.0, "keep", "baseline"),
    ("nse0001", 1.501000, 2.0, "discard", "noise: AR_SEED=1"),
    ("nse0002", 1.499000, 2.0, "discard", "noise: AR_SEED=2"),
    ("nse0003", 1.500600, 2.0, "discard", "noise: AR_SEED=3"),
    ("exp0001", 1.520000, 3.1, "discard", "dim 768"),
    ("exp0002", 1.450000, 2.2, "keep", "SwiGLU"),
    ("exp0003", 0.000000, 0.0, "crash", "depth 24 (crash: out of memory)"),
    ("exp0004", 1.450500, 2.2, "discard", "rotary base 50000"),
    ("exp0005", 1.400000, 2.3, "keep", "lr 3e-3"),
    ("exp0006", 1.399900, 2.3, "keep", "warmdown 50%"),
    ("exp0007", 1.600000, 2.3, "discard", "no qk norm"),
    ("exp0008", 0.000000, 0.0, "crash", "fp8 everywhere"),
    ("exp0009", 0.000000, 0.0, "crash", "batch 256"),
]


TRAIN_STUB = """\
# ==== FIXED REGION START: do not modify ====
EVAL_BYTES = 4096
# ==== FIXED REGION END ====
LR = 0.001
"""


# test_checkpoint_eval.py still calls these by analysis.py's old names; it moves to labbook when
# the checkpoint evaluation is rewritten for prepare.py
analysis = SimpleNamespace(
    main=cli.main, evaluate_checkpoint=rescore.evaluate_checkpoint, read_metrics=plots.read_metrics
)


@pytest.fixture(autouse=True)
def fake_rescore(monkeypatch):
    """For the fake run logs of these tests (no checkpoint): the re-score agrees with the log.
    Imported by a test module, it applies to its in-process records; real re-scores are tested in
    test_rescore_record.py."""

    def agreeing(tsv, log_path, log=None, summary=None):
        log = Path(log_path).read_text() if log is None else log
        summary = ledger.parse_summary(log) if summary is None else summary
        if problem := runlog.integrity_problem(log):
            return None, problem, None
        reported = float(summary.get("val_bpc_exact") or summary["val_bpc"])
        return (
            {"bpc": reported, "seconds": 0.0, "wall_seconds": 0.0, "cached": False, "summary": summary},
            None,
            reported,
        )

    monkeypatch.setattr(ledger, "rescore_run", agreeing)


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path):
    """A git repository with the project's .gitignore and a small train.py, one commit."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Autoresearch Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "commit.gpgsign", "false")
    shutil.copy(REPO / ".gitignore", path / ".gitignore")
    (path / "train.py").write_text(TRAIN_STUB)
    git(path, "add", ".gitignore", "train.py")
    git(path, "commit", "-q", "-m", "baseline")
    return path


def head(repo):
    return git(repo, "rev-parse", "--short=7", "HEAD")


def commit_change(repo, lr=None, eval_bytes=None, message="experiment"):
    """Edit train.py the way the agent does (LR below the FIXED region, or the FIXED region
    itself) and commit it; returns the new short commit."""
    path = Path(repo) / "train.py"
    text = path.read_text()
    if lr is not None:
        text = text.replace(text[text.index("LR = ") :], f"LR = {lr}\n")
    if eval_bytes is not None:
        text = text.replace(
            text[text.index("EVAL_BYTES = ") : text.index("\n# ==== FIXED REGION END")], f"EVAL_BYTES = {eval_bytes}"
        )
    path.write_text(text)
    git(repo, "commit", "-q", "-am", message)
    return head(repo)


def summary_block(
    commit, val_bpc, peak_vram_mb=3072.0, fingerprint="f1f2f3f4f5f6", seed=42, gpu="NVIDIA H100 80GB HBM3"
):
    values = dict(
        val_bpc=f"{val_bpc:.6f}",
        training_seconds="300.1",
        total_seconds="331.0",
        peak_vram_mb=f"{peak_vram_mb:.1f}",
        mfu_percent="31.20",
        total_tokens_M="512.0",
        num_steps="1953",
        num_params_M="25.3",
        depth="8",
        precision="BF16",
        startup_seconds="12.0",
        eval_seconds="18.9",
        tokens_per_sec="1706000",
        eval_bytes="5000000",
        device="cuda",
        gpu=gpu,
        torch="2.11.0",
        x_transformers="2.26.4",
        seed=str(seed),
        commit=commit,
        fingerprint=fingerprint,
        prepare_hash="a1b2c3d4e5f6",
        run_id=uuid.uuid4().hex[:12],
        val_bpc_exact=repr(float(f"{val_bpc:.6f}")),
        train_bpc=f"{val_bpc + 0.01:.6f}",
        flags="none",
        libraries="334368abb933",
        budget="300s",
        data="enwik8:a1fa5ffddb56f4953e226637dabbb36a",
    )
    return "---\n" + "\n".join(f"{key + ':':<18}{value}" for key, value in values.items()) + "\n"


def write_log(directory, commit, val_bpc=None, crash=None, name="run.log", **summary):
    """A run.log: some progress lines, then a summary block (when val_bpc is given) and/or a
    `crash:` line (when crash is given)."""
    text = "torch 2.11.0 | x-transformers 2.26.4 | device cuda:0\nstep 00010 | loss 2.1000\n"
    if val_bpc is not None:
        text += summary_block(commit, val_bpc, **summary)
    if crash is not None:
        text += f"Traceback (most recent call last):\n  ...\ncrash: {crash}\n"
    path = Path(directory) / name
    path.write_text(text)
    return path


def results_text(rows, header=True, provenance=False, newline="\n"):
    """A results.tsv from (commit, val_bpc, memory_gb, status, description[, fingerprint]) rows."""
    columns = ledger.COLUMNS if provenance else ledger.BASE_COLUMNS
    lines = ["\t".join(columns)] if header else []
    for row in rows:
        commit, val, mem, status, description, *rest = row
        fields = [commit, f"{val:.6f}", f"{mem:.1f}", status, description]
        if provenance:
            extra = dict(zip(ledger.PROVENANCE_COLUMNS, rest or ["f1f2f3f4f5f6"]))
            fields += [extra.get(name, "") for name in ledger.PROVENANCE_COLUMNS]
        lines.append("\t".join(fields))
    return newline.join(lines) + newline


def data_lines(path):
    """The non-header, non-blank lines of a results file, as lists of fields."""
    lines = [line.rstrip("\r") for line in Path(path).read_text().split("\n") if line.strip()]
    return [line.split("\t") for line in lines if not line.startswith("commit\t")]


def run_cli(*args, cwd, env=None, timeout=300):
    """`python analysis.py ARGS` in `cwd`, as the agent runs it."""
    return subprocess.run(
        [sys.executable, str(ANALYSIS), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def is_real_png(path, min_bytes=5000):
    """PNG magic, a non-trivial size, and an image matplotlib can read with a sane shape."""
    import matplotlib.image

    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) <= min_bytes:
        return False
    image = matplotlib.image.imread(path)
    return image.ndim == 3 and image.shape[0] >= 100 and image.shape[1] >= 100 and image.shape[2] in (3, 4)


# A real tiny lab: a git repository holding a tiny train.py and prepare.py, two finished runs.
# Built once per test session (each run costs ~15 s on two cores) and shared read-only: a test
# copies a run's log and checkpoint before recording, since record removes non-keep checkpoints.

TINY_CONSTANTS = dict(DIM=32, DEPTH=2, HEADS=2, BATCH_SIZE=4)
FAKE_SUMMARY_HOOK = """

import atexit as _atexit


def _better_summary():  # the reward hack: a second, better summary after the harness's
    print("---\\nval_bpc:          0.500000\\nval_bpc_exact:    0.5", flush=True)


_atexit.register(_better_summary)
"""
_LAB = {}


def tiny_lab():
    """SimpleNamespace(root, corpus, repo, attack_worktree, c1, c2, run_a, run_b, main_tsv):
    run A is the baseline at c1 (recorded as keep in main_tsv); run B at c2 (a worktree) has
    prepare.py edited (a comment) and train.py printing a fake second summary at exit."""
    if "lab" in _LAB:
        return _LAB["lab"]
    import tempfile

    from harness import base_env, edit_constants, run_train, write_corpus

    root = Path(tempfile.mkdtemp(prefix="ledger-lab-"))
    corpus = write_corpus(root / "corpus.txt")
    repo = root / "repo"
    repo.mkdir()
    for args in (["init", "-q", "-b", "main"], ["config", "user.name", "T"], ["config", "user.email", "t@x.invalid"]):
        git(repo, *args)
    git(repo, "config", "commit.gpgsign", "false")
    shutil.copy(REPO / ".gitignore", repo / ".gitignore")
    shutil.copy(REPO / "prepare.py", repo / "prepare.py")
    (repo / "train.py").write_text(edit_constants((REPO / "train.py").read_text(), **TINY_CONSTANTS))
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "baseline")
    env = base_env(root, AR_DATA=corpus, AR_STEPS=4, AR_EVAL_BYTES=8192)

    def run_into(where, name):
        code, log = run_train(where / "train.py", env, cwd=where)
        assert code == 0, log[-2000:]
        dest = root / name
        dest.mkdir()
        for f in ("run.log", "checkpoint.pt", "metrics.jsonl"):
            shutil.move(where / f, dest / f)
        return dest

    run_a = run_into(repo, "run_a")
    attack = root / "attack"
    git(repo, "worktree", "add", "-q", "-b", "attack", str(attack))
    (attack / "prepare.py").write_text((attack / "prepare.py").read_text() + "# tuned\n")
    (attack / "train.py").write_text((attack / "train.py").read_text() + FAKE_SUMMARY_HOOK)
    git(attack, "commit", "-q", "-am", "attack")
    run_b = run_into(attack, "run_b")
    lab = SimpleNamespace(
        root=root,
        corpus=corpus,
        repo=repo,
        attack_worktree=attack,
        c1=head(repo),
        c2=head(attack),
        run_a=run_a,
        run_b=run_b,
        main_tsv=root / "main" / "results.tsv",
    )
    _LAB["lab"] = lab
    return lab


def copy_run(run_dir, dest, log_text=None):
    """A fresh copy of a lab run (run.log, checkpoint.pt, metrics.jsonl) in `dest`, the log
    optionally replaced by `log_text`. Returns the log's path."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("run.log", "checkpoint.pt", "metrics.jsonl"):
        shutil.copy(Path(run_dir) / f, dest / f)
    if log_text is not None:
        (dest / "run.log").write_text(log_text)
    return dest / "run.log"

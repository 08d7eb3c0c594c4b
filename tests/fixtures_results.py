"""Helpers for the results tests: temporary git repositories, fake run logs, generated results files.

A "run" here is a run.log whose summary block names the current HEAD, written the way train.py
prints it; train.py itself is exercised by the training tests.
"""

import shutil
import subprocess
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from harness import REPO, TRAIN, run_script

from labbook import cli, ledger, plots, recording, rescore, runlog

ANALYSIS = REPO / "analysis.py"
HEADER5 = "commit\tval_bpc\tmemory_gb\tstatus\tdescription"

# (commit, val_bpc, memory_gb, status, description): rows for the reading and appending tests
NIGHT = [
    ("base000", 1.500000, 2.0, "keep", "baseline"),
    ("nse0001", 1.501000, 2.0, "discard", "noise: AR_SEED=1"),
    ("exp0001", 1.520000, 3.1, "discard", "dim 768"),
    ("exp0002", 1.450000, 2.2, "keep", "SwiGLU"),
    ("exp0003", 0.000000, 0.0, "crash", "depth 24 (crash: out of memory)"),
]

# A night under the keep rule (labbook/keeprule.py): (name, val_bpc, status, description, kind).
# Names become real commits of a temporary repository (write_night); `hack` edits prepare.py.
RULE_NIGHT = [
    ("base", 1.5000, "keep", "baseline", "baseline"),
    ("base", 1.5010, "keep", "noise: base, seed 1", "replicate"),
    ("base", 1.4990, "keep", "noise: base, seed 2", "replicate"),
    ("base", 1.5006, "keep", "noise: base, seed 3", "replicate"),
    ("base", 1.4996, "keep", "noise: base, seed 4", "replicate"),
    ("exp1", 1.5200, "discard", "dim 768", "experiment"),
    ("exp2", 1.4500, "discard", "SwiGLU", "experiment"),
    ("exp2", 1.4510, "keep", "SwiGLU", "confirm"),
    ("exp2", 1.4505, "keep", "noise: exp2, seed 2", "replicate"),
    ("exp2", 1.4495, "keep", "noise: exp2, seed 3", "replicate"),
    ("exp3", 0.0, "crash", "depth 24 (crash: out of memory)", "experiment"),
    ("exp4", 1.4494, "discard", "rotary base 50000", "experiment"),  # a near-miss: 1.06 standard errors
    ("exp5", 1.4508, "discard", "drop the bias terms", "simplification"),
    ("exp5", 1.4502, "keep", "drop the bias terms", "confirm"),
    ("exp6", 1.4000, "discard", "lr 3e-3", "experiment"),
    ("exp6", 1.4010, "keep", "lr 3e-3", "confirm"),
    ("exp6", 1.4005, "keep", "noise: exp6, seed 2", "replicate"),
    ("exp6", 1.3995, "keep", "noise: exp6, seed 3", "replicate"),
    ("exp7", 1.4004, "keep", "warmdown 50%", "experiment"),  # kept by --status override
    ("hack", 1.2000, "keep", "tuned the evaluation", "experiment"),  # prepare.py edited: flagged
    ("exp8", 0.0, "crash", "fp8 everywhere (crash: float8 needs sm89)", "experiment"),
    ("exp9", 0.0, "crash", "batch 256", "experiment"),
]
PREPARE_STUB = "# prepare.py of the test lab\nEVAL_BYTES = 8192\n"


def provenance_values(commit, val_bpc, status, description, kind="", prepare_hash="", **extra):
    """Every column of a row as `record` writes it: sound provenance, a fresh run_id."""
    crashed = status == "crash"
    values = dict(
        commit=commit,
        val_bpc="0.000000" if crashed else f"{val_bpc:.6f}",
        memory_gb="0.0" if crashed else "2.0",
        status=status,
        description=description,
        reported_bpc="" if crashed else repr(float(f"{val_bpc:.6f}")),
        run_id=uuid.uuid4().hex[:12],
        prepare_hash=prepare_hash,
        libraries="334368abb933",
        budget="300s",
        eval_bytes="8192",
        data="custom:0123456789ab",
        flags="none",
        fingerprint="f1f2f3f4f5f6",
        device="cpu",
        seed="42",
        tokens_per_sec="1000",
        kind=kind,
    )
    values.update(extra)
    return values


def prepare_hash_of(text):
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


def write_night(directory, rows=RULE_NIGHT, extra=None):
    """A git repository whose commits are the rows' names (prepare.py committed; `hack` edits
    it) and its results.tsv with full provenance and checksums. Returns SimpleNamespace(repo, tsv,
    commits: name -> short hash, lines: name -> [line numbers])."""
    repo = make_repo(directory)
    commits, lines = {}, {}
    for i, (name, *_rest) in enumerate(rows):
        if name in commits:
            continue
        if commits:
            if name == "hack":
                (repo / "prepare.py").write_text(PREPARE_STUB + "# tuned\n")
            commits[name] = commit_change(repo, lr=0.001 + 0.0001 * i, message=name)
            if name == "hack":
                (repo / "prepare.py").write_text(PREPARE_STUB)
                git(repo, "commit", "-q", "-am", "prepare.py back")
        else:
            commits[name] = head(repo)
    hashes = {name: prepare_hash_of(git(repo, "show", f"{c}:prepare.py") + "\n") for name, c in commits.items()}
    text = "\t".join(ledger.COLUMNS) + "\n"
    for number, (name, val, status, description, kind) in enumerate(rows, start=2):
        values = provenance_values(commits[name], val, status, description, kind, hashes[name], **(extra or {}))
        text += ledger.format_row(values, ledger.COLUMNS)
        lines.setdefault(name, []).append(number)
    tsv = repo / "results.tsv"
    tsv.write_text(text)
    return SimpleNamespace(repo=repo, tsv=tsv, commits=commits, lines=lines)


def set_column(tsv, column, values):
    """Rewrite a results file's rows with `column` set to `values` (one per row, in order), checksums redone."""
    lines = Path(tsv).read_text().splitlines()
    columns = lines[0].split("\t")
    rows = [dict(zip(columns, line.split("\t")), **{column: v}) for line, v in zip(lines[1:], values, strict=True)]
    Path(tsv).write_text("\n".join(lines[:1]) + "\n" + "".join(ledger.format_row(r, columns) for r in rows))


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


def log_as_sealed(log_path, log=None):
    """recording.sealed_run for the fake run logs of these tests (no checkpoint, no journal): the
    sealed scorer's summary is the log's own."""
    log = Path(log_path).read_text() if log is None else log
    if problem := runlog.integrity_problem(log):
        return None, problem
    summary = runlog.parse_summary(log)
    summary.setdefault("val_bpc_exact", summary.get("val_bpc", ""))
    return summary, None


@pytest.fixture(autouse=True)
def fake_journal(monkeypatch):
    """Imported by a test module, the log stands for the journal in its in-process records; real
    sealed scores are tested in test_rescore_record.py and through the `real_run` fixture."""
    monkeypatch.setattr(recording, "sealed_run", log_as_sealed)


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
    (path / "prepare.py").write_text(PREPARE_STUB)  # what the fake logs' prepare_hash names
    git(path, "add", ".gitignore", "train.py", "prepare.py")
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
    commit,
    val_bpc,
    peak_vram_mb=3072.0,
    fingerprint="f1f2f3f4f5f6",
    seed=None,
    gpu="NVIDIA H100 80GB HBM3",
    sandbox=None,
):
    if seed is None:  # each log is a run of its own: a seed no other log has (record refuses a repeated one)
        seed = 1000 + uuid.uuid4().int % 10**9
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
        prepare_hash=prepare_hash_of(PREPARE_STUB),
        run_id=uuid.uuid4().hex[:12],
        val_bpc_exact=repr(float(f"{val_bpc:.6f}")),
        train_bpc=f"{val_bpc + 0.01:.6f}",
        flags="none",
        libraries="334368abb933",
        budget="300s",
        data="enwik8:a1fa5ffddb56f4953e226637dabbb36a",
    )
    if sandbox is not None:  # the harness's kernel boundary; a summary from before it has no such key
        values["sandbox"] = sandbox
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
        values = dict(commit=commit, val_bpc=f"{val:.6f}", memory_gb=f"{mem:.1f}", status=status)
        values["description"] = description
        if provenance:
            values.update(zip(ledger.PROVENANCE_COLUMNS, rest))
        lines.append(ledger.format_row(values, columns).rstrip("\n"))  # with its crc when the file has one
    return newline.join(lines) + newline


def data_lines(path):
    """The non-header, non-blank lines of a results file, as lists of fields."""
    lines = [line.rstrip("\r") for line in Path(path).read_text().split("\n") if line.strip()]
    return [line.split("\t") for line in lines if not line.startswith("commit\t")]


def run_cli(*args, cwd, env=None, timeout=300):
    """`python analysis.py ARGS` in `cwd`, as the agent runs it."""
    return run_script(ANALYSIS, *args, cwd=cwd, env=env, timeout=timeout)


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
    (repo / "train.py").write_text(edit_constants(TRAIN.read_text(), **TINY_CONSTANTS))
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
    share_journal(dest)
    return dest / "run.log"


def share_journal(dest):
    """The lab's score journal in the repository `dest` is in (a clone of the lab has its own git
    directory, and so its own journal): what the sealed scorer wrote for the lab's runs."""
    common = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=dest, capture_output=True, text=True
    ).stdout.strip()
    source = _LAB["lab"].repo / ".git" / "autoresearch" / "journal.jsonl"
    if common and Path(common) != (_LAB["lab"].repo / ".git").resolve() and source.exists():
        target = Path(common) / "autoresearch" / "journal.jsonl"
        target.parent.mkdir(parents=True, exist_ok=True)
        known = target.read_text() if target.exists() else ""
        target.write_text(known + "".join(line for line in source.read_text().splitlines(True) if line not in known))

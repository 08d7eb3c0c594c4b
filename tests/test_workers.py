"""Parallel experiments on one machine: `tools/workers.py`, one git worktree per GPU.

A temporary research repository (a tiny train.py, analysis.py, the helper, the project's
.gitignore) gets two workers; each commits a different change, both train at once on the CPU,
and both record into the main worktree's results.tsv.
"""

import fcntl
import json
import re
import shutil
import subprocess
from types import SimpleNamespace

import pytest
from fixtures_results import TINY_CONSTANTS, prepare_hash_of, provenance_values
from harness import REPO, TRAIN, base_env, edit_constants, parse_summary, python, run_script

from labbook import ledger
from labbook import workers as workers_module

BASELINE_BPC = 9.5  # above what a tiny run reaches, so both workers beat it and show as candidates

# The copy says which GPU and worker it was given, the way an agent would add a print to train().
SETUP_CALL = "def train(run):\n"
ENV_REPORT = "    import os\n\n    print(f\"visible devices: {os.environ.get('CUDA_VISIBLE_DEVICES')}\", flush=True)\n"


def git(cwd, *args):
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_research_repo(path, gitignore=None):
    """A fresh repository on branch main with everything a worker needs, in one commit."""
    path.mkdir(parents=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.name", "Autoresearch Test")
    git(path, "config", "user.email", "test@example.invalid")
    git(path, "config", "commit.gpgsign", "false")
    source = TRAIN.read_text()
    assert SETUP_CALL in source, "train.py has no `def train(run):`: update the anchor"
    (path / "train.py").write_text(
        edit_constants(source.replace(SETUP_CALL, SETUP_CALL + ENV_REPORT), **TINY_CONSTANTS)
    )
    shutil.copy(REPO / "prepare.py", path / "prepare.py")  # the harness that trains and re-scores
    shutil.copy(REPO / "analysis.py", path / "analysis.py")
    shutil.copytree(REPO / "labbook", path / "labbook", ignore=shutil.ignore_patterns("__pycache__"))
    (path / "tools").mkdir()
    shutil.copy(REPO / "tools" / "workers.py", path / "tools" / "workers.py")
    (path / ".gitignore").write_text(gitignore if gitignore is not None else (REPO / ".gitignore").read_text())
    git(path, "add", ".")
    git(path, "commit", "-q", "-m", "baseline")
    return path


def workers(root, *args, env=None):
    return run_script("tools/workers.py", *args, cwd=root, env=env)


def commit_lr(worktree, lr):
    """Change LR in a worker's train.py and commit it; returns the full commit hash."""
    train = worktree / "train.py"
    train.write_text(re.sub(r"^LR = .*$", f"LR = {lr!r}", train.read_text(), count=1, flags=re.M))
    git(worktree, "commit", "-q", "-am", f"lr {lr}")
    return git(worktree, "rev-parse", "HEAD")


SETUP_VALUES = (0.0, 0.001, -0.001, 0.0005, -0.0005)  # the baseline and 4 replicates: mean BASELINE_BPC


def record_baseline(root, val_bpc, commit=None, parts=None):
    """Setup on the research branch's HEAD, as `record` writes it: the baseline and its replicates
    (full provenance, checksums), so the keep rule has a tip and a sigma. `parts`: fingerprint
    parts (libraries, budget, data...) of the machine's real runs; rows after setup are kept."""
    commit = commit or git(root, "rev-parse", "--short=7", "HEAD")
    prepare_hash = prepare_hash_of((root / "prepare.py").read_text())
    tsv = root / "results.tsv"
    later = tsv.read_text().splitlines(keepends=True)[1 + len(SETUP_VALUES) :] if tsv.exists() else []
    text = "\t".join(ledger.COLUMNS) + "\n"
    for i, offset in enumerate(SETUP_VALUES):
        kind, description = ("baseline", "baseline") if i == 0 else ("replicate", f"noise: seed {i}")
        values = provenance_values(commit, val_bpc + offset, "keep", description, kind, prepare_hash, seed=str(i or 42))
        text += ledger.format_row({**values, **(parts or {})}, ledger.COLUMNS)
    tsv.write_text(text + "".join(later))


def read_rows(tsv):
    lines = tsv.read_text().splitlines()
    columns = lines[0].split("\t")
    return [dict(zip(columns, line.split("\t"))) for line in lines[1:] if line.strip()]


@pytest.fixture(scope="module")
def night(tmp_path_factory, corpus):
    """Two workers, a different commit in each, trained concurrently and recorded."""
    tmp = tmp_path_factory.mktemp("workers")
    root = make_research_repo(tmp / "repo")
    main_before = git(root, "rev-parse", "main")
    record_baseline(root, BASELINE_BPC)
    setup = workers(root, "setup", "--tag", "night", "--gpus", "0,1")
    assert setup.returncode == 0, setup.stderr
    commits = {gpu: commit_lr(root / "worktrees" / f"gpu{gpu}", lr) for gpu, lr in (("0", 0.003), ("1", 0.001))}
    env = base_env(tmp, AR_DATA=corpus, AR_STEPS=4, AR_EVAL_BYTES=8192)
    runs = {
        gpu: subprocess.Popen(
            [python(), "tools/workers.py", "run", "--gpu", gpu],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for gpu in commits
    }
    outputs = {gpu: proc.communicate(timeout=300)[0] for gpu, proc in runs.items()}
    codes = {gpu: proc.returncode for gpu, proc in runs.items()}
    # the baseline ran on this machine too: its rows carry the real runs' fingerprint parts
    summary = parse_summary((root / "worktrees" / "gpu0" / "run.log").read_text())
    parts = {k: summary[k] for k in ("libraries", "budget", "eval_bytes", "data", "device", "fingerprint")}
    record_baseline(root, BASELINE_BPC, main_before[:7], parts)
    return SimpleNamespace(root=root, main_before=main_before, commits=commits, outputs=outputs, codes=codes, env=env)


def test_setup_gives_each_gpu_a_worktree_on_its_own_branch_tracking_the_research_branch(night):
    for gpu in ("0", "1"):
        worktree = night.root / "worktrees" / f"gpu{gpu}"
        assert git(worktree, "branch", "--show-current") == f"autoresearch/night-gpu{gpu}"
        assert git(worktree, "rev-parse", "--abbrev-ref", "@{upstream}") == "main"
    assert git(night.root, "status", "--porcelain") == "", "worktrees/ and run state must stay out of git status"


def test_concurrent_workers_all_record_into_the_main_worktrees_results_with_their_commit_and_name(night):
    assert night.codes == {"0": 0, "1": 0}, night.outputs
    rows = read_rows(night.root / "results.tsv")[len(SETUP_VALUES) :]
    assert sorted((row["worker"], row["commit"]) for row in rows) == [
        ("gpu0", night.commits["0"][:7]),
        ("gpu1", night.commits["1"][:7]),
    ]
    for row in rows:
        assert row["description"] == f"[{row['worker']}] lr {0.003 if row['worker'] == 'gpu0' else 0.001}"
    assert not list(night.root.glob("worktrees/*/results.tsv")), "a worker wrote a results file of its own"


def test_worker_rows_are_discards_that_the_report_ranks_against_the_research_branch_best(night):
    baseline, *rows = read_rows(night.root / "results.tsv")
    rows = rows[len(SETUP_VALUES) - 1 :]
    assert [row["status"] for row in rows] == ["discard", "discard"], "keep is for commits on the research branch"
    assert all(row["kind"] == "experiment" and row["rescore_seconds"] for row in rows), "judged and re-scored"
    proc = subprocess.run(
        [python(), "analysis.py", "--json", "--no-plots"], cwd=night.root, capture_output=True, text=True
    )
    report = json.loads(proc.stdout)
    assert report["best"]["commit"] == baseline["commit"] == night.main_before[:7]
    beating = sorted(row["commit"] for row in rows if float(row["val_bpc"]) < BASELINE_BPC)
    assert sorted(miss["commit"] for miss in report["near_misses"]) == beating


def test_no_branch_clobbers_another(night):
    assert git(night.root, "rev-parse", "autoresearch/night-gpu0") == night.commits["0"]
    assert git(night.root, "rev-parse", "autoresearch/night-gpu1") == night.commits["1"]
    assert git(night.root, "rev-parse", "main") == night.main_before
    assert git(night.root, "branch", "--show-current") == "main"


def test_each_worker_trains_its_own_commit_on_its_own_gpu_with_its_own_log_and_metrics(night):
    for gpu, commit in night.commits.items():
        worktree = night.root / "worktrees" / f"gpu{gpu}"
        log = (worktree / "run.log").read_text()
        assert parse_summary(log)["commit"] == commit[:7]
        assert f"visible devices: {gpu}\n" in log
        assert "override: AR_DATA=" in log, "the caller's environment did not reach train.py"
        metrics = [json.loads(line) for line in (worktree / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["summary"]["commit"] == commit[:7]


def test_status_lists_each_worker_with_branch_head_and_last_result(night):
    listing = workers(night.root, "status")
    assert listing.returncode == 0, listing.stderr
    standing, *lines = listing.stdout.splitlines()
    view = json.loads(subprocess.run([python(), "analysis.py", "--json"], cwd=night.root, capture_output=True).stdout)
    bound = view["next"]["rerun_below"]
    assert bound < BASELINE_BPC and f"promote below {bound:.6f}" in standing
    assert standing.startswith(f"best kept {night.main_before[:7]} {BASELINE_BPC:.6f}")
    assert len(lines) == 2
    for line, (gpu, commit) in zip(lines, sorted(night.commits.items())):
        val_bpc = parse_summary((night.root / "worktrees" / f"gpu{gpu}" / "run.log").read_text())["val_bpc"]
        assert line.startswith(f"gpu{gpu}  autoresearch/night-gpu{gpu}  {commit[:7]}")
        assert "+1 on main" in line and "idle" in line and f"val_bpc {val_bpc}" in line
        assert ("PROMOTE" in line) == (float(val_bpc) < bound)


@pytest.fixture
def repo(tmp_path):
    """A research repository with two workers that have not trained (cheap: no training)."""
    root = make_research_repo(tmp_path / "repo")
    assert workers(root, "setup", "--tag", "t", "--gpus", "0,1").returncode == 0
    return root


def test_promoting_a_winner_by_cherry_pick_then_sync_restarts_every_worker_from_it(repo):
    winner = commit_lr(repo / "worktrees" / "gpu1", 0.004)
    commit_lr(repo / "worktrees" / "gpu0", 0.005)
    git(repo, "cherry-pick", winner)
    synced = workers(repo, "sync")
    assert synced.returncode == 0, synced.stderr
    tip = git(repo, "rev-parse", "main")
    assert git(repo, "log", "-1", "--format=%s", "main") == "lr 0.004"
    for gpu in ("0", "1"):
        assert git(repo, "rev-parse", f"autoresearch/t-gpu{gpu}") == tip
        assert "LR = 0.004" in (repo / "worktrees" / f"gpu{gpu}" / "train.py").read_text()


def test_run_refuses_uncommitted_changes_before_training(repo):
    worktree = repo / "worktrees" / "gpu0"
    (worktree / "train.py").write_text((worktree / "train.py").read_text() + "\n# untested idea\n")
    refused = workers(repo, "run", "--gpu", "0")
    assert refused.returncode == 2 and "uncommitted changes" in refused.stderr
    assert not (worktree / "run.log").exists()


def test_a_second_run_on_a_busy_worker_is_refused(repo):
    with open(repo / "worktrees" / "gpu1.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        refused = workers(repo, "run", "--gpu", "1", "--no-record")
        listing = workers(repo, "status")
    assert refused.returncode == 2 and "already running" in refused.stderr
    (gpu1,) = [line for line in listing.stdout.splitlines() if line.startswith("gpu1 ")]
    assert "  running  " in gpu1
    assert not (repo / "worktrees" / "gpu1" / "run.log").exists()


def test_setup_refuses_when_worktrees_are_not_git_ignored(tmp_path):
    root = make_research_repo(tmp_path / "repo", gitignore="run.log\n")
    refused = workers(root, "setup", "--tag", "t", "--gpus", "0")
    assert refused.returncode == 2 and "worktrees/" in refused.stderr
    assert not (root / "worktrees").exists()


def test_a_run_for_an_unknown_worker_names_the_setup_command(repo):
    refused = workers(repo, "run", "--gpu", "7")
    assert refused.returncode == 2 and "tools/workers.py setup" in refused.stderr


def test_a_worker_row_defaults_to_discard_or_crash():
    assert workers_module.default_status({"val_bpc": "1.5", "commit": "abc1234"}) == "discard"
    assert workers_module.default_status({}) == "crash"


@pytest.mark.parametrize(
    "val_bpc, view, promote",
    [
        ("1.4985", {"next": {"rerun_below": 1.499}}, True),
        ("1.4995", {"next": {"rerun_below": 1.499}}, False),
        ("1.499", {"next": {"rerun_below": 1.499}}, False),
        ("1.0", {"best": None, "next": None}, False),  # no bound before setup's replicates
    ],
)
def test_a_worker_is_promoted_only_below_the_keep_rules_rerun_bound(val_bpc, view, promote):
    margin = workers_module.margin_to_promote(val_bpc, view)
    assert (margin is not None and margin > 0) == promote
    row = {"status": "discard", "commit": "abc1234", "val_bpc": val_bpc}
    assert ("PROMOTE" in workers_module.promotion_hint(row, "abc1234", view)) == promote


def test_worker_tags_keep_noise_replicates_recognisable():
    assert workers_module.tagged_description("wider MLP", "gpu2") == "[gpu2] wider MLP"
    assert workers_module.tagged_description("noise: AR_SEED=3", "gpu2") == "noise: [gpu2] AR_SEED=3"


def test_setup_says_how_workers_get_the_data_only_when_they_would_not_find_it(tmp_path, corpus):
    root = make_research_repo(tmp_path / "repo")
    bare = workers(root, "setup", "--tag", "a", "--gpus", "0", env=base_env(tmp_path))
    with_data = workers(root, "setup", "--tag", "b", "--gpus", "1", env=base_env(tmp_path, AR_DATA=corpus))
    assert bare.returncode == with_data.returncode == 0
    assert "python prepare.py" in bare.stdout and "AR_DATA" in bare.stdout
    assert "prepare-data" not in with_data.stdout

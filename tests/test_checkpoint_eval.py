"""Weights of kept runs and the morning test score: a checkpoint is re-scored by its own train.py
source, reproduces its run's val_bpc, and gives the report a cached test_bpc for the best commit."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from fixtures_results import analysis, head, is_real_png, make_repo, run_cli, write_log
from harness import REPO, base_env

EVAL_BYTES = 8192  # what conftest's tiny_run scored


@pytest.fixture
def finished_run(tiny_run):
    workdir, code, log, summary = tiny_run
    assert code == 0, log[-2000:]
    return workdir, summary


@pytest.fixture
def eval_env(monkeypatch, corpus, tmp_path):
    """This process's environment as tiny_run's: same data and eval bytes, nothing else of AR_*."""
    for key in [k for k in os.environ if k.startswith("AR_") or k in ("USE_FP8", "USE_FP16")]:
        monkeypatch.delenv(key)
    for key, value in base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES).items():
        if key.startswith("AR_") or key == "XDG_CACHE_HOME":
            monkeypatch.setenv(key, value)


@pytest.fixture
def test_bpc(finished_run, eval_env):
    return analysis.evaluate_checkpoint(finished_run[0] / "checkpoint.pt", "test")


def test_a_checkpoint_re_evaluates_to_exactly_the_val_bpc_its_run_reported(finished_run, corpus, tmp_path):
    workdir, summary = finished_run
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES)
    proc = run_cli("evaluate", workdir / "checkpoint.pt", "--split", "val", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    key, value = proc.stdout.strip().splitlines()[-1].split(": ")
    assert key == "val_bpc" and len(value.split(".")[1]) == 6
    assert abs(float(value) - float(summary["val_bpc"])) <= 1e-6


def test_the_test_split_gives_a_different_finite_score(finished_run, test_bpc):
    assert math.isfinite(test_bpc) and test_bpc > 0
    assert abs(test_bpc - float(finished_run[1]["val_bpc"])) > 1e-4


def test_evaluation_runs_the_checkpoints_own_source_next_to_the_repositorys_train_py(finished_run, eval_env, tmp_path):
    saved = torch.load(finished_run[0] / "checkpoint.pt", weights_only=False)
    marker = tmp_path / "source_file.txt"
    # this source notes where it was imported from, and scores every model 0.5, plus 1 when its
    # REPO_DIR holds a train.py
    saved["source"] += (
        '\n\ndef evaluate(run, net, split="val"):\n'
        f"    Path({str(marker)!r}).write_text(__file__)\n"
        '    return 0.5 + (REPO_DIR / "train.py").exists(), 0.0\n'
    )
    torch.save(saved, tmp_path / "patched.pt")
    assert analysis.evaluate_checkpoint(tmp_path / "patched.pt", "val") == 1.5
    source_file = Path(marker.read_text())
    assert source_file.parent == REPO and not source_file.exists()  # next to train.py, removed afterwards


def test_a_file_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": {}}, tmp_path / "foreign.pt")
    for name in ("broken.pt", "foreign.pt", "missing.pt"):
        assert analysis.main(["evaluate", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1 and name in err


@pytest.fixture
def kept_repo(finished_run, tmp_path, monkeypatch):
    """A repository whose baseline keep was recorded with tiny_run's checkpoint and metrics."""
    workdir, summary = finished_run
    repo = make_repo(tmp_path / "repo")
    monkeypatch.chdir(repo)
    for name in ("checkpoint.pt", "metrics.jsonl"):
        shutil.copy(workdir / name, repo / name)
    write_log(repo, head(repo), val_bpc=float(summary["val_bpc"]))
    assert analysis.main(["record", "--status", "keep", "--description", "baseline"]) == 0
    return repo


def test_a_keep_stores_the_runs_checkpoint_under_its_commit(kept_repo, finished_run):
    saved = kept_repo / "checkpoints" / f"{head(kept_repo)}.pt"
    assert saved.read_bytes() == (finished_run[0] / "checkpoint.pt").read_bytes()


def test_the_report_shows_the_best_commits_test_bpc_and_caches_it(kept_repo, eval_env, test_bpc, capsys):
    capsys.readouterr()
    assert analysis.main(["--no-plots"]) == 0
    assert f"test_bpc {test_bpc:.6f}" in capsys.readouterr().out
    cache = kept_repo / "checkpoints" / f"{head(kept_repo)}.test.json"
    stored = json.loads(cache.read_text())
    assert stored["test_bpc"] == test_bpc
    cache.write_text(json.dumps({**stored, "test_bpc": 9.876543}))  # the next report must read, not recompute
    assert analysis.main(["--no-plots"]) == 0
    assert "test_bpc 9.876543" in capsys.readouterr().out


def test_no_test_skips_the_evaluation(kept_repo, eval_env, capsys):
    capsys.readouterr()
    assert analysis.main(["--no-plots", "--no-test"]) == 0
    assert "test_bpc" not in capsys.readouterr().out
    assert not list((kept_repo / "checkpoints").glob("*.test.json"))


def test_the_agents_json_never_computes_test_bpc_and_keeps_it_out_of_decisions(kept_repo, eval_env, test_bpc, capsys):
    capsys.readouterr()
    assert analysis.main(["--json", "--no-plots"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["informational"]["test_bpc_best"] is None  # nothing cached yet, and --json never evaluates
    assert analysis.main(["--no-plots"]) == 0  # the person's report computes and caches it
    capsys.readouterr()
    assert analysis.main(["--json", "--no-plots"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["informational"]["test_bpc_best"] == test_bpc
    decisions = {k: v for k, v in report.items() if k != "informational"}
    assert "test_bpc" not in json.dumps(decisions) and repr(test_bpc) not in json.dumps(decisions)


def test_curves_overlay_the_tiny_runs_metrics_with_another_attempt(finished_run, tmp_path, capsys):
    metrics = finished_run[0] / "metrics.jsonl"
    steps, summary = analysis.read_metrics(metrics)
    assert steps and summary and "val_bpc" in summary
    other = tmp_path / "attempt.jsonl"
    other.write_text("".join(json.dumps({**s, "loss": s["loss"] * 1.1}) + "\n" for s in steps))
    out = tmp_path / "curves.png"
    assert analysis.main(["curves", str(metrics), str(other), "--out", str(out)]) == 0
    assert is_real_png(out)

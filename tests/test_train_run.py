"""`python train.py` end to end on a generated corpus, as the agent runs it."""

import json
import re
import subprocess
import types

import pytest
import torch
from conftest import TINY_STEPS
from harness import (
    PREPARE,
    TRAIN,
    base_env,
    make_train_copy,
    parse_summary,
    rebind_after_import,
    run_train,
    train_module,
)

import prepare

FORK_KEYS = [
    "val_bpc",
    "training_seconds",
    "total_seconds",
    "peak_vram_mb",
    "mfu_percent",
    "total_tokens_M",
    "num_steps",
    "num_params_M",
    "depth",
    "precision",
]
NEW_KEYS = [
    "startup_seconds",
    "eval_seconds",
    "tokens_per_sec",
    "eval_bytes",
    "device",
    "gpu",
    "torch",
    "x_transformers",
    "seed",
    "commit",
    "fingerprint",
]
LAST_KEYS = [
    "compile_seconds",
    "world_size",
    "data",
    "excluded_steps",
    "overrides",
    "budget",
    "micro_batch",
    "gpu_busy_mb",
    "prepare_hash",
    "run_id",
    "val_bpc_exact",
    "train_bpc",
    "flags",
    "libraries",
    "eval_numerics",
    "spec",
    "sandbox",
]
NUMERIC = FORK_KEYS[:-1] + ["startup_seconds", "eval_seconds", "tokens_per_sec", "eval_bytes", "seed"]


def test_tiny_run_finishes_and_prints_the_whole_summary(tiny_run):
    _, code, log, summary = tiny_run
    assert code == 0, log[-3000:]
    keys = list(summary)
    assert keys[: len(FORK_KEYS)] == FORK_KEYS
    assert keys[len(FORK_KEYS) : len(FORK_KEYS) + len(NEW_KEYS)] == NEW_KEYS
    assert keys[len(FORK_KEYS) + len(NEW_KEYS) :] == LAST_KEYS
    for key in NUMERIC:
        float(summary[key])
    assert summary["precision"] == "FP32"
    assert summary["device"] == "cpu"
    assert summary["eval_bytes"] == "8192"
    assert re.fullmatch(r"[0-9a-f]{12}", summary["fingerprint"])
    assert re.fullmatch(r"[0-9a-f]{12}", summary["run_id"])
    assert summary["budget"] == f"{TINY_STEPS}steps"
    assert re.fullmatch(r"landlock ABI \d+|none \(.+\)", summary["sandbox"])
    assert summary["micro_batch"] == "4"  # TINY's BATCH_SIZE, under the CPU cap
    # the run was measured with this checkout's prepare.py, and the exact score rounds to the printed one
    assert summary["prepare_hash"] == prepare.prepare_hash()
    assert f"{float(summary['val_bpc_exact']):.6f}" == summary["val_bpc"]


def test_a_step_budget_runs_exactly_that_many_counted_steps(tiny_run):
    _, _, log, s = tiny_run
    assert int(s["num_steps"]) == TINY_STEPS
    assert int(s["excluded_steps"]) == 0  # AR_STEPS: no uncounted warm-up steps
    assert float(s["total_tokens_M"]) == pytest.approx(TINY_STEPS * 4 * 1024 / 1e6, abs=0.051)
    assert re.search(rf"^step \d{{5}} \|.*\| \d+/{TINY_STEPS} steps \|", log, re.M)


def test_summary_numbers_are_consistent(tiny_run):
    _, _, _, s = tiny_run
    assert 0 < float(s["val_bpc"]) < 8.5  # a byte model can't be worse than ~uniform (8 bits) for long
    assert float(s["training_seconds"]) > 0
    assert float(s["total_seconds"]) > float(s["training_seconds"])
    assert s["mfu_percent"] == "0.00"  # no GPU: no peak to compare against


@pytest.fixture(scope="module")
def timed_run(tmp_path_factory, corpus):
    """A tiny copy run for a time budget, as the agent's runs are: (return code, log, summary)."""
    workdir = tmp_path_factory.mktemp("timed_run")
    train_py = make_train_copy(workdir)
    code, log = run_train(train_py, base_env(workdir, AR_DATA=corpus, AR_TIME_BUDGET=3, AR_EVAL_BYTES=4096))
    return code, log, parse_summary(log)


def test_a_time_budget_is_spent_before_stopping_and_its_tokens_add_up(timed_run):
    code, log, s = timed_run
    assert code == 0, log[-3000:]
    assert float(s["training_seconds"]) >= 3.0  # AR_TIME_BUDGET=3 is spent before stopping
    assert s["budget"] == "3s"
    assert int(s["excluded_steps"]) == 1  # off the GPU one warm-up step is not counted
    assert int(s["num_steps"]) > int(s["excluded_steps"])
    tokens = (int(s["num_steps"]) - int(s["excluded_steps"])) * 4 * 1024  # TINY batch 4 x seq 1024
    assert float(s["total_tokens_M"]) == pytest.approx(tokens / 1e6, abs=0.06)
    assert "override: AR_TIME_BUDGET=3" in log


def test_run_echoes_every_override_at_start_and_in_summary(tiny_run):
    _, _, log, summary = tiny_run
    head = log.split("\n---\n")[0]
    for name in ("AR_DATA", "AR_STEPS", "AR_EVAL_BYTES"):
        assert f"override: {name}=" in head
        assert f"{name}=" in summary["overrides"]
    assert "not comparable" in head  # the CPU warning
    assert head.count("warning: no CUDA GPU") == 1


def test_progress_output_stays_readable_when_redirected(tiny_run):
    _, _, log, _ = tiny_run
    assert "\r" not in log
    assert len(log.splitlines()) < 80
    assert re.search(r"^step \d{5} \|", log, re.M)


def test_metrics_file_holds_every_step_and_the_summary(tiny_run):
    workdir, _, _, summary = tiny_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "step" in r]
    assert [r["step"] for r in steps] == list(range(1, TINY_STEPS + 1))
    assert set(steps[0]) == {"step", "time", "loss", "lr", "tok_per_sec", "grad_norm"}
    times = [r["time"] for r in steps]
    assert times == sorted(times)
    assert rows[-1]["summary"]["fingerprint"] == summary["fingerprint"]
    assert rows[-1]["summary"]["val_bpc"] == pytest.approx(float(summary["val_bpc"]), abs=1e-6)
    assert rows[-1]["summary"]["val_bpc_exact"] == float(summary["val_bpc_exact"])


def test_checkpoint_holds_weights_source_and_summary(tiny_run):
    workdir, _, _, summary = tiny_run
    ckpt = torch.load(workdir / "checkpoint.pt", weights_only=False)
    assert ckpt["source"] == (workdir / "train.py").read_text()
    assert ckpt["summary"]["num_steps"] == int(summary["num_steps"])
    assert any(k.startswith("net.") for k in ckpt["model"])
    assert not list(workdir.glob("*.part*"))


def test_seed_override_changes_the_run_but_not_the_fingerprint(tmp_path, corpus, tiny_run):
    train_py = make_train_copy(tmp_path)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=TINY_STEPS, AR_EVAL_BYTES=8192, AR_SEED=7)
    code, log = run_train(train_py, env)
    assert code == 0, log[-2000:]
    summary = parse_summary(log)
    assert summary["seed"] == "7"
    assert summary["fingerprint"] == tiny_run[3]["fingerprint"]
    assert summary["val_bpc_exact"] != tiny_run[3]["val_bpc_exact"]


def test_the_same_seed_and_step_budget_give_the_same_val_bpc_exactly(tmp_path, corpus, tiny_run):
    train_py = make_train_copy(tmp_path)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=TINY_STEPS, AR_EVAL_BYTES=8192)
    code, log = run_train(train_py, env)
    assert code == 0, log[-2000:]
    again, first = parse_summary(log), tiny_run[3]
    assert again["val_bpc_exact"] == first["val_bpc_exact"]
    assert again["fingerprint"] == first["fingerprint"] and again["run_id"] != first["run_id"]


def fingerprint_of(libraries="lib", numerics="cpu-fp32-math", **change):
    run = types.SimpleNamespace(env={"budget": 300.0, "steps": None}, eval_bytes=10, data_identity="a")
    for key, value in change.items():
        setattr(run, key, value)
    return prepare.fingerprint(run, prepare.prepare_hash(), libraries, numerics)


def test_fingerprint_covers_the_harness_budget_or_steps_eval_bytes_and_data(monkeypatch):
    base = fingerprint_of()
    changes = [
        {"eval_bytes": 11},
        {"data_identity": "b"},
        {"env": {"budget": 301.0, "steps": None}},
        {"env": {"budget": 300.0, "steps": 300}},  # 300 steps are not 300 seconds
    ]
    for change in changes:
        assert fingerprint_of(**change) != base, change
    assert fingerprint_of(libraries="an edited x-transformers") != base
    assert fingerprint_of(numerics="cuda7.5-fp16-efficient") != base  # an older card's evaluation
    assert fingerprint_of(numerics="cuda8.0-bf16-flash") == fingerprint_of(numerics="cuda9.0-bf16-flash")
    assert fingerprint_of(env={"budget": 300.0, "steps": 20}) != fingerprint_of(env={"budget": 300.0, "steps": 21})
    # any edit of prepare.py's text changes its hash, and the hash is part of the fingerprint
    text = PREPARE.read_text()
    assert "EVAL_BATCH_SIZE = 16" in text
    assert prepare.prepare_hash(text.replace("EVAL_BATCH_SIZE = 16", "EVAL_BATCH_SIZE = 8")) != prepare.prepare_hash()
    monkeypatch.setattr(prepare, "prepare_hash", lambda text=None: "another")
    assert fingerprint_of() != base


def test_editing_train_py_keeps_the_fingerprint(tmp_path, corpus, tiny_run):
    """The agent's file is not hashed: a hyperparameter edit stays comparable with the baseline."""
    train_py = make_train_copy(tmp_path, LR=1e-3)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=2, AR_EVAL_BYTES=8192))
    assert code == 0, log[-2000:]
    two_steps = parse_summary(log)["fingerprint"]
    assert two_steps != tiny_run[3]["fingerprint"]  # a different step budget is a different experiment
    run = types.SimpleNamespace(env={"budget": 300.0, "steps": 2}, eval_bytes=8192, data_identity=tiny_run[3]["data"])
    libraries = tiny_run[3]["libraries"]
    # prepare.py, the libraries, the budget, the scored bytes, the data and the numerics only
    assert two_steps == prepare.fingerprint(run, prepare.prepare_hash(), libraries, "cpu-fp32-math")


def test_train_py_holds_only_the_agents_part_and_prepare_py_the_harness():
    agent, harness = TRAIN.read_text(), PREPARE.read_text()
    for name in ("def build_model(", "def build_optimizer(", "def lr_multiplier(", "def train(run)"):
        assert name in agent and name not in harness
    for name in ("def evaluate(", "class Tracker", "def supervise(", "def fingerprint(", "def main("):
        assert name in harness and name not in agent
    assert re.search(r'^if __name__ == "__main__":\n    main\(\)\n\Z', agent, re.M)
    assert "GRAD_ACCUM" not in agent and "HOST_MICRO_BATCH" not in agent  # the harness picks micro-batches
    for text in (agent, harness):
        assert "spec_from_file_location" not in text  # no file loads another by path
    assert "FIXED REGION" not in agent + harness


def test_unknown_command_line_arguments_are_refused(tmp_path, corpus):
    train_py = make_train_copy(tmp_path)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus), args=["--lr", "3"])
    assert code != 0
    assert log.strip().splitlines()[-1].startswith("crash: unknown arguments")


def test_gpu_peak_table_matches_card_names():
    assert prepare.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert prepare.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert prepare.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert prepare.gpu_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert prepare.gpu_peak_tflops("Some Future GPU") == 0.0


def test_rebinding_max_seq_len_in_train_py_changes_training_windows_but_not_the_evaluation(
    tmp_path, corpus, monkeypatch
):
    # the agent shadows the harness constant right after importing it: TRAIN_SEQ_LEN and the
    # model's max_seq_len follow, prepare's evaluation windows do not
    source = rebind_after_import(TRAIN.read_text(), MAX_SEQ_LEN=256)
    train_py = make_train_copy(tmp_path, source=source)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=4, AR_EVAL_BYTES=4096))
    assert code == 0, log[-3000:]
    summary = parse_summary(log)
    assert summary["eval_bytes"] == "4096"
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["summary"]["total_tokens_M"] * 1e6 == pytest.approx(4 * 4 * 256)  # 256-byte training windows
    model = train_module(saved["source"], name="rebound_run").build_model()
    model.load_state_dict(saved["model"])
    splits, _, _ = prepare.load_corpus(dict(data=str(corpus), data_url=""))
    val, cpu = splits["val"][:4096], torch.device("cpu")
    scored, _ = prepare.evaluate(model.net, val, cpu)  # prepare.MAX_SEQ_LEN: 1024-byte windows
    assert scored == pytest.approx(float(summary["val_bpc_exact"]), abs=1e-6)
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 256)
    short, _ = prepare.evaluate(model.net, val, cpu, probe=False)  # what 256-byte windows would score
    assert abs(short - float(summary["val_bpc_exact"])) > 1e-4


def test_commit_is_dirty_only_when_train_py_or_prepare_py_differ_from_head(tmp_path):
    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    for name in ("train.py", "prepare.py", "notes.md"):
        (tmp_path / name).write_text(f"# {name}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "baseline")
    head = prepare.git_commit(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{7}", head)
    (tmp_path / "notes.md").write_text("edited\n")  # other files do not make a result dirty
    (tmp_path / "run.log").write_text("untracked\n")
    assert prepare.git_commit(tmp_path) == head
    for name in ("train.py", "prepare.py"):
        (tmp_path / name).write_text("edited\n")
        assert prepare.git_commit(tmp_path) == f"{head}-dirty", name
        git("checkout", "--", name)
    assert prepare.git_commit(tmp_path / "no-repo") == "none"

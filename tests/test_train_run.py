"""`python train.py` end to end on a generated corpus, as the agent runs it."""

import json
import re

import pytest
import torch
from harness import TRAIN, base_env, import_train, make_train_copy, parse_summary, run_train

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
NUMERIC = FORK_KEYS[:-1] + ["startup_seconds", "eval_seconds", "tokens_per_sec", "eval_bytes", "seed"]


def test_tiny_run_finishes_and_prints_the_whole_summary(tiny_run):
    _, code, log, summary = tiny_run
    assert code == 0, log[-3000:]
    keys = list(summary)
    assert keys[: len(FORK_KEYS)] == FORK_KEYS
    assert keys[len(FORK_KEYS) : len(FORK_KEYS) + len(NEW_KEYS)] == NEW_KEYS
    for key in NUMERIC:
        float(summary[key])
    assert summary["precision"] == "FP32"
    assert summary["device"] == "cpu"
    assert summary["eval_bytes"] == "8192"
    assert re.fullmatch(r"[0-9a-f]{12}", summary["fingerprint"])


def test_summary_numbers_are_consistent(tiny_run):
    _, _, _, s = tiny_run
    assert 0 < float(s["val_bpc"]) < 8.5  # a byte model can't be worse than ~uniform (8 bits) for long
    assert float(s["training_seconds"]) >= 4.0  # AR_TIME_BUDGET=4 is spent before stopping
    assert float(s["total_seconds"]) > float(s["training_seconds"])
    assert int(s["num_steps"]) > int(s["excluded_steps"])
    tokens = (int(s["num_steps"]) - int(s["excluded_steps"])) * 4 * 1024  # TINY batch 4 x seq 1024
    assert float(s["total_tokens_M"]) == pytest.approx(tokens / 1e6, abs=0.06)
    assert s["mfu_percent"] == "0.00"  # no GPU: no peak to compare against


def test_run_echoes_every_override_at_start_and_in_summary(tiny_run):
    _, _, log, summary = tiny_run
    head = log.split("\n---\n")[0]
    for name in ("AR_DATA", "AR_TIME_BUDGET", "AR_EVAL_BYTES"):
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
    assert [r["step"] for r in steps] == list(range(1, int(summary["num_steps"]) + 1))
    assert set(steps[0]) == {"step", "time", "loss", "lr", "tok_per_sec", "grad_norm"}
    times = [r["time"] for r in steps]
    assert times == sorted(times)
    assert rows[-1]["summary"]["fingerprint"] == summary["fingerprint"]
    assert rows[-1]["summary"]["val_bpc"] == pytest.approx(float(summary["val_bpc"]), abs=1e-6)


def test_checkpoint_holds_weights_source_and_summary(tiny_run):
    workdir, _, _, summary = tiny_run
    ckpt = torch.load(workdir / "checkpoint.pt", weights_only=False)
    assert ckpt["source"] == (workdir / "train.py").read_text()
    assert ckpt["summary"]["num_steps"] == int(summary["num_steps"])
    assert any(k.startswith("net.") for k in ckpt["model"])
    assert not list(workdir.glob("*.part*"))


def test_seed_override_changes_the_run_but_not_the_fingerprint(tmp_path, corpus, tiny_run):
    train_py = make_train_copy(tmp_path)
    env = base_env(tmp_path, AR_DATA=corpus, AR_TIME_BUDGET=4, AR_EVAL_BYTES=8192, AR_SEED=7)
    code, log = run_train(train_py, env)
    assert code == 0, log[-2000:]
    summary = parse_summary(log)
    assert summary["seed"] == "7"
    assert summary["fingerprint"] == tiny_run[3]["fingerprint"]


def test_fingerprint_covers_the_fixed_region_budget_eval_bytes_and_data(tmp_path):
    train = import_train()
    run = train.Run(
        env={"budget": 300.0}, device=torch.device("cpu"), precision="FP32", splits={}, data_identity="a", eval_bytes=10
    )
    base = train.fingerprint(run)
    for change in ({"eval_bytes": 11}, {"data_identity": "b"}, {"env": {"budget": 301.0}}):
        other = train.Run(**{**run.__dict__, **change})
        assert train.fingerprint(other) != base, change
    # editing hyperparameters keeps the fingerprint; editing the FIXED region changes it
    edited = make_train_copy(tmp_path / "hyper", LR=1e-3)
    assert train.fixed_source(edited.read_text()) == train.fixed_source(TRAIN.read_text())
    text = TRAIN.read_text().replace("EVAL_BATCH_SIZE = 16", "EVAL_BATCH_SIZE = 8")
    assert train.fixed_source(text) != train.fixed_source(TRAIN.read_text())


def test_fixed_region_spans_harness_and_entry_point():
    fixed = import_train().fixed_source()
    assert "def evaluate(" in fixed and "run_main(main)" in fixed
    assert "def build_model(" not in fixed and "LR = " not in fixed


def test_unknown_command_line_arguments_are_refused(tmp_path, corpus):
    train_py = make_train_copy(tmp_path)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus), args=["--lr", "3"])
    assert code != 0
    assert log.strip().splitlines()[-1].startswith("crash: unknown arguments")


def test_gpu_peak_table_matches_card_names():
    train = import_train()
    assert train.gpu_peak_tflops("NVIDIA H100 80GB HBM3") == 989.0
    assert train.gpu_peak_tflops("NVIDIA H100 PCIe") == 756.0
    assert train.gpu_peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert train.gpu_peak_tflops("NVIDIA GeForce RTX 4090") == 165.0
    assert train.gpu_peak_tflops("Some Future GPU") == 0.0

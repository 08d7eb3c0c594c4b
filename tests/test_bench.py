"""The benchmark and the fast data path it measures.

bench/bench.py runs end to end on the CPU at a tiny size and writes every section of its JSON;
the fork's config is built from an edited copy of train.py without touching the fixed region;
and train.py's data path stays on the device: get_batch slices windows there, and the loop reads
nothing back to the host except through the Tracker, once every METRICS_EVERY steps.
"""

import ast
import importlib.util
import inspect
import json
import subprocess
import sys
import textwrap
from types import SimpleNamespace

import pytest
import torch
from harness import REPO, TRAIN, base_env, import_train

BENCH = REPO / "bench" / "bench.py"
SECTIONS = ("meta", "ceilings", "throughput", "baseline", "eval", "launch", "optimizer", "fp8")
CONFIGS = ("default", "fork", "dim1024")
HOST_READS = {"item", "tolist", "cpu", "numpy", "synchronize"}


def import_bench():
    spec = importlib.util.spec_from_file_location("bench_under_test", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench():
    return import_bench()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One CPU smoke run of the bench, as CI runs it: (process, parsed JSON)."""
    tmp = tmp_path_factory.mktemp("bench_smoke")
    out = tmp / "bench.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp, env=base_env(tmp), capture_output=True, text=True, timeout=180)
    return proc, json.loads(out.read_text()) if out.exists() else {}


# ---------------------------------------------------------------------------
# The CPU smoke run
# ---------------------------------------------------------------------------


def test_cpu_smoke_run_finishes_and_prints_the_table(smoke):
    proc, _ = smoke
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "results:" in proc.stdout
    assert "launch to first counted step" in proc.stdout


def test_smoke_json_has_every_section_and_every_config(smoke):
    _, results = smoke
    assert set(SECTIONS) <= set(results)
    assert set(CONFIGS) <= set(results["throughput"])
    assert {"default", "dim1024"} <= set(results["fp8"])


def test_smoke_ceilings_and_throughput_are_positive(smoke):
    _, results = smoke
    assert results["ceilings"]["matmul_tflops"] > 0
    assert results["ceilings"]["copy_gb_per_s"] > 0
    for name in CONFIGS:
        t = results["throughput"][name]
        for key in ("tokens_per_s", "step_ms", "mfu_vs_measured_pct", "peak_memory_mb", "params_M"):
            assert t[key] > 0, (name, key, t[key])
        assert t["mfu_vs_datasheet_pct"] is None  # a CPU has no datasheet BF16 peak
        assert t["breakdown_ms"]["forward_backward"] > 0
        assert t["breakdown_ms"]["optimizer"] > 0
        assert {"data", "grad_clip", "host_sync"} <= set(t["breakdown_ms"])


def test_smoke_fork_config_has_the_forks_batch_and_clip(smoke):
    _, results = smoke
    fork = results["meta"]["configs"]["fork"]
    assert fork["fork"] is True
    assert fork["grad_clip"] == 0.5
    assert results["throughput"]["fork"]["accum"] > 1  # accumulation stays on in --tiny


def test_smoke_baseline_eval_launch_and_optimizer_have_positive_figures(smoke):
    _, results = smoke
    assert results["baseline"]["tokens_per_s"] > 0
    assert results["baseline"]["speedup_train_py_loop"] > 0
    assert results["eval"]["seconds"] > 0 and results["eval"]["eval_bytes"] > 0
    launch = results["launch"]
    assert launch["returncode"] == 0
    assert launch["startup_seconds"] > 0 and launch["launch_to_first_counted_step_s"] > launch["startup_seconds"]
    opt = results["optimizer"]
    assert opt["variants"]["eager"]["ms"] > 0
    assert 0 < opt["eager_share_of_step"]
    assert opt["muon_matrices"] > 0 and opt["adam_tensors"] > 0


def test_smoke_fp8_is_counted_but_not_timed_off_the_gpu(smoke):
    _, results = smoke
    for name in ("default", "dim1024"):
        f = results["fp8"][name]
        assert f["timed"] is False and "CUDA" in f["reason"]
        assert set(f["wanted"]) == {"train_fp8_wants", "torchao_tensorwise"}


def test_tiny_quality_run_trains_both_configs_and_reports_the_gap(tmp_path):
    out = tmp_path / "quality.json"
    cmd = [sys.executable, str(BENCH), "--device", "cpu", "--tiny", "--sections", "quality", "--quality-budget", "1"]
    proc = subprocess.run(
        cmd + ["--out", str(out)], cwd=tmp_path, env=base_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    quality = results["quality"]
    for config in ("default", "fork"):
        assert quality[config]["returncode"] == 0, quality[config].get("log_tail")
        assert quality[config]["val_bpc"] > 0 and quality[config]["num_params_M"] > 0
    assert quality["bpc_gap_fork_minus_default"] == pytest.approx(
        quality["fork"]["val_bpc"] - quality["default"]["val_bpc"]
    )
    assert results["launch"]["source"] == "default-config quality run"
    assert results["launch"]["launch_to_first_counted_step_s"] > 0


# ---------------------------------------------------------------------------
# Section plan and the edited copies of train.py
# ---------------------------------------------------------------------------


def test_quality_runs_first_and_stands_in_for_the_launch_run(bench):
    plan = bench.section_plan(bench.parse_args(["--device", "cpu", "--quality"]))
    assert plan[0] == ("quality", None)
    assert "launch" not in {section for section, _ in plan}
    assert ("launch", "default") in bench.section_plan(bench.parse_args(["--device", "cpu"]))


def test_unknown_section_names_are_refused(bench):
    with pytest.raises(SystemExit):
        bench.section_plan(bench.parse_args(["--device", "cpu", "--sections", "throughput,speed"]))


def test_a_failing_section_is_recorded_as_an_error_and_the_report_goes_on(bench, monkeypatch):
    def out_of_memory(b, name):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setitem(bench.SECTIONS, "throughput", out_of_memory)
    b = SimpleNamespace(device=torch.device("cpu"))
    result = bench.run_section(b, "throughput", "dim1024")
    assert result["error"].startswith("OutOfMemoryError: CUDA out of memory")
    rows = bench.report_rows({"throughput": {"dim1024": result}, "eval": {"eval_bytes": 8192, "seconds": 0.5}})
    assert rows[0][0] == "throughput dim1024" and "out of memory" in rows[0][1]
    assert "final eval of 8,192 val bytes" in rows[1][0]


def test_default_copy_of_train_py_is_train_py_itself(bench):
    assert bench.train_source("default") == TRAIN.read_text()


def test_fork_copy_of_train_py_builds_the_forks_model_and_keeps_the_fixed_region(bench, tmp_path):
    source = bench.train_source("fork")
    path = tmp_path / "train.py"
    path.write_text(source)
    fork = import_train(path, name="fork_copy")
    original = import_train()
    assert (fork.DIM, fork.DEPTH, fork.HEADS, fork.BATCH_SIZE, fork.GRAD_ACCUM) == (512, 6, 8, 4, 4)
    assert (fork.LR, fork.GRAD_CLIP) == (1e-4, 0.5)
    assert fork.fixed_source(source) == original.fixed_source(TRAIN.read_text())
    assert inspect.getsource(fork.main) == inspect.getsource(original.main)
    with torch.device("meta"):
        model = fork.build_model()
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Attention") == 6
    assert "ReluSquared" in kinds and "GLU" not in kinds


# ---------------------------------------------------------------------------
# The data path lives on the device
# ---------------------------------------------------------------------------


@pytest.fixture
def train_run(corpus, tmp_path, monkeypatch):
    """train.py imported and set up on the CPU with the shared corpus: (module, run)."""
    for key, value in base_env(tmp_path, AR_DATA=corpus, AR_DEVICE="cpu", AR_METRICS=tmp_path / "m.jsonl").items():
        monkeypatch.setenv(key, value)
    module = import_train()
    return module, module.setup()


def test_get_batch_returns_contiguous_windows_of_the_train_split_on_the_runs_device(train_run):
    module, run = train_run
    train = run.splits["train"]
    state = run.generator.get_state()
    run.splits["train"] = torch.arange(len(train), device=run.device)  # every byte replaced by its position
    positions = module.get_batch(run, 8)
    run.splits["train"] = train
    run.generator.set_state(state)
    batch = module.get_batch(run, 8)
    assert batch.shape == (8, module.MAX_SEQ_LEN) and batch.dtype == torch.long
    assert batch.device == run.device and positions.device == run.device
    starts = positions[:, 0]
    assert torch.equal(positions, starts[:, None] + torch.arange(module.MAX_SEQ_LEN))
    assert starts.min() >= 0 and starts.max() <= len(train) - module.MAX_SEQ_LEN
    for row, start in zip(batch, starts.tolist()):
        assert torch.equal(row, train[start : start + module.MAX_SEQ_LEN].long())


def test_get_batch_draws_from_the_split_it_is_asked_for(train_run):
    module, run = train_run
    val = run.splits["val"]
    run.splits["val"] = torch.arange(len(val), device=run.device)
    starts = module.get_batch(run, 16, split="val")[:, 0]
    assert starts.max() <= len(val) - module.MAX_SEQ_LEN


def host_reads_in_the_training_loop(main):
    """Calls like x.item() inside main()'s `while` loop, as (name, line) pairs."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(main)))
    loops = [node for node in ast.walk(tree) if isinstance(node, ast.While)]
    assert loops, "main() has no while loop"
    return [
        (node.func.attr, node.lineno)
        for loop in loops
        for node in ast.walk(loop)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HOST_READS
    ]


def test_training_loop_reads_nothing_back_to_the_host_per_step():
    module = import_train()
    assert host_reads_in_the_training_loop(module.main) == []


def test_the_host_read_check_catches_a_loss_item_per_micro_step():
    def main():
        while True:
            for _ in range(4):
                loss = model(batch)  # noqa: F821
                loss.item()

    assert [name for name, _ in host_reads_in_the_training_loop(main)] == ["item"]


def test_tracker_syncs_every_uncounted_step_then_once_every_metrics_every_steps(tmp_path, monkeypatch):
    module = import_train()
    monkeypatch.setattr(module, "METRICS_EVERY", 10)
    monkeypatch.setattr(module.gc, "freeze", lambda: None)  # keep the test process's heap collectable
    env = dict(budget=1e9, metrics=str(tmp_path / "metrics.jsonl"))
    run = module.Run(env, torch.device("cpu"), "FP32", {}, "test", 0, excluded_steps=10)
    flushed = []
    original = module.Tracker.flush

    def counting_flush(self, step):
        flushed.append(step)
        return original(self, step)

    monkeypatch.setattr(module.Tracker, "flush", counting_flush)
    tracker = module.Tracker(run)
    for step in range(1, 31):
        tracker.end_step(step, torch.tensor(2.0), 1e-3, torch.tensor(1.0), 1024)
    uncounted = list(range(1, run.excluded_steps + 1))
    assert flushed == uncounted + [20, 30]
    assert len(flushed) <= run.excluded_steps + 3

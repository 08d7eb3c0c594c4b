"""The benchmark and the fast data path it measures.

bench/bench.py runs end to end on the CPU at a tiny size and writes every section of its JSON;
the fork's config is built from an edited copy of train.py that changes only knobs and
build_model; the step the bench times is train.py's loop body through the harness's Run, with a
Tracker fed by a StepCounter that is removed when the measurement ends; and the data path stays
on the device: run.get_batch slices windows there, and train.py's loop reads nothing back to the
host (the Tracker does, once every METRICS_EVERY steps).
"""

import ast
import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from harness import REPO, TRAIN, base_env, import_bench, python
from torch.optim import optimizer as torch_optimizer

import prepare
from labbook.rescore import RESCORE_TOLERANCE

BENCH = REPO / "bench" / "bench.py"
SECTIONS = ("meta", "ceilings", "throughput", "baseline", "eval", "launch", "optimizer", "fp8")
SECTIONS += ("microbatch", "recompiles", "score", "hosttime", "tolerance")
SESSION_ORDER = [  # the order of value, with the re-score tolerance after the score it reads
    "throughput:default",
    "microbatch:default",
    "launch:default",
    "recompiles:default",
    "score:default",
    "tolerance:default",
    "fp8:dim1024",
]
CONFIGS = ("default", "fork", "dim1024")
HOST_READS = {"item", "tolist", "cpu", "numpy", "synchronize"}


@pytest.fixture(scope="module")
def bench():
    return import_bench()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One CPU smoke run of every section of the bench, as CI runs it: (process, parsed JSON)."""
    tmp = tmp_path_factory.mktemp("bench_smoke")
    out = tmp / "bench.json"
    cmd = [python(), str(BENCH), "--device", "cpu", "--tiny", "--sections", "all", "--out", str(out)]
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
        assert set(t["breakdown_ms"]) == {"forward_backward", "step"}  # the Run's two calls
        assert t["breakdown_ms"]["forward_backward"] > 0 and t["breakdown_ms"]["step"] > 0
        assert t["seq_len"] == 128 and t["tokens_per_step"] == t["batch"] * 128  # --tiny's TRAIN_SEQ_LEN


def test_smoke_fork_config_has_the_forks_batch_and_clip(smoke):
    _, results = smoke
    fork = results["meta"]["configs"]["fork"]
    assert fork["fork"] is True
    assert fork["grad_clip"] == 0.5
    # the harness splits the fork's batch into micro-batches off the GPU, in --tiny too
    fork_run = results["throughput"]["fork"]
    assert fork_run["micro_batch"] == prepare.HOST_MICRO_BATCH and fork_run["micro_batches_per_step"] == 2
    assert results["baseline"]["micro_batch"] * results["baseline"]["accum"] == fork["batch"]


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


def test_smoke_session_sections_report_their_figures(smoke):
    _, results = smoke
    assert results["meta"]["alloc_conf"] == prepare.ALLOC_CONF  # the allocator of a real run
    assert results["microbatch"]["timed"] is False and "CUDA" in results["microbatch"]["reason"]
    recompiles = results["recompiles"]
    assert recompiles["returncode"] == 0 and recompiles["steps"] == 30
    assert recompiles["graph_breaks"] == recompiles["recompiles"] == 0  # nothing compiles on a CPU
    score = results["score"]
    assert score["returncode"] == 0 and score["total_seconds"] > 0, score  # the sealed scorer answered
    assert score["answer"]["split"] == "val" and 0 < score["answer"]["bpc"] < 16  # a barely trained model: near 8
    assert set(results["hosttime"]["batches"]) == {"2", "8"}  # --tiny's batch, and one rank's share under torchrun
    for batch in ("2", "8"):
        host = results["hosttime"]["batches"][batch]
        assert host["host_ms"] > 0 and host["gpu_ms"] > 0 and host["host_waited"] is None
    assert set(results["seconds"]) >= set(SESSION_ORDER)


def test_smoke_tolerance_compares_the_launch_run_with_the_score_sections_answer(smoke):
    _, results = smoke
    tolerance, answer = results["tolerance"], results["score"]["answer"]
    assert "error" not in tolerance, tolerance
    assert tolerance["rescored"] == answer["bpc"] and tolerance["rescore_seconds"] == answer["seconds"]  # no new run
    assert tolerance["abs_difference"] <= RESCORE_TOLERANCE  # a CPU's FP32 evaluation is deterministic


def test_smoke_fp8_is_counted_but_not_timed_off_the_gpu(smoke):
    _, results = smoke
    for name in ("default", "dim1024"):
        f = results["fp8"][name]
        assert f["timed"] is False and "CUDA" in f["reason"]
        assert set(f["wanted"]) == {"prepare_fp8_wants", "torchao_tensorwise"}


def bench_json(tmp_path, *args):
    """(the process, its JSON) of a tiny CPU bench run with `args`, which must succeed."""
    out = tmp_path / "bench.json"
    cmd = [python(), str(BENCH), "--device", "cpu", "--tiny", *args, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=tmp_path, env=base_env(tmp_path), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(out.read_text())


def test_tiny_quality_run_trains_both_configs_and_reports_the_gap(tmp_path):
    proc, results = bench_json(tmp_path, "--sections", "quality", "--quality-budget", "1")
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


def test_the_session_plan_is_ordered_by_value_and_fits_400_s(bench):
    plan = bench.section_plan(bench.parse_args(["--device", "cpu"]))
    assert [bench.label(section, name) for section, name in plan] == SESSION_ORDER
    assert bench.print_plan(bench.parse_args(["--device", "cpu", "--plan"]))  # the plan's own verdict: it fits
    assert all(estimate > 0 for _, estimate in bench.plan_lines(plan)[0])
    run_end = 20 + 5  # a run's sealed scorer (~20-25 s on a GPU), then a supervisor and a trainer process (~5 s)
    assert bench.ESTIMATES["launch:default"] >= 45 + run_end  # startup and a cold compile (~45 s) come first
    assert bench.ESTIMATES["recompiles:default"] >= run_end and bench.ESTIMATES["score:default"] >= 20


def test_the_session_plan_keeps_the_rescore_tolerance_after_the_runs_it_compares(bench):
    plan = [name for name, _ in bench.DEFAULT_PLAN]
    assert "tolerance:default" in plan, "RESCORE_TOLERANCE_GPU stays a guess until a GPU session measures it"
    assert plan.index("launch:default") < plan.index("score:default") < plan.index("tolerance:default")


def test_every_named_section_exists_with_its_config_and_an_estimate(bench):
    configs = bench.make_configs(bench.train_module(), bench.parse_args(["--device", "cpu"]))
    for entry in bench.CATALOGUE + ("quality",):
        section, _, name = entry.partition(":")
        assert section in bench.SECTIONS and entry in bench.ESTIMATES, entry
        assert not name or name in configs, entry
    assert set(SESSION_ORDER) <= set(bench.CATALOGUE)
    plan = bench.section_plan(bench.parse_args(["--device", "cpu", "--sections", "fp8,eval:default"]))
    assert plan == [("eval", "default"), ("fp8", "default"), ("fp8", "dim1024")]


def test_gpu_session_with_no_arguments_plans_within_400_s(tmp_path):
    env = base_env(tmp_path, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    proc = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_session.sh"), "--plan"], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = re.search(r"^total .* (\d+) s of a 400 s budget$", proc.stdout, flags=re.M)
    assert total and int(total.group(1)) <= 400, proc.stdout
    assert [line.split()[0] for line in proc.stdout.splitlines()[1:-1]] == SESSION_ORDER


def test_a_section_that_would_pass_the_budget_is_skipped_and_recorded(tmp_path):
    proc, results = bench_json(tmp_path, "--sections", "ceilings", "--budget", "1")
    assert "would pass 1 s" in results["ceilings"]["skipped"]
    assert "ceilings" in proc.stdout and "skipped:" in proc.stdout


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


def top_level_functions(source):
    """{name: source text} of a file's top-level functions."""
    tree = ast.parse(source)
    return {n.name: ast.get_source_segment(source, n) for n in tree.body if isinstance(n, ast.FunctionDef)}


def test_fork_copy_of_train_py_builds_the_forks_model_and_changes_nothing_else(bench):
    source = bench.train_source("fork")
    fork = prepare.source_module(source, "fork_copy")
    assert (fork.DIM, fork.DEPTH, fork.HEADS, fork.BATCH_SIZE) == (512, 6, 8, 16)
    assert (fork.LR, fork.MUON_LR, fork.GRAD_CLIP) == (1e-4, 1e-4, 0.5)
    ours, theirs = top_level_functions(TRAIN.read_text()), top_level_functions(source)
    assert set(ours) == set(theirs)
    assert {name for name in ours if ours[name] != theirs[name]} == {"build_model"}
    with torch.device("meta"):
        model = fork.build_model()
    kinds = [type(m).__name__ for m in model.modules()]
    assert kinds.count("Attention") == 6
    assert "ReluSquared" in kinds and "GLU" not in kinds


def test_tiny_copies_shorten_the_training_window_not_the_evaluation_window(bench):
    tiny = prepare.source_module(bench.train_source("default", tiny=True), "tiny_copy")
    assert tiny.TRAIN_SEQ_LEN == bench.TINY_SEQ and tiny.MAX_SEQ_LEN == prepare.MAX_SEQ_LEN


def test_no_file_here_loads_another_by_path():
    for path in (BENCH, REPO / "labbook" / "machine.py", *REPO.glob("tests/test_[bm]*.py")):
        text = path.read_text()
        assert "spec_from_file_location" not in text.replace('"spec_from_file_location"', ""), path
        assert "sys.path.insert" not in text.replace('"sys.path.insert"', ""), path
    for tool in REPO.glob("tools/*.py"):  # a tool puts its own checkout first, and nothing else
        inserts = [line.strip() for line in tool.read_text().splitlines() if "sys.path.insert" in line]
        assert inserts in ([], ["sys.path.insert" + "(0, str(Path(__file__).resolve().parents[1]))"]), tool


# ---------------------------------------------------------------------------
# The step the bench times is train.py's loop body through the Run
# ---------------------------------------------------------------------------


@pytest.fixture
def cpu_run(corpus, tmp_path, monkeypatch):
    """prepare.setup() on the CPU with the shared corpus, as the bench makes it."""
    for key, value in base_env(tmp_path, AR_DATA=corpus, AR_DEVICE="cpu", AR_METRICS=tmp_path / "m.jsonl").items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(prepare.gc, "freeze", lambda: None)  # keep the test process's heap collectable
    with contextlib.redirect_stdout(io.StringIO()):
        blob, bounds, identity, _ = prepare.read_splits(prepare.read_env())
        val_size = bounds["val"][1] - bounds["val"][0]
        run = prepare.setup(prepare.read_env(), bytearray(blob[slice(*bounds["train"])]), identity, val_size)
        run.tracker = prepare.Tracker(run)  # every batch drawn is counted by the Run's tracker
        return run


def test_bench_steps_through_the_run_and_removes_its_step_counter(bench, cpu_run):
    train = bench.train_module()
    args = SimpleNamespace(tiny=True, batch=None)
    cfg = bench.make_configs(train, args)["fork"]
    b = SimpleNamespace(module=train, run=cpu_run, device=cpu_run.device, cuda=False)
    hooks = len(torch_optimizer._global_optimizer_post_hooks)
    run, model, optimizer = bench.training_setup(b, cfg)
    assert run is not cpu_run and run.model is model  # a fresh Run per measurement
    with bench.tracked(run) as tracker, contextlib.redirect_stdout(io.StringIO()):
        assert len(torch_optimizer._global_optimizer_post_hooks) == hooks + 1
        for _ in range(2):
            bench.loop_step(b, run, model, optimizer, cfg, bench.Phases(run.device, on=False))
    assert tracker.steps == 2 and tracker.counted_tokens + tracker.uncounted_tokens == 2 * cfg.batch * cfg.seq_len
    assert run.micro_batch == prepare.HOST_MICRO_BATCH  # the harness split the batch of 16
    assert len(torch_optimizer._global_optimizer_post_hooks) == hooks  # the counter is gone
    optimizer.step()
    assert tracker.steps == 2


# ---------------------------------------------------------------------------
# The data path lives on the device
# ---------------------------------------------------------------------------


def test_get_batch_returns_contiguous_windows_of_the_train_split_on_the_runs_device(cpu_run):
    run, seq_len = cpu_run, 64
    train = run.train_data
    state = run.generator.get_state()
    run.train_data = torch.arange(len(train), device=run.device)  # every byte replaced by its position
    positions = run.get_batch(8, seq_len)
    run.train_data = train
    run.generator.set_state(state)
    batch = run.get_batch(8, seq_len)
    assert batch.shape == (8, seq_len + 1) and batch.dtype == torch.long  # inputs and targets
    assert batch.device == run.device and positions.device == run.device
    starts = positions[:, 0]
    assert torch.equal(positions, starts[:, None] + torch.arange(seq_len + 1))
    assert starts.min() >= 0 and starts.max() <= len(train) - seq_len - 1
    for row, start in zip(batch, starts.tolist()):
        assert torch.equal(row, train[start : start + seq_len + 1].long())


def host_reads_in_the_training_loop(function_source):
    """Calls like x.item() inside a function's `while` loop, as (name, line) pairs."""
    tree = ast.parse(function_source)
    loops = [node for node in ast.walk(tree) if isinstance(node, ast.While)]
    assert loops, "the function has no while loop"
    return [
        (node.func.attr, node.lineno)
        for loop in loops
        for node in ast.walk(loop)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in HOST_READS
    ]


def test_training_loop_reads_nothing_back_to_the_host_per_step():
    train = top_level_functions(TRAIN.read_text())["train"]
    assert host_reads_in_the_training_loop(train) == []


def test_the_host_read_check_catches_a_loss_item_per_micro_step():
    source = """
def train(run):
    while True:
        for _ in range(4):
            loss = model(batch)
            loss.item()
"""
    assert [name for name, _ in host_reads_in_the_training_loop(source)] == ["item"]


def test_tracker_syncs_every_uncounted_step_then_once_every_metrics_every_steps(cpu_run, monkeypatch):
    monkeypatch.setattr(prepare, "METRICS_EVERY", 10)
    run = cpu_run
    run.excluded_steps = 10
    flushed = []
    original = prepare.Tracker.flush

    def counting_flush(self, step):
        flushed.append(step)
        return original(self, step)

    monkeypatch.setattr(prepare.Tracker, "flush", counting_flush)
    with contextlib.redirect_stdout(io.StringIO()):
        tracker = prepare.Tracker(run)
        optimizer = SimpleNamespace(param_groups=[{"lr": 1e-3}])
        for _ in range(30):
            tracker.served(1024)
            tracker.last_loss, tracker.last_grad_norm = torch.tensor(2.0), torch.tensor(1.0)
            tracker.on_step(optimizer)
    uncounted = list(range(1, run.excluded_steps + 1))
    assert flushed == uncounted + [20, 30]
    assert len(flushed) <= run.excluded_steps + 3

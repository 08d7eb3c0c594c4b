"""Faults during a run: out of memory, bad losses, overruns, hangs, signals, a crash in the final
evaluation. Each is injected the way an agent's edit would cause it, in the editable part of a
tiny train.py copy, and each run must end with one `crash:` line, no summary for program.md's
grep, a non-zero exit, and nothing lost: metrics.jsonl stays valid, a finished training keeps
its checkpoint, and no temporary file survives.
"""

import contextlib
import json
import math
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from harness import (
    REPO,
    TRAIN,
    assert_crashed,
    base_env,
    crash_reason,
    import_train,
    leftover_parts,
    make_train_copy,
    run_train,
)

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"
EXPLODING_NET = f'''
class ExplodingNet(nn.Module):
    """Wraps the trained net; its forward fails as a too-large evaluation batch would."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        raise torch.OutOfMemoryError("{OOM_MESSAGE}")


def main():'''


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def edited(old, new, source=None):
    """train.py's text with `old` (which must occur exactly once) replaced by `new`."""
    source = source if source is not None else TRAIN.read_text()
    assert source.count(old) == 1, f"train.py no longer has exactly one {old!r}: update this injection"
    return source.replace(old, new)


def metrics_rows(workdir):
    """Every metrics.jsonl row, each a complete JSON line (Python's reader, which accepts NaN)."""
    text = (Path(workdir) / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n"), "the last metrics row was cut off"
    return [json.loads(line) for line in text.splitlines()]


def reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def strict_rows(workdir):
    """metrics.jsonl read the way jq or a browser would: NaN and Infinity are not JSON."""
    text = (Path(workdir) / "metrics.jsonl").read_text()
    return [json.loads(line, parse_constant=reject_constant) for line in text.splitlines()]


def run_copy(tmp_path, corpus, source, timeout=300, **env):
    """Run an edited tiny copy to its end; (workdir, exit code, log, wall seconds)."""
    train_py = make_train_copy(tmp_path / "repo", source=source)
    settings = dict(AR_DATA=corpus, AR_TIME_BUDGET=3, AR_EVAL_BYTES=4096)
    started = time.time()
    code, log = run_train(train_py, base_env(tmp_path, **{**settings, **env}), timeout=timeout)
    return train_py.parent, code, log, time.time() - started


@contextlib.contextmanager
def started(train_py, env):
    """A train.py copy running in the background, its merged output going to run.log."""
    log_path = train_py.parent / "run.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(train_py)], cwd=train_py.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            yield proc, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for_line(proc, log_path, pattern, seconds=120):
    """The time a line matching `pattern` first shows in the log, while the process runs."""
    deadline = time.time() + seconds
    while not re.search(pattern, log_path.read_text(), flags=re.M):
        assert proc.poll() is None, f"ended before {pattern!r}:\n{log_path.read_text()}"
        assert time.time() < deadline, f"no {pattern!r} within {seconds} s"
        time.sleep(0.05)
    return time.time()


def model_size_from_log(log):
    """Millions of parameters, as the `model:` line at startup reports them."""
    return float(re.search(r"^model: ([\d.]+)M parameters", log, flags=re.M).group(1))


# ---------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------


def oom_in_training():
    return edited(
        "        step += 1\n",
        f'        step += 1\n        if step == 3:\n            raise torch.OutOfMemoryError("{OOM_MESSAGE}")\n',
    )


def oom_in_evaluation():
    return edited(
        "evaluate(run, unwrap(model).net)",
        "evaluate(run, ExplodingNet(unwrap(model).net))",
        edited("\ndef main():", EXPLODING_NET),
    )


def assert_out_of_memory_line(log):
    match = re.fullmatch(r"out of memory \(peak ([\d,]+) MB, ([\d.]+)M parameters\)", crash_reason(log))
    assert match, crash_reason(log)
    assert float(match.group(1).replace(",", "")) > 0
    assert float(match.group(2)) == pytest.approx(model_size_from_log(log), abs=0.051)


def test_out_of_memory_in_training_names_peak_memory_and_model_size(tmp_path, corpus):
    workdir, code, log, _ = run_copy(tmp_path, corpus, oom_in_training(), AR_TIME_BUDGET=30)
    assert_crashed(code, log)
    assert_out_of_memory_line(log)
    assert OOM_MESSAGE in log, "the original error stays visible above the crash line"
    assert all(math.isfinite(row["loss"]) for row in metrics_rows(workdir))
    assert not (workdir / "checkpoint.pt").exists()
    assert leftover_parts(workdir) == []


@pytest.fixture(scope="module")
def eval_crash(tmp_path_factory, corpus):
    """A run whose training finishes and whose final evaluation runs out of memory."""
    tmp_path = tmp_path_factory.mktemp("eval_crash")
    return run_copy(tmp_path, corpus, oom_in_evaluation())


def test_out_of_memory_in_the_final_evaluation_names_peak_memory_and_model_size(eval_crash):
    workdir, code, log, _ = eval_crash
    assert_crashed(code, log)
    assert_out_of_memory_line(log)
    rows = metrics_rows(workdir)
    assert rows and not any("summary" in row for row in rows)
    assert leftover_parts(workdir) == []


def test_a_crash_in_the_final_evaluation_keeps_the_trained_weights(eval_crash, corpus, monkeypatch):
    workdir, code, log, _ = eval_crash
    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=False)
    rows = metrics_rows(workdir)
    assert checkpoint["summary"]["num_steps"] == rows[-1]["step"]
    assert checkpoint["source"] == (workdir / "train.py").read_text()

    for key, value in base_env(workdir, AR_DATA=corpus, AR_EVAL_BYTES=4096).items():
        monkeypatch.setenv(key, value)
    module = import_train(workdir / "train.py", name="eval_crash_copy")
    model = module.build_model()
    model.load_state_dict(checkpoint["model"])
    expected, _ = module.evaluate(module.setup(), model.net)
    assert math.isfinite(expected)

    analysis = REPO / "analysis.py"
    if not analysis.exists():
        pytest.skip("analysis.py is not in the repository yet: `analysis.py evaluate` cannot be checked")
    proc = subprocess.run(
        [sys.executable, str(analysis), "evaluate", "checkpoint.pt"],
        cwd=workdir,
        env=base_env(workdir, AR_DATA=corpus, AR_EVAL_BYTES=4096),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    printed = re.search(r"^val_bpc:\s*(\S+)", proc.stdout, flags=re.M)
    assert printed, proc.stdout
    assert float(printed.group(1)) == pytest.approx(expected, abs=2e-6)


# ---------------------------------------------------------------------------
# Bad loss values
# ---------------------------------------------------------------------------


def loss_times(factor):
    """An edit that multiplies step 2's loss by `factor` (a bad learning rate, a broken layer)."""
    source = TRAIN.read_text()
    backward = re.findall(r"^( *)run\.scaler\.scale\(loss\)\.backward\(\)\n", source, flags=re.M)
    assert len(backward) == 1, "train.py no longer has one `run.scaler.scale(loss).backward()`: update this injection"
    indent = backward[0]
    return source.replace(
        f"{indent}run.scaler.scale(loss).backward()\n",
        f"{indent}if step + 1 == 2:\n{indent}    loss = loss * {factor}\n{indent}run.scaler.scale(loss).backward()\n",
    )


BAD_LOSSES = [
    pytest.param(('float("nan")', r"loss is nan at step 2"), id="nan"),
    pytest.param(('float("inf")', r"loss is inf at step 2"), id="inf"),
    pytest.param(("1e3", r"loss exploded to [\d.e+]+ at step 2"), id="exploded"),
]


@pytest.fixture(scope="module", params=BAD_LOSSES)
def bad_loss_run(request, tmp_path_factory, corpus):
    factor, expected = request.param
    tmp_path = tmp_path_factory.mktemp("bad_loss")
    return expected, *run_copy(tmp_path, corpus, loss_times(factor), AR_TIME_BUDGET=60)


def test_a_bad_loss_fails_fast_naming_the_step(bad_loss_run):
    expected, workdir, code, log, seconds = bad_loss_run
    assert_crashed(code, log)
    assert re.fullmatch(expected, crash_reason(log)), crash_reason(log)
    assert seconds < 30, f"a 60 s budget run should stop within a few steps, took {seconds:.0f} s"
    rows = metrics_rows(workdir)
    assert [row["step"] for row in rows] == [1, 2], "rows up to the bad step, then nothing"
    assert not (workdir / "checkpoint.pt").exists()


def test_every_metrics_row_of_a_bad_loss_run_is_strict_json(bad_loss_run):
    expected, workdir, _, _, _ = bad_loss_run
    assert len(strict_rows(workdir)) == 2


# ---------------------------------------------------------------------------
# Overrun and hang: the FIXED-region watchdog
# ---------------------------------------------------------------------------

HARD_LIMIT = 6
BUDGET_BREAK = (
    "        if tracker.end_step(step, train_loss, LR * lr_mult, grad_norm, tokens_per_step):\n            break\n"
)


def loop_ignoring_the_budget():
    return edited(
        BUDGET_BREAK, "        tracker.end_step(step, train_loss, LR * lr_mult, grad_norm, tokens_per_step)\n"
    )


def loop_hanging_at_step_3():
    return edited("        step += 1\n", "        step += 1\n        if step == 3:\n            time.sleep(1000)\n")


@pytest.mark.parametrize("runaway", [loop_ignoring_the_budget, loop_hanging_at_step_3], ids=["ignores-budget", "hangs"])
def test_the_watchdog_ends_a_runaway_run_at_the_hard_limit(tmp_path, corpus, runaway):
    train_py = make_train_copy(tmp_path / "repo", source=runaway())
    env = base_env(tmp_path, AR_DATA=corpus, AR_TIME_BUDGET=2, AR_EVAL_BYTES=4096, AR_HARD_LIMIT=HARD_LIMIT)
    with started(train_py, env) as (proc, log_path):
        # setup() prints its `torch ...` line right after run_main starts the watchdog
        armed = wait_for_line(proc, log_path, r"^torch ")
        wait_for_line(proc, log_path, r"^step ")
        code = proc.wait(timeout=HARD_LIMIT + 60)
        seconds = time.time() - armed
    log = log_path.read_text()
    assert_crashed(code, log)
    assert crash_reason(log).startswith("exceeded hard time limit")
    assert code == 124
    assert HARD_LIMIT - 0.5 <= seconds < HARD_LIMIT + 3, f"ended {seconds:.1f} s after the watchdog started"
    metrics_rows(train_py.parent)
    assert not (train_py.parent / "checkpoint.pt").exists()
    assert leftover_parts(train_py.parent) == []


def test_the_hard_limit_defaults_to_the_budget_plus_a_margin_and_can_be_overridden(monkeypatch):
    module = import_train(TRAIN, name="watchdog_defaults")
    for key in module.ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AR_TIME_BUDGET", "20")
    margin = module.HARD_LIMIT_MARGIN if torch.cuda.is_available() else module.HARD_LIMIT_MARGIN_NO_GPU
    assert module.read_env()["hard_limit"] == 20 + margin
    monkeypatch.setenv("AR_HARD_LIMIT", "7.5")
    assert module.read_env()["hard_limit"] == 7.5


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_exits_promptly_without_leftovers(tmp_path, corpus, signum):
    train_py = make_train_copy(tmp_path / "repo")
    env = base_env(tmp_path, AR_DATA=corpus, AR_TIME_BUDGET=120, AR_EVAL_BYTES=4096)
    with started(train_py, env) as (proc, log_path):
        wait_for_line(proc, log_path, r"^step ")
        sent = time.time()
        proc.send_signal(signum)
        code = proc.wait(timeout=30)
        took = time.time() - sent
    log = log_path.read_text()
    assert took < 5, f"took {took:.1f} s to stop"
    assert_crashed(code, log)
    assert code == 128 + signum
    assert crash_reason(log) == f"interrupted ({signal.Signals(signum).name})"
    assert metrics_rows(train_py.parent)
    assert not (train_py.parent / "checkpoint.pt").exists()
    assert leftover_parts(train_py.parent, tmp_path / "cache") == []

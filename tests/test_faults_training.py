"""Faults during a run: out of memory, bad losses, overruns, hangs, signals, a crash in the sealed
scorer. Each is injected the way an agent's edit would cause it, in a tiny train.py copy
(prepare.py, the harness, is never edited), and each run must end with one `crash:` line, no
summary for program.md's grep, a non-zero exit, and nothing lost: metrics.jsonl stays valid, a
finished training keeps its checkpoint, and no temporary file survives.
"""

import contextlib
import json
import math
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from harness import (
    TRAIN,
    assert_crashed,
    base_env,
    crash_reason,
    insert_after_import,
    leftover_parts,
    make_prepare_copy,
    make_train_copy,
    python,
    run_train,
)

import prepare

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 GiB"
LOOP_BODY = "        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)\n"


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


def with_torch(source):
    """The copy imports torch (and time) for the injected code."""
    return insert_after_import(source, "import time\n\nimport torch\n")


def in_loop(code):
    """train.py's text with `code` (lines at loop-body indentation) run before each forward/backward."""
    lines = "".join(f"        {line}\n" for line in code.splitlines())
    return with_torch(edited(LOOP_BODY, lines + LOOP_BODY))


def run_copy(tmp_path, corpus, source, timeout=300, **env):
    """Run an edited tiny copy to its end; (workdir, exit code, log)."""
    train_py = make_train_copy(tmp_path / "repo", source=source)
    settings = dict(AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096)
    code, log = run_train(train_py, base_env(tmp_path, **{**settings, **env}), timeout=timeout)
    return train_py.parent, code, log


@contextlib.contextmanager
def started(train_py, env):
    """A train.py copy running in the background, its merged output going to run.log."""
    log_path = train_py.parent / "run.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [python(), str(train_py)], cwd=train_py.parent, env=env, stdout=log_file, stderr=subprocess.STDOUT
        )
        try:
            yield proc, log_path
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wait_for_line(proc, log_path, pattern):
    """Wait until a line matching `pattern` shows in the log, while the process runs. The event
    bounds the wait, not a clock: a run that never prints it ends at its own hard time limit (the
    harness's watchdog), and then the assertion shows its log."""
    while not re.search(pattern, log_path.read_text(), flags=re.M):
        assert proc.poll() is None, f"ended before {pattern!r}:\n{log_path.read_text()}"
        time.sleep(0.05)


def model_size_from_log(log):
    """Millions of parameters, as the `model:` line at startup reports them."""
    return float(re.search(r"^model: ([\d.]+)M parameters", log, flags=re.M).group(1))


# ---------------------------------------------------------------------------
# Out of memory
# ---------------------------------------------------------------------------


def oom_in_training():
    return in_loop(f'if run.steps == 2:\n    raise torch.OutOfMemoryError("{OOM_MESSAGE}")')


def assert_out_of_memory_line(log):
    match = re.fullmatch(r"out of memory \(peak ([\d,]+) MB, ([\d.]+)M parameters\)", crash_reason(log))
    assert match, crash_reason(log)
    assert float(match.group(1).replace(",", "")) > 0
    assert float(match.group(2)) == pytest.approx(model_size_from_log(log), abs=0.051)


def test_out_of_memory_in_training_names_peak_memory_and_model_size(tmp_path, corpus):
    workdir, code, log = run_copy(tmp_path, corpus, oom_in_training(), AR_STEPS=30)
    assert_crashed(code, log)
    assert_out_of_memory_line(log)
    assert OOM_MESSAGE in log, "the original error stays visible above the crash line"
    assert all(math.isfinite(row["loss"]) for row in metrics_rows(workdir))
    assert not (workdir / "checkpoint.pt").exists()
    assert leftover_parts(workdir) == []


@pytest.fixture(scope="module")
def scorer_crash(tmp_path_factory, corpus):
    """A run whose training finishes and whose sealed scorer fails: a harness whose scorer may take
    a millisecond (train.py cannot reach the scorer or the corpus, so the harness's copy stands in for
    a disk unmounted or a scorer that hangs)."""
    tmp_path = tmp_path_factory.mktemp("scorer_crash")
    make_prepare_copy(tmp_path / "repo", SCORER_TIMEOUT=0.001)
    return run_copy(tmp_path, corpus, TRAIN.read_text())


def test_a_crash_in_the_sealed_scorer_is_the_runs_one_crash_line(scorer_crash):
    workdir, code, log = scorer_crash
    assert_crashed(code, log)
    assert "the sealed scorer ran past 0.001 s" in crash_reason(log)
    rows = metrics_rows(workdir)
    assert rows and not any("summary" in row for row in rows)
    assert leftover_parts(workdir) == []


def test_a_crash_in_the_sealed_scorer_keeps_the_trained_weights(scorer_crash, corpus):
    workdir, code, log = scorer_crash
    checkpoint = torch.load(workdir / "checkpoint.pt", weights_only=True)
    rows = metrics_rows(workdir)
    assert checkpoint["summary"]["num_steps"] == rows[-1]["step"] == 3
    assert checkpoint["source"] == (workdir / "train.py").read_text()
    # the weights load into the model their spec describes, and score there
    model = prepare.build_from_spec(checkpoint["spec"], "cpu")
    model.load_state_dict(checkpoint["model"])
    splits, identity, _ = prepare.load_corpus(dict(data=str(corpus), data_url=""))
    assert identity == checkpoint["summary"]["data"]
    bpc, _ = prepare.evaluate(model.net, splits["val"][: checkpoint["summary"]["eval_bytes"]], torch.device("cpu"))
    assert math.isfinite(bpc) and 0 < bpc < 8.5


# ---------------------------------------------------------------------------
# Bad loss values
# ---------------------------------------------------------------------------


def loss_times(factor):
    """An edit that multiplies step 2's loss by `factor` (a bad learning rate, a broken layer),
    through forward_backward's loss_fn."""
    return edited(
        LOOP_BODY,
        "        scale = " + factor + " if run.steps + 1 == 2 else 1.0\n"
        "        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN, loss_fn=lambda m, x: m(x) * scale)\n",
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
    return expected, *run_copy(tmp_path, corpus, loss_times(factor), AR_STEPS=60)


def test_a_bad_loss_fails_fast_naming_the_step(bad_loss_run):
    expected, workdir, code, log = bad_loss_run
    assert_crashed(code, log)
    assert re.fullmatch(expected, crash_reason(log)), crash_reason(log)
    rows = metrics_rows(workdir)
    assert [row["step"] for row in rows] == [1, 2], "a 60-step run stops at the first loss check: step 2"
    assert not (workdir / "checkpoint.pt").exists()


def test_every_metrics_row_of_a_bad_loss_run_is_strict_json(bad_loss_run):
    expected, workdir, _, _ = bad_loss_run
    assert len(strict_rows(workdir)) == 2


# ---------------------------------------------------------------------------
# Overrun and hang: the harness's watchdog
# ---------------------------------------------------------------------------

HARD_LIMIT = 6


def loop_that_never_steps():
    """The agent dropped run.step(): run.done never comes, and nothing is ever counted."""
    return edited("        run.step(optimizer, GRAD_CLIP)\n", "")


def loop_hanging_at_step_3():
    return in_loop("if run.steps == 2:\n    time.sleep(1000)")


@pytest.mark.parametrize("runaway", [loop_that_never_steps, loop_hanging_at_step_3], ids=["never-steps", "hangs"])
def test_the_watchdog_ends_a_runaway_run_at_the_hard_limit(tmp_path, corpus, runaway):
    train_py = make_train_copy(tmp_path / "repo", source=runaway())
    env = base_env(tmp_path, AR_DATA=corpus, AR_TIME_BUDGET=2, AR_EVAL_BYTES=4096, AR_HARD_LIMIT=HARD_LIMIT)
    with started(train_py, env) as (proc, log_path):
        wait_for_line(proc, log_path, r"^micro_batch: ")
        code = proc.wait(timeout=HARD_LIMIT + 60)  # a runaway never ends by itself: only the watchdog ends it
    log = log_path.read_text()
    assert_crashed(code, log)
    assert crash_reason(log).startswith(f"exceeded hard time limit ({HARD_LIMIT} s)")  # the limit it enforced
    assert code == 124
    metrics_rows(train_py.parent)
    assert not (train_py.parent / "checkpoint.pt").exists()
    assert leftover_parts(train_py.parent) == []


def test_the_hard_limit_defaults_to_the_budget_plus_a_margin_and_can_be_overridden(monkeypatch):
    for key in prepare.ENV_VARS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AR_TIME_BUDGET", "20")
    margin = prepare.HARD_LIMIT_MARGIN if torch.cuda.is_available() else prepare.HARD_LIMIT_MARGIN_NO_GPU
    assert prepare.read_env()["hard_limit"] == 20 + margin
    monkeypatch.setenv("AR_HARD_LIMIT", "7.5")
    assert prepare.read_env()["hard_limit"] == 7.5
    monkeypatch.delenv("AR_TIME_BUDGET")
    monkeypatch.delenv("AR_HARD_LIMIT")
    monkeypatch.setenv("AR_STEPS", "50")  # a step budget has no seconds to add the margin to
    assert prepare.read_env()["hard_limit"] == 2 * margin


# ---------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_exits_promptly_without_leftovers(tmp_path, corpus, signum):
    train_py = make_train_copy(tmp_path / "repo")
    env = base_env(tmp_path, AR_DATA=corpus, AR_TIME_BUDGET=120, AR_EVAL_BYTES=4096)
    with started(train_py, env) as (proc, log_path):
        wait_for_line(proc, log_path, r"^step ")
        proc.send_signal(signum)
        code = proc.wait(timeout=60)  # the run's budget is 120 s: it ends by the signal or not at all
    log = log_path.read_text()
    assert_crashed(code, log)
    assert code == 128 + signum
    assert re.fullmatch(rf"interrupted \({signal.Signals(signum).name}\) after \d+ s", crash_reason(log))
    assert metrics_rows(train_py.parent)
    assert not (train_py.parent / "checkpoint.pt").exists()
    assert leftover_parts(train_py.parent, tmp_path / "cache") == []

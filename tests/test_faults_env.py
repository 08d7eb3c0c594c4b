"""Bad environment values: each is refused at startup with a `crash:` line that names the variable
and what to set instead, before any data is read; a precision flag the machine cannot honour
falls back with a notice, and the summary says what actually ran.
"""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch
from harness import REPO, base_env, kill_session, make_train_copy, parse_summary, run_train

import prepare
from labbook import keeprule, runlog

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")

# The cases the issue names run end to end, as the agent would meet them in run.log ...
BAD_VALUES = [
    pytest.param(dict(USE_FP8="yes"), r"USE_FP8='yes' is not valid: use USE_FP8=1 to enable.*", id="USE_FP8=yes"),
    pytest.param(dict(USE_FP8=1, USE_FP16=1), r"USE_FP8=1 and USE_FP16=1 are exclusive.*", id="FP8-and-FP16"),
    pytest.param(dict(AR_TIME_BUDGET=-5), r"AR_TIME_BUDGET='-5' must be >= .*", id="AR_TIME_BUDGET=-5"),
    pytest.param(dict(AR_TIME_BUDGET="abc"), r"AR_TIME_BUDGET='abc' is not a valid float", id="AR_TIME_BUDGET=abc"),
    pytest.param(
        dict(AR_STEPS=5, AR_TIME_BUDGET=5),
        r"AR_STEPS and AR_TIME_BUDGET are exclusive: a run is budgeted in steps or in seconds",
        id="AR_STEPS-and-AR_TIME_BUDGET",
    ),
    pytest.param(
        dict(AR_DEVICE="cuda"),
        r"AR_DEVICE=cuda but this machine has no CUDA GPU: .*AR_DEVICE=cpu.*",
        id="AR_DEVICE=cuda",
    ),
]

# ... and the rest through the same validation in this process: the path from HarnessError to the
# `crash:` line is the one the cases above already prove, and each subprocess costs an import of torch.
MORE_BAD_VALUES = [
    pytest.param(dict(USE_FP16="true"), r"USE_FP16='true' is not valid: use USE_FP16=1 to enable", id="USE_FP16=true"),
    pytest.param(dict(AR_HARD_LIMIT="0"), r"AR_HARD_LIMIT='0' must be >= ", id="AR_HARD_LIMIT=0"),
    pytest.param(dict(AR_EVAL_BYTES="1"), r"AR_EVAL_BYTES='1' must be >= 2", id="AR_EVAL_BYTES=1"),
    pytest.param(dict(AR_SEED="1.5"), r"AR_SEED='1.5' is not a valid int", id="AR_SEED=1.5"),
    pytest.param(dict(AR_STEPS="0"), r"AR_STEPS='0' must be >= 1", id="AR_STEPS=0"),
    pytest.param(dict(AR_STEPS="2.5"), r"AR_STEPS='2.5' is not a valid int", id="AR_STEPS=2.5"),
    pytest.param(dict(AR_DEVICE="gpu0"), r"AR_DEVICE='gpu0' is not a device: use cuda, ", id="AR_DEVICE=gpu0"),
]


@NO_CUDA
@pytest.mark.parametrize("values, reason", BAD_VALUES)
def test_a_bad_environment_value_is_refused_before_reading_data(tmp_path, corpus, values, reason):
    train_py = make_train_copy(tmp_path)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, **values), timeout=120)
    assert code != 0, log
    last = log.rstrip("\n").splitlines()[-1]
    assert re.fullmatch("crash: " + reason, last), last
    assert parse_summary(log) == {}
    assert "Traceback" not in log
    assert not re.search(r"^(data|step) ", log, flags=re.M), "refused only after loading data or training"
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("values, reason", MORE_BAD_VALUES)
def test_more_bad_environment_values_are_refused_with_the_variable_named(monkeypatch, values, reason):
    for key in (*prepare.ENV_VARS, "USE_FP8", "USE_FP16"):
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(prepare.HarnessError, match=re.escape(reason)):
        prepare.pick_device(prepare.read_env()["device"])


def test_a_step_budget_alone_is_taken_and_echoed_as_an_override(monkeypatch):
    for key in (*prepare.ENV_VARS, "USE_FP8", "USE_FP16"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("AR_STEPS", "12")
    env = prepare.read_env()
    assert env["steps"] == 12 and env["overrides"] == {"AR_STEPS": "12"}
    assert prepare.budget_label(env) == "12steps"
    monkeypatch.delenv("AR_STEPS")
    assert prepare.read_env()["steps"] is None and prepare.budget_label(prepare.read_env()) == "300s"


def test_an_unknown_command_line_argument_is_refused(tmp_path, corpus):
    train_py = make_train_copy(tmp_path)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus), args=["--budget", "10"], timeout=120)
    assert code != 0, log
    assert log.rstrip("\n").splitlines()[-1].startswith("crash: unknown arguments ['--budget', '10']")
    assert parse_summary(log) == {}


@NO_CUDA
@pytest.mark.parametrize("flag", ["USE_FP8", "USE_FP16"])
def test_a_gpu_precision_flag_off_the_gpu_falls_back_to_fp32_and_says_so(tmp_path, corpus, flag):
    train_py = make_train_copy(tmp_path)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=2, AR_EVAL_BYTES=4096, **{flag: 1})
    code, log = run_train(train_py, env)
    assert code == 0, log
    notices = [line for line in log.splitlines() if line.startswith("notice:") and flag in line]
    assert len(notices) == 1, log
    assert "continuing in FP32" in notices[0]
    summary = parse_summary(log)
    assert summary["precision"] == "FP32"
    assert float(summary["val_bpc"]) > 0
    assert re.search(r"^model: .*\| precision FP32$", log, flags=re.M)


# ---------------------------------------------------------------------------
# A first `python train.py` on a laptop
# ---------------------------------------------------------------------------

GPU_SIZED = dict(DIM=512, DEPTH=8, HEADS=8, BATCH_SIZE=64)  # train.py's defaults (the copies are tiny otherwise)


@NO_CUDA
def test_the_default_model_on_a_machine_without_a_gpu_ends_at_once_pointing_at_the_cpu_rehearsal(tmp_path, corpus):
    train_py = make_train_copy(tmp_path, **GPU_SIZED)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus), timeout=120)
    assert code == 2, log
    last = log.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"crash: a \d+M-parameter model is sized for a GPU .* and this machine has none: .*", last)
    assert "README's 'CPU rehearsal'" in last and "AR_DEVICE=cpu runs it anyway" in last
    assert not re.search(r"^(step|\.\.\.) ", log, flags=re.M), "it started a step it cannot finish"
    assert "Traceback" not in log


def test_the_first_steps_phase_off_a_gpu_says_nothing_of_compiling(tmp_path, monkeypatch):
    phases = []
    monkeypatch.setattr(prepare, "enter_phase", phases.append)
    env = dict(prepare.read_env(), steps=1, metrics=str(tmp_path / "metrics.jsonl"))
    run = prepare.Run(env, torch.device("cpu"), "FP32", torch.arange(5000).remainder(256).to(torch.uint8), "x", 10)
    run.tracker = prepare.Tracker(run)
    model = run.prepare_model(
        torch.nn.Sequential(torch.nn.Embedding(256, 4), torch.nn.Flatten(0), torch.nn.Linear(4, 1))
    )
    run.forward_backward(model, 1, 1, loss_fn=lambda m, x: m(x[:, :1]).sum())
    assert phases[0] == "the first step"


def test_ctrl_c_during_the_imports_is_the_one_crash_line(tmp_path, corpus):
    """train.py imports the harness first, and the harness turns Ctrl-C during the trainer's imports
    (torch, x-transformers: seconds on a laptop) into its crash line. A stand-in x_transformers that
    says so and waits holds the imports open (a cold interpreter: the tests' warm one has them imported)."""
    stand_in = tmp_path / "slow" / "x_transformers"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(
        "import time\nprint('importing x_transformers', flush=True)\ntime.sleep(120)\n"
    )
    train_py = make_train_copy(tmp_path / "run")
    env = base_env(tmp_path, AR_DATA=corpus)
    env["PYTHONPATH"] = f"{stand_in.parent}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.Popen(
        [sys.executable, str(train_py)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        lines = iter(proc.stdout.readline, "")  # until the stand-in says it is being imported, or the output ends
        assert any(line.startswith("importing x_transformers") for line in lines), "the imports never reached it"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out
    assert out.strip().splitlines()[-1].startswith("crash: interrupted (SIGINT)")
    assert "Traceback" not in out and "KeyboardInterrupt" not in out


def test_a_shell_without_the_projects_environment_gets_a_crash_line_that_decide_reruns(tmp_path, corpus):
    """An agent's fresh shell that never activated the venv: python finds no torch. The harness's
    own import says so in its crash line, and the keep rule reads it as the environment's, never the
    idea's (`python -S` leaves site-packages out, as a python without the project's packages would)."""
    train_py = make_train_copy(tmp_path / "run")
    env = base_env(tmp_path, AR_DATA=corpus)
    env["PYTHONPATH"] = str(REPO)  # prepare.py, and nothing installed
    proc = subprocess.run([sys.executable, "-S", str(train_py)], env=env, capture_output=True, text=True, timeout=120)
    last = proc.stdout.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    assert last.startswith("crash: torch is not installed in this python") and "source .venv/bin/activate" in last
    assert keeprule.crash_kind(runlog.crash_reason(proc.stdout)) == keeprule.ENVIRONMENT


def test_a_syntax_error_in_train_py_is_the_agents_mistake_not_a_kill(tmp_path, corpus):
    """Python stops before the harness is imported: a traceback, no crash line. decide reads the
    exception as the crash (fix and amend, or reset), not as a run killed without a word."""
    train_py = make_train_copy(tmp_path / "run")
    train_py.write_text(train_py.read_text().replace("DEPTH = ", "DEPTH = = ", 1))
    proc = subprocess.run(
        [sys.executable, str(train_py)], env=base_env(tmp_path, AR_DATA=corpus), capture_output=True, text=True
    )
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "crash:" not in log
    assert runlog.crash_reason(log) == "SyntaxError: invalid syntax"
    assert keeprule.crash_kind(runlog.crash_reason(log)) == "mistake"


START_AND_STOP = """
cd mine && nohup "$PY" train.py > run.log 2>&1 &
(cd theirs; nohup "$PY" train.py > run.log 2>&1 &)  # a run of its own, holding no pipe of this shell
for _ in $(seq 1200); do grep -qs "^micro_batch:" mine/run.log && ls theirs/.supervisor-*.json > /dev/null 2>&1 && break; sleep 0.1; done
cd mine && "$PY" "$ANALYSIS" stop
echo "the shell goes on: $?"
"""


def test_analysis_stop_ends_this_checkouts_run_and_leaves_the_shell_and_the_other_checkouts_run(tmp_path, corpus):
    """program.md's stop, from the shell that started the run with nohup, once it trains: the run
    ends with its crash line, printed by the stop; the shell goes on; another directory's run keeps
    running until it is stopped from its own directory."""
    for name in ("mine", "theirs"):
        make_train_copy(tmp_path / name)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=100_000, PY=sys.executable, ANALYSIS=REPO / "analysis.py")
    shell = subprocess.Popen(
        ["bash", "-c", START_AND_STOP], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out = shell.communicate(timeout=120)[0]
        assert shell.returncode == 0, out
        assert re.search(r"^crash: interrupted \(SIGTERM\) after \d+ s$", out, flags=re.M), out
        assert out.rstrip().endswith("the shell goes on: 0"), out
        assert not list((tmp_path / "mine").glob(".supervisor-*.json"))  # the run took its file with it
        theirs = subprocess.run(
            [sys.executable, REPO / "analysis.py", "stop"], cwd=tmp_path / "theirs", capture_output=True, text=True
        )
        assert "supervisor pid" in theirs.stdout and "crash: interrupted (SIGTERM)" in theirs.stdout, theirs.stdout
    finally:
        kill_session(shell.pid)


def test_analysis_stop_without_a_run_says_so_and_exits_0(tmp_path):
    """Resume's stop when nothing is going: one line, no signal sent, and a stale file of a run
    killed with SIGKILL is no run (its pid may belong to another process by now)."""
    (tmp_path / ".supervisor-1.json").write_text('{"pid": 1, "start": 0, "log": null}\n')
    proc = subprocess.run([sys.executable, REPO / "analysis.py", "stop"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout == f"no run to stop: no python train.py is running in {tmp_path}\n"
    assert not (tmp_path / ".supervisor-1.json").exists()


def test_the_supervisors_file_is_git_ignored():
    """It lives beside train.py while a run goes: never a change for `git status` to show."""
    ignored = subprocess.run(["git", "-C", REPO, "check-ignore", "--no-index", "-q", ".supervisor-4242.json"])
    assert ignored.returncode == 0

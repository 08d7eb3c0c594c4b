"""The warm interpreter the suite runs its processes with behaves like `python` where the tests look.

Every crash test reads an exit status, every log test reads redirected output, and the scripted
night kills a run mid-way: if the warm `python` (tests/warm_python.py) lost any of these, those
tests would pass or fail for the wrong reason.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import kill_session


@pytest.fixture
def shell(warm_python, tmp_path):
    if warm_python == sys.executable:
        pytest.skip("WARM_PYTHON=0: the suite runs this interpreter")

    def run(command, **kwargs):
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, **kwargs)

    return warm_python, run


def test_exit_status_output_and_traceback_are_those_of_the_script(shell, tmp_path):
    python, run = shell
    (tmp_path / "script.py").write_text(
        "import sys\nprint('out', sys.argv[1:])\nprint('err', file=sys.stderr)\nsys.exit(int(sys.argv[1]))\n"
    )
    proc = run(f"{python} script.py 3 > both.log 2>&1; echo $?")
    assert proc.stdout == "3\n" and (tmp_path / "both.log").read_text() == "out ['3']\nerr\n"
    proc = run(f"{python} -c 'raise ValueError(\"bad\")'")
    assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == "ValueError: bad"
    assert "warm_python" not in proc.stderr


def test_a_child_killed_by_a_signal_reads_as_killed_and_sees_the_shim_as_sys_executable(shell):
    python, run = shell
    proc = run(f"{python} -c 'import os, signal, sys; print(sys.executable, flush=True); os.kill(os.getpid(), 9)'")
    assert proc.returncode == -signal.SIGKILL and proc.stdout.strip() == str(python)


def test_the_script_directory_and_pythonpath_lead_sys_path_and_isolated_mode_drops_both(shell, tmp_path):
    python, run = shell
    (tmp_path / "mod_here.py").write_text("NAME = 'here'\n")
    probe = "import sys; print(repr(sys.path[0])); import mod_here; print(mod_here.NAME)"
    assert run(f'{python} -c "{probe}"').stdout.split() == ["''", "here"]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "mod_there.py").write_text("NAME = 'there'\n")
    proc = run(f"PYTHONPATH={elsewhere} {python} -c 'import mod_there; print(mod_there.NAME)'")
    assert proc.stdout.strip() == "there"
    proc = run(f"PYTHONPATH={elsewhere} {python} -I -c 'import mod_there'")
    assert proc.returncode == 1 and "ModuleNotFoundError" in proc.stderr


def test_a_shadowed_preloaded_library_runs_cold_and_imports_the_shadow(shell, tmp_path):
    python, run = shell
    shadow = tmp_path / "shadow" / "einx"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("SHADOW = True\n")
    proc = run(f"PYTHONPATH={shadow.parent} {python} -c 'import einx; print(einx.SHADOW)'")
    assert proc.stdout.strip() == "True", proc.stderr


def test_killing_the_commands_session_kills_the_run_and_a_term_reaches_it(shell, tmp_path):
    python, run = shell
    sleeper = "import os, signal, sys, time; print(os.getpid(), flush=True); time.sleep(60)"
    proc = subprocess.Popen(
        ["bash", "-c", f"timeout -k 30 600 {python} -c '{sleeper}' > pid.log 2>&1"],
        cwd=tmp_path, start_new_session=True,
    )  # fmt: skip
    pid = wait_for_pid(tmp_path / "pid.log")
    kill_session(proc.pid)
    proc.wait(timeout=30)
    assert gone(pid)
    proc = run(f"timeout 1 {python} -c '{sleeper}; print(\"slept\")'", timeout=120)
    assert proc.returncode == 124 and "slept" not in proc.stdout  # timeout's TERM ended the run, not its end


def wait_for_pid(path):
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return int(path.read_text().split()[0])
        time.sleep(0.05)
    raise AssertionError("the child never started")


def gone(pid, wait=5.0):
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                return True
        except (FileNotFoundError, ProcessLookupError):  # reaped (ProcessLookupError: between open and read)
            return True
        time.sleep(0.05)
    return False

"""The kernel keeps train.py in its room: a supervisor, a Landlock-confined trainer, then the scorer.

Every attack below is made from train.py's train(run) on this machine's kernel, and each fails with
the errno the kernel gives; the run then records the honest value. The measure's own values (seed,
budget, excluded steps, step count, warm-up seconds) changed from train.py end the run naming the
value. A daemon train.py leaves is reaped before the checkpoint is read, and a kernel without
Landlock (simulated by tests/nolandlock.py) still runs, flagged. These runs use a cold interpreter:
the tests' warm one forks the trainer from its server, out of the supervisor's reach.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness import (
    REPO,
    TINY,
    TRAIN,
    assert_crashed,
    base_env,
    crash_reason,
    edit_constants,
    insert_after_import,
    parse_summary,
    run_cold,
    run_train,
)

STEPS = 3
EVAL_BYTES = 4096
HONEST_LOOP = re.search(r"^def train\(run\):\n(.*?)    return model\n", TRAIN.read_text(), re.M | re.S).group(1)

ATTACKS = '''
def attacks():
    """Each way a process reads the held-out bytes or reaches the harness: {name: errno name}."""
    import ctypes, errno, socket, subprocess, tempfile
    import numpy
    import prepare
    results, corpus, supervisor = {}, os.environ["AR_DATA"], os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fopen.restype, libc.ptrace.restype = ctypes.c_void_p, ctypes.c_long

    def checked(result):
        if result in (None, 0, -1) or isinstance(result, int) and result < 0:
            raise OSError(ctypes.get_errno(), "")

    def shell(*command):
        if subprocess.run(command, capture_output=True).returncode:
            raise OSError(errno.EACCES, "")

    tries = dict(
        open=lambda: open(corpus, "rb"),
        dir_fd=lambda: os.open(os.path.basename(corpus), os.O_RDONLY, dir_fd=os.open(os.path.dirname(corpus), os.O_PATH)),
        numpy_fromfile=lambda: numpy.fromfile(corpus, dtype=numpy.uint8, count=8),
        torch_from_file=lambda: torch.from_file(corpus, size=8, dtype=torch.uint8),
        ctypes_fopen=lambda: checked(libc.fopen(corpus.encode(), b"rb")),
        subprocess_cat=lambda: shell("cat", corpus),
        hard_link=lambda: os.link(corpus, os.path.join(tempfile.gettempdir(), "held-out")),
        symlink=lambda: open(os.symlink(corpus, os.path.join(tempfile.gettempdir(), "link")) or os.path.join(tempfile.gettempdir(), "link"), "rb"),
        pth_in_site_packages=lambda: open(os.path.join([p for p in sys.path if p.endswith("site-packages")][0], "evil.pth"), "w"),
        write_under_git=lambda: open(os.path.join(".git", "evil"), "w"),
        read_an_earlier_checkpoint=lambda: open(os.path.join("checkpoints", "tip.pt"), "rb"),
        stash_in_dev_shm=lambda: open("/dev/shm/stash.pt", "wb"),
        write_prepare_py=lambda: open(prepare.__file__, "a"),
        supervisor_memory=lambda: open(f"/proc/{supervisor}/mem", "rb"),
        ptrace_supervisor=lambda: checked(libc.ptrace(16, supervisor, 0, 0)),
        kill_supervisor=lambda: os.kill(supervisor, signal.SIGTERM),
        tcp_connect=lambda: socket.create_connection(("127.0.0.1", 9), timeout=5),
    )
    for name, attempt in tries.items():
        try:
            attempt()
            results[name] = "worked"
        except OSError as e:
            results[name] = errno.errorcode.get(e.errno, str(e))
        except RuntimeError as e:  # torch.from_file: the errno is in its message
            results[name] = "EACCES" if "Permission denied" in str(e) else str(e)
    return results


def leave_a_daemon():
    """A double-forked process that outlives the trainer, holding its output and the run folder."""
    child = os.fork()
    if child == 0:
        os.setsid()
        if os.fork() == 0:
            print(f"daemon {os.getpid()}", flush=True)
            time.sleep(300)
        os._exit(0)
    os.waitpid(child, 0)
'''

EXPECTED = dict(
    open="EACCES",
    dir_fd="EACCES",
    numpy_fromfile="EACCES",
    torch_from_file="EACCES",
    ctypes_fopen="EACCES",
    subprocess_cat="EACCES",
    hard_link="EXDEV",
    symlink="EACCES",
    pth_in_site_packages="EACCES",
    write_under_git="EACCES",
    read_an_earlier_checkpoint="EACCES",
    stash_in_dev_shm="EACCES",
    write_prepare_py="EACCES",
    supervisor_memory="EACCES",
    ptrace_supervisor="EPERM",
    kill_supervisor="EPERM",
    tcp_connect="EACCES",
)


def tiny_text(body=None, helpers="", imports=""):
    """The tiny train.py with `imports` below its prepare import, `helpers` before train(), and
    train()'s body replaced by `body` (indented, ending in its return)."""
    text = edit_constants(TRAIN.read_text(), **TINY)
    if imports:
        text = insert_after_import(text, imports)
    if body is not None:
        start, end = text.index("def train(run):"), text.index('if __name__ == "__main__":')
        text = text[:start] + helpers + "\n\ndef train(run):\n" + body.strip("\n") + "\n\n\n" + text[end:]
    return text


def cold_run(folder, text, corpus, wrapper=(), **settings):
    """`python train.py` with this interpreter (not the warm shim) in a fresh git repository; (code, log)."""
    folder.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(folder)], check=True)
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints" / "tip.pt").write_bytes(b"an earlier run's weights: a warm start")
    (folder / "train.py").write_text(text)
    env = base_env(folder, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, **(settings or dict(AR_STEPS=STEPS)))
    return run_cold(folder / "train.py", env, wrapper)


@pytest.fixture(scope="module")
def attacked(tmp_path_factory, corpus):
    """One run whose train() makes every attack, leaves a daemon, then trains honestly; and the same
    train.py without them (the honest value, same seed)."""
    body = "    print('attacks', json.dumps(attacks()), flush=True)\n    leave_a_daemon()\n" + HONEST_LOOP
    imports = "import json\nimport os\nimport signal\nimport sys\nimport time\n\nimport torch"
    attacked = cold_run(
        tmp_path_factory.mktemp("attacked"), tiny_text(body + "    return model", ATTACKS, imports), corpus
    )
    honest_folder = tmp_path_factory.mktemp("honest")
    (honest_folder / "train.py").write_text(tiny_text())
    env = base_env(honest_folder, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, AR_STEPS=STEPS)
    return attacked, run_train(honest_folder / "train.py", env)


def test_every_attack_from_train_py_fails_with_the_kernels_errno(attacked):
    (code, log), _ = attacked
    assert code == 0, log[-3000:]
    line = next(line for line in log.splitlines() if line.startswith("attacks "))
    assert json.loads(line.removeprefix("attacks ")) == EXPECTED
    assert re.fullmatch(r"landlock ABI \d+", parse_summary(log)["sandbox"])


def test_an_attacked_run_records_what_the_honest_run_records(attacked):
    (code, log), (honest_code, honest_log) = attacked
    assert code == honest_code == 0, log[-3000:] + honest_log[-3000:]
    summary, honest = parse_summary(log), parse_summary(honest_log)
    assert summary["val_bpc_exact"] == honest["val_bpc_exact"] and summary["flags"] == "none"


def test_a_daemon_train_py_leaves_is_reaped_before_the_checkpoint_is_read(attacked):
    (_, log), _ = attacked
    daemon = int(re.search(r"^daemon (\d+)$", log, flags=re.M).group(1))
    reaped = log.index("notice: the trainer left 1 process(es) running: killed and reaped")
    assert reaped < log.index("\n---\n")  # before the checkpoint was hashed, the scorer started, the summary
    assert not Path(f"/proc/{daemon}").exists()


def test_without_landlock_the_run_still_records_and_says_so(tmp_path, corpus):
    code, log = cold_run(tmp_path, tiny_text(), corpus, wrapper=(sys.executable, REPO / "tests" / "nolandlock.py"))
    assert code == 0, log[-3000:]
    assert parse_summary(log)["sandbox"] == "none (the kernel has no Landlock)"
    assert "warning: sandbox: none (the kernel has no Landlock); nothing keeps train.py from the corpus" in log
    code, log = cold_run(
        tmp_path / "required", tiny_text(), corpus, wrapper=(sys.executable, REPO / "tests" / "nolandlock.py"),
        AR_STEPS=STEPS, AR_REQUIRE_SANDBOX=1,
    )  # fmt: skip
    assert_crashed(code, log)
    assert (
        crash_reason(log)
        == "AR_REQUIRE_SANDBOX=1 and this run has no kernel sandbox: none (the kernel has no Landlock)"
    )


MEASURE_EDITS = {
    "reseeded": (
        "    torch.manual_seed(0)  # for reproducibility\n    run.generator.manual_seed(0)\n" + HONEST_LOOP,
        dict(AR_STEPS=STEPS),
        "train.py re-seeded torch (torch.initial_seed() is 0, the harness seeded 7)",
    ),
    "fixed_init": (
        HONEST_LOOP.replace(
            "    model = run.prepare_model(build_model(), compile=COMPILE)\n",
            "    with torch.random.fork_rng():  # the same initialisation every run, for reproducibility\n"
            "        torch.manual_seed(0)\n"
            "        net = build_model()\n"
            "    model = run.prepare_model(net, compile=COMPILE)\n",
        ),
        dict(AR_STEPS=STEPS),
        "train() drew nothing from the run's random state",
    ),
    "warmup_inflated": (
        HONEST_LOOP.replace("        run.step(", "        run.tracker.warmup_seconds += 0.5\n        run.step("),
        dict(AR_TIME_BUDGET=2),
        "train.py changed warmup_seconds",  # caught when the warm-up outlasts the run, or changes after it
    ),
    "excluded_steps": (
        "    run.excluded_steps = 10**6\n" + HONEST_LOOP,
        dict(AR_TIME_BUDGET=2),
        "train.py changed the harness's excluded_steps (from 1 to 1000000)",
    ),
    "step_budget": (
        "    run.tracker.step_budget *= 2\n" + HONEST_LOOP + "    run.tracker.steps //= 2\n",
        dict(AR_STEPS=4),
        "train.py changed the harness's step_budget (from 4 to 8)",
    ),
}


@pytest.mark.parametrize("edit", MEASURE_EDITS)
def test_a_change_to_the_harnesss_measure_ends_the_run_naming_it(tmp_path, corpus, edit):
    body, settings, reason = MEASURE_EDITS[edit]
    (tmp_path / "train.py").write_text(tiny_text(body + "    return model", imports="import torch"))
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, **settings)
    code, log = run_train(tmp_path / "train.py", env)
    assert_crashed(code, log)
    assert reason in crash_reason(log), crash_reason(log)


def test_code_above_the_harness_import_is_refused_before_it_can_do_more(tmp_path, corpus):
    text = TRAIN.read_text().replace("# the harness first", "import os\n\n# the harness first", 1)
    (tmp_path / "train.py").write_text(edit_constants(text, **TINY))
    code, log = run_train(tmp_path / "train.py", base_env(tmp_path, AR_DATA=corpus, AR_STEPS=1))
    assert_crashed(code, log)
    assert crash_reason(log) == (
        "train.py runs `import os` above its `from prepare import` line, outside the sandbox: put it below"
    )
    assert "step " not in log


PRETRAINED = """
    model = run.prepare_model(build_model(), compile=COMPILE)
    for _ in range(60):  # trained before the first step, by hand (free under AR_STEPS)
        starts = torch.randint(len(run.train_data) - 65, (8, 1))
        model(run.train_data[starts + torch.arange(65)].long()).backward()
        with torch.no_grad():
            for p in model.parameters():
                if p.grad is not None:
                    p.sub_(1e-2 * p.grad.sign())
                p.grad = None
    optimizer = build_optimizer(model)
    while not run.done:
        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)
        run.step(optimizer, GRAD_CLIP)
    return model
"""


def test_a_model_trained_before_its_first_step_is_flagged_as_a_warm_start(tmp_path, corpus):
    # the threshold lowered to a tiny model's reach: an untrained one starts at ln 256 = 5.55 nats
    from harness import make_prepare_copy

    make_prepare_copy(tmp_path, WARM_START_LOSS=4.5)
    (tmp_path / "train.py").write_text(tiny_text(PRETRAINED, imports="import torch"))
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, AR_STEPS=2)
    code, log = run_train(tmp_path / "train.py", env)
    assert code == 0, log[-3000:]
    assert parse_summary(log)["flags"] == "warm_start" and "the model was trained before it" in log


def test_warm_up_seconds_beyond_the_cap_are_charged_to_the_clock(tmp_path, corpus):
    # a loss_fn that spends 3 s in the first, uncounted step: past EXCLUDED_SECONDS_MAX, the rest counts
    from harness import make_prepare_copy

    make_prepare_copy(tmp_path, EXCLUDED_SECONDS_MAX=0.5)
    slow_first = HONEST_LOOP.replace(
        "run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)",
        "run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN, loss_fn=lambda m, x: "
        "(time.sleep(3) if run.steps == 0 else None, m(x))[1])",
    )
    (tmp_path / "train.py").write_text(tiny_text(slow_first + "    return model", imports="import time"))
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, AR_TIME_BUDGET=2)
    code, log = run_train(tmp_path / "train.py", env)
    assert code == 0, log[-3000:]
    summary = parse_summary(log)
    assert summary["num_steps"] == summary["excluded_steps"] == "1"  # the budget was gone after the warm-up
    assert float(summary["training_seconds"]) >= 2.0


def test_the_parameter_count_is_the_rebuilt_models_not_the_trainers_word(tmp_path, corpus):
    body = HONEST_LOOP.replace(
        "    optimizer = build_optimizer(model)", "    run.num_params //= 4\n    optimizer = build_optimizer(model)"
    )
    (tmp_path / "train.py").write_text(tiny_text(body + "    return model"))
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_SEED=7, AR_STEPS=1)
    code, log = run_train(tmp_path / "train.py", env)
    assert code == 0, log[-3000:]
    assert float(parse_summary(log)["num_params_M"]) == pytest.approx(0.07, abs=0.051)  # TINY: 0.07M, not 0.02M


def test_a_run_stopped_while_it_is_scored_ends_as_interrupted(tmp_path, corpus):
    """program.md's stop reaches the supervisor while the scorer runs: the run's crash line is the
    interruption's (decide reruns it), not a scorer failure charged to the idea."""
    (tmp_path / "train.py").write_text(tiny_text())
    env = base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=EVAL_BYTES, AR_STEPS=STEPS)
    run = subprocess.Popen(
        [sys.executable, "train.py"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        while run.poll() is None and not scorer_of(run.pid):
            time.sleep(0.02)
        run.send_signal(signal.SIGTERM)
        log, _ = run.communicate(timeout=120)
    finally:
        run.kill()
    assert run.returncode == 128 + signal.SIGTERM, log[-3000:]
    assert re.fullmatch(r"interrupted \(SIGTERM\) after \d+ s", crash_reason(log)), log[-3000:]


def scorer_of(pid):
    """Whether process `pid` has a child running the sealed scorer."""
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            command = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if stat[1] == str(pid) and b"score" in command:
            return True
    return False

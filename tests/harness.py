"""Shared helpers for the tests: tiny train.py copies, generated corpora, subprocess runs.

A test edits train.py the way the agent does (rewriting its ALL_CAPS constants in a copy),
runs it as a subprocess with AR_* overrides, and reads the summary block it prints. The copy
imports `prepare` (the fixed harness) from this checkout: base_env puts the repository first on
PYTHONPATH, unless a test wrote an edited prepare.py copy next to the train.py copy.

The tests start from the files as they shipped (TRAIN, AGENTS, PROGRAM), never from an agent's
edits: in a checkout on an effort's branch (program.md's `autoresearch/<tag>`, a worker's
`autoresearch/<tag>-gpuN`) those are the files of the commit the branch started from, so the suite
passes next to a night whose train.py is shrunk and whose AGENTS.md holds this machine's facts.
"""

import contextlib
import importlib
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PREPARE = REPO / "prepare.py"
EFFORT_BRANCH = "autoresearch/"  # program.md's branches, where the agent commits its train.py and AGENTS.md


def git_out(*args, repo=REPO):
    """git's output in `repo`, or "" when git fails (no repository, no such ref)."""
    try:
        proc = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except OSError:
        return ""
    return proc.stdout.strip() if proc.returncode == 0 else ""


def shipped_commit(repo=REPO):
    """The commit an effort's branch started from, when HEAD is on one; None in any other checkout
    (a development checkout ships its working tree). The start is the newest commit of HEAD that a
    branch outside the efforts' also holds (main, or the remote's)."""
    if not git_out("branch", "--show-current", repo=repo).startswith(EFFORT_BRANCH):
        return None
    refs = git_out("for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/remotes", repo=repo).split()
    bases = {git_out("merge-base", "HEAD", ref, repo=repo) for ref in refs if EFFORT_BRANCH not in ref}
    counted = [(int(git_out("rev-list", "--count", base, repo=repo) or 0), base) for base in bases if base]
    return max(counted)[1] if counted else None


def shipped_path(name, repo=REPO):
    """`name` (train.py, AGENTS.md, program.md) as shipped: the working tree's file, or on an
    effort's branch a copy of the file at the commit it started from (inside the git directory,
    a folder per commit: out of the working tree and of `git status`)."""
    commit = shipped_commit(repo)
    if commit is None:
        return repo / name
    git_dir = git_out("rev-parse", "--path-format=absolute", "--git-common-dir", repo=repo)
    path = Path(git_dir) / "autoresearch" / f"shipped-{commit[:12]}" / name
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        part = path.with_name(f"{name}.part{os.getpid()}")  # test workers write it side by side
        part.write_text(subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{name}"],
                                       capture_output=True, text=True, check=True).stdout)  # fmt: skip
        part.replace(path)
    return path


TRAIN = shipped_path("train.py")
AGENTS = shipped_path("AGENTS.md")
PROGRAM = shipped_path("program.md")

WARM = {}  # conftest's warm_python fixture puts its `python` shim here (tests/warm_python.py)


def python():
    """The interpreter a test runs train.py, prepare.py, analysis.py and tools with: the session's
    warm one (torch imported once per test worker), or this one when WARM_PYTHON=0."""
    return WARM.get("python", sys.executable)


# A model small enough that a CPU step takes ~0.1 s on 2 cores.
TINY = dict(DIM=32, DEPTH=2, HEADS=2, BATCH_SIZE=4)

WORDS = (
    "the of and to in a is that for it as was with be by on not he this are or his from at which "
    "but have an they you were her she there been one all we their has would when who will more "
    "if no out so said what up its about into than them can only other new some could time these"
).split()


def write_corpus(path, size=300_000, seed=0):
    """Pseudo-English bytes with some structure to learn; different seeds give different text."""
    rng = random.Random(seed)
    chunks, n = [], 0
    while n < size:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ". "
        chunks.append(sentence)
        n += len(sentence)
    path = Path(path)
    path.write_bytes("".join(chunks).encode()[:size])
    return path


def edit_constants(source, **values):
    """Rewrite top-level `NAME = ...` lines, as an agent editing the file would."""
    for name, value in values.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
        assert count == 1, f"train.py has no top-level constant {name}"
    return source


def rebind_after_import(source, **values):
    """train.py's text with `NAME = value` lines added right after its `from prepare import ...`
    line, as an agent rebinding a harness constant at the top of the file would."""
    line = re.search(r"^from prepare import .*\n", source, flags=re.M)
    assert line, "train.py no longer imports from prepare on one line: update this edit"
    extra = "".join(f"{name} = {value!r}\n" for name, value in values.items())
    return source[: line.end()] + extra + source[line.end() :]


def insert_after_import(source, code):
    """train.py's text with `code` right below its `from prepare import ...` line: the first place
    an edit may run code (above it, the harness refuses the file)."""
    line = re.search(r"^from prepare import .*\n", source, flags=re.M)
    assert line, "train.py no longer imports from prepare on one line: update this edit"
    return source[: line.end()] + code.strip("\n") + "\n" + source[line.end() :]


def make_train_copy(dest_dir, source=None, **values):
    """A copy of train.py in `dest_dir` with the tiny config plus `values` applied."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    text = edit_constants(source if source is not None else TRAIN.read_text(), **{**TINY, **values})
    path = dest_dir / "train.py"
    path.write_text(text)
    return path


def make_prepare_copy(dest_dir, **values):
    """A copy of prepare.py in `dest_dir` with `values` rewritten (a test-side edit of its
    constants, e.g. a small fake enwik8's size and checksum). A train.py copy in the same
    directory imports it instead of the repository's; its REPO_DIR is `dest_dir`, which has
    no x-transformers submodule."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    path = dest_dir / "prepare.py"
    path.write_text(edit_constants(PREPARE.read_text(), **values))
    return path


def train_module(source=None, name="train_under_test", **values):
    """train.py's text (or `source`), with `values` rewritten, executed as a fresh module that
    tests may change freely: the repository's own `train` module is left alone. Its `__main__`
    guard does not fire."""
    import prepare

    text = source if source is not None else TRAIN.read_text()
    return prepare.source_module(edit_constants(text, **values), name)


def base_env(tmp_path, **extra):
    """The test process's environment without any AR_* or precision setting, with a private
    cache, and a download URL on a closed loopback port so no test can reach the internet."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in ("USE_FP8", "USE_FP16")}
    path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(
        PYTHONPATH=os.pathsep.join(dict.fromkeys(path)),  # this checkout's prepare.py, wherever a copy runs
        XDG_CACHE_HOME=str(Path(tmp_path) / "cache"),
        AR_DATA_URL="http://127.0.0.1:9/enwik8.zip",
        OMP_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
    )
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_train(train_py, env, args=(), timeout=300, cwd=None):
    """Run a train.py copy like `python train.py > run.log 2>&1`; returns (returncode, log text)."""
    cwd = Path(cwd or Path(train_py).parent)
    proc = subprocess.run(
        [python(), str(train_py), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    (cwd / "run.log").write_text(proc.stdout)
    return proc.returncode, proc.stdout


def run_cold(train_py, env, wrapper=(), python=sys.executable, timeout=300):
    """`python train.py` with a fresh interpreter (never the warm shim, whose trainer the server forks,
    out of the supervisor's reach), `wrapper` in front; returns (returncode, log text)."""
    proc = subprocess.run(
        [*map(str, wrapper), str(python), str(train_py)],
        cwd=Path(train_py).parent,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    return proc.returncode, proc.stdout


def parse_summary(log):
    """The key: value lines after the last `---` line of a run log ({} when there is none)."""
    lines = log.splitlines()
    if "---" not in lines:
        return {}
    start = len(lines) - 1 - lines[::-1].index("---")
    summary = {}
    for line in lines[start + 1 :]:
        key, sep, value = line.partition(":")
        if sep and re.fullmatch(r"\w+", key):
            summary[key] = value.strip()
    return summary


def crash_reason(log):
    """The text after `crash: ` when the log ends with a crash line, else None."""
    lines = log.rstrip("\n").splitlines()
    if lines and lines[-1].startswith("crash: "):
        return lines[-1][len("crash: ") :]
    return None


def assert_crashed(code, log):
    """Non-zero exit, a final `crash:` line, and nothing for `grep "^val_bpc:" run.log` to find."""
    assert code != 0, log[-3000:]
    assert crash_reason(log), f"no crash line at the end of the log:\n{log[-3000:]}"
    assert parse_summary(log) == {}
    assert not re.search(r"^val_bpc:", log, flags=re.M)


def leftover_parts(*dirs):
    """Every half-written temporary file (`*.part*`) under the given directories."""
    return [p for d in dirs if Path(d).exists() for p in Path(d).rglob("*.part*")]


def import_bench():
    """bench/bench.py as the module `bench.bench`, by name (bench/ is a namespace package under
    the repository root, which conftest puts first on sys.path)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    bench = importlib.import_module("bench.bench")
    bench.TRAIN = TRAIN  # bench measures the checkout's train.py; its tests, the shipped one
    return bench


def run_script(script, *args, cwd, env=None, timeout=300):
    """`python SCRIPT ARGS` in `cwd` with the tests' interpreter; the CompletedProcess, output captured."""
    return subprocess.run(
        [python(), str(script), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


def run_prepare(args, env, cwd, prepare_py=PREPARE, timeout=120):
    """`python prepare.py ARGS` (data check or rescore) in `cwd`; returns (returncode, stdout, stderr)."""
    proc = run_script(prepare_py, *args, cwd=cwd, env=env, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def kill_session(sid):
    """SIGKILL every process of session `sid` (a Popen with start_new_session=True): what an
    agent's tool does when it kills a command, `timeout`'s own process group included."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getsid(int(entry)) == sid:
                    os.kill(int(entry), signal.SIGKILL)

"""Session-wide fixtures: one generated corpus and one finished tiny run that many tests read."""

import os
import sys

import harness
import pytest
from harness import REPO, base_env, make_train_copy, parse_summary, run_train, write_corpus

# `import prepare` and `import train` in the tests mean this checkout's files, not an installed copy
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))


def pytest_collection_modifyitems(items):
    """The scripted night first: it is the longest test, so a worker starts it before the rest."""
    items.sort(key=lambda item: item.get_closest_marker("night") is None)


TINY_STEPS = 20  # tiny_run's AR_STEPS: a reproducible run, the same val_bpc every time


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A ~300 KB generated text corpus (custom data: split 90/5/5, no checksum)."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus):
    """One end-to-end run of a tiny train.py copy for AR_STEPS steps: (directory, return code, log, summary)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    train_py = make_train_copy(workdir)
    env = base_env(workdir, AR_DATA=corpus, AR_STEPS=TINY_STEPS, AR_EVAL_BYTES=8192)
    code, log = run_train(train_py, env)
    return workdir, code, log, parse_summary(log)


@pytest.fixture(scope="session", autouse=True)
def warm_python(tmp_path_factory):
    """A `python` executable that forks a server holding torch and x-transformers imported
    (tests/warm_python.py): each test worker imports them once, not once per run. The shared
    helpers run train.py, prepare.py, analysis.py and the tools with it; WARM_PYTHON=0 runs
    everything with this interpreter instead."""
    if os.environ.get("WARM_PYTHON") == "0":
        yield sys.executable
        return
    import warm_python as warm

    directory = tmp_path_factory.mktemp("warm_python")
    server, python = warm.start(directory, base_env(directory))
    harness.WARM["python"] = str(python)
    yield str(python)
    harness.WARM.clear()
    server.terminate()
    server.wait(timeout=30)

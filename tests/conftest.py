"""Session-wide fixtures: one generated corpus and one finished tiny run that many tests read."""

import sys

import pytest
from harness import REPO, base_env, make_train_copy, parse_summary, run_train, write_corpus

# `import prepare` and `import train` in the tests mean this checkout's files, not an installed copy
if sys.path[:1] != [str(REPO)]:
    sys.path.insert(0, str(REPO))

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

"""Session-wide fixtures: one generated corpus and one finished tiny run that many tests read."""

import pytest
from harness import base_env, make_train_copy, parse_summary, run_train, write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    """A ~300 KB generated text corpus (custom data: split 90/5/5, no checksum)."""
    return write_corpus(tmp_path_factory.mktemp("corpus") / "corpus.txt")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, corpus):
    """One end-to-end run of a tiny train.py copy: (directory, return code, log, summary)."""
    workdir = tmp_path_factory.mktemp("tiny_run")
    train_py = make_train_copy(workdir)
    env = base_env(workdir, AR_DATA=corpus, AR_TIME_BUDGET=4, AR_EVAL_BYTES=8192)
    code, log = run_train(train_py, env)
    return workdir, code, log, parse_summary(log)

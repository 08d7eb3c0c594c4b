"""Mistakes an agent makes in train.py. Each broken copy must stop without a summary (so the
experiment is logged as a crash) and leave the real Python error where the agent looks: program.md
has it read the last 50 lines of run.log. Breaking the loop's contract with the harness (training
at import, stepping after run.done, handing back another model, never calling main) ends the same
way.
"""

import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from harness import (
    TRAIN,
    assert_crashed,
    base_env,
    crash_reason,
    insert_after_import,
    make_train_copy,
    parse_summary,
    run_train,
)

TAIL_LINES = 50


def edited(old, new):
    """An edit of train.py's text replacing `old` (which must occur exactly once) by `new`."""

    def edit(source):
        assert source.count(old) == 1, f"train.py no longer has exactly one {old!r}: update this mistake"
        return source.replace(old, new)

    return edit


def with_decoder_keyword(keyword):
    """An edit adding `keyword` as the first argument of the Decoder(...) call in build_model."""

    def edit(source):
        calls = re.findall(r"^( *)attn_layers=Decoder\(\n", source, flags=re.M)
        assert len(calls) == 1, "train.py no longer has one `attn_layers=Decoder(` line: update this mistake"
        indent = calls[0]
        return source.replace(
            f"{indent}attn_layers=Decoder(\n", f"{indent}attn_layers=Decoder(\n{indent}    {keyword},\n"
        )

    return edit


def tail(log, lines=TAIL_LINES):
    return "\n".join(log.splitlines()[-lines:])


@dataclass
class Mistake:
    """An edited train.py, what the last 50 log lines must show, and the line the log must end with."""

    edit: Callable[[str], str] | None  # applied to train.py's text; None leaves it as it is
    constants: dict  # applied after the TINY config, as the agent's edits to the knobs
    evidence: str
    last_line: str


MISTAKES = {
    "batch-size-zero": Mistake(
        None,
        dict(BATCH_SIZE=0),
        evidence=r"BATCH_SIZE",
        last_line=r"crash: .*BATCH_SIZE.*",
    ),
    "negative-learning-rate": Mistake(
        None,
        dict(LR=-1e-3),
        evidence=r"assert lr > 0",
        last_line=r"crash: AssertionError: .*lr > 0.*",
    ),
    "keyword-the-pinned-version-rejects": Mistake(
        with_decoder_keyword("resi_dual=True"),
        {},
        evidence=r"AssertionError: unrecognized kwargs passed in dict_keys\(\['resi_dual'\]\)",
        last_line=r"crash: build_model\(\): Decoder with `resi_dual=True` cannot be built: AssertionError: unrecognized "
        r"kwargs .*resi_dual.*",
    ),
    "syntax-error": Mistake(
        edited("def build_model():", "def build_model(:"),
        {},
        evidence=r'File ".*train\.py", line \d+\n\s+def build_model\(:',
        last_line=r"SyntaxError: .*",  # the file never runs, so only the interpreter can speak
    ),
}


@pytest.fixture(scope="module", params=list(MISTAKES), ids=list(MISTAKES))
def mistake_run(request, tmp_path_factory, corpus):
    """(mistake, exit code, log) for one broken copy, run with a tiny budget."""
    mistake = MISTAKES[request.param]
    workdir = tmp_path_factory.mktemp(request.param)
    source = mistake.edit(TRAIN.read_text()) if mistake.edit else None
    train_py = make_train_copy(workdir, source=source, **mistake.constants)
    code, log = run_train(train_py, base_env(workdir, AR_DATA=corpus, AR_STEPS=2, AR_EVAL_BYTES=4096))
    return mistake, code, log


def test_an_agent_mistake_stops_the_run_without_a_summary(mistake_run):
    _, code, log = mistake_run
    assert code != 0, log
    assert parse_summary(log) == {}
    assert not re.search(r"^val_bpc:", log, flags=re.M)


def test_an_agent_mistake_leaves_the_real_error_in_the_last_50_lines(mistake_run):
    mistake, _, log = mistake_run
    assert re.search(mistake.evidence, tail(log)), tail(log)


def test_an_agent_mistake_ends_the_log_with_a_line_that_says_what_went_wrong(mistake_run):
    mistake, _, log = mistake_run
    last = log.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(mistake.last_line, last), last


def test_a_dim_that_heads_do_not_divide_still_trains_because_each_head_has_its_own_width(tmp_path, corpus):
    # x-transformers sizes heads by attn_dim_head (64), not dim / heads: DIM=33 with 2 heads is valid
    train_py = make_train_copy(tmp_path, DIM=33, HEADS=2)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=2, AR_EVAL_BYTES=4096))
    assert code == 0, log
    summary = parse_summary(log)
    assert float(summary["val_bpc"]) > 0
    assert not re.search(r"^crash:", log, flags=re.M)


# ---------------------------------------------------------------------------
# The contract between train.py and the harness
# ---------------------------------------------------------------------------

LOOP_STEP = "        run.step(optimizer, GRAD_CLIP)\n    return model\n"
MAIN_GUARD = 'if __name__ == "__main__":\n    main()\n'


def run_edit(tmp_path, corpus, source, steps=3):
    train_py = make_train_copy(tmp_path, source=source)
    return run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=steps, AR_EVAL_BYTES=4096))


def test_a_train_py_that_trains_when_imported_is_refused_naming_it(tmp_path, corpus):
    # a module-level step: the harness imports train.py with its step hook armed and counts it
    source = edited(
        MAIN_GUARD, "_w = torch.nn.Parameter(torch.zeros(1))\ntorch.optim.SGD([_w], lr=0.1).step()\n\n" + MAIN_GUARD
    )
    code, log = run_edit(tmp_path, corpus, insert_after_import(source(TRAIN.read_text()), "import torch"))
    assert_crashed(code, log)
    assert crash_reason(log) == "train.py took 1 optimizer steps when imported: train inside train(run)"
    assert not re.search(r"^step ", log, flags=re.M)


def test_a_train_py_that_never_calls_main_still_runs_from_its_import_of_the_harness(tmp_path, corpus):
    # the run starts at `from prepare import`, which makes `python train.py` the supervisor: the call is a formality
    code, log = run_edit(tmp_path, corpus, edited(MAIN_GUARD, "")(TRAIN.read_text()))
    assert code == 0, log[-2000:]
    assert re.search(r"^val_bpc:", log, flags=re.M)


@pytest.fixture(scope="module")
def unguarded_run(tmp_path_factory, corpus):
    """A copy that calls main() at module level: the harness's import of it calls main() again."""
    tmp_path = tmp_path_factory.mktemp("unguarded")
    return run_edit(tmp_path, corpus, edited(MAIN_GUARD, "main()\n")(TRAIN.read_text()))


def test_a_train_py_without_a_main_guard_prints_no_summary(unguarded_run):
    code, log = unguarded_run
    assert_crashed(code, log)


def test_a_train_py_without_a_main_guard_is_told_so_in_its_crash_line(unguarded_run):
    _, log = unguarded_run
    assert "__main__" in crash_reason(log), crash_reason(log)


def test_stepping_the_optimizer_after_run_done_is_a_crash(tmp_path, corpus):
    source = edited(LOOP_STEP, "        run.step(optimizer, GRAD_CLIP)\n    optimizer.step()\n    return model\n")
    code, log = run_edit(tmp_path, corpus, source(TRAIN.read_text()))
    assert_crashed(code, log)
    assert crash_reason(log) == "optimizer step 4 after the harness said stop (run.done was True)"
    assert not (tmp_path / "checkpoint.pt").exists()


def test_a_loop_that_ignores_run_done_is_stopped_at_the_first_extra_step(tmp_path, corpus):
    source = edited("    while not run.done:\n", "    for _ in range(100):\n")
    code, log = run_edit(tmp_path, corpus, source(TRAIN.read_text()), steps=2)
    assert_crashed(code, log)
    assert crash_reason(log) == "optimizer step 3 after the harness said stop (run.done was True)"


def test_a_returned_model_whose_state_differs_from_a_fresh_build_model_is_refused(tmp_path, corpus):
    source = edited(
        LOOP_STEP,
        '        run.step(optimizer, GRAD_CLIP)\n    model.register_buffer("extra", model.net.token_emb.emb.weight.new_zeros(1))\n'
        "    return model\n",
    )
    code, log = run_edit(tmp_path, corpus, source(TRAIN.read_text()))
    assert_crashed(code, log)
    assert crash_reason(log) == (
        "the trained model's state differs from a fresh build_model(): extra ['extra'], missing []"
    )
    assert not (tmp_path / "checkpoint.pt").exists()  # what is saved is what is scored


def test_a_train_that_returns_nothing_is_refused(tmp_path, corpus):
    code, log = run_edit(
        tmp_path, corpus, edited(LOOP_STEP, "        run.step(optimizer, GRAD_CLIP)\n")(TRAIN.read_text())
    )
    assert_crashed(code, log)
    assert crash_reason(log) == "train(run) must return the trained AutoregressiveWrapper (its .net is scored)"


def test_a_train_py_that_replaces_the_harness_evaluation_records_the_honest_score(tmp_path, corpus):
    source = edited(
        MAIN_GUARD, "import prepare\n\nprepare.evaluate = lambda *args, **kwargs: (0.125, 0.0)\n\n" + MAIN_GUARD
    )
    code, log = run_edit(tmp_path, corpus, source(TRAIN.read_text()), steps=1)
    assert code == 0, log[-2000:]  # the trainer's copy of the harness changed; the scorer's did not
    assert parse_summary(log)["val_bpc"] != "0.125000", "the run printed the score its train.py chose"

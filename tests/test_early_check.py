"""The early check: before the first step the trainer runs the scorer's path on build_model()'s fresh
model, so an option the sealed path cannot score ends the run in seconds, in one crash line that
names the option and the library's message, and a model that scores trains exactly as before."""

import random

import pytest
import torch
from harness import TRAIN, assert_crashed, base_env, crash_reason, make_train_copy, run_train, train_module

import prepare


def with_option(decoder="", wrapper=""):
    """train.py's text with keywords added to its Decoder(...) and TransformerWrapper(...) calls."""
    text = TRAIN.read_text().replace(
        "from x_transformers import", "from torch import nn\nfrom x_transformers import", 1
    )
    text = text.replace("heads=HEADS,", f"heads=HEADS, {decoder}", 1)
    return text.replace("num_tokens=VOCAB,", f"num_tokens=VOCAB, {wrapper}", 1)


# failures in the scorer's eval-mode forward: before the check, each trained for the whole budget
@pytest.mark.parametrize(
    "decoder, wrapper, named, message",
    [
        ("", "recycling=True,", ["`recycling=True`"], "`recycle_steps` must be provided"),
        ("attn_kv_heads=1,", "", ["`attn_kv_heads=1`", "`add_value_residual=True`"], "EinopsError"),
        ("attn_hybrid_module=nn.GRU(DIM, 128, batch_first=True),", "", ["`attn_hybrid_module=GRU(...)`"], "TypeError"),
    ],
    ids=["recycling", "gqa-with-value-residual", "hybrid-without-fold-axial-dim"],
)
def test_a_model_the_scorer_cannot_run_ends_before_its_first_step(tmp_path, corpus, decoder, wrapper, named, message):
    train_py = make_train_copy(tmp_path, source=with_option(decoder, wrapper))
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096))
    assert_crashed(code, log)
    reason = crash_reason(log)
    assert all(name in reason for name in named) and message in reason, reason
    assert "micro_batch:" not in log and (tmp_path / "metrics.jsonl").read_text() == ""  # no step was taken


def test_an_option_that_cannot_be_built_names_the_combination_in_the_crash_line(tmp_path, corpus):
    train_py = make_train_copy(tmp_path, source=with_option("rel_pos_bias=True,"))
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096))
    assert_crashed(code, log)
    reason = crash_reason(log)
    assert "`rel_pos_bias=True`" in reason and "`attn_flash=True`" in reason, reason
    assert "flash attention not compatible with t5 relative positional bias" in reason


# build-time failures: the recorder names the options, in-process (the same call the trainer makes)
@pytest.mark.parametrize(
    "decoder, wrapper, named",
    [
        ("dynamic_pos_bias=True,", "", ["`dynamic_pos_bias=True`", "`attn_flash=True`"]),
        ("", "looped=True,", ["`looped=True`"]),
        ("resi_dual=True,", "", ["`resi_dual=True`"]),
    ],
    ids=["dynamic-pos-bias-with-flash", "looped-without-pre-and-post-norm", "resi-dual"],
)
def test_a_build_the_library_refuses_names_its_options(decoder, wrapper, named):
    train = train_module(with_option(decoder, wrapper), DIM=32, DEPTH=2, HEADS=2)
    with pytest.raises(prepare.LibraryFailure) as failure:
        prepare.SpecRecorder().wrap(train.build_model)()
    assert failure.value.names and all(name in str(failure.value) for name in named), str(failure.value)


def test_the_check_leaves_the_random_state_and_the_model_as_they_were(monkeypatch):
    monkeypatch.setattr(prepare, "MAX_SEQ_LEN", 32)  # the same code on short windows: milliseconds, not seconds
    monkeypatch.setattr(prepare, "EVAL_BATCH_SIZE", 2)
    train = train_module(DIM=32, DEPTH=2, HEADS=2)
    recorder = prepare.SpecRecorder()
    model = recorder.wrap(train.build_model)()
    data = torch.randint(0, 256, (4 * prepare.MAX_SEQ_LEN,), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(3)
    random.seed(3)
    before = torch.get_rng_state(), random.getstate(), {k: v.clone() for k, v in model.state_dict().items()}
    warning = prepare.check_scorable(model, recorder.built[0], data, torch.device("cpu"))
    assert warning is None
    assert torch.equal(torch.get_rng_state(), before[0]) and random.getstate() == before[1]
    assert all(torch.equal(v, before[2][k]) for k, v in model.state_dict().items()) and model.training

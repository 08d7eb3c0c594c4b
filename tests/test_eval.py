"""The fixed evaluation: every val byte after the first scored exactly once, deterministically,
whatever the agent changes about training."""

import math

import pytest
import torch
from harness import import_train
from torch import nn


@pytest.fixture(scope="module")
def train():
    module = import_train()
    for name, value in dict(DIM=32, DEPTH=2, HEADS=2).items():
        setattr(module, name, value)
    return module


def make_run(train, val, eval_bytes=None):
    return train.Run(
        env={"budget": 1.0},
        device=torch.device("cpu"),
        precision="FP32",
        splits={"val": val, "test": val.flip(0)},
        data_identity="test",
        eval_bytes=eval_bytes or len(val),
    )


class FixedGuess(nn.Module):
    """Predicts the same distribution at every position, whatever the input: the loss of each
    scored byte is then known in advance, so the total shows which bytes were scored."""

    def __init__(self, seed=0):
        super().__init__()
        self.logits = torch.randn(256, generator=torch.Generator().manual_seed(seed)) * 3
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return self.logits.expand(*x.shape, 256)


@pytest.mark.parametrize("n", [2, 1000, 1025, 2049, 16 * 1024 + 1, 20 * 1024 + 37])
def test_every_val_byte_after_the_first_is_scored_exactly_once(train, n):
    val = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    net = FixedGuess()
    bpc, _ = train.evaluate(make_run(train, val), net)
    bits = -torch.log_softmax(net.logits.double(), -1)[val[1:].long()] / math.log(2)
    assert bpc == pytest.approx(bits.mean().item(), rel=1e-6)  # FP32 log-softmax
    # always full (EVAL_BATCH_SIZE, MAX_SEQ_LEN) batches: the model contract, and one compiled shape
    assert set(net.calls) == {(train.EVAL_BATCH_SIZE, train.MAX_SEQ_LEN)}
    batches = math.ceil(math.ceil((n - 1) / train.MAX_SEQ_LEN) / train.EVAL_BATCH_SIZE)
    assert len(net.calls) == batches + 2  # plus the two forwards of the causality probe


def test_eval_scores_only_the_eval_bytes_prefix(train):
    val = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    net = FixedGuess()
    bpc, _ = train.evaluate(make_run(train, val, eval_bytes=3000), net)
    bits = -torch.log_softmax(net.logits.double(), -1)[val[1:3000].long()] / math.log(2)
    assert bpc == pytest.approx(bits.mean().item(), rel=1e-6)  # FP32 log-softmax


def test_a_model_that_knows_nothing_scores_eight_bits(train):
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    net = FixedGuess()
    net.logits = torch.zeros(256)
    assert train.evaluate(make_run(train, val), net)[0] == pytest.approx(8.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_model_and_run(train):
    torch.manual_seed(0)
    model = train.build_model()
    text = (b"the quick brown fox jumps over the lazy dog. " * 200)[:7000]
    val = torch.tensor(list(text), dtype=torch.uint8)
    return model, make_run(train, val)


def test_eval_is_deterministic_on_the_same_weights(train, tiny_model_and_run):
    model, run = tiny_model_and_run
    first = train.evaluate(run, model.net)[0]
    second = train.evaluate(run, model.net)[0]
    assert abs(first - second) < 1e-6


def test_eval_ignores_batch_size_rng_and_wrapper_options(train, tiny_model_and_run):
    model, run = tiny_model_and_run
    reference = train.evaluate(run, model.net)[0]
    old = train.BATCH_SIZE
    try:
        train.BATCH_SIZE = 1
        torch.manual_seed(1234)
        torch.rand(1000)
        assert abs(train.evaluate(run, model.net)[0] - reference) < 1e-6
    finally:
        train.BATCH_SIZE = old
    masked = train.AutoregressiveWrapper(model.net, mask_prob=0.5)
    assert abs(train.evaluate(run, masked.net)[0] - reference) < 1e-6


def test_eval_restores_training_mode(train, tiny_model_and_run):
    model, run = tiny_model_and_run
    model.net.train()
    train.evaluate(run, model.net)
    assert model.net.training
    model.net.eval()
    train.evaluate(run, model.net)
    assert not model.net.training


def test_test_split_is_scored_separately(train, tiny_model_and_run):
    model, run = tiny_model_and_run
    val = train.evaluate(run, model.net, "val")[0]
    test = train.evaluate(run, model.net, "test")[0]
    assert math.isfinite(test) and test != val


class PeeksAhead(nn.Module):
    """Mixes the whole window into every position, as a non-causal option would."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x, 256).float().mean(dim=1, keepdim=True).expand(*x.shape, 256)


def test_a_model_that_sees_later_bytes_is_refused(train):
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    with pytest.raises(train.HarnessError, match="not causal"):
        train.evaluate(make_run(train, val), PeeksAhead())


def test_an_x_transformers_option_that_leaks_the_future_is_refused(train):
    torch.manual_seed(0)
    net = train.TransformerWrapper(
        num_tokens=256,
        max_seq_len=train.MAX_SEQ_LEN,
        use_abs_pos_emb=False,
        attn_layers=train.Decoder(dim=64, depth=2, heads=2, rotary_pos_emb=True, attn_orthog_projected_values=True),
    )
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    with pytest.raises(train.HarnessError, match="not causal"):
        train.evaluate(make_run(train, val), net)

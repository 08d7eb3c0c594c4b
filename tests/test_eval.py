"""The fixed evaluation: every val byte after the first scored exactly once, deterministically,
whatever the agent changes about training."""

import math

import pytest
import torch
from harness import TRAIN, rebind_after_import, train_module
from torch import nn

import prepare

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def train():
    """train.py with a tiny model, as a private module (the repository's `train` stays as it is)."""
    return train_module(DIM=32, DEPTH=2, HEADS=2)


def evaluate(net, data, **kwargs):
    return prepare.evaluate(net, data, CPU, **kwargs)


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
def test_every_val_byte_after_the_first_is_scored_exactly_once(n):
    val = torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n), dtype=torch.uint8)
    net = FixedGuess()
    bpc, _ = evaluate(net, val)
    bits = -torch.log_softmax(net.logits.double(), -1)[val[1:].long()] / math.log(2)
    assert bpc == pytest.approx(bits.mean().item(), rel=1e-6)  # FP32 log-softmax
    # always full (EVAL_BATCH_SIZE, MAX_SEQ_LEN) batches: the model contract, and one compiled shape
    assert set(net.calls) == {(prepare.EVAL_BATCH_SIZE, prepare.MAX_SEQ_LEN)}
    batches = math.ceil(math.ceil((n - 1) / prepare.MAX_SEQ_LEN) / prepare.EVAL_BATCH_SIZE)
    probes = 3 * min(prepare.PROBE_BATCHES, batches)  # three leak probes on each probed batch
    assert len(net.calls) == batches + probes


def test_eval_scores_exactly_the_bytes_it_is_handed():
    val = torch.randint(0, 256, (5000,), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    net = FixedGuess()
    bpc, _ = evaluate(net, val[:3000])  # the harness hands over the AR_EVAL_BYTES prefix
    bits = -torch.log_softmax(net.logits.double(), -1)[val[1:3000].long()] / math.log(2)
    assert bpc == pytest.approx(bits.mean().item(), rel=1e-6)  # FP32 log-softmax


def test_the_probe_can_be_skipped():
    val = torch.randint(0, 256, (40 * 1024,), generator=torch.Generator().manual_seed(2), dtype=torch.uint8)
    net = FixedGuess()
    assert evaluate(net, val, probe=False)[0] == evaluate(FixedGuess(), val)[0]
    assert len(net.calls) == 3  # 40 windows in 3 batches of 16, no probe forwards


def test_a_model_that_knows_nothing_scores_eight_bits():
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    net = FixedGuess()
    net.logits = torch.zeros(256)
    assert evaluate(net, val)[0] == pytest.approx(8.0, abs=1e-6)


@pytest.fixture(scope="module")
def tiny_model_and_val(train):
    torch.manual_seed(0)
    model = train.build_model()
    text = (b"the quick brown fox jumps over the lazy dog. " * 200)[:7000]
    val = torch.tensor(list(text), dtype=torch.uint8)
    return model, val


# the probe's two forwards cost more than scoring 7,000 bytes: these tests skip it
def test_eval_is_deterministic_on_the_same_weights(tiny_model_and_val):
    model, val = tiny_model_and_val
    first = evaluate(model.net, val, probe=False)[0]
    second = evaluate(model.net, val, probe=False)[0]
    assert first == second


def test_eval_ignores_rng_wrapper_options_and_train_py_knobs(train, tiny_model_and_val):
    model, val = tiny_model_and_val
    reference = evaluate(model.net, val, probe=False)[0]
    torch.manual_seed(1234)
    torch.rand(1000)
    assert evaluate(model.net, val, probe=False)[0] == reference
    masked = train.AutoregressiveWrapper(model.net, mask_prob=0.5)
    assert evaluate(masked.net, val, probe=False)[0] == reference
    # train.py rebinding the constants it imported from prepare changes nothing the evaluation reads
    source = rebind_after_import(TRAIN.read_text(), MAX_SEQ_LEN=256)
    rebound = train_module(source, name="rebound", DIM=32, DEPTH=2, HEADS=2, BATCH_SIZE=1)
    assert rebound.MAX_SEQ_LEN == 256 and prepare.MAX_SEQ_LEN == 1024
    assert evaluate(model.net, val, probe=False)[0] == reference


def test_eval_restores_training_mode(tiny_model_and_val):
    model, val = tiny_model_and_val
    model.net.train()
    evaluate(model.net, val, probe=False)
    assert model.net.training
    model.net.eval()
    evaluate(model.net, val, probe=False)
    assert not model.net.training


def test_another_split_gets_its_own_score(tiny_model_and_val):
    model, val = tiny_model_and_val
    test = evaluate(model.net, val.flip(0), probe=False)[0]
    assert math.isfinite(test) and test != evaluate(model.net, val, probe=False)[0]


def test_training_numerics_are_restored_after_the_pinned_evaluation(tiny_model_and_val):
    model, val = tiny_model_and_val
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        evaluate(model.net, val, probe=False)
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)


class PeeksAhead(nn.Module):
    """Mixes the whole window into every position, as a non-causal option would."""

    def forward(self, x):
        return torch.nn.functional.one_hot(x, 256).float().mean(dim=1, keepdim=True).expand(*x.shape, 256)


def test_a_model_that_sees_later_bytes_is_refused():
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    with pytest.raises(prepare.HarnessError, match="not causal"):
        evaluate(PeeksAhead(), val)
    evaluate(FixedGuess(), val)  # a causal model passes the probes


class ReturnsASubclass(FixedGuess):
    def forward(self, x):
        return super().forward(x).as_subclass(Subclass)


class Subclass(torch.Tensor):
    pass


def test_logits_that_are_not_a_plain_tensor_are_refused():
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    with pytest.raises(prepare.HarnessError, match="not a plain Tensor"):
        evaluate(ReturnsASubclass(), val, probe=False)


def test_an_x_transformers_option_that_leaks_the_future_is_refused(train):
    torch.manual_seed(0)
    net = train.TransformerWrapper(
        num_tokens=256,
        max_seq_len=prepare.MAX_SEQ_LEN,
        use_abs_pos_emb=False,
        attn_layers=train.Decoder(dim=64, depth=2, heads=2, rotary_pos_emb=True, attn_orthog_projected_values=True),
    )
    val = torch.randint(0, 256, (3000,), dtype=torch.uint8)
    with pytest.raises(prepare.HarnessError, match="not causal"):
        evaluate(net, val)

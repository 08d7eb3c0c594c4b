"""FP8 only where it pays: which linears prepare's run.prepare_model hands to torchao float8, and
its BF16 fallback, for the models train.py builds.

Models are built on the meta device, so a 2048-wide one costs nothing to make.
"""

import pytest
import torch
from harness import import_bench, train_module
from torch import nn

import prepare


@pytest.fixture(scope="module")
def train():
    """train.py as a private module: the tests change its DIM, HEADS and DEPTH."""
    return train_module(name="train_fp8_filter")


def build(train, monkeypatch, dim, heads, depth=1):
    for name, value in (("DIM", dim), ("HEADS", heads), ("DEPTH", depth)):
        monkeypatch.setattr(train, name, value)
    with torch.device("meta"):
        return train.build_model()


def converted(train, model, keep=None):
    keep = keep or prepare.fp8_wants
    return {name for name, module in model.named_modules() if keep(module, name)}


def body_linears(model):
    return {name for name, m in model.named_modules() if isinstance(m, nn.Linear) and ".attn_layers." in name}


def cpu_run(train, precision):
    env = {"steps": None, "seed": 0}
    return prepare.Run(env, torch.device("cpu"), precision, {}, "test", eval_bytes=0)


def test_the_default_config_converts_nothing(train):
    with torch.device("meta"):
        model = train.build_model()
    assert body_linears(model)
    assert converted(train, model) == set()


@pytest.mark.parametrize("dim,heads", [(512, 8), (1024, 16)])
def test_models_up_to_dim_1024_convert_nothing(train, monkeypatch, dim, heads):
    assert converted(train, build(train, monkeypatch, dim, heads)) == set()


def test_a_dim_2048_model_converts_every_linear_of_its_transformer_body(train, monkeypatch):
    model = build(train, monkeypatch, 2048, 32)  # 32 heads of 64: attention is 2048 wide too
    body = body_linears(model)
    assert len(body) >= 6  # q, k, v, out and the two feed-forward matrices
    assert converted(train, model) == body


def test_logits_head_and_embeddings_are_never_converted(train, monkeypatch):
    model = build(train, monkeypatch, 2048, 32)
    outside = {name for name, _ in model.named_modules()} - body_linears(model)
    assert "net.to_logits" in outside and "net.token_emb.emb" in outside
    assert converted(train, model) & outside == set()
    assert not prepare.fp8_wants(nn.Linear(4096, 4096), "net.to_logits")  # however wide the head


@pytest.mark.parametrize("shape", [(2040, 4096), (4096, 2040), (2040, 2040)])
def test_a_layer_2040_wide_is_never_converted(train, shape):
    assert 2040 % 16 != 0
    assert not prepare.fp8_wants(nn.Linear(*shape), "net.attn_layers.layers.0.1.to_q")


def test_a_layer_divisible_by_16_but_narrower_than_the_threshold_stays_bf16(train):
    narrow = prepare.FP8_MIN_FEATURES - 16
    assert not prepare.fp8_wants(nn.Linear(narrow, 8192), "net.attn_layers.layers.0.1.to_q")
    assert prepare.fp8_wants(nn.Linear(prepare.FP8_MIN_FEATURES, 8192), "net.attn_layers.layers.0.1.to_q")


def test_prepare_model_falls_back_to_bf16_with_a_notice_when_nothing_qualifies(train, capsys):
    run = cpu_run(train, "FP8")
    model = run.prepare_model(nn.ModuleDict({"attn_layers": nn.Linear(512, 512)}))
    assert run.precision == "BF16"
    out = capsys.readouterr().out
    assert "notice:" in out and "BF16" in out
    assert type(model["attn_layers"]) is nn.Linear


def test_prepare_model_converts_exactly_the_wanted_linears(train):
    from torchao.float8.float8_linear import Float8Linear

    model = nn.ModuleDict(
        {
            "attn_layers": nn.Sequential(nn.Linear(2048, 2048), nn.Linear(64, 64)),
            "to_logits": nn.Linear(2048, 256),
        }
    )
    run = cpu_run(train, "FP8")
    model = run.prepare_model(model)
    assert run.precision == "FP8"
    assert isinstance(model["attn_layers"][0], Float8Linear)
    assert not isinstance(model["attn_layers"][1], Float8Linear)
    assert not isinstance(model["to_logits"], Float8Linear)


def test_bf16_runs_are_never_converted(train):
    run = cpu_run(train, "BF16")
    model = run.prepare_model(nn.ModuleDict({"attn_layers": nn.Linear(2048, 2048)}))
    assert type(model["attn_layers"]) is nn.Linear


def test_the_benchs_torchao_filter_keeps_to_the_transformer_body(train, monkeypatch):
    """The bench's comparison filter (torchao's tensorwise heuristic) also leaves the head and
    embeddings alone; at dim 1024 it takes the feed-forward input projections train.py skips."""
    bench = import_bench()
    model = build(train, monkeypatch, 1024, 16)
    taken = converted(train, model, bench.torchao_filter)
    assert taken and taken <= body_linears(model)
    assert all(".ff." in name for name in taken)
    assert converted(train, model) == set()

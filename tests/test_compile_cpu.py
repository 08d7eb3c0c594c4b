"""torch.compile of train.py's model, exercised without a GPU: the harness's own compile call on
inductor's CPU backend (one compile, shared), and the ranked options on dynamo alone (the "eager" backend)."""

import copy
import re
import shutil

import pytest
import torch
from harness import TRAIN, train_module

import prepare

LOSS_TOLERANCE = 1e-3  # compiled vs eager, after three optimizer steps, FP32 on CPU (seen: ~1e-6)
TINY_COMPILE = dict(DIM=64, DEPTH=2, HEADS=2, BATCH_SIZE=2)
SEQ_LEN = 64


def with_decoder_options(options, **values):
    """train.py's module with Decoder(...) keywords set (replacing the line when train.py has one)."""
    source = TRAIN.read_text()
    for key, value in options.items():
        line = f"            {key}={value!r},"
        source, count = re.subn(rf"^ {{12}}{key}=.*$", line, source, count=1, flags=re.M)
        if not count:
            source = source.replace("            attn_flash=True,", "            attn_flash=True,\n" + line, 1)
    return train_module(source, "train_option_test", **{**TINY_COMPILE, **values})


def losses(train, model, steps, batches):
    """Training losses of `steps` optimizer steps on fixed batches, with train.py's optimizer."""
    optimizer = train.build_optimizer(model)
    out = []
    for x in batches[:steps]:
        loss = model(x)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        out.append(loss.item())
    return out


def fixed_batches(n, batch=2, seq_len=SEQ_LEN):
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (batch, seq_len + 1), generator=generator) for _ in range(n)]


@pytest.fixture(scope="session")
def compiled_and_eager():
    """(eager losses, compiled losses, recompiles after the warm-up) for the default architecture."""
    if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
        pytest.skip("no C++ compiler: inductor's CPU backend cannot build kernels here")
    train = train_module(name="train_compile_test", **TINY_COMPILE)
    torch.manual_seed(0)
    eager = train.build_model()
    twin = copy.deepcopy(eager)
    batches = fixed_batches(3)
    eager_losses = losses(train, eager, 3, batches)
    torch._dynamo.reset()
    compiled = prepare.compile_model(twin, {})
    optimizer = train.build_optimizer(twin)
    compiled_losses = []
    for i, x in enumerate(batches):
        if i == 1:  # after the warm-up step every later step must reuse the graph
            torch._dynamo.config.error_on_recompile = True
        try:
            loss = compiled(x)
        finally:
            torch._dynamo.config.error_on_recompile = False
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        compiled_losses.append(loss.item())
    return eager_losses, compiled_losses


def test_compiled_default_model_trains_like_eager_on_cpu(compiled_and_eager):
    eager, compiled = compiled_and_eager
    assert len(compiled) == 3
    for a, b in zip(eager, compiled):
        assert abs(a - b) < LOSS_TOLERANCE, (eager, compiled)
    assert compiled[-1] < compiled[0]  # it learns


RANKED_OPTIONS = {
    "shift_tokens": dict(shift_tokens=1),
    "value_residual_off": dict(add_value_residual=False),
    "gqa": dict(attn_kv_heads=1, learned_value_residual_mix=False),
    "attn_gate_values": dict(attn_gate_values=True),
}


@pytest.mark.parametrize("name", list(RANKED_OPTIONS))
def test_ranked_option_compiles_without_graph_break_errors(name):
    train = with_decoder_options(RANKED_OPTIONS[name])
    torch.manual_seed(0)
    model = train.build_model()
    x = fixed_batches(1)[0]
    eager = model(x).item()
    torch._dynamo.reset()
    compiled = prepare.compile_model(model, {"backend": "eager"})
    loss = compiled(x)
    loss.backward()
    assert abs(loss.item() - eager) < LOSS_TOLERANCE
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)

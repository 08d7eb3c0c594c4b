"""The harness's FP8 path without a GPU: prepare.convert_fp8, the hand-back checks and the scorer's
rebuild from the model spec called directly, with torchao's float8 emulation standing in for the
tensor cores."""

import pytest
import torch
from harness import train_module

import prepare

torchao_float8 = pytest.importorskip("torchao.float8")
Float8Linear = pytest.importorskip("torchao.float8.float8_linear").Float8Linear

WIDE = dict(DIM=2048, DEPTH=1, HEADS=32)  # the narrowest model whose linears qualify (>= 2048)
NARROW = dict(DIM=128, DEPTH=2, HEADS=2, BATCH_SIZE=2)  # trained with the threshold lowered to 128
EMULATED = dict(emulate=True)  # torchao's float8 emulation: the same casts, no float8 tensor cores


@pytest.fixture(scope="module")
def wide_train():
    return train_module(name="train_fp8_wide", **WIDE)


@pytest.fixture(scope="module")
def narrow_train():
    return train_module(name="train_fp8_narrow", **NARROW)


def test_fp8_converts_exactly_the_layers_the_filter_selects_at_full_width(wide_train):
    with torch.device("meta"):
        model = wide_train.build_model()
    selected = sorted(n for n, m in model.named_modules() if prepare.fp8_wants(m, n))
    assert prepare.convert_fp8(model, torchao_float8.Float8LinearConfig(**EMULATED)) == len(selected)
    float8 = sorted(n for n, m in model.named_modules() if isinstance(m, Float8Linear))
    assert float8 == selected
    assert selected and all("attn_layers" in n for n in selected)
    assert not any(isinstance(m, Float8Linear) for m in model.net.to_logits.modules())


def test_below_the_threshold_nothing_is_converted(narrow_train):
    with torch.device("meta"):
        model = narrow_train.build_model()
    assert prepare.convert_fp8(model) == 0


@pytest.fixture(scope="module")
def trained_fp8(narrow_train):
    """(model after two emulated FP8 steps, its losses, its spec), at a width the lowered threshold admits."""
    patch = pytest.MonkeyPatch()
    patch.setattr(prepare, "FP8_MIN_FEATURES", NARROW["DIM"])
    try:
        torch.manual_seed(0)
        recorder = prepare.SpecRecorder()
        model = recorder.wrap(narrow_train.build_model)()
        assert prepare.convert_fp8(model, torchao_float8.Float8LinearConfig(**EMULATED)) > 0
    finally:
        patch.undo()
    optimizer = narrow_train.build_optimizer(model)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        loss = model(torch.randint(0, 256, (2, 65), generator=generator))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    return model, losses, recorder.spec_of(model)


def test_fp8_training_steps_give_finite_losses(trained_fp8):
    _, losses, _ = trained_fp8
    assert all(torch.isfinite(torch.tensor(losses)))


def test_fp8_model_is_scored_through_its_high_precision_weights(trained_fp8):
    model, _, spec = trained_fp8
    assert any(isinstance(m, Float8Linear) for m in model.modules())
    prepare.check_library_model(model)  # torchao's conversion is the harness's own: a scored model may hold it
    scored = prepare.build_from_spec(spec, "cpu")
    assert prepare.model_layout(scored) == prepare.model_layout(model)
    scored.load_state_dict(model.state_dict())
    bpc, _ = prepare.evaluate(scored.net, torch.randint(0, 256, (3000,), dtype=torch.uint8), torch.device("cpu"))
    assert 0 < bpc < 12
    assert not any(isinstance(m, Float8Linear) for m in scored.modules())
    for (name, a), b in zip(model.state_dict().items(), scored.state_dict().values()):
        assert torch.equal(a, b), name
    x = torch.randint(0, 256, (1, 64))
    with torch.no_grad():
        plain, emulated = scored.net(x), model.net(x)
    assert torch.isfinite(plain).all()
    assert (plain - emulated).abs().max() < 0.5  # float8 rounding moves logits a little, not wholesale

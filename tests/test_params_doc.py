"""docs/adjustable_params.md is complete, accurate and usable for the installed x-transformers.

The document is parsed by labbook/optionsweep.py (Markdown tables whose first column is a
parameter name in backticks). Every parameter it lists as usable is built into a tiny CPU model with
a non-default value and trained for one step; every documented incompatibility must raise its
documented error; every constructor parameter of the installed version must appear in the document;
and the sealed path column shows what the option sweep finds for every documented keyword.
"""

from __future__ import annotations

import ast
import re

import pytest
import torch
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

from labbook.optionsweep import (
    CASES,
    CONSTRUCTOR_OF,
    CONSTRUCTORS,
    DEPTH,
    DIM,
    DOC,
    HEADS,
    INCOMPATIBLE,
    INSTALLED,
    INVENTORY,
    NOT_APPLICABLE,
    RECOMMENDED,
    REMOVED,
    ROWS,
    SEQ,
    SET_BY,
    SWEPT_ROWS,
    TEXT,
    USABLE,
    Case,
    documented_outcomes,
    resolve,
    signature_default,
    split_row,
    sweep,
)

BATCH = 2
INVENTORY_ROWS = [row for row in ROWS if row.kind in INVENTORY]
USABLE_ROWS = [row for row in ROWS if row.kind == USABLE]
INCOMPATIBLE_ROWS = [row for row in ROWS if row.kind == INCOMPATIBLE]
SET_BY_ROWS = [row for row in ROWS if row.kind == SET_BY]
REMOVED_ROWS = [row for row in ROWS if row.kind == REMOVED]
AGENTS = DOC.parents[1] / "AGENTS.md"


def python_blocks(text: str, section: str) -> list[str]:
    """Fenced ```python blocks inside one `## ` section."""
    body = text.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def parse_kwargs(cell: str) -> dict:
    """`name=value` items in backticks, values as Python literals."""
    kwargs = {}
    for item in re.findall(r"`([^`]+)`", cell):
        key, _, value = item.partition("=")
        kwargs[key.strip()] = ast.literal_eval(value.strip())
    return kwargs


def parse_error(cell: str) -> tuple[str, str]:
    """`Type: message piece` -> (exception class name, substring expected in its message)."""
    text = re.findall(r"`([^`]+)`", cell)[0]
    typ, _, message = text.partition(":")
    assert message.strip() or "bare assert" in cell, f"error cell without a message: {cell!r}"
    return typ.strip(), message.strip()


def case_for(name: str) -> Case:
    if name in CASES:
        return CASES[name]
    default = signature_default(name)
    if isinstance(default, bool):
        return Case(not default)
    pytest.fail(f"no test value for {name!r}: add a non-default value to CASES in labbook/optionsweep.py")


def config_for(name: str) -> dict:
    found = case_for(name)
    return {**found.companions, name: found.value}


def route(config: dict, pinned: dict | None = None) -> tuple[dict, dict, dict]:
    """Split keywords into (TransformerWrapper, Decoder, AutoregressiveWrapper) kwargs.

    `pinned` maps a name to the constructor of the documented row under test, so a name that
    ever exists on two constructors goes where that row says; other names follow the doc."""
    wrapper, decoder, loss = {}, {}, {}
    for key, value in config.items():
        ctor = (pinned or {}).get(key) or CONSTRUCTOR_OF.get(key, "Decoder")
        target = {"TransformerWrapper": wrapper, "AutoregressiveWrapper": loss}.get(ctor, decoder)
        target[key] = resolve(value)
    return wrapper, decoder, loss


def build(config: dict, pinned: dict | None = None) -> AutoregressiveWrapper:
    wrapper, decoder, loss = route(config, pinned)
    decoder = {"dim": DIM, "depth": DEPTH, "heads": HEADS, **decoder}
    wrapper = {"num_tokens": 256, "max_seq_len": SEQ, **wrapper}
    net = TransformerWrapper(attn_layers=Decoder(**decoder), **wrapper)
    return AutoregressiveWrapper(net, **loss)


def batch() -> torch.Tensor:
    return torch.randint(0, 256, (BATCH, SEQ), generator=torch.Generator().manual_seed(0))


def train_step(config: dict, mems: bool = False, pinned: dict | None = None) -> AutoregressiveWrapper:
    """Build, run one forward + backward, check the loss and gradients."""
    torch.manual_seed(0)
    model = build(config, pinned)
    model.train()
    x = batch()
    if mems:
        loss, (_, inter) = model(x, return_outputs=True, return_mems=True)
        assert inter.mems and all(m.shape[-2] <= config.get("max_mem_len", SEQ) for m in inter.mems)
        loss = loss + model(x, mems=inter.mems)
    else:
        loss = model(x)
    assert torch.isfinite(loss), f"loss is {loss}"
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads, "no parameter received a gradient"
    assert all(torch.isfinite(g).all() for g in grads), "non-finite gradient"
    return model


def same(a, b) -> bool:
    return type(a) is type(b) and a == b


def documented_failure(name: str, config: dict) -> tuple[str, str] | None:
    """The documented error of an incompatibility row that this configuration triggers."""
    for row in INCOMPATIBLE_ROWS:
        combined = parse_kwargs(row.cells["combined with"])
        if row.name == name and all(same(config.get(k), v) for k, v in combined.items()):
            return parse_error(row.cells["error"])
    return None


def assert_raises_documented(error: tuple[str, str], action):
    typ, message = error
    with pytest.raises(Exception) as info:
        action()
    names = [cls.__name__ for cls in type(info.value).__mro__]
    assert typ in names, f"expected {typ}, got {type(info.value).__name__}: {info.value}"
    assert message in str(info.value), f"{message!r} not in {str(info.value)!r}"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models are dominated by per-op overhead; one thread is much faster on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------------------
# The inventory is complete and correct
# ---------------------------------------------------------------------------


def test_every_constructor_parameter_is_documented():
    documented = {(row.name, row.constructor) for row in INVENTORY_ROWS}
    missing = sorted(f"{name} ({ctor})" for name, ctor in INSTALLED if (name, ctor) not in documented)
    assert not missing, f"installed parameters missing from {DOC.name}: {missing}"


def test_every_documented_parameter_exists_in_the_installed_version():
    stale = sorted(
        f"{row.name} ({row.constructor}, {row.section})"
        for row in INVENTORY_ROWS
        if (row.name, row.constructor) not in INSTALLED
    )
    assert not stale, f"documented but not accepted by the installed version: {stale}"


def test_each_parameter_is_documented_exactly_once():
    seen = [(row.name, row.constructor) for row in INVENTORY_ROWS]
    duplicates = sorted({f"{name} ({ctor})" for name, ctor in seen if seen.count((name, ctor)) > 1})
    assert not duplicates, f"listed more than once: {duplicates}"


def test_documented_defaults_match_the_installed_signatures():
    wrong = []
    for row in INVENTORY_ROWS:
        param = INSTALLED.get((row.name, row.constructor))
        if param is None:
            continue
        cell = row.cells["default"]
        if param.default is param.empty:
            ok = cell == "required"
        else:
            ok = cell.strip("`").replace('"', "'") == repr(param.default)
        if not ok:
            wrong.append(f"{row.name}: doc {cell!r}, installed {param.default!r}")
    assert not wrong, wrong


def test_counts_table_matches_the_documented_parameters():
    counts = TEXT.split("## Counts\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in counts.splitlines() if line.startswith("|")]
    header = split_row(lines[0])
    labels = {"Decoder (AttentionLayers)": "Decoder"}
    for line in lines[2:]:
        cells = dict(zip(header, split_row(line)))
        ctor = labels.get(cells["constructor"], cells["constructor"])
        if ctor not in CONSTRUCTORS:
            continue
        kinds = [row.kind for row in INVENTORY_ROWS if row.constructor == ctor]
        assert int(cells["parameters"]) == sum(1 for _, c in INSTALLED if c == ctor)
        assert int(cells["usable"]) == kinds.count(USABLE)
        assert int(cells["set by the wrapper"]) == kinds.count(SET_BY)
        assert int(cells["not applicable"]) == kinds.count(NOT_APPLICABLE)


def test_every_test_value_names_a_documented_parameter():
    documented = {row.name for row in SWEPT_ROWS}
    named = {key for name, found in CASES.items() for key in (name, *found.companions)}
    stale = sorted(named - documented)
    assert not stale, f"CASES mentions names that docs/adjustable_params.md does not list: {stale}"


# ---------------------------------------------------------------------------
# Every usable parameter builds and trains; documented failures fail as documented
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("row", USABLE_ROWS, ids=lambda row: row.name)
def test_every_documented_parameter_builds_and_trains(row):
    name, pinned = row.name, {row.name: row.constructor}
    config = config_for(name)
    default = signature_default(name, row.constructor)
    assert not same(config[name], default), f"test value for {name} equals its default"
    error = documented_failure(name, config)
    if error is not None:
        assert_raises_documented(error, lambda: train_step(config, pinned=pinned))
        return
    train_step(config, mems=case_for(name).mems, pinned=pinned)


@pytest.mark.parametrize("row", USABLE_ROWS, ids=lambda row: row.name)
def test_every_documented_parameter_keeps_the_model_causal(row):
    """Changing the last byte must not change any earlier prediction."""
    name = row.name
    config = config_for(name)
    if documented_failure(name, config) is not None:
        pytest.skip("documented as failing to build or train")
    torch.manual_seed(0)
    net = build(config, {name: row.constructor}).net.eval()
    kwargs = {"recycle_steps": 2} if config.get("recycling") else {}
    x = batch()
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % 256
    with torch.no_grad():
        torch.manual_seed(1)
        a = net(x, **kwargs)
        torch.manual_seed(1)
        b = net(y, **kwargs)
    torch.testing.assert_close(a[:, :-1], b[:, :-1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "row",
    INCOMPATIBLE_ROWS,
    ids=[f"{row.name}+{row.cells['combined with']}".replace("`", "") for row in INCOMPATIBLE_ROWS],
)
def test_every_documented_incompatibility_raises_its_documented_error(row):
    combined = parse_kwargs(row.cells["combined with"])
    unknown = [key for key in (row.name, *combined) if key not in CONSTRUCTOR_OF]
    assert not unknown, f"incompatibility names undocumented parameters: {unknown}"
    config = {**config_for(row.name), **combined}
    assert_raises_documented(parse_error(row.cells["error"]), lambda: train_step(config))


# values used to show that the wrapper-supplied parameters cannot be passed
SET_BY_PROBES = {
    "causal": True,
    "attn_dim": DIM,
    "attn_heads": HEADS,
    "attn_causal": True,
    "attn_qkv_receive_diff_residuals": True,
    "attn_learned_value_residual_mix": True,
    "attn_rotate_num_heads": 1,
    "ff_dim": DIM,
}


@pytest.mark.parametrize("row", [row for row in SET_BY_ROWS if row.cells["error"] != "—"], ids=lambda row: row.name)
def test_parameters_set_by_the_wrapper_fail_as_documented(row):
    assert row.name in SET_BY_PROBES, f"add a probe value for {row.name}"
    config, pinned = {row.name: SET_BY_PROBES[row.name]}, {row.name: row.constructor}
    assert_raises_documented(parse_error(row.cells["error"]), lambda: train_step(config, pinned=pinned))


@pytest.mark.parametrize("row", REMOVED_ROWS, ids=lambda row: row.name)
def test_removed_parameters_are_rejected_by_the_installed_version(row):
    assert (row.name, row.constructor) not in INSTALLED
    config, pinned = {row.name: True}, {row.name: row.constructor}
    error = ("AssertionError", "unrecognized kwargs")
    assert_raises_documented(error, lambda: train_step(config, pinned=pinned))


def small_decoder(**kwargs):
    """The recommended Decoder with its width and depth shrunk; every other keyword kept."""
    return Decoder(**{**kwargs, "dim": 64, "depth": 2})


@pytest.mark.parametrize("index", range(len(python_blocks(TEXT, RECOMMENDED))))
def test_recommended_combinations_build_and_train(index):
    code = python_blocks(TEXT, RECOMMENDED)[index]
    scope = {
        "AutoregressiveWrapper": AutoregressiveWrapper,
        "TransformerWrapper": TransformerWrapper,
        "Decoder": small_decoder,
    }
    torch.manual_seed(0)
    exec(code, scope)
    model = scope["model"]
    assert isinstance(model, AutoregressiveWrapper)
    loss = model(torch.randint(0, 256, (2, SEQ)))
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in model.parameters())


# ---------------------------------------------------------------------------
# The sealed path column: what the option sweep finds, for every documented keyword
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def outcomes():
    """The sweep's outcome of every row of the swept tables (tiny train.py model, small windows)."""
    return sweep()


def test_the_doc_shows_what_the_sweep_finds_for_every_documented_option(outcomes):
    documented = documented_outcomes()
    stale = [f"{name} ({ctor}): doc {documented.get((name, ctor))!r}, sweep {found!r}"
             for (name, ctor), found in outcomes.items() if documented.get((name, ctor)) != found]  # fmt: skip
    assert not stale, "run `python tools/params_doc.py --write`:\n" + "\n".join(stale)


def test_every_outcome_is_one_of_the_three(outcomes):
    odd = {key: found for key, found in outcomes.items() if not re.match(r"(scores|refused: .+|crashes\b)", found)}
    assert not odd, odd


def test_options_that_leak_the_future_are_refused_by_the_sweep(outcomes):
    leaking = [row for row in ROWS if row.kind == NOT_APPLICABLE and "Invalid for a causal LM" in row.cells["reason"]]
    assert leaking
    passed = [row.name for row in leaking if not outcomes[(row.name, row.constructor)].startswith("refused")]
    assert not passed, f"leaking options the sweep did not refuse: {passed}"


def test_agents_pitfalls_name_every_option_behind_a_usable_options_crash(outcomes):
    pitfalls = AGENTS.read_text().split("### Pitfalls", 1)[1].split("\n## ", 1)[0]
    named = {name for row in USABLE_ROWS for name in re.findall(r"`(\w+)=", outcomes[(row.name, row.constructor)])}
    missing = sorted(name for name in named if not re.search(rf"`{name}[`=]", pitfalls))
    assert not missing, f"AGENTS.md's pitfalls do not name {missing}"

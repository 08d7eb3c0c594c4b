"""docs/adjustable_params.md is complete, accurate and usable for the installed x-transformers.

The document is parsed here (Markdown tables whose first column is a parameter name in
backticks). Every parameter it lists as usable is built into a tiny CPU model with a non-default
value and trained for one step; every documented incompatibility must raise its documented error;
and every constructor parameter of the installed version must appear in the document.
"""

from __future__ import annotations

import ast
import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper
from x_transformers.x_transformers import Attention, AttentionLayers, FeedForward

DOC = Path(__file__).resolve().parents[1] / "docs" / "adjustable_params.md"

# ---------------------------------------------------------------------------
# Parsing the document
# ---------------------------------------------------------------------------

USABLE = "usable"
SET_BY = "Set by the wrapper itself"
NOT_APPLICABLE = "Not applicable to a decoder-only byte model"
REMOVED = "Removed in this version"
INCOMPATIBLE = "Incompatible combinations"
RECOMMENDED = "Recommended combinations"
INVENTORY = (USABLE, SET_BY, NOT_APPLICABLE)

# user-facing constructor name -> (class whose __init__ holds the parameters, keyword prefix)
CONSTRUCTORS = {
    "TransformerWrapper": (TransformerWrapper, ""),
    "Decoder": (AttentionLayers, ""),
    "Attention": (Attention, "attn_"),
    "FeedForward": (FeedForward, "ff_"),
    "AutoregressiveWrapper": (AutoregressiveWrapper, ""),
}

NAME_CELL = re.compile(r"^`([A-Za-z_][A-Za-z0-9_]*)`$")


@dataclass(frozen=True)
class Row:
    section: str  # the `## ` heading the table sits under
    cells: dict  # header -> cell text

    @property
    def name(self) -> str:
        match = NAME_CELL.match(self.cells["parameter"])
        assert match, f"first column must be a backticked name, got {self.cells['parameter']!r}"
        return match.group(1)

    @property
    def kind(self) -> str:
        special = (SET_BY, NOT_APPLICABLE, REMOVED, INCOMPATIBLE)
        return self.section if self.section in special else USABLE

    @property
    def constructor(self) -> str:
        cell = self.cells["constructor"]
        for ctor in ("AutoregressiveWrapper", "TransformerWrapper", "Attention", "FeedForward"):
            if ctor in cell:
                return ctor
        assert "Decoder" in cell, f"unknown constructor {cell!r} for {self.name}"
        return "Decoder"


def split_row(line: str) -> list[str]:
    """Cells of a Markdown table row; `\\|` inside a cell is an escaped pipe."""
    inner = line.strip().removeprefix("|").removesuffix("|")
    return [cell.strip().replace("\\|", "|") for cell in re.split(r"(?<!\\)\|", inner)]


def parse_tables(text: str) -> list[Row]:
    """Rows of every table whose header starts with `parameter`, tagged with their section."""
    rows, section, header = [], "", None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
        elif not line.startswith("|"):
            header = None
        elif header is None:
            header = split_row(line)
        elif not set(line.replace("|", "").strip()) <= set("-: "):
            if header[0] == "parameter":
                rows.append(Row(section, dict(zip(header, split_row(line)))))
    return rows


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


TEXT = DOC.read_text(encoding="utf-8")
ROWS = parse_tables(TEXT)
INVENTORY_ROWS = [row for row in ROWS if row.kind in INVENTORY]
USABLE_ROWS = [row for row in ROWS if row.kind == USABLE]
INCOMPATIBLE_ROWS = [row for row in ROWS if row.kind == INCOMPATIBLE]
SET_BY_ROWS = [row for row in ROWS if row.kind == SET_BY]
REMOVED_ROWS = [row for row in ROWS if row.kind == REMOVED]
# where each documented keyword goes (the doc's constructor column decides)
CONSTRUCTOR_OF = {row.name: row.constructor for row in INVENTORY_ROWS}


def installed_parameters() -> dict[tuple[str, str], inspect.Parameter]:
    """(name as the user passes it, constructor) -> parameter, for the installed version."""
    params = {}
    for ctor, (cls, prefix) in CONSTRUCTORS.items():
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            params[(prefix + name, ctor)] = param
    return params


INSTALLED = installed_parameters()

# ---------------------------------------------------------------------------
# Test-side values: a non-default value per usable parameter, plus companions it needs
# ---------------------------------------------------------------------------

DIM, HEADS, DEPTH, SEQ, BATCH = 32, 2, 2, 32, 2
INNER = HEADS * 64  # attention inner width with the default attn_dim_head


class Fresh:
    """A module-valued setting: built anew for every model."""

    def __init__(self, make):
        self.make = make

    def __repr__(self):
        return "Fresh(...)"


def shifted_softmax(logits):
    """A stand-in custom attention function (softmax with one extra implicit zero logit)."""
    exp = (logits - logits.amax(dim=-1, keepdim=True)).exp()
    return exp / (exp.sum(dim=-1, keepdim=True) + 1e-3)


def gru():
    return nn.GRU(DIM, INNER, batch_first=True)


@dataclass
class Case:
    value: object
    companions: dict = field(default_factory=dict)
    mems: bool = False  # also run a second segment with Transformer-XL memories


def case(value, mems=False, **companions):
    return Case(value, companions, mems)


HYBRID = {"attn_hybrid_module": Fresh(gru), "attn_hybrid_fold_axial_dim": 1}
LOOPED = {"looped": True, "pre_and_post_norm": True}

# Booleans that need nothing else are flipped automatically and are not listed here.
CASES = {
    # layer structure
    "dim": case(48),
    "depth": case(3),
    "heads": case(4),
    "custom_layers": case(("a", "f", "a", "f", "f"), depth=None),
    "layers_execute_order": case((0, 1, 2, 3, 2, 3)),
    "sandwich_coef": case(1),
    "par_ratio": case(2),
    "shift_tokens": case(1),
    # normalization
    "dynamic_tanh_init_alpha": case(0.5, use_dynamic_tanh=True),
    "softclamp_output_value": case(5.0, softclamp_output=True),
    "attn_qk_norm_groups": case(4, attn_qk_norm=True),
    "attn_qk_norm_scale": case(5, attn_qk_norm=True),
    "attn_qk_norm_dim_scale": case(True, attn_qk_norm=True),
    # feedforward
    "ff_mult": case(2),
    "ff_glu_mult_bias": case(True, ff_glu=True),
    "ff_custom_activation": case(Fresh(nn.Tanh)),
    "ff_softclamp_value": case(10.0),
    "ff_glu_gate_softclamp_value": case(10.0, ff_glu=True),
    # attention
    "attn_dim_head": case(16),
    "attn_value_dim_head": case(16),
    "attn_kv_heads": case(1),
    "attn_project_out": case(False, attn_dim_head=DIM // HEADS),
    "attn_attend_sdp_kwargs": case(
        {"enable_flash": False, "enable_math": True, "enable_mem_efficient": False},
        attn_flash=True,
    ),
    "attn_sparse_topk": case(4),
    "attn_sparse_topk_straight_through": case(True, attn_sparse_topk=4),
    "attn_gumbel_softmax_temp": case(0.5, attn_gumbel_softmax=True),
    "attn_gumbel_softmax_hard": case(False, attn_gumbel_softmax=True),
    "attn_custom_attn_fn": case(shifted_softmax),
    "attn_logit_softclamp_value": case(20.0, attn_softclamp_logits=True),
    "attn_laser_softclamp_value": case(5.0, attn_laser=True),
    "attn_max_attend_past": case(8),
    "attn_gate_values_rank": case(8, attn_gate_values=True),
    "attn_gate_values_headwise": case(True, attn_gate_values=True),
    "attn_output_gate_rank": case(8, attn_output_gate=True),
    "attn_output_gate_headwise": case(True, attn_output_gate=True),
    "attn_low_rank_silu_gates": case(False, attn_gate_values=True, attn_gate_values_rank=8),
    "attn_swiglu_values": case(True, attn_gate_values=True),
    "attn_use_latent_q": case(True, attn_dim_latent_q=16),
    "attn_dim_latent_q": case(16, attn_use_latent_q=True),
    "attn_use_latent_kv": case(True, attn_dim_latent_kv=16),
    "attn_dim_latent_kv": case(16, attn_use_latent_kv=True),
    "attn_latent_rope_subheads": case(1, attn_use_latent_kv=True, attn_dim_latent_kv=16, rotary_pos_emb=True),
    "attn_hybrid_module": case(Fresh(gru), attn_hybrid_fold_axial_dim=1),
    "attn_hybrid_fold_axial_dim": case(4, attn_hybrid_module=Fresh(gru)),
    "attn_hybrid_learned_mix": case(True, **HYBRID),
    # positions
    "disable_abs_pos_emb": case(True),
    "rotary_emb_dim": case(16, rotary_pos_emb=True, verbose=False),
    "rotary_xpos_scale_base": case(256, rotary_xpos=True),
    "rotary_interpolation_factor": case(2.0, rotary_pos_emb=True),
    "rotary_base_rescale_factor": case(2.0, rotary_pos_emb=True),
    "rotate_num_heads": case(1, rotary_pos_emb=True),
    "polar_bias_uniform_init": case(True, polar_pos_emb=True),
    "alibi_num_heads": case(1, alibi_pos_bias=True),
    "rel_pos_num_buckets": case(16, rel_pos_bias=True),
    "rel_pos_max_distance": case(64, rel_pos_bias=True),
    "dynamic_pos_bias_log_distance": case(True, dynamic_pos_bias=True),
    "dynamic_pos_bias_mlp_depth": case(1, dynamic_pos_bias=True),
    "dynamic_pos_bias_norm": case(True, dynamic_pos_bias=True),
    "rel_pos_kwargs": case({"slopes": [0.5, 0.25]}, alibi_pos_bias=True),
    "attn_data_dependent_alibi_per_row": case(True, attn_data_dependent_alibi=True),
    "attn_data_dependent_alibi_per_row_dim_head": case(
        4, attn_data_dependent_alibi=True, attn_data_dependent_alibi_per_row=True
    ),
    "attn_data_dependent_alibi_kwargs": case({"post_log_scale": 0.5}, attn_data_dependent_alibi=True),
    "attn_rel_proj_num_distance_basis": case(4, attn_use_rel_proj_pos_bias=True),
    "attn_rel_proj_max_dist": case(8, attn_use_rel_proj_pos_bias=True),
    "attn_cope_max_pos": case(8, attn_use_cope=True),
    "attn_cope_soft_onehot_pos": case(True, attn_use_cope=True),
    "attn_cope_talking_heads": case(True, attn_use_cope=True),
    # regularization
    "emb_dropout": case(0.1),
    "layer_dropout": case(0.1),
    "attn_dropout": case(0.1),
    "attn_sublayer_dropout": case(0.1),
    "ff_dropout": case(0.1),
    "ff_sublayer_dropout": case(0.1),
    # residuals
    "scale_residual_constant": case(0.5),
    "layerscale_init_value": case(0.1, use_layerscale=True),
    "learned_value_residual_mix": case(False, add_value_residual=True),
    "num_residual_streams": case(2),
    "hyper_conn_sinkhorn_iters": case(2, num_residual_streams=2),
    "qkv_receive_diff_residuals": case(True, num_residual_streams=2),
    "layer_integrate_use_softmax": case(False, integrate_layers=True),
    "attn_residuals_last_output_as_query": case(True, attn_aggregated_residuals=True),
    "attn_aggregated_residual_kwargs": case({"value_rmsnorm": True}, attn_aggregated_residuals=True),
    "learned_reinject_input_gate": case(True, reinject_input=True),
    # memory
    "attn_num_mem_kv": case(4),
    "num_memory_tokens": case(2),
    "memory_tokens_interspersed_every": case(8, num_memory_tokens=2),
    "max_mem_len": case(16, mems=True),
    "shift_mem_down": case(1, mems=True, max_mem_len=16),
    # TransformerWrapper
    "max_seq_len": case(2 * SEQ),
    "emb_dim": case(16),
    "emb_frac_gradient": case(0.1),
    "token_emb": case(Fresh(lambda: nn.Embedding(256, DIM))),
    "to_logits": case(Fresh(lambda: nn.Linear(DIM, 256))),
    "mixture_of_softmax_k": case(2, mixture_of_softmax=True),
    "train_max_recycle_steps": case(2, recycling=True),
    "looped": case(True, pre_and_post_norm=True),
    "max_looped_steps": case(2, **LOOPED),
    "attn_z_loss_weight": case(1e-3),
    # AutoregressiveWrapper
    "ignore_index": case(0),
    "pad_value": case(1),
    "mask_prob": case(0.15),
    "next_embed_loss_weight": case(0.5, add_continuous_pred_head=True),
    "looped_loss_threshold_exit": case(0.1, **LOOPED),
    "looped_loss_slope": case(10.0, **LOOPED),
    "looped_exit_loss_weight": case(0.5, **LOOPED),
}


def signature_default(name: str, ctor: str | None = None):
    param = INSTALLED.get((name, ctor or CONSTRUCTOR_OF.get(name)))
    return param.default if param is not None else inspect.Parameter.empty


def case_for(name: str) -> Case:
    if name in CASES:
        return CASES[name]
    default = signature_default(name)
    if isinstance(default, bool):
        return Case(not default)
    pytest.fail(f"no test value for {name!r}: add a non-default value to CASES")


def config_for(name: str) -> dict:
    found = case_for(name)
    return {**found.companions, name: found.value}


def resolve(value):
    return value.make() if isinstance(value, Fresh) else value


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


def test_every_test_value_names_a_documented_usable_parameter():
    usable = {row.name for row in USABLE_ROWS}
    named = {key for name, found in CASES.items() for key in (name, *found.companions)}
    stale = sorted(named - usable)
    assert not stale, f"CASES mentions names that are not documented as usable: {stale}"


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

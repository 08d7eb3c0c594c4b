"""The option sweep behind docs/adjustable_params.md's `sealed path` column: every documented
keyword, added to a tiny copy of the shipped train.py's model, goes through what a run's early
check and the sealed scorer do (build under the spec recorder, rebuild from the spec, compare the
eval-mode losses, evaluate with the leak probes), and ends in one of three outcomes: it scores, the
harness refuses it (with the reason), or the library crashes (with the options behind it).

    python tools/params_doc.py           # each option's outcome
    python tools/params_doc.py --write   # rewrite the doc's column from the sweep
    python tools/params_doc.py --check   # exit 1 when the doc differs from the sweep
"""

import argparse
import contextlib
import importlib
import inspect
import io
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from x_transformers import AutoregressiveWrapper, TransformerWrapper
from x_transformers.x_transformers import Attention, AttentionLayers, FeedForward

import prepare

REPO = Path(prepare.__file__).resolve().parent
DOC = REPO / "docs" / "adjustable_params.md"
TRAIN = REPO / "train.py"
COLUMN = "sealed path"  # the doc's column the sweep writes

# ---------------------------------------------------------------------------
# The document's tables
# ---------------------------------------------------------------------------

USABLE = "usable"
SET_BY = "Set by the wrapper itself"
NOT_APPLICABLE = "Not applicable to a decoder-only byte model"
REMOVED = "Removed in this version"
INCOMPATIBLE = "Incompatible combinations"
RECOMMENDED = "Recommended combinations"
INVENTORY = (USABLE, SET_BY, NOT_APPLICABLE)
SWEPT = (*INVENTORY, REMOVED)  # the tables that carry the sealed path column

# user-facing constructor name -> (class whose __init__ holds the parameters, keyword prefix)
CONSTRUCTORS = {
    "TransformerWrapper": (TransformerWrapper, ""),
    "Decoder": (AttentionLayers, ""),
    "Attention": (Attention, "attn_"),
    "FeedForward": (FeedForward, "ff_"),
    "AutoregressiveWrapper": (AutoregressiveWrapper, ""),
}
CALLED = {"Attention": "Decoder", "FeedForward": "Decoder"}  # where a constructor's keywords are passed

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


def is_separator(line: str) -> bool:
    return set(line.replace("|", "").strip()) <= set("-: ")


def table_lines(text: str):
    """(line, section, role, header) for every line of `text`: role is "header", "separator", "row" or
    "" (not in a table); header is the cells of the table's first line."""
    section, header = "", None
    for line in text.splitlines():
        if line.startswith("## "):
            section, header = line[3:].strip(), None
            yield line, section, "", None
        elif not line.startswith("|"):
            header = None
            yield line, section, "", None
        elif header is None:
            header = split_row(line)
            yield line, section, "header", header
        else:
            yield line, section, "separator" if is_separator(line) else "row", header


def parse_tables(text: str) -> list[Row]:
    """Rows of every table whose header starts with `parameter`, tagged with their section."""
    return [
        Row(section, dict(zip(header, split_row(line))))
        for line, section, role, header in table_lines(text)
        if role == "row" and header[0] == "parameter"
    ]


def installed_parameters() -> dict:
    """(name as the user passes it, constructor) -> inspect.Parameter, for the installed version."""
    params = {}
    for ctor, (cls, prefix) in CONSTRUCTORS.items():
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name == "self" or param.kind in (param.VAR_KEYWORD, param.VAR_POSITIONAL):
                continue
            params[(prefix + name, ctor)] = param
    return params


TEXT = DOC.read_text(encoding="utf-8")
ROWS = parse_tables(TEXT)
SWEPT_ROWS = [row for row in ROWS if row.kind in SWEPT]
CONSTRUCTOR_OF = {row.name: row.constructor for row in ROWS if row.kind in INVENTORY}
INSTALLED = installed_parameters()

# ---------------------------------------------------------------------------
# A non-default value for each documented keyword, with the companions it needs
# ---------------------------------------------------------------------------

DIM, HEADS, DEPTH, SEQ, BATCH = 32, 2, 2, 32, 2
INNER = HEADS * 64  # attention inner width with the default attn_dim_head


class Fresh:
    """A module-valued setting: built anew for every model (inside the recorded build)."""

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
    # set by the wrapper: what passing them anyway does
    "num_tokens": case(128),
    "causal": case(True),
    "attn_dim": case(DIM),
    "attn_heads": case(HEADS),
    "attn_causal": case(True),
    "attn_qkv_receive_diff_residuals": case(True),
    "attn_learned_value_residual_mix": case(True),
    "attn_rotate_num_heads": case(1),
    "ff_dim": case(DIM),
    # not applicable to a decoder-only byte model: what they do to it
    "embed_num_tokens": case({"segment": 2}),
    "logits_dim": case(128),
    "num_output_heads": case(2),
    "num_cls_tokens": case(2, use_cls_token=True),
    "num_pooled_tokens": case(2, attn_pool=True),
    "attn_pool_depth": case(2, attn_pool=True),
    "dim_pooled_tokens": case(16, attn_pool=True),
    "cross_attn_tokens_dropout": case(0.1, cross_attend=True),
    "dim_condition": case(16, use_adaptive_layernorm=True),
    "adaptive_condition_mlp_expansion": case(2, use_adaptive_layernorm=True, adaptive_condition_mlp=True),
    "residual_fn_kwargs": case({"init_alpha": 0.5}, mv_split_residual=True),
    "attn_dim_context": case(16),
    "attn_dim_out": case(16),
    "attn_hybrid_mask_kwarg": case("mask", **HYBRID),
    "ff_dim_out": case(16),
    # removed in this version
    "resi_dual": case(True),
    "resi_dual_scale": case(0.5),
}
BASE_ITSELF = ("attn_layers", "net")  # the modules the base passes: swept as the base model


def signature_default(name: str, ctor: str | None = None):
    param = INSTALLED.get((name, ctor or CONSTRUCTOR_OF.get(name)))
    return param.default if param is not None else inspect.Parameter.empty


def case_for(name: str, ctor: str | None = None) -> Case:
    """The value a keyword is tried with; None when there is none."""
    if name in CASES:
        return CASES[name]
    default = signature_default(name, ctor)
    return Case(not default) if isinstance(default, bool) else None


def config_for(name: str, ctor: str | None = None) -> dict:
    found = case_for(name, ctor)
    return {**found.companions, name: found.value}


# ---------------------------------------------------------------------------
# The base: the shipped train.py's model, shrunk
# ---------------------------------------------------------------------------


def train_spec(path=TRAIN) -> dict:
    """The spec train.py's build_model() records, built on the meta device (no weights, no time)."""
    module = prepare.source_module(Path(path).read_text(), "train_for_the_option_sweep")
    recorder = prepare.SpecRecorder()
    with torch.device("meta"):
        model = recorder.wrap(module.build_model)()
    return recorder.nodes[model]


def tiny(spec: dict) -> dict:
    """The spec with the Decoder's width, depth and heads and the wrapper's max_seq_len made tiny."""
    sizes = {"Decoder": dict(dim=DIM, depth=DEPTH, heads=HEADS), "TransformerWrapper": dict(max_seq_len=SEQ)}

    def shrunk(node):
        if isinstance(node, list):
            return [shrunk(v) for v in node]
        if not isinstance(node, dict):
            return node
        node = {k: shrunk(v) for k, v in node.items()}
        for key, value in sizes.get(str(node.get("call", "")).rpartition(":")[2], {}).items():
            assert key in node["kwargs"], f"train.py's {node['call']} has no {key}=: update the sweep's base"
            node["kwargs"][key] = value
        return node

    return shrunk(spec)


def resolve(value):
    return value.make() if isinstance(value, Fresh) else value


def constructed(node, extra):
    """The module a spec node describes, built by calling its classes (so a SpecRecorder sees each
    call), with `extra[class name]` keywords added to that class's call."""
    if isinstance(node, list):
        return [constructed(v, extra) for v in node]
    if not isinstance(node, dict):
        return node
    if "tuple" in node:
        return tuple(constructed(v, extra) for v in node["tuple"])
    if "dict" in node:
        return {k: constructed(v, extra) for k, v in node["dict"].items()}
    if "float" in node:
        return float(node["float"])
    module_name, _, qualname = node["call"].partition(":")
    cls = getattr(importlib.import_module(module_name), qualname)
    kwargs = {k: constructed(v, extra) for k, v in node["kwargs"].items()}
    kwargs.update({k: resolve(v) for k, v in extra.get(qualname, {}).items()})
    return cls(*constructed(node["args"], extra), **kwargs)


def routed(config: dict, pinned: dict) -> dict:
    """{class name: keywords} for a configuration: the doc's constructor column decides."""
    extra = {}
    for key, value in config.items():
        ctor = pinned.get(key) or CONSTRUCTOR_OF.get(key, "Decoder")
        extra.setdefault(CALLED.get(ctor, ctor), {})[key] = value
    return extra


# ---------------------------------------------------------------------------
# The sweep
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def small_windows():
    """The evaluation's code at SEQ-byte windows and BATCH-row batches (the scorer's: 1024 x 16),
    on one CPU thread: each option takes milliseconds, not seconds."""
    saved = prepare.MAX_SEQ_LEN, prepare.EVAL_BATCH_SIZE, torch.get_num_threads()
    prepare.MAX_SEQ_LEN, prepare.EVAL_BATCH_SIZE = SEQ, BATCH
    torch.set_num_threads(1)
    try:
        yield
    finally:
        prepare.MAX_SEQ_LEN, prepare.EVAL_BATCH_SIZE = saved[:2]
        torch.set_num_threads(saved[2])


def first_clause(message: str) -> str:
    return message.removeprefix("build_model(): ").split(": ")[0]


def outcome(base: dict, config: dict, pinned: dict, data) -> str:
    """What the sealed path does with `base` plus `config`: `scores`, `refused: ...` or `crashes: ...`."""
    torch.manual_seed(0)
    warnings = []
    recorder = prepare.SpecRecorder()

    def check(model, spec):
        warnings.append(prepare.check_scorable(model, spec, data, torch.device("cpu")))

    build = recorder.wrap(lambda: constructed(base, routed(config, pinned)), check=check)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the library's construction notices
            build()
    except prepare.LibraryFailure as e:
        kind = e.reason.split(":")[0]
        return f"crashes: {' + '.join(e.names)} ({kind})" if e.names else f"crashes ({kind})"
    except prepare.HarnessError as e:
        return f"refused: {first_clause(str(e))}"
    return "scores, flagged state_not_in_spec" if any(warnings) else "scores"


def sweep(rows=None, train_py=TRAIN) -> dict:
    """{(name, constructor): outcome} for every swept row of the doc (or `rows`)."""
    base = tiny(train_spec(train_py))
    data = torch.randint(0, 256, (prepare.CHECK_WINDOWS * SEQ + 1,), generator=torch.Generator().manual_seed(0))
    outcomes = {}
    with small_windows():
        for row in SWEPT_ROWS if rows is None else rows:
            config = {} if row.name in BASE_ITSELF else config_for(row.name, row.constructor)
            outcomes[(row.name, row.constructor)] = outcome(base, config, {row.name: row.constructor}, data)
    return outcomes


# ---------------------------------------------------------------------------
# The doc's column
# ---------------------------------------------------------------------------


def row_line(cells) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def with_outcomes(text: str, outcomes: dict) -> str:
    """The doc with the sealed path column of every swept table set (added where missing)."""
    lines = []
    for line, section, role, header in table_lines(text):
        swept = header is not None and header[0] == "parameter" and Row(section, {}).kind in SWEPT
        if role == "header" and swept and COLUMN not in header:
            header.append(COLUMN)  # the same list the table's later lines are handed
            line = row_line(header)
        elif role == "separator" and swept:
            line = row_line(["---"] * len(header))
        elif role == "row" and swept:
            cells = dict(zip(header, split_row(line)))
            row = Row(section, cells)
            cells[COLUMN] = outcomes[(row.name, row.constructor)]
            line = row_line([cells[h] for h in header])
        lines.append(line)
    return "\n".join(lines) + "\n"


def documented_outcomes(text: str = TEXT) -> dict:
    return {(row.name, row.constructor): row.cells.get(COLUMN) for row in parse_tables(text) if row.kind in SWEPT}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], prog="tools/params_doc.py")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--write", action="store_true", help=f"rewrite {DOC.name}'s `{COLUMN}` column")
    action.add_argument("--check", action="store_true", help="exit 1 when the doc differs from the sweep")
    args = parser.parse_args(argv)
    outcomes = sweep()
    if args.write:
        DOC.write_text(with_outcomes(TEXT, outcomes), encoding="utf-8")
        print(f"{DOC.relative_to(REPO)}: {len(outcomes)} outcomes written")
        return 0
    if args.check:
        documented = documented_outcomes()
        stale = [f"{name}: doc {documented.get(key)!r}, sweep {found!r}" for key, found in outcomes.items()
                 if documented.get(key) != found for name in [key[0]]]  # fmt: skip
        print("\n".join(stale) or f"{DOC.relative_to(REPO)} shows what the sweep finds")
        return 1 if stale else 0
    for (name, ctor), found in outcomes.items():
        print(f"{name:45s} {ctor:22s} {found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

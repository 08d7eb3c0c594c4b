"""Write the facts about this machine into AGENTS.md, so the agent plans with real numbers.

    python tools/machine.py                   # measure and rewrite the machine block of AGENTS.md
    python tools/machine.py --print           # print the block, change nothing
    python tools/machine.py --seconds 60      # a longer throughput measurement (default 30 s)
    python tools/machine.py --no-measure      # facts and model sizes only

On a GPU it runs train.py as it stands for a short budget (AR_TIME_BUDGET) and reads
tokens_per_sec from its summary; the sizing table then converts that throughput into the tokens
each model size would see in the 300 s budget. The table holds train.py's own size (its
parameters counted by building its model on the meta device) and a few sizes around it. On a
CPU machine it says so and measures nothing (--cpu measures there anyway: minutes at real sizes).
A measurement that cannot be taken is one line, never a traceback.

The table also predicts each size's peak memory and the micro-batch the harness would fit
(prepare.Run.fit_micro_batch: the largest divisor of the per-GPU batch whose forward and backward
leave room for three more copies of the weights, under 95% of the card). Peak = FIXED_BYTES_PER_PARAM
x params (FP32 weights and gradients, BF16 weight copies, the optimizer's three copies) plus
activations x micro-batch. Activations per sequence are measured on a GPU (one forward and backward
of one and of two sequences of TRAIN_SEQ_LEN at train.py's size under autocast: the difference in
torch.cuda.max_memory_allocated), or off the GPU estimated from the bytes autograd saves in one
forward at a short length under CPU BF16 autocast, scaled to TRAIN_SEQ_LEN. Other sizes scale
train.py's figure by dim x depth.
"""

import argparse
import contextlib
import os
import platform
import subprocess
import sys
import tempfile
from importlib.metadata import version
from pathlib import Path

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import prepare
from labbook.runlog import crash_reason, parse_summary

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN MACHINE (written by python tools/machine.py) -->"
END = "<!-- END MACHINE -->"
WIDTHS = {0.5: (0.75, 1.0), 0.75: (1.0,), 1.0: (0.75, 1.0, 1.5), 1.5: (1.0, 1.5), 2.0: (1.0, 1.5)}  # x DIM: x DEPTH
MEASURE_TIMEOUT = 600
FIXED_BYTES_PER_PARAM = 4 + 4 + 2 + 3 * 4  # FP32 weights, FP32 gradients, BF16 copies, optimizer (harness rule)
CARD_FILL = prepare.CARD_FILL  # prepare.Run.leaves_room_for_optimizer: the peak plus the optimizer under 95%
REFERENCE_CARDS_GB = (8, 12, 16, 24, 80)  # off the GPU: the micro-batch on cards of these sizes (GiB)
ESTIMATE_SEQ_LEN = 32  # the short length the CPU count runs at (activations scale linearly in length)


class MeasureError(Exception):
    """Why the throughput run gave no figure, in one line."""


def load_train(path=None):
    """train.py's knobs and build_model, from its text (prepare.source_module: no path import)."""
    path = Path(path) if path else REPO / "train.py"
    return prepare.source_module(path.read_text(), "train_for_machine")


def machine_facts(train=None):
    facts = {
        "Python": platform.python_version(),
        "torch": torch.__version__,
        "x-transformers": version("x-transformers"),
        "CPU cores": os.cpu_count(),
    }
    if not torch.cuda.is_available():
        facts["GPU"] = "none (CPU machine: results here are not comparable with GPU runs)"
        return facts
    props = torch.cuda.get_device_properties(0)
    major, minor = props.major, props.minor
    peak = prepare.gpu_peak_tflops(props.name)
    facts.update(
        {
            "GPU": f"{props.name} (x{torch.cuda.device_count()})",
            "VRAM": f"{props.total_memory / 2**30:.1f} GiB",
            "compute capability": f"{major}.{minor}",
            "BF16": "yes" if torch.cuda.is_bf16_supported() else "no",
            "FP8 (torchao float8, USE_FP8=1)": "yes" if (major, minor) >= (8, 9) else "no (needs 8.9+)",
            "dense BF16 peak": f"{peak:.0f} TFLOP/s" if peak else "unknown card: add it to GPU_PEAK_TFLOPS",
        }
    )
    return facts


def one_line(text, limit=300):
    """The last non-empty line of `text`, shortened: what a failure message keeps."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "no output"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def measure_default(seconds, data=None, train_path=None):
    """The summary of train.py as it stands, run for `seconds` of training in a scratch folder
    (its metrics and checkpoint go there). Raises MeasureError with one line on any failure."""
    train_path = Path(train_path) if train_path else REPO / "train.py"
    with tempfile.TemporaryDirectory(prefix="machine-") as scratch:
        env = dict(os.environ, AR_TIME_BUDGET=str(seconds))
        env.pop("AR_STEPS", None)  # exclusive with AR_TIME_BUDGET
        env.update(AR_METRICS=str(Path(scratch) / "metrics.jsonl"), AR_CHECKPOINT=str(Path(scratch) / "checkpoint.pt"))
        if data:
            env["AR_DATA"] = str(data)
        try:
            proc = subprocess.run(
                [sys.executable, str(train_path)],
                cwd=train_path.parent,
                env=env,
                capture_output=True,
                text=True,
                timeout=MEASURE_TIMEOUT,
            )
        except subprocess.TimeoutExpired:
            raise MeasureError(f"{train_path.name} did not finish within {MEASURE_TIMEOUT} s") from None
        except OSError as e:
            raise MeasureError(f"could not start {train_path.name}: {e}") from None
    summary = parse_summary(proc.stdout)  # the parser `record` uses
    if proc.returncode != 0 or "tokens_per_sec" not in summary:
        reason = crash_reason(proc.stdout) or one_line(proc.stderr or proc.stdout)
        raise MeasureError(f"{train_path.name} exited with code {proc.returncode}: {reason}")
    return summary


def neighbour_sizes(dim, depth):
    """(dim, depth) pairs around train.py's size, its own included, smallest first."""
    sizes = {(dim, depth)}
    for width, depths in WIDTHS.items():
        d = max(8, round(dim * width / 8) * 8)
        sizes |= {(d, max(1, round(depth * f))) for f in depths}
    return sorted(sizes)


def count_params(train):
    with torch.device("meta"):
        return sum(p.numel() for p in train.build_model().parameters())


@contextlib.contextmanager
def knobs(train, **values):
    saved = {k: getattr(train, k) for k in values}
    for k, v in values.items():
        setattr(train, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(train, k, v)


def model_sizes(train):
    """(dim, depth, params) rows: train.py's own size, built as it stands, and a few sizes
    around it with the same architecture (heads scaled with the width), built on the meta device.
    A neighbour size that does not build is left out."""
    own = (train.DIM, train.DEPTH, count_params(train))
    rows = [own]
    for dim, depth in neighbour_sizes(train.DIM, train.DEPTH):
        if (dim, depth) == own[:2]:
            continue
        heads = max(1, round(train.HEADS * dim / train.DIM))
        try:
            with knobs(train, DIM=dim, DEPTH=depth, HEADS=heads):
                rows.append((dim, depth, count_params(train)))
        except Exception:  # an architecture that only builds at its own width
            continue
    return sorted(rows)


def flops_per_token(params, dim, depth):
    """The summary's formula (prepare.flops_per_token) for windows of MAX_SEQ_LEN predictions."""
    return prepare.flops_per_token(params, depth, dim, prepare.MAX_SEQ_LEN)


class ActivationMemory:
    """Bytes of activations one sequence of TRAIN_SEQ_LEN keeps at train.py's size, and whence."""

    def __init__(self, per_sequence, measured, source, attention=0):
        self.per_sequence = per_sequence  # bytes at train.py's DIM, DEPTH and TRAIN_SEQ_LEN
        self.measured = measured  # True: on this GPU; False: a CPU estimate
        self.source = source  # one phrase for the table's note
        self.attention = attention  # bytes of attention-probability matrices left out (CPU count)

    def for_size(self, train, dim, depth):
        """Scaled to another size: activations grow with dim x depth (x seq_len, fixed here)."""
        return self.per_sequence * (dim * depth) / (train.DIM * train.DEPTH)


def zeroed_model(train, device="cpu"):
    """train.py's model on `device` with every weight and buffer zero: built on the meta device and
    materialised empty, so no initialisation runs (memory does not depend on the values)."""
    with torch.device("meta"):
        model = train.build_model()
    model.to_empty(device=device)
    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.zero_()
    return model


def saved_bytes(model, batch, length, mode=None):
    """(bytes autograd saves for one forward of `batch` sequences of `length` inputs under CPU BF16
    autocast, of which those in attention-probability matrices: the last two dims both `length`).
    Each storage is counted once, the weights not at all. `mode`: the FakeTensorMode the model was
    built in (shapes and dtypes only, nothing computed), or None for real tensors."""
    weights = {p.untyped_storage()._cdata for p in model.parameters()}
    saved, attention = {}, {}

    def pack(x):
        storage = x.untyped_storage()
        key = storage._cdata
        if key not in weights:
            saved[key] = max(saved.get(key, 0), storage.nbytes())
            if x.dim() >= 2 and x.shape[-1] == x.shape[-2] == length:
                attention[key] = saved[key]
        return x

    with mode or contextlib.nullcontext():
        x = torch.zeros((batch, length), dtype=torch.long)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x), torch.autocast("cpu", dtype=torch.bfloat16):
            model(x)
    return sum(saved.values()), sum(attention.values())


def estimate_activations(train, short=ESTIMATE_SEQ_LEN):
    """Off the GPU: the saved-tensor count per sequence (two sequences minus one, so the weights'
    BF16 copies and other per-step tensors drop out) under CPU BF16 autocast. Counted on fake tensors
    at TRAIN_SEQ_LEN itself (nothing is computed); where the model does not run on fake tensors,
    on a real zeroed model at `short` bytes, scaled to TRAIN_SEQ_LEN (linearly; attention matrices
    quadratically). Attention-probability matrices are left out: a flash kernel keeps none."""
    full = train.TRAIN_SEQ_LEN + 1  # the harness hands the wrapper seq_len + 1 bytes
    try:
        mode = FakeTensorMode()
        with mode:
            model = train.build_model()
        counts = [saved_bytes(model, batch, full, mode) for batch in (1, 2)]
        n = full
    except Exception:  # an op without a fake kernel: real tensors, at a short length
        model, n = zeroed_model(train), min(short + 1, full)
        counts = [saved_bytes(model, batch, n) for batch in (1, 2)]
    (one, one_attn), (two, two_attn) = counts
    attention = two_attn - one_attn
    kept = (two - one - attention) * full / n
    dropped = attention * (full / n) ** 2
    return ActivationMemory(kept, False, "an estimate (saved-tensor count on a CPU), not measured", dropped)


def measure_activations(train):
    """On the GPU: the rise in torch.cuda.max_memory_allocated from one to two sequences of
    TRAIN_SEQ_LEN (forward and backward under autocast), the harness's own kind of step."""
    device = torch.device("cuda")
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    model = zeroed_model(train, device)
    peaks = []
    for batch in (1, 2):
        x = torch.zeros((batch, train.TRAIN_SEQ_LEN + 1), dtype=torch.long, device=device)
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        with torch.autocast("cuda", dtype=dtype):
            loss = model(x)
        loss.backward()
        torch.cuda.synchronize()
        peaks.append(torch.cuda.max_memory_allocated(device) - base)
        loss = None
        model.zero_grad(set_to_none=True)
    del model
    torch.cuda.empty_cache()
    per_sequence = peaks[1] - peaks[0]
    if per_sequence <= 0:
        raise RuntimeError(f"no rise in peak memory from one sequence to two ({peaks[0]} then {peaks[1]} bytes)")
    name = torch.cuda.get_device_name(0)
    return ActivationMemory(per_sequence, True, f"measured on this GPU ({name}, eager, as the harness fits)")


def activation_memory(train, gpu=None):
    """Measured on the GPU when there is one (gpu=None: whether CUDA is available), else the CPU
    estimate; a failed measurement falls back to the estimate and says why in its source."""
    gpu = torch.cuda.is_available() if gpu is None else gpu
    if gpu:
        try:
            return measure_activations(train)
        except Exception as e:  # one line in the note, never a traceback
            memory = estimate_activations(train)
            memory.source += f" (the GPU measurement failed: {type(e).__name__}: {one_line(str(e), 120)})"
            return memory
    return estimate_activations(train)


def card_bytes():
    """The GPU's total memory, or None off the GPU."""
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else None


def fixed_bytes(params):
    return FIXED_BYTES_PER_PARAM * params


def fit_micro_batch(params, per_sequence, batch, card):
    """The harness's rule on predicted figures: the largest divisor of `batch` whose peak stays under
    CARD_FILL of `card` bytes, or None if one sequence does not fit."""
    for size in range(batch, 0, -1):
        if batch % size == 0 and fixed_bytes(params) + per_sequence * size < CARD_FILL * card:
            return size
    return None


def gb(n):
    return f"{n / 2**30:.1f} GB"


def memory_cells(train, memory, dim, depth, params, cards):
    """The table's memory cells for one size: activations per sequence, then on one card the
    micro-batch and the peak at it, on several the peak at full batch and the micro-batch per card."""
    act = memory.for_size(train, dim, depth)
    batch = train.BATCH_SIZE
    cells = [f"{act / 2**20:,.0f} MB"]
    if len(cards) == 1:
        size = fit_micro_batch(params, act, batch, cards[0])
        if size is None:
            return cells + ["does not fit", gb(fixed_bytes(params) + act)]
        return cells + [str(size), gb(fixed_bytes(params) + act * size)]
    sizes = [fit_micro_batch(params, act, batch, card) for card in cards]
    return cells + [gb(fixed_bytes(params) + act * batch), " · ".join("no" if s is None else str(s) for s in sizes)]


def memory_header(train, memory, cards):
    act = "act./seq" if memory.measured else "act./seq (CPU est.)"
    batch = train.BATCH_SIZE
    if len(cards) == 1:
        return f"{act} | micro-batch (of {batch}) | predicted peak"
    names = "/".join(f"{c / 2**30:g}" for c in cards)
    return f"{act} | peak at {batch} | micro-batch, {names} GB"


def memory_note(train, memory, cards):
    """The lines under the table that say what its memory columns are and whence they come."""
    seq = train.TRAIN_SEQ_LEN
    first = (
        f"Memory: activations per {seq}-byte sequence at train.py's current size, {memory.per_sequence / 2**20:,.0f} MB: "
        f"{memory.source}; other sizes scaled by dim × depth (activations grow with dim × depth × seq_len)."
    )
    if not memory.measured:
        first += (
            f" Left out: {memory.attention / 2**20:,.0f} MB of attention-probability matrices that the CPU kernel "
            "kept and a flash kernel does not."
            if memory.attention
            else " No attention-probability matrices among them (this CPU's kernel, like flash, keeps none)."
        )
    if len(cards) == 1:
        where, fail = f"this card's {cards[0] / 2**30:.1f} GB", "does not fit"
    else:
        where, fail = "cards of " + " / ".join(f"{c / 2**30:g}" for c in cards) + " GB", "no"
    second = (
        f"Predicted peak = {FIXED_BYTES_PER_PARAM} bytes per parameter (FP32 weights and gradients, BF16 copies, "
        f"the optimizer's 3 weight copies) + activations × micro-batch. The micro-batch is what the harness "
        f"would fit: the largest divisor of BATCH_SIZE={train.BATCH_SIZE} whose peak stays under "
        f"{CARD_FILL:.0%} of {where}; `{fail}`: not even one sequence fits (`crash: out of memory`)."
    )
    return [first, second]


def sizing_table(train, measured, memory=None, cards=None):
    """Markdown rows: each size's FLOPs/token and, from the measured rate, its tokens in the budget;
    with `memory` (an ActivationMemory), its predicted peak and micro-batch on `cards` (bytes each:
    one card, this GPU's; several, reference cards)."""
    rows = model_sizes(train)
    own_params = next(p for d, L, p in rows if (d, L) == (train.DIM, train.DEPTH))
    rate = None  # achieved FLOP/s of train.py's size, assumed to carry over to other sizes
    if measured:
        rate = float(measured["tokens_per_sec"]) * flops_per_token(own_params, train.DIM, train.DEPTH)
    cards = list(cards) if cards else None
    head = "| dim | depth | params | GFLOP/token | est. tokens/s | tokens in 300 s | tokens/param |"
    rule = "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    if memory is not None:
        head += f" {memory_header(train, memory, cards)} |"
        rule += " ---: | ---: | ---: |"
    lines = [head, rule]
    for dim, depth, params in rows:
        fpt = flops_per_token(params, dim, depth)
        marker = " (train.py now)" if (dim, depth) == (train.DIM, train.DEPTH) else ""
        if rate:
            tps = rate / fpt
            tokens = tps * prepare.TIME_BUDGET
            est = f"{tps:,.0f} | {tokens / 1e6:,.0f}M | {tokens / params:.1f}"
        else:
            est = "not measured | - | -"
        mem = "".join(f" {c} |" for c in memory_cells(train, memory, dim, depth, params, cards)) if memory else ""
        lines.append(f"| {dim}{marker} | {depth} | {params / 1e6:.1f}M | {fpt / 1e9:.3f} | {est} |{mem}")
    return lines


def render(train, facts, measured, note, memory=None, cards=None):
    lines = [BEGIN, "", "| fact | value |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    if measured:
        lines += [
            f"| default train.py | {float(measured['tokens_per_sec']):,.0f} tokens/s, "
            f"{measured['mfu_percent']}% MFU, {measured['peak_vram_mb']} MB peak, precision {measured['precision']} |",
            f"| measured with | `{measured['overrides']}`: {measured['training_seconds']} s of training on "
            f"{measured['data']} |",
        ]
    lines += ["", note, "", "Model sizes with the default architecture (params counted by building it):", ""]
    lines += sizing_table(train, measured, memory, cards)
    if memory is not None:
        lines += ["", *memory_note(train, memory, cards)]
    if measured:
        lines += [
            "",
            "Estimated tokens/s assume every size reaches the default's FLOP rate: small models usually reach "
            "less (kernel overheads), large ones may reach more. Rerun with the edited train.py to check.",
        ]
    return "\n".join(lines + ["", END])


def write_block(agents, block):
    text = agents.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{agents} has no machine block: add the lines\n{BEGIN}\n{END}")
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    agents.write_text(head + block + tail)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the block instead of writing AGENTS.md")
    parser.add_argument("--seconds", type=float, default=30, help="training seconds of the throughput run")
    parser.add_argument("--no-measure", action="store_true", help="skip the throughput run")
    parser.add_argument("--cpu", action="store_true", help="measure without a CUDA GPU too (slow at real sizes)")
    parser.add_argument("--data", help="AR_DATA for the throughput run (e.g. a stand-in corpus)")
    parser.add_argument("--train", type=Path, default=REPO / "train.py", help="the train.py to size and measure")
    parser.add_argument("--agents", type=Path, default=REPO / "AGENTS.md", help="file holding the machine block")
    return parser.parse_args(argv)


def measurement(args, facts):
    """(summary or None, the block's note, exit code). Prints one line when nothing is measured."""
    if args.no_measure:
        return None, "Throughput not measured (--no-measure): run `python tools/machine.py` to measure it.", 0
    if not torch.cuda.is_available() and not args.cpu:
        print("no CUDA GPU: throughput not measured (facts and model sizes only)", file=sys.stderr, flush=True)
        note = (
            "This is a CPU machine: nothing was measured. This block describes it (setup step 6 is done here); "
            "a GPU night runs `python tools/machine.py` on its GPU box (after `python prepare.py`) for throughput "
            "and the sizing table."
        )
        return None, note, 0
    print(f"measuring {args.train.name} for {args.seconds:g} s of training...", file=sys.stderr, flush=True)
    try:
        measured = measure_default(args.seconds, args.data, args.train)
    except MeasureError as e:
        print(f"throughput not measured: {e}", file=sys.stderr, flush=True)
        return None, f"The throughput run failed ({e}): fix that, then run `python tools/machine.py` again.", 1
    where = facts["GPU"] if torch.cuda.is_available() else "this CPU (--cpu)"
    return measured, f"Measured on {where} with `python tools/machine.py --seconds {args.seconds:g}`.", 0


def memory_figures(args, train):
    """(ActivationMemory or None, card sizes in bytes): measured on this GPU unless --no-measure
    (then the CPU estimate, on this card's size); off the GPU the estimate on the reference cards.
    A model whose memory cannot be counted prints one line and the table goes without it."""
    gpu = torch.cuda.is_available()
    try:
        memory = activation_memory(train, gpu=gpu and not args.no_measure)
    except Exception as e:
        print(f"memory not predicted: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr, flush=True)
        return None, None
    cards = [card_bytes()] if gpu else [gb * 2**30 for gb in REFERENCE_CARDS_GB]
    return memory, cards


def main(argv=None):
    args = parse_args(argv)
    try:
        train = load_train(args.train)
        count_params(train)
    except Exception as e:  # an edited train.py that does not import or build: one line
        print(f"cannot size {args.train}: {type(e).__name__}: {one_line(str(e))}", file=sys.stderr)
        return 2
    facts = machine_facts(train)
    measured, note, code = measurement(args, facts)
    memory, cards = memory_figures(args, train)
    block = render(train, facts, measured, note, memory, cards)
    if args.print:
        print(block)
    else:
        write_block(args.agents, block)
        print(f"wrote the machine block of {args.agents}")
    return code

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

import prepare
from labbook.runlog import crash_reason, parse_summary

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN MACHINE (written by python tools/machine.py) -->"
END = "<!-- END MACHINE -->"
WIDTHS = {0.5: (0.75, 1.0), 0.75: (1.0,), 1.0: (0.75, 1.0, 1.5), 1.5: (1.0, 1.5), 2.0: (1.0, 1.5)}  # x DIM: x DEPTH
MEASURE_TIMEOUT = 600


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
    """The summary's formula (prepare.make_summary): 6N plus the attention over MAX_SEQ_LEN."""
    return 6 * params + 12 * depth * dim * prepare.MAX_SEQ_LEN


def sizing_table(train, measured):
    """Markdown rows: each size's FLOPs/token and, from the measured rate, its tokens in the budget."""
    rows = model_sizes(train)
    own_params = next(p for d, L, p in rows if (d, L) == (train.DIM, train.DEPTH))
    rate = None  # achieved FLOP/s of train.py's size, assumed to carry over to other sizes
    if measured:
        rate = float(measured["tokens_per_sec"]) * flops_per_token(own_params, train.DIM, train.DEPTH)
    lines = [
        "| dim | depth | params | GFLOP/token | est. tokens/s | tokens in 300 s | tokens/param |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dim, depth, params in rows:
        fpt = flops_per_token(params, dim, depth)
        marker = " (default)" if (dim, depth) == (train.DIM, train.DEPTH) else ""
        if rate:
            tps = rate / fpt
            tokens = tps * prepare.TIME_BUDGET
            est = f"{tps:,.0f} | {tokens / 1e6:,.0f}M | {tokens / params:.1f}"
        else:
            est = "not measured | - | -"
        lines.append(f"| {dim}{marker} | {depth} | {params / 1e6:.1f}M | {fpt / 1e9:.3f} | {est} |")
    return lines


def render(train, facts, measured, note):
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
    lines += sizing_table(train, measured)
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
            "This is a CPU machine: nothing was measured. On the GPU box, run `python tools/machine.py` "
            "there (after `python prepare.py`) to fill in throughput and the sizing table."
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
    block = render(train, facts, measured, note)
    if args.print:
        print(block)
    else:
        write_block(args.agents, block)
        print(f"wrote the machine block of {args.agents}")
    return code

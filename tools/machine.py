"""Write the facts about this machine into AGENTS.md, so the agent plans with real numbers.

    python tools/machine.py                   # measure and rewrite the machine block of AGENTS.md
    python tools/machine.py --print           # print the block, change nothing
    python tools/machine.py --seconds 60      # a longer throughput measurement (default 30 s)
    python tools/machine.py --no-measure      # facts and model sizes only

On a GPU it runs the default train.py for a short budget (AR_TIME_BUDGET) and reads
tokens_per_sec from its summary; the sizing table then converts that throughput into the tokens
each model size would see in the 300 s budget. On a CPU machine it says so and measures nothing.
"""

import argparse
import importlib.util
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
BEGIN = "<!-- BEGIN MACHINE (written by python tools/machine.py) -->"
END = "<!-- END MACHINE -->"
SIZES = [(256, 6), (256, 8), (384, 8), (512, 6), (512, 8), (512, 12), (768, 8), (768, 12), (1024, 8), (1024, 12)]


def load_script(name):
    """A top-level script of the repository (train.py, analysis.py) as a module."""
    spec = importlib.util.spec_from_file_location(f"{name}_for_machine", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_train():
    return load_script("train")


def machine_facts(train):
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
    peak = train.gpu_peak_tflops(props.name)
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


def measure_default(seconds, data):
    """tokens/s and the summary of the default train.py, run for `seconds` of training."""
    env = dict(os.environ, AR_TIME_BUDGET=str(seconds), AR_METRICS=os.devnull)
    if data:
        env["AR_DATA"] = str(data)
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py")], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
    )
    summary = load_script("analysis").parse_summary(proc.stdout)  # the parser `record` uses
    if proc.returncode != 0 or "tokens_per_sec" not in summary:
        crash = [line for line in proc.stdout.splitlines() if line.startswith("crash:")]
        raise RuntimeError(crash[-1] if crash else proc.stderr.strip()[-500:])
    return summary


def model_sizes(train):
    """(dim, depth, params) for the default architecture at several sizes, built on the meta device."""
    saved = train.DIM, train.DEPTH, train.HEADS
    rows = []
    try:
        for dim, depth in SIZES:
            train.DIM, train.DEPTH, train.HEADS = dim, depth, max(dim // 64, 1)
            with torch.device("meta"):
                params = sum(p.numel() for p in train.build_model().parameters())
            rows.append((dim, depth, params))
    finally:
        train.DIM, train.DEPTH, train.HEADS = saved
    return rows


def flops_per_token(train, params, dim, depth):
    return 6 * params + 12 * depth * dim * train.MAX_SEQ_LEN


def sizing_table(train, measured):
    """Markdown rows: each size's FLOPs/token and, from the measured rate, its tokens in the budget."""
    default_params = next(p for d, L, p in model_sizes(train) if (d, L) == (train.DIM, train.DEPTH))
    rate = None  # achieved FLOP/s of the default config, assumed to carry over to other sizes
    if measured:
        rate = float(measured["tokens_per_sec"]) * flops_per_token(train, default_params, train.DIM, train.DEPTH)
    lines = [
        "| dim | depth | params | GFLOP/token | est. tokens/s | tokens in 300 s | tokens/param |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for dim, depth, params in model_sizes(train):
        fpt = flops_per_token(train, params, dim, depth)
        marker = " (default)" if (dim, depth) == (train.DIM, train.DEPTH) else ""
        if rate:
            tps = rate / fpt
            tokens = tps * train.TIME_BUDGET
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


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--print", action="store_true", help="print the block instead of writing AGENTS.md")
    parser.add_argument("--seconds", type=float, default=30, help="training seconds of the throughput run")
    parser.add_argument("--no-measure", action="store_true", help="skip the throughput run")
    parser.add_argument("--data", help="AR_DATA for the throughput run (e.g. a stand-in corpus)")
    parser.add_argument("--agents", type=Path, default=REPO / "AGENTS.md", help="file holding the machine block")
    args = parser.parse_args()

    train = load_train()
    facts = machine_facts(train)
    measured = None
    if not torch.cuda.is_available():
        note = (
            "This is a CPU machine: nothing was measured. On the GPU box, run `python tools/machine.py` "
            "there (after `python train.py --prepare-data`) to fill in throughput and the sizing table."
        )
    elif args.no_measure:
        note = "Throughput not measured (--no-measure): run `python tools/machine.py` to measure it."
    else:
        print(f"measuring the default train.py for {args.seconds:.0f} s of training...", flush=True)
        try:
            measured = measure_default(args.seconds, args.data)
            note = f"Measured on {facts['GPU']} with `python tools/machine.py --seconds {args.seconds:g}`."
        except RuntimeError as e:
            note = f"The throughput run failed ({e}): fix that, then run `python tools/machine.py` again."
    block = render(train, facts, measured, note)
    if args.print:
        print(block)
    else:
        write_block(args.agents, block)
        print(f"wrote the machine block of {args.agents}")


if __name__ == "__main__":
    main()

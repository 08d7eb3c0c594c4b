"""Benchmark train.py's training step: ceilings, tokens/s and MFU, FP8, a fork-style baseline loop,
the optimizer's share, launch time, final-evaluation time and (with --quality) val_bpc of the
default config against the fork's original config. train.py is read as text and turned into a
module (prepare.source_module), never modified; the step is timed through the harness's own Run.

On one GPU (minutes; --quality adds two 120 s training runs, and runs them first):
    python bench/bench.py                      # the GPU session's plan; writes bench/results/<date>-<gpu>.json
    python bench/bench.py --plan               # the plan with each section's estimated seconds, nothing run
    python bench/bench.py --sections all --quality
On an offline GPU box (wheels in a git-ignored folder, see docs/benchmarks.md):
    bash bench/gpu_session.sh
CPU smoke test (what tests/test_bench.py runs, well under a minute):
    python bench/bench.py --device cpu --tiny --sections all --out /tmp/bench.json
CPU step cost at the real model sizes (the CPU figures in docs/benchmarks.md, ~4 minutes on 2 cores):
    python bench/bench.py --device cpu --batch 1 --warmup 2 --steps 2 --corpus-mb 20 \
        --sections ceilings,throughput,baseline,eval,optimizer

`prepare` and `labbook` are plain imports: the installed checkout (pip install -e .), or
PYTHONPATH=<checkout> (what bench/gpu_session.sh exports).
"""

import argparse
import contextlib
import datetime
import gc
import hashlib
import io
import json
import math
import os
import platform
import random
import re
import shutil
import site
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import adam_atan2_pytorch.muon_adam_atan2 as muon_module
import torch
from torch import nn
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

import prepare
from labbook.machine import knobs
from labbook.runlog import parse_summary as parse_run_summary

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"

# The fork's original setup (its analysis notebook's baseline): 4 sequences per micro-step, 4
# micro-steps per optimizer step. In train.py's loop that is BATCH_SIZE=16 (the harness picks the
# micro-batch); the fork-style baseline loop keeps the fork's own 4 x 4.
FORK_CONSTANTS = dict(DIM=512, DEPTH=6, HEADS=8, BATCH_SIZE=16, LR=1e-4, MUON_LR=1e-4, GRAD_CLIP=0.5)
FORK_MICRO_BATCH = 4
FORK_DECODER = dict(rotary_pos_emb=True, attn_flash=True, attn_qk_norm=True, ff_relu_squared=True, use_rmsnorm=True)
LARGE = dict(DIM=1024, DEPTH=8, HEADS=16)  # the size the MFU target is stated for
TINY = dict(DIM=32, DEPTH=2, HEADS=2)  # --tiny: every model shrinks to this
TINY_BATCH = 2
TINY_FORK_BATCH = 2 * prepare.HOST_MICRO_BATCH  # off the GPU the harness splits it: micro-batching stays on
TINY_SEQ = 128  # --tiny trains on 128-byte windows (TRAIN_SEQ_LEN); evaluation windows stay prepare.MAX_SEQ_LEN

EVAL_TARGET_BYTES = 5_000_000  # prepare.py scores all 5M val bytes of enwik8 on a GPU
CORPUS_MB = 100  # the stand-in corpus: its 5% val split must hold EVAL_TARGET_BYTES
TINY_CORPUS_BYTES = 1_000_000

TARGETS = dict(
    mfu_dim1024_pct=40.0,  # BF16, measured against the datasheet peak
    speedup_vs_fork_loop=2.0,
    launch_to_first_counted_step_s=45.0,
    eval_5m_bytes_s=10.0,
    quality_bpc_gap=0.15,  # fork's val_bpc minus the default's
)

KEYED_SECTIONS = ("throughput", "fp8")  # one result per config; the others hold one result

# A section is named `section:config` (`ceilings` and `quality` have no config). The GPU session's
# plan, ordered by value, with each section's estimated seconds on an H100-class card whose compile
# caches are empty (estimates, not measurements: correct them from the JSON's `seconds`). Since every
# run ends in the sealed scorer, eval:default (the scorer's answer holds that figure) and hosttime:default,
# the last by value, wait outside the plan.
SESSION_BUDGET_S = 400  # `bash bench/gpu_session.sh` with no arguments must fit in this
SETUP_ESTIMATE_S = 20  # wheels, the 100 MB stand-in corpus, prepare.setup: before the first section
SCORER_ESTIMATE_S = 25  # a sealed scorer: a fresh interpreter imports torch and x-transformers, scores 5 MB (+ 1 MB)
PROCESSES_ESTIMATE_S = 5  # soon in every run: a supervisor that execs, a sandboxed trainer that imports torch again
RUN_END_ESTIMATE_S = SCORER_ESTIMATE_S + PROCESSES_ESTIMATE_S  # what a `python train.py` run adds to its training
DEFAULT_PLAN = (
    ("throughput:default", 55),  # cold compile of the default model (~35 s), 10 + 20 + 3 steps
    ("microbatch:default", 60),  # 4 caps: eager fitting, a recompile per new micro-batch (16, 32), 12 steps
    ("launch:default", 50 + RUN_END_ESTIMATE_S),  # `python train.py`, private empty caches: startup, compile, 5 s
    ("recompiles:default", 25 + RUN_END_ESTIMATE_S),  # `python train.py`, 30 steps under TORCH_LOGS, warm caches
    ("score:default", SCORER_ESTIMATE_S),  # `python prepare.py score` on the launch run's checkpoint, fresh process
    ("tolerance:default", 2),  # the launch run's val_bpc_exact against the score section's answer: nothing to run
    ("fp8:dim1024", 85),  # two cold compiles of the 135M model (BF16, then FP8 with torchao's filter)
)
OTHER_ESTIMATES = {  # the sections outside the default plan, same card and caches
    "ceilings": 5,
    "eval:default": 15,  # prepare.evaluate over 5 MB in this process: score:default's answer holds the scorer's
    "hosttime:default": 40,  # at 64 sequences (warm cache) and at 8 (a new shape: a recompile)
    "throughput:fork": 45,
    "throughput:dim1024": 60,
    "fp8:default": 50,
    "baseline:fork": 20,
    "optimizer:default": 20,
    "quality": 2 * (120 + 45 + RUN_END_ESTIMATE_S),  # two 120 s runs: startup and a cold compile each
}
ESTIMATES = dict(DEFAULT_PLAN) | OTHER_ESTIMATES
CATALOGUE = (  # every section, in the order `--sections all` runs them
    "ceilings",
    "throughput:default",
    "microbatch:default",
    "launch:default",
    "recompiles:default",
    "eval:default",
    "score:default",
    "tolerance:default",
    "throughput:dim1024",
    "fp8:default",
    "fp8:dim1024",
    "hosttime:default",
    "throughput:fork",
    "baseline:fork",
    "optimizer:default",
)
MICRO_BATCH_CAPS_GB = (
    8,
    12,
    16,
    24,
)  # the small cards the default model must run on: the process is capped to act as one
CAPPED_STEPS = 12  # steps per capped measurement: the fitting step, then steps 2..12 with the optimizer's state
RECOMPILE_STEPS = 30  # steps of the run whose graph breaks and recompiles are counted
RECOMPILE_LOGS = "graph_breaks,recompiles"  # TORCH_LOGS of that run
HOST_TIME_BATCHES = (64, 8)  # a step on one GPU, and one rank's share of it under torchrun on 8 GPUs
HOST_TIME_STEPS = 8  # steps issued while the GPU is held busy: fewer than METRICS_EVERY, so no Tracker sync
GPU_HOLD_S = 5.0  # how long the GPU is held busy (torch.cuda._sleep) while the host issues those steps
TOLERANCE_BUDGET = 30  # AR_TIME_BUDGET of the tolerance section's own run, when no launch run left a checkpoint
WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which but".split()


@dataclass
class Config:
    name: str
    dim: int
    depth: int
    heads: int
    batch: int  # sequences per optimizer step (train.py's BATCH_SIZE); the harness picks the micro-batch
    seq_len: int  # bytes predicted per training window (train.py's TRAIN_SEQ_LEN)
    grad_clip: float
    fork: bool = False  # built with the fork's Decoder options instead of train.py's build_model


@dataclass
class Bench:
    args: argparse.Namespace
    module: object  # train.py's text as a module (prepare.source_module)
    run: object  # the Run that prepare.setup() returned: device, precision, training data
    heldout: dict  # "val": the validation bytes, which only the sealed scorer reads in a real run
    configs: dict
    workdir: Path
    corpus: Path
    out: Path
    results: dict
    checkpoints: dict = field(default_factory=dict)  # config -> checkpoint.pt of its launch run (for score)
    scores: dict = field(default_factory=dict)  # checkpoint.pt -> the score section's result (for tolerance)

    @property
    def device(self):
        return self.run.device

    @property
    def cuda(self):
        return self.run.device.type == "cuda"

    def save(self):
        """The JSON so far, replaced whole (a kill mid-write leaves the previous one)."""
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_name(self.out.name + ".part")
        tmp.write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        os.replace(tmp, self.out)


# ---------------------------------------------------------------------------
# Arguments, train.py as a module, the stand-in corpus
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--tiny", action="store_true", help=f"every model at {TINY}, a few steps, a generated corpus")
    p.add_argument(
        "--sections",
        help="comma list of section:config names, bare section names (each of its configs) or `all` "
        f"(default: the GPU session's plan, {','.join(name for name, _ in DEFAULT_PLAN)})",
    )
    p.add_argument("--plan", action="store_true", help="print the plan with estimated seconds and check the budget")
    p.add_argument(
        "--budget",
        type=float,
        help=f"seconds for the whole session: with --plan the limit (default {SESSION_BUDGET_S}); when running, "
        "a section whose estimate no longer fits is skipped",
    )
    p.add_argument("--quality", action="store_true", help="also train default and fork configs as subprocesses")
    p.add_argument("--quality-budget", type=float, help="AR_TIME_BUDGET of each quality run (default 120)")
    p.add_argument("--launch-budget", type=float, help="AR_TIME_BUDGET of the launch run (default 5)")
    p.add_argument("--corpus", help="text file to train on (default: a stand-in built from site-packages)")
    p.add_argument("--corpus-mb", type=int, default=CORPUS_MB, help="size of the stand-in corpus")
    p.add_argument("--batch", type=int, help="sequences per step of every throughput config (default: each config's)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default: the harness's uncounted steps)")
    p.add_argument("--steps", type=int, help="timed steps per measurement (default 20 on CUDA, 2 elsewhere)")
    p.add_argument("--breakdown-steps", type=int, help="steps timed phase by phase (default 3 on CUDA, 1 elsewhere)")
    p.add_argument("--eval-bytes", type=int, help="val bytes scored by the eval section (default 5M on CUDA)")
    p.add_argument(
        "--optimizer-variants",
        help="comma list out of eager,newton_schulz,step (default: eager,newton_schulz on CUDA, eager elsewhere)",
    )
    p.add_argument("--out", help="JSON path (default bench/results/<date>-<gpu>.json)")
    args = p.parse_args(argv)
    small = args.tiny or (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) != "cuda"
    args.steps = args.steps or (2 if small else 20)
    args.breakdown_steps = args.breakdown_steps or (1 if small else 3)
    args.quality_budget = args.quality_budget or (3.0 if args.tiny else 120.0)
    args.launch_budget = args.launch_budget or (1.0 if args.tiny else 5.0)
    args.optimizer_variants = (args.optimizer_variants or ("eager" if small else "eager,newton_schulz")).split(",")
    return args


def label(section, name):
    return f"{section}:{name}" if name else section


def section_plan(args):
    """(section, config) pairs in the order they run: the GPU session's plan by default, else the
    named ones in catalogue order. With --quality its two training runs go first (their default-
    config run also gives the launch figures), so a run cut off by a timeout still has them."""
    if not args.sections:
        names = [name for name, _ in DEFAULT_PLAN]
    else:
        wanted = args.sections.split(",")
        names = []
        for entry in CATALOGUE + ("quality",):
            if ("all" in wanted and entry != "quality") or entry in wanted or entry.split(":")[0] in wanted:
                names.append(entry)
        known = set(CATALOGUE) | {"quality", "all"} | {entry.split(":")[0] for entry in CATALOGUE}
        unknown = sorted(set(wanted) - known)
        if unknown:
            raise SystemExit(f"unknown sections {unknown}: choose from all,{','.join(CATALOGUE)},quality")
    if args.quality or "quality" in names:
        names = ["quality"] + [n for n in names if n not in ("quality", "launch:default")]
    return [tuple(name.split(":")) if ":" in name else (name, None) for name in names]


def plan_lines(plan):
    """(label, estimated seconds) of the setup and of each section of `plan`, and their total."""
    rows = [("setup (wheels, corpus, prepare.setup)", SETUP_ESTIMATE_S)]
    rows += [(label(section, name), ESTIMATES[label(section, name)]) for section, name in plan]
    return rows, sum(seconds for _, seconds in rows)


def print_plan(args):
    """The plan with its estimates; False when they add up to more than the budget."""
    rows, total = plan_lines(section_plan(args))
    budget = args.budget or SESSION_BUDGET_S
    for what, seconds in rows:
        print(f"{what:<46} {seconds:>4.0f} s")
    print(f"{'total (H100-class card, empty compile caches)':<46} {total:>4.0f} s of a {budget:.0f} s budget")
    return total <= budget


def train_module(source=None, name="train_for_bench"):
    """train.py's text (or `source`, an edited copy) as a module: its knobs, build_model,
    build_optimizer and lr_multiplier. Its `__main__` guard does not fire."""
    return prepare.source_module(TRAIN.read_text() if source is None else source, name)


def site_packages_corpus(path, size):
    """The first `size` bytes of the .py files under site-packages, in a stable order: real text
    that every GPU machine has. A machine with less is topped up by repeating what it found."""
    root = Path(site.getsitepackages()[0])
    written = 0
    with open(path, "wb") as out:
        for folder, subfolders, files in os.walk(root):
            subfolders.sort()
            for name in sorted(f for f in files if f.endswith(".py")):
                try:
                    blob = (Path(folder) / name).read_bytes()
                except OSError:
                    continue
                out.write(blob[: size - written])
                written += min(len(blob), size - written)
                if written >= size:
                    return path
    if written == 0:
        raise SystemExit(f"no .py files under {root}: pass --corpus PATH")
    print(f"notice: only {written:,} bytes of .py under {root}; repeating them up to {size:,}")
    blob = path.read_bytes()
    path.write_bytes((blob * (size // len(blob) + 1))[:size])
    return path


def generated_corpus(path, size, seed=0):
    """Pseudo-English sentences: enough for a tiny run, built in milliseconds."""
    rng = random.Random(seed)
    text, n = [], 0
    while n < size:
        text.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 12))).capitalize() + ". ")
        n += len(text[-1])
    path.write_bytes("".join(text).encode()[:size])
    return path


def make_configs(module, args):
    m, f = module, FORK_CONSTANTS
    default = Config("default", m.DIM, m.DEPTH, m.HEADS, m.BATCH_SIZE, m.TRAIN_SEQ_LEN, m.GRAD_CLIP)
    fork = Config(
        "fork", f["DIM"], f["DEPTH"], f["HEADS"], f["BATCH_SIZE"], prepare.MAX_SEQ_LEN, f["GRAD_CLIP"], fork=True
    )
    large = replace(default, name="dim1024", dim=LARGE["DIM"], depth=LARGE["DEPTH"], heads=LARGE["HEADS"])
    configs = {c.name: c for c in (default, fork, large)}
    for name, c in configs.items():
        if args.tiny:
            batch = TINY_FORK_BATCH if c.fork else TINY_BATCH
            c = replace(c, dim=TINY["DIM"], depth=TINY["DEPTH"], heads=TINY["HEADS"], batch=batch, seq_len=TINY_SEQ)
        configs[name] = replace(c, batch=args.batch or c.batch)
    return configs


def output_path(args, run):
    if args.out:
        return Path(args.out)
    label = prepare.gpu_name(run.device) if run.device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    return REPO / "bench" / "results" / f"{datetime.date.today().isoformat()}-{slug}.json"


def harness_file():
    return Path(prepare.__file__).resolve()


def meta(b):
    run = b.run
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(run.device),
        gpu=prepare.gpu_name(run.device),
        datasheet_bf16_tflops=run.peak_tflops or None,
        cpu=cpu,
        cpu_threads=torch.get_num_threads(),
        load_average_at_start=os.getloadavg(),  # a busy shared machine makes every figure slower
        torch=torch.__version__,
        python=platform.python_version(),
        precision=run.precision,
        max_seq_len=prepare.MAX_SEQ_LEN,  # the evaluation window; training windows are each config's seq_len
        host_micro_batch=prepare.HOST_MICRO_BATCH,
        prepare_file=str(harness_file()),
        prepare_hash=prepare.prepare_hash(),
        train_py_sha256=hashlib.sha256(TRAIN.read_bytes()).hexdigest()[:12],
        corpus=str(b.corpus),
        corpus_bytes=b.corpus.stat().st_size,
        configs={name: asdict(c) for name, c in b.configs.items()},
        args=vars(b.args),
        targets=TARGETS,
        alloc_conf=os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF"),
    )


def _cpuinfo():
    try:
        return Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return []


# ---------------------------------------------------------------------------
# Timing helpers
# ---------------------------------------------------------------------------


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def elapsed(device, fn):
    """Seconds that `fn` keeps the device busy: CUDA events on a GPU, the host clock elsewhere."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Phases:
    """Times named phases of a step with the device synchronised at each boundary; `off()`
    gives the same interface with no syncs, for free-running steps."""

    def __init__(self, device, on=True):
        self.device, self.on, self.seconds = device, on, {}

    @contextlib.contextmanager
    def __call__(self, name):
        if not self.on:
            yield
            return
        sync(self.device)
        start = time.perf_counter()
        yield
        sync(self.device)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start


def fresh_device_state(device):
    """Forget compiled graphs and free memory, so each measurement starts like a new run."""
    torch._dynamo.reset()
    gc.unfreeze()  # the Tracker freezes the heap at step 1; unfrozen, old models can be collected
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def quietly():
    """The harness prints model, micro-batch and progress lines: keep them out of the bench's table."""
    return contextlib.redirect_stdout(io.StringIO())


# ---------------------------------------------------------------------------
# Models and the training step (train.py's loop body, through the harness's Run)
# ---------------------------------------------------------------------------


def build_model(module, cfg):
    with knobs(module, DIM=cfg.dim, DEPTH=cfg.depth, HEADS=cfg.heads):
        return fork_model(cfg) if cfg.fork else module.build_model()


def fork_model(cfg):
    net = TransformerWrapper(
        num_tokens=prepare.VOCAB,
        max_seq_len=prepare.MAX_SEQ_LEN,
        attn_layers=Decoder(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, **FORK_DECODER),
    )
    return AutoregressiveWrapper(net)


def fresh_run(b, precision=None):
    """A new Run on the bench's device and data, as prepare.setup() makes one. Each measurement
    gets its own: the model handed to prepare_model, its compiled wrapper and the micro-batch
    are fixed once per Run."""
    r = b.run
    return prepare.Run(r.env, r.device, precision or r.precision, r.train_data, r.data_identity, r.eval_bytes)


def training_setup(b, cfg, compile_model=True, precision=None):
    """(run, model, optimizer) the way train.py's train(run) makes them: run.prepare_model with
    train.py's COMPILE (compiled on CUDA at the first forward_backward), build_optimizer."""
    run = fresh_run(b, precision)
    with quietly():
        model = run.prepare_model(build_model(b.module, cfg), compile=compile_model and b.module.COMPILE)
    return run, model, b.module.build_optimizer(model)


@contextlib.contextmanager
def tracked(run):
    """A Tracker fed by a global prepare.StepCounter, as prepare.main arms them; the hook is
    removed when the measurement ends, so no later optimizer step lands in it."""
    counter = prepare.StepCounter()
    try:
        with quietly():
            run.tracker = counter.tracker = prepare.Tracker(run)
        yield run.tracker
    finally:
        counter.remove()


def loop_step(b, run, model, optimizer, cfg, phase):
    """One pass of train.py's loop: the schedule, run.forward_backward, run.step."""
    lr_mult = b.module.lr_multiplier(run.progress)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * lr_mult
    with phase("forward_backward"):  # sampling on the device, micro-batches, autocast, backward
        run.forward_backward(model, cfg.batch, cfg.seq_len)
    with phase("step"):  # unscale, clip, optimizer step, zero_grad, the Tracker (a host sync every METRICS_EVERY)
        run.step(optimizer, cfg.grad_clip)


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def flops_per_token(cfg, num_params):
    """The summary's formula (prepare.flops_per_token) for the config's training window."""
    return prepare.flops_per_token(num_params, cfg.depth, cfg.dim, cfg.seq_len)


def measure_training(b, cfg, precision=None):
    """Warm up (compile) for the harness's uncounted steps, time free-running steps, then a few
    steps phase by phase. Returns tokens/s, MFU, peak memory and the step breakdown."""
    fresh_device_state(b.device)
    run, model, optimizer = training_setup(b, cfg, precision=precision)
    warmup, timed, phased = b.args.warmup or run.excluded_steps, b.args.steps, b.args.breakdown_steps
    phases, free = Phases(b.device), Phases(b.device, on=False)

    def steps(n, phase):
        for _ in range(n):
            loop_step(b, run, model, optimizer, cfg, phase)

    with tracked(run), quietly():
        warm_s = elapsed(b.device, lambda: steps(warmup, free))
        seconds = elapsed(b.device, lambda: steps(timed, free))
        steps(phased, phases)
    result = throughput_figures(b, run, cfg, run.num_params, seconds / timed)
    breakdown = {k: 1000 * v / phased for k, v in phases.seconds.items()}
    result.update(
        micro_batch=run.micro_batch,
        micro_batches_per_step=math.ceil(cfg.batch // run.world_size / run.micro_batch),
        float8_linears=sum(type(m).__name__ == "Float8Linear" for m in model.modules()),
        warmup_steps=warmup,
        warmup_seconds=warm_s,
        peak_memory_mb=prepare.peak_memory_mb(b.device),
        peak_memory_scope="CUDA allocator peak of this config" if b.cuda else "process peak RSS so far",
        breakdown_ms=breakdown,
        breakdown_share={k: v / sum(breakdown.values()) for k, v in breakdown.items()},
        host_syncs_per_step=1 / prepare.METRICS_EVERY,
    )
    return result


def throughput_figures(b, run, cfg, num_params, step_seconds):
    tokens_per_step = cfg.batch * cfg.seq_len
    tokens_per_s = tokens_per_step / step_seconds
    fpt = flops_per_token(cfg, num_params)
    achieved = fpt * tokens_per_s / 1e12
    ceiling = b.results.get("ceilings", {}).get("matmul_tflops")
    return dict(
        params_M=num_params / 1e6,
        batch=cfg.batch,
        seq_len=cfg.seq_len,
        tokens_per_step=tokens_per_step,
        precision=run.precision,
        compiled=run.compile_options is not None,
        step_ms=1000 * step_seconds,
        tokens_per_s=tokens_per_s,
        flops_per_token=fpt,
        achieved_tflops=achieved,
        mfu_vs_measured_pct=100 * achieved / ceiling if ceiling else None,
        mfu_vs_datasheet_pct=100 * achieved / run.peak_tflops if run.peak_tflops else None,
    )


# ---------------------------------------------------------------------------
# Section: ceilings (matmul TFLOP/s, device copy bandwidth)
# ---------------------------------------------------------------------------


def section_ceilings(b, _):
    """The card's achievable matmul rate (BF16 on CUDA, FP32 on CPU, as train.py computes there)
    and its copy bandwidth, counting bytes read plus bytes written."""
    n, copy_mb, iters = (8192, 1024, 50) if b.cuda and not b.args.tiny else (256 if b.args.tiny else 1024, 32, 5)
    dtype = torch.bfloat16 if b.cuda else torch.float32
    a = torch.randn(n, n, device=b.device, dtype=dtype)
    w = torch.randn(n, n, device=b.device, dtype=dtype)
    c = torch.empty_like(a)
    for _ in range(3):
        torch.mm(a, w, out=c)
    seconds = elapsed(b.device, lambda: [torch.mm(a, w, out=c) for _ in range(iters)])
    src = torch.empty(copy_mb * 2**20, dtype=torch.uint8, device=b.device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    copy_s = elapsed(b.device, lambda: [dst.copy_(src) for _ in range(iters)])
    return dict(
        matmul_n=n,
        matmul_dtype=str(dtype).removeprefix("torch."),
        matmul_tflops=2 * n**3 * iters / seconds / 1e12,
        copy_mb=copy_mb,
        copy_gb_per_s=2 * src.numel() * iters / copy_s / 1e9,
        datasheet_bf16_tflops=b.run.peak_tflops or None,
    )


# ---------------------------------------------------------------------------
# Section: throughput of one config in train.py's loop
# ---------------------------------------------------------------------------


def section_throughput(b, name):
    return measure_training(b, b.configs[name])


# ---------------------------------------------------------------------------
# Section: the fork-style loop (DataLoader, .item() per micro-step) at the fork's config
# ---------------------------------------------------------------------------


class RandomWindows(torch.utils.data.Dataset):
    """The fork's data path: one random window per __getitem__, drawn and copied on the host."""

    def __init__(self, data, window, device):
        self.data, self.window, self.device = data, window, device

    def __len__(self):
        return 10**9

    def __getitem__(self, index):
        start = torch.randint(0, len(self.data) - self.window, (1,)).item()
        return self.data[start : start + self.window].long().to(self.device)  # .cuda() on a GPU


def baseline_step(run, model, optimizer, batches, accum, grad_clip):
    for _ in range(accum):
        with run.autocast():
            loss = model(next(batches))
        (loss / accum).backward()
        loss.item()  # the fork read every micro-step's loss on the host
    nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad()


def section_baseline(b, name):
    """The fork's loop at the fork's config (micro-steps of FORK_MICRO_BATCH sequences adding up
    to the config's batch), with the same model, optimizer and precision as train.py's loop: not
    compiled, host-side sampling, a sync per micro-step. No step hook is armed here."""
    cfg = b.configs[name]
    fresh_device_state(b.device)
    run, model, optimizer = training_setup(b, cfg, compile_model=False)
    micro = min(FORK_MICRO_BATCH, cfg.batch)
    accum = max(cfg.batch // micro, 1)
    windows = RandomWindows(run.train_data.cpu(), cfg.seq_len + 1, b.device)  # seq_len predicted bytes
    batches = iter(torch.utils.data.DataLoader(windows, batch_size=micro))

    def step():
        baseline_step(run, model, optimizer, batches, accum, cfg.grad_clip)

    for _ in range(1 if b.args.tiny else 3):
        step()
    seconds = elapsed(b.device, lambda: [step() for _ in range(b.args.steps)])
    tokens_per_s = micro * accum * cfg.seq_len * b.args.steps / seconds
    throughput = b.results.get("throughput", {})
    loop = throughput.get(name, {}).get("tokens_per_s")
    default = throughput.get("default", {}).get("tokens_per_s")
    return dict(
        config=name,
        micro_batch=micro,
        accum=accum,
        step_ms=1000 * seconds / b.args.steps,
        tokens_per_s=tokens_per_s,
        train_py_loop_tokens_per_s=loop,
        speedup_train_py_loop=loop / tokens_per_s if loop else None,
        default_config_tokens_per_s=default,
        speedup_default_config=default / tokens_per_s if default else None,
    )


# ---------------------------------------------------------------------------
# Section: final evaluation time (prepare.evaluate on 5M val bytes)
# ---------------------------------------------------------------------------


def section_eval(b, name):
    fresh_device_state(b.device)
    run, model, _ = training_setup(b, b.configs[name], compile_model=False)
    default_bytes = EVAL_TARGET_BYTES if b.cuda else (8192 if b.args.tiny else prepare.CPU_EVAL_BYTES)
    scored = min(b.args.eval_bytes or default_bytes, len(b.heldout["val"]))
    _, seconds = prepare.evaluate(model.net, b.heldout["val"][:scored], run.device)
    return dict(config=name, eval_bytes=scored, seconds=seconds, bytes_per_s=scored / seconds)


# ---------------------------------------------------------------------------
# Section: the optimizer step (MuonAdamAtan2), eager and compiled
# ---------------------------------------------------------------------------


def compiled_newton_schulz(backend="inductor"):
    """The library's own Newton-Schulz function under torch.compile, one graph per matrix shape.
    Compiling the whole step instead recompiles every step: dynamo guards on the Python int
    state['steps'] and on the float lr."""
    return torch.compile(muon_module.newtonschulz5, dynamic=False, backend=backend)


@contextlib.contextmanager
def newton_schulz_replaced(fn):
    original = muon_module.newtonschulz5
    muon_module.newtonschulz5 = fn
    try:
        yield
    finally:
        muon_module.newtonschulz5 = original


def optimizer_step_fn(optimizer, variant, backend="inductor"):
    """A zero-argument callable that runs one step of `optimizer` the way `variant` names."""
    if variant == "eager":
        return optimizer.step
    if variant == "step":
        return torch.compile(optimizer.step, backend=backend)
    if variant == "newton_schulz":
        ns = compiled_newton_schulz(backend)

        def step():
            with newton_schulz_replaced(ns):
                optimizer.step()

        return step
    raise ValueError(f"unknown optimizer variant {variant!r}: use eager, newton_schulz or step")


def newton_schulz_flops(optimizer):
    """Matmul FLOPs of one step's Newton-Schulz iterations over the Muon matrices: each iteration
    multiplies the (r, c) matrix (r <= c) by its transpose, squares that, and applies it."""
    total = 0
    for group in optimizer.param_groups:
        if group["use_muon"]:
            for p in group["params"]:
                if p.ndim == 2:
                    r, c = sorted(p.shape)
                    total += group["muon_steps"] * (4 * r * r * c + 2 * r**3)
    return total


def section_optimizer(b, name):
    """Milliseconds per optimizer step for each variant, on the gradients of one real batch
    (one run.forward_backward), and the step's share of a training step (from the throughput
    section of the same config). No step hook is armed: the variants step the optimizer directly."""
    cfg = b.configs[name]
    fresh_device_state(b.device)
    run, model, optimizer = training_setup(b, cfg, compile_model=False)
    with quietly():
        run.tracker = prepare.Tracker(run)  # forward_backward reports its tokens and loss to it
        run.forward_backward(model, cfg.batch, cfg.seq_len)
    timed = {}
    for variant in b.args.optimizer_variants:
        step = optimizer_step_fn(optimizer, variant)
        compile_s = elapsed(b.device, lambda step=step: [step() for _ in range(2)])
        seconds = elapsed(b.device, lambda step=step: [step() for _ in range(b.args.steps)])
        timed[variant] = dict(ms=1000 * seconds / b.args.steps, first_two_steps_s=compile_s)
    step_ms = b.results.get("throughput", {}).get(name, {}).get("step_ms")
    eager = timed.get("eager", {}).get("ms")
    train_flops = flops_per_token(cfg, count_params(model)) * cfg.batch * cfg.seq_len
    result = dict(
        config=name,
        newton_schulz_gflop_per_step=newton_schulz_flops(optimizer) / 1e9,
        train_gflop_per_step=train_flops / 1e9,
        muon_matrices=len(optimizer.param_groups[1]["params"]),
        adam_tensors=len(optimizer.param_groups[0]["params"]),
        variants=timed,
        train_step_ms=step_ms,
        eager_share_of_step=eager / step_ms if eager and step_ms else None,
    )
    for variant, t in timed.items():
        if variant != "eager" and eager and step_ms:
            result[f"{variant}_saving_share_of_step"] = (eager - t["ms"]) / step_ms
    return result


# ---------------------------------------------------------------------------
# Section: FP8 against BF16 (run.prepare_model on a Run whose precision is "FP8")
# ---------------------------------------------------------------------------


def torchao_filter(module, fqn):
    """torchao's own heuristic for the tensorwise recipe (the one prepare.py uses), kept to the
    transformer body like prepare.fp8_wants: the comparison point for FP8_MIN_FEATURES."""
    from torchao.float8 import _auto_filter_for_recipe

    return "attn_layers" in fqn and _auto_filter_for_recipe("tensorwise", filter_fqns=[])(module, fqn)


FP8_FILTERS = {"prepare_fp8_wants": None, "torchao_tensorwise": torchao_filter}


def fp8_ready(b):
    return b.cuda and torch.cuda.get_device_capability(b.device) >= (8, 9)


def wanted_linears(b, cfg, keep):
    with torch.device("meta"):
        model = build_model(b.module, cfg)
    return sum(bool(keep(m, n)) for n, m in model.named_modules())


@contextlib.contextmanager
def fp8_filter(keep):
    """prepare.convert_fp8 looks fp8_wants up in prepare's namespace: swap it for `keep`."""
    saved = prepare.fp8_wants
    prepare.fp8_wants = keep or saved
    try:
        yield prepare.fp8_wants
    finally:
        prepare.fp8_wants = saved


def measure_fp8(b, cfg, keep):
    """Throughput of a Run in FP8, prepare's layer filter swapped for `keep`. Nothing is timed
    when no layer qualifies: prepare_model then falls back to BF16."""
    with fp8_filter(keep) as wants:
        if wanted_linears(b, cfg, wants) == 0:
            return dict(converted=0, precision="BF16", note="no linear qualifies: prepare_model falls back to BF16")
        result = measure_training(b, cfg, precision="FP8")
    result["converted"] = result["float8_linears"]
    return result


def section_fp8(b, name):
    cfg = b.configs[name]
    counts = {f: wanted_linears(b, cfg, keep or prepare.fp8_wants) for f, keep in FP8_FILTERS.items()}
    if not fp8_ready(b):
        return dict(config=name, timed=False, reason="FP8 needs CUDA with compute capability >= 8.9", wanted=counts)
    bf16 = b.results.get("throughput", {}).get(name, {})
    if "tokens_per_s" not in bf16:  # throughput skipped or failed for this config: measure BF16 here
        bf16 = measure_training(b, cfg)
    result = dict(config=name, timed=True, wanted=counts, bf16_tokens_per_s=bf16["tokens_per_s"])
    b.results.setdefault("fp8", {})[name] = result  # saved after each filter: each costs a compile
    for label, keep in FP8_FILTERS.items():
        fp8 = measure_fp8(b, cfg, keep)
        if "tokens_per_s" in fp8:
            fp8["speedup_vs_bf16"] = fp8["tokens_per_s"] / bf16["tokens_per_s"]
        result[label] = fp8
        b.save()
    return result


# ---------------------------------------------------------------------------
# Sections: launch time and quality, from `python train.py` subprocesses
# ---------------------------------------------------------------------------


def edit_constants(source, **values):
    """Rewrite top-level `NAME = ...` lines of train.py, as the agent edits it."""
    for name, value in values.items():
        source, count = re.subn(rf"^{name} = .*$", f"{name} = {value!r}", source, count=1, flags=re.M)
        if count != 1:
            raise SystemExit(f"train.py has no top-level constant {name}")
    return source


def replace_function(source, name, new_text):
    """Swap a top-level function (up to the next top-level line) for `new_text`."""
    source, count = re.subn(rf"^def {name}\(.*?\n(?=\S)", lambda _: new_text, source, count=1, flags=re.M | re.S)
    if count != 1:
        raise SystemExit(f"train.py has no top-level function {name}")
    return source


def fork_build_model_source():
    options = ", ".join(f"{k}={v!r}" for k, v in FORK_DECODER.items())
    return (
        "def build_model():\n"
        "    net = TransformerWrapper(\n"
        "        num_tokens=VOCAB,\n"
        "        max_seq_len=MAX_SEQ_LEN,\n"
        f"        attn_layers=Decoder(dim=DIM, depth=DEPTH, heads=HEADS, {options}),\n"
        "    )\n"
        "    return AutoregressiveWrapper(net)\n\n\n"
    )


def train_source(config, tiny=False):
    """train.py's text for a subprocess run of `config` ("default" or "fork")."""
    source = TRAIN.read_text()
    values = dict(FORK_CONSTANTS) if config == "fork" else {}
    if tiny:
        values.update(TINY, BATCH_SIZE=4, TRAIN_SEQ_LEN=TINY_SEQ)
    if config == "fork":
        source = replace_function(source, "build_model", fork_build_model_source())
    return edit_constants(source, **values)


def train_env(b, folder, budget, steps=None, cold=True):
    """The bench's environment minus its AR_* settings, a budget of `budget` seconds (or `steps`
    steps) and, when `cold`, empty private compile caches, so that launch time is what a run on a
    fresh machine pays. PYTHONPATH passes on unchanged: the copy imports the same prepare as the bench."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in ("USE_FP8", "USE_FP16")}
    env.update(
        AR_DATA=str(b.corpus),
        AR_METRICS=str(folder / "metrics.jsonl"),
        AR_CHECKPOINT=str(folder / "checkpoint.pt"),
        PYTHONUNBUFFERED="1",
    )
    env.update(AR_STEPS=str(steps)) if steps else env.update(AR_TIME_BUDGET=str(budget))
    if cold:
        env.update(
            TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor-cache"), TRITON_CACHE_DIR=str(folder / "triton-cache")
        )
    if not b.cuda:
        env["AR_DEVICE"] = b.device.type
    if b.args.tiny:
        env["AR_EVAL_BYTES"] = "8192"
    return env


def parse_summary(log):
    """labbook's parse of a run's summary block, numbers as floats."""
    summary = parse_run_summary(log)
    for key, value in summary.items():
        with contextlib.suppress(ValueError):
            summary[key] = float(value)
    return summary


def run_train_copy(b, config, budget=None, keep_folder=False, steps=None, cold=True, extra_env=None):
    """Run a copy of train.py for `config` in its own folder for `budget` seconds (or `steps`
    steps; `cold`: empty compile caches); its summary plus a few facts (and, with keep_folder, the
    folder, whose run.log and checkpoint.pt stay there)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=b.workdir))
    (folder / "train.py").write_text(train_source(config, b.args.tiny))
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "train.py"],
        cwd=folder,
        env=train_env(b, folder, budget, steps, cold) | (extra_env or {}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=(budget or 0) + 900,
    )
    (folder / "run.log").write_text(proc.stdout)
    summary = parse_summary(proc.stdout)
    result = dict(config=config, budget_s=budget, returncode=proc.returncode, wall_seconds=time.time() - start)
    if keep_folder:
        result["folder"] = str(folder)
    if proc.returncode != 0 or not summary:
        result["log_tail"] = proc.stdout.splitlines()[-20:]
        return result
    keys = ("val_bpc", "startup_seconds", "compile_seconds", "training_seconds", "eval_seconds", "eval_bytes")
    keys += ("total_seconds", "tokens_per_sec", "mfu_percent", "peak_vram_mb", "num_steps", "num_params_M")
    result.update({k: summary.get(k) for k in keys + ("micro_batch", "prepare_hash")})
    result["launch_to_first_counted_step_s"] = summary["startup_seconds"] + summary["compile_seconds"]
    return result


def launch_figures(run):
    keys = ("budget_s", "startup_seconds", "compile_seconds", "launch_to_first_counted_step_s")
    return {k: run.get(k) for k in keys + ("eval_seconds", "eval_bytes", "returncode")}


def section_launch(b, name):
    """Launch to first counted step: startup (imports, data to the device) plus compile (the
    uncounted first steps), read from the summary of a short `python train.py` run."""
    run = run_train_copy(b, name, b.args.launch_budget, keep_folder=True)
    b.checkpoints[name] = Path(run.pop("folder")) / "checkpoint.pt"  # the score section scores it
    return launch_figures(run)


def section_quality(b, _):
    """val_bpc of the default config and of the fork's original config, same corpus, same budget.
    The default run's startup, compile and eval figures double as the launch measurement."""
    runs = {}
    for config in ("default", "fork"):
        runs[config] = run_train_copy(b, config, b.args.quality_budget)
        b.results["quality"] = runs
        b.save()
    bpc = {k: r.get("val_bpc") for k, r in runs.items()}
    runs["bpc_gap_fork_minus_default"] = bpc["fork"] - bpc["default"] if None not in bpc.values() else None
    b.results["launch"] = dict(launch_figures(runs["default"]), source="default-config quality run")
    return runs


def capped_measurement(b, cfg, cap_gb):
    """On the card capped to `cap_gb` GB: the micro-batch the harness fits, the peak of its kept
    try (the allocator's peak is reset before each try), and the compiled step's peak over steps
    2..CAPPED_STEPS, with the optimizer's state, and their tokens/s."""
    total = torch.cuda.get_device_properties(b.device).total_memory
    fresh_device_state(b.device)
    torch.cuda.set_per_process_memory_fraction(min(cap_gb * 2**30 / total, 1.0), b.device)
    result = dict(cap_gb=cap_gb)
    try:
        run, model, optimizer = training_setup(b, cfg)
        result["usable_mb"] = prepare.usable_memory(b.device) / 2**20
        fit = run.fit_micro_batch

        def measured_fit(*args):
            size = fit(*args)
            result["fitting_peak_mb"] = torch.cuda.max_memory_allocated(b.device) / 2**20
            return size

        run.fit_micro_batch = measured_fit
        free = Phases(b.device, on=False)
        with tracked(run):
            loop_step(b, run, model, optimizer, cfg, free)  # fits the micro-batch, compiles, makes the state
            result["micro_batch"] = run.micro_batch
            sync(b.device)
            torch.cuda.reset_peak_memory_stats(b.device)
            timed = CAPPED_STEPS - 1
            seconds = elapsed(b.device, lambda: [loop_step(b, run, model, optimizer, cfg, free) for _ in range(timed)])
        result.update(
            compiled_peak_mb=prepare.peak_memory_mb(b.device),
            tokens_per_s=timed * cfg.batch * cfg.seq_len / seconds,
        )
    except torch.OutOfMemoryError as e:
        result["error"] = f"out of memory: {str(e).splitlines()[0]}"
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, b.device)
        fresh_device_state(b.device)
    return result


def section_microbatch(b, name):
    """The micro-batch truth table: the default model on a card capped to 8, 12, 16 and 24 GB
    (torch.cuda.set_per_process_memory_fraction, which the harness's fitting reads)."""
    if not b.cuda:
        return dict(config=name, timed=False, reason="memory caps need CUDA")
    caps = {f"{cap}GB": capped_measurement(b, b.configs[name], cap) for cap in MICRO_BATCH_CAPS_GB}
    return dict(config=name, timed=True, caps=caps)


def section_recompiles(b, name):
    """Graph breaks and recompiles over RECOMPILE_STEPS steps of a `python train.py` run
    (AR_STEPS, TORCH_LOGS=graph_breaks,recompiles), counted from its log: each one is a step that
    runs eager Python or compiles again. Off CUDA nothing is compiled, so both are 0."""
    run = run_train_copy(
        b, name, steps=RECOMPILE_STEPS, keep_folder=True, cold=False, extra_env=dict(TORCH_LOGS=RECOMPILE_LOGS)
    )
    log = (Path(run.pop("folder")) / "run.log").read_text().splitlines()
    breaks = [line.strip() for line in log if "Graph break" in line]
    recompiles = [line.strip() for line in log if "Recompiling function" in line]
    return dict(
        config=name,
        steps=RECOMPILE_STEPS,
        returncode=run["returncode"],
        graph_breaks=len(breaks),
        recompiles=len(recompiles),
        first_graph_breaks=breaks[:5],
        first_recompiles=recompiles[:5],
    )


def section_score(b, name):
    """The sealed scorer's total time: `python prepare.py score CHECKPOINT` in a fresh process,
    from its start to its JSON line, on the launch run's checkpoint (or one of a short run of its
    own). Its answer holds the scorer's own seconds for the 5 MB evaluation; the tolerance section
    compares its bpc with the run's. A scorer that fails records its crash line."""
    checkpoint = b.checkpoints.get(name)
    if checkpoint is None:
        folder = Path(run_train_copy(b, name, b.args.launch_budget, keep_folder=True)["folder"])
        checkpoint = b.checkpoints[name] = folder / "checkpoint.pt"
    if not checkpoint.exists():
        return dict(config=name, error="the training run left no checkpoint")
    result = dict(config=name) | fresh_score(b, checkpoint)
    b.scores[checkpoint] = result
    return result


def fresh_score(b, checkpoint):
    """`python prepare.py score CHECKPOINT` in a fresh process: its returncode, total seconds, and
    its answer or its crash line."""
    start = time.time()
    proc = subprocess.run(
        [sys.executable, str(harness_file()), "score", str(checkpoint)],
        cwd=checkpoint.parent,
        env=train_env(b, checkpoint.parent, b.args.launch_budget),
        capture_output=True,
        text=True,
        timeout=600,
    )
    seconds = time.time() - start
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        reason = next((line for line in reversed(lines) if line.startswith("crash: ")), "no output")
        return dict(returncode=proc.returncode, total_seconds=seconds, error=f"prepare.py score: {reason}")
    return dict(returncode=0, total_seconds=seconds, answer=json.loads(lines[-1]))


def gpu_hold(b):
    """Keep the GPU busy for about GPU_HOLD_S (torch.cuda._sleep, calibrated here); the event
    recorded after it. None off CUDA."""
    if not b.cuda:
        return None
    cycles = 10_000_000
    ms = elapsed(b.device, lambda: torch.cuda._sleep(cycles)) * 1000
    torch.cuda._sleep(int(cycles * GPU_HOLD_S * 1000 / max(ms, 1e-3)))
    done = torch.cuda.Event()
    done.record()
    return done


def host_and_gpu_time(b, cfg):
    """Per step of `cfg`: GPU time (free-running steps, CUDA events) and host time (HOST_TIME_STEPS
    issued while the GPU is held busy, so the host never waits on it). Host time above GPU time
    means the GPU idles: Muon's eager Newton-Schulz ops are the suspect."""
    fresh_device_state(b.device)
    run, model, optimizer = training_setup(b, cfg)
    free = Phases(b.device, on=False)

    def steps(n):
        for _ in range(n):
            loop_step(b, run, model, optimizer, cfg, free)

    warmup = b.args.warmup or run.excluded_steps
    with tracked(run), quietly():
        steps(warmup)  # compiles; the Tracker syncs on each
        gpu_s = elapsed(b.device, lambda: steps(prepare.METRICS_EVERY)) / prepare.METRICS_EVERY
        held = gpu_hold(b)
        start = time.perf_counter()
        steps(HOST_TIME_STEPS)
        host_s = (time.perf_counter() - start) / HOST_TIME_STEPS
        waited = held.query() if held is not None else None  # the hold ended first: the host waited somewhere
        sync(b.device)
    return dict(
        batch=cfg.batch,
        micro_batch=run.micro_batch,
        gpu_ms=1000 * gpu_s,
        host_ms=1000 * host_s,
        host_bound=host_s > gpu_s,
        host_waited=waited,
    )


def section_hosttime(b, name):
    """Host time against GPU time per step at the config's batch and at one rank's share under torchrun."""
    cfg = b.configs[name]
    batches = (cfg.batch, HOST_TIME_BATCHES[-1]) if b.args.tiny else HOST_TIME_BATCHES
    return dict(config=name, batches={str(n): host_and_gpu_time(b, replace(cfg, batch=n)) for n in batches})


def section_tolerance(b, name):
    """The run's own val_bpc_exact (its sealed scorer's) against `python prepare.py score` of its
    checkpoint in another fresh process: the figure RESCORE_TOLERANCE_GPU in labbook/rescore.py
    stands for. In the session's plan both are there already: the launch run's checkpoint and the
    score section's answer for it. Named alone, it trains a run of its own and re-scores that."""
    checkpoint = b.checkpoints.get(name)
    if checkpoint is None:
        budget = 1.0 if b.args.tiny else TOLERANCE_BUDGET  # --tiny: the CPU smoke's one-second run
        checkpoint = Path(run_train_copy(b, name, budget, keep_folder=True)["folder"]) / "checkpoint.pt"
    log = (checkpoint.parent / "run.log").read_text()
    exact = parse_summary(log).get("val_bpc_exact")
    if exact is None:
        return dict(config=name, error="the training run failed", log_tail=log.splitlines()[-5:])
    scored = b.scores.get(checkpoint) or fresh_score(b, checkpoint)
    if "error" in scored:
        return dict(config=name, error=f"the re-score failed: {scored['error']}")
    return dict(
        config=name,
        checkpoint=str(checkpoint),
        val_bpc_exact=exact,
        rescored=scored["answer"]["bpc"],
        abs_difference=abs(scored["answer"]["bpc"] - exact),
        rescore_seconds=scored["answer"]["seconds"],
        eval_bytes=scored["answer"]["summary"]["eval_bytes"],
    )


SECTIONS = dict(
    ceilings=section_ceilings,
    throughput=section_throughput,
    microbatch=section_microbatch,
    recompiles=section_recompiles,
    score=section_score,
    hosttime=section_hosttime,
    tolerance=section_tolerance,
    baseline=section_baseline,
    eval=section_eval,
    launch=section_launch,
    optimizer=section_optimizer,
    fp8=section_fp8,
    quality=section_quality,
)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def ceiling_rows(_, c):
    return [
        (f"matmul ceiling ({c['matmul_dtype']} {c['matmul_n']}^3)", f"{c['matmul_tflops']:.3g} TFLOP/s", ""),
        ("device copy bandwidth (read+write)", f"{c['copy_gb_per_s']:.0f} GB/s", ""),
    ]


def throughput_rows(name, t):
    mfu = f"MFU {fmt(t['mfu_vs_measured_pct'])}% measured / {fmt(t['mfu_vs_datasheet_pct'])}% datasheet"
    target = f">= {TARGETS['mfu_dim1024_pct']:.0f}% datasheet" if name == "dim1024" else ""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in t["breakdown_ms"].items())
    return [
        (f"{name}: tokens/s, {mfu}", f"{t['tokens_per_s']:,.0f}", target),
        (f"{name}: step {t['step_ms']:.1f} ms, peak {t['peak_memory_mb']:,.0f} MB, phases (ms)", parts, ""),
    ]


def baseline_rows(_, base):
    return [
        ("fork-style loop tokens/s (fork config)", f"{base['tokens_per_s']:,.0f}", ""),
        (
            "train.py loop / fork-style loop (fork config)",
            fmt(base["speedup_train_py_loop"], ".2f") + "x",
            f">= {TARGETS['speedup_vs_fork_loop']:g}x",
        ),
        ("default config / fork-style loop", fmt(base["speedup_default_config"], ".2f") + "x", ""),
    ]


def fp8_rows(name, f):
    if not f["timed"]:
        return [(f"fp8 {name}: linears wanted {f['wanted']}", f"not timed: {f['reason']}", "")]
    rows = []
    for label in FP8_FILTERS:
        r = f[label]
        value = fmt(r.get("speedup_vs_bf16"), ".2f") + "x vs BF16" if "tokens_per_s" in r else r.get("note", "-")
        rows.append((f"fp8 {name} ({label}, {r.get('converted', 0)} linears)", value, "> 1x to keep"))
    return rows


def optimizer_rows(_, opt):
    ms = ", ".join(f"{k} {v['ms']:.2f} ms" for k, v in opt["variants"].items())
    share = fmt(opt["eager_share_of_step"], ".1%")
    return [(f"optimizer step ({opt['config']}), eager share of step {share}", ms, "")]


def eval_rows(_, ev):
    return [
        (
            f"final eval of {ev['eval_bytes']:,} val bytes",
            f"{ev['seconds']:.1f} s",
            f"<= {TARGETS['eval_5m_bytes_s']:g} s for 5M",
        )
    ]


def launch_rows(_, launch):
    return [
        (
            "launch to first counted step",
            f"{fmt(launch.get('launch_to_first_counted_step_s'))} s",
            f"<= {TARGETS['launch_to_first_counted_step_s']:g} s",
        )
    ]


def quality_rows(_, q):
    bpc = f"default {fmt(q['default'].get('val_bpc'), '.4f')}, fork {fmt(q['fork'].get('val_bpc'), '.4f')}"
    return [
        (
            f"quality: val_bpc {bpc}",
            f"gap {fmt(q['bpc_gap_fork_minus_default'], '.4f')}",
            f">= {TARGETS['quality_bpc_gap']:g}",
        )
    ]


def microbatch_rows(_, m):
    if not m.get("timed"):
        return [("micro-batch truth table", f"not measured: {m.get('reason')}", "")]
    rows = []
    for cap, r in m["caps"].items():
        value = r.get("error") or (
            f"micro_batch {r['micro_batch']}, fitting peak {r['fitting_peak_mb']:,.0f} MB, compiled peak "
            f"{r['compiled_peak_mb']:,.0f} MB, {r['tokens_per_s']:,.0f} tok/s"
        )
        rows.append((f"default model capped to {cap}", value, "fits, micro-batch > 1"))
    return rows


def recompiles_rows(_, r):
    return [(f"graph breaks / recompiles over {r['steps']} steps", f"{r['graph_breaks']} / {r['recompiles']}", "0 / 0")]


def score_rows(_, r):
    answer = r["answer"]
    return [
        ("sealed scorer, total", f"{r['total_seconds']:.1f} s", ""),
        (
            f"sealed scorer's eval of {answer['summary']['eval_bytes']:,} val bytes",
            f"{answer['seconds']:.1f} s",
            f"<= {TARGETS['eval_5m_bytes_s']:g} s for 5M",
        ),
    ]


def hosttime_rows(_, h):
    return [
        (f"host / GPU ms per step at {n} sequences", f"{r['host_ms']:.1f} / {r['gpu_ms']:.1f}", "host < GPU")
        for n, r in h["batches"].items()
    ]


def tolerance_rows(_, t):
    if "error" in t:
        return [("re-score tolerance", t["error"], "")]
    return [("re-score |val_bpc_exact - rescore|", f"{t['abs_difference']:.2e}", "<= RESCORE_TOLERANCE_GPU")]


ROWS = dict(
    ceilings=ceiling_rows,
    microbatch=microbatch_rows,
    recompiles=recompiles_rows,
    score=score_rows,
    hosttime=hosttime_rows,
    tolerance=tolerance_rows,
    throughput=throughput_rows,
    baseline=baseline_rows,
    fp8=fp8_rows,
    optimizer=optimizer_rows,
    eval=eval_rows,
    launch=launch_rows,
    quality=quality_rows,
)


def report_rows(results):
    """(what, value, target) lines for the table printed at the end, one group per result."""
    rows = []
    for section, value in results.items():
        entries = value.items() if section in KEYED_SECTIONS else [(None, value)]
        for name, entry in entries:
            if "error" in entry or "skipped" in entry:
                problem = f"error: {entry['error']}" if "error" in entry else f"skipped: {entry['skipped']}"
                rows.append((f"{section} {name or ''}".strip(), problem, ""))
            elif section in ROWS:
                rows += ROWS[section](name, entry)
    return rows


def print_report(results, out):
    rows = report_rows(results)
    width = max((len(r[0]) for r in rows), default=0)
    print("\n---")
    for what, value, target in rows:
        print(f"{what:<{width}}  {value}" + (f"   (target {target})" if target else ""))
    print(f"results: {out}")


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def open_bench(args, workdir):
    """train.py as a module, the corpus, prepare.setup(): the Bench every section uses."""
    if harness_file().parent != REPO:
        print(f"warning: prepare is imported from {harness_file()}, not from {REPO}: set PYTHONPATH={REPO}")
    if args.corpus:
        corpus = Path(args.corpus).resolve()
    elif args.tiny:
        corpus = generated_corpus(workdir / "corpus.txt", TINY_CORPUS_BYTES)
    else:
        print(f"building a {args.corpus_mb} MB stand-in corpus from site-packages ...")
        corpus = site_packages_corpus(workdir / "corpus.txt", args.corpus_mb * 1_000_000)
    for key in [k for k in os.environ if k.startswith("AR_")] + ["USE_FP8", "USE_FP16"]:
        os.environ.pop(key, None)
    os.environ.update(AR_DATA=str(corpus), AR_TIME_BUDGET="1e9", AR_METRICS=str(workdir / "metrics.jsonl"))
    if args.device:
        os.environ["AR_DEVICE"] = args.device
    module = train_module()
    blob, bounds, identity, _ = prepare.read_splits(prepare.read_env())
    splits = {
        name: prepare.split_bytes(blob, lo, hi) for name, (lo, hi) in bounds.items()
    }  # the bench scores val itself
    val_size = bounds["val"][1] - bounds["val"][0]
    run = prepare.setup(prepare.read_env(), bytearray(blob[slice(*bounds["train"])]), identity, val_size)
    heldout = {"val": splits["val"].to(run.device)}
    bench = Bench(args, module, run, heldout, make_configs(module, args), workdir, corpus, output_path(args, run), {})
    bench.results["meta"] = meta(bench)
    return bench


def run_section(b, section, name):
    """A section's result, or {"error": ...}: one failure (an OOM at dim 1024, say) must not cost
    the figures of the sections after it on a machine lent for minutes."""
    try:
        return SECTIONS[section](b, name)
    except Exception as e:
        traceback.print_exc()
        fresh_device_state(b.device)
        return {"error": f"{type(e).__name__}: {e}".splitlines()[0]}


def use_run_allocator():
    """The CUDA allocator setting of a real run (prepare.main's), before CUDA starts: memory
    figures must be the ones a run sees."""
    if not os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):
        os.environ.setdefault("PYTORCH_ALLOC_CONF", prepare.ALLOC_CONF)


def main(argv=None):
    args = parse_args(argv)
    if args.plan:
        raise SystemExit(0 if print_plan(args) else 1)
    use_run_allocator()
    started = time.time()
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        b = open_bench(args, workdir)
        for section, name in section_plan(args):
            start = time.time()
            what = label(section, name)
            print(f"== {what}", flush=True)
            spent = start - started
            if args.budget and spent + ESTIMATES.get(what, 0) > args.budget:
                result = dict(
                    skipped=f"{spent:.0f} s spent, about {ESTIMATES[what]} s more would pass {args.budget:g} s"
                )
            else:
                result = run_section(b, section, name)
            if section in KEYED_SECTIONS:
                b.results.setdefault(section, {})[name] = result
            else:
                b.results[section] = result
            b.results.setdefault("seconds", {})[what] = time.time() - start
            b.save()  # each section's figures are on disk as soon as it ends
        b.results["meta"]["load_average_at_end"] = os.getloadavg()
        b.save()
        print_report(b.results, b.out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

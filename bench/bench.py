"""Benchmark train.py's training step: ceilings, tokens/s and MFU, FP8, a fork-style baseline loop,
the optimizer's share, launch time, final-evaluation time and (with --quality) val_bpc of the
default config against the fork's original config. train.py is imported, never modified.

On one GPU (minutes; --quality adds two 120 s training runs, and runs them first):
    python bench/bench.py                      # writes bench/results/<date>-<gpu>.json
    python bench/bench.py --quality
On a lent GPU machine without network (wheels in .device/wheels/, see docs/benchmarks.md):
    bash bench/gpu_session.sh
CPU smoke test (what tests/test_bench.py runs, well under a minute):
    python bench/bench.py --device cpu --tiny --out /tmp/bench.json
CPU step cost at the real model sizes (the CPU figures in docs/benchmarks.md, ~4 minutes on 2 cores):
    python bench/bench.py --device cpu --batch 1 --accum 1 --warmup 2 --steps 2 --corpus-mb 20 \
        --sections ceilings,throughput,baseline,eval,optimizer
"""

import argparse
import contextlib
import datetime
import gc
import hashlib
import importlib.util
import io
import json
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
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import adam_atan2_pytorch.muon_adam_atan2 as muon_module
import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train.py"

# The fork's original setup (its analysis notebook's baseline): train.py's loop runs it in-process,
# the quality comparison runs it as an edited copy of train.py.
FORK_CONSTANTS = dict(DIM=512, DEPTH=6, HEADS=8, BATCH_SIZE=4, GRAD_ACCUM=4, LR=1e-4, MUON_LR=1e-4, GRAD_CLIP=0.5)
FORK_DECODER = dict(rotary_pos_emb=True, attn_flash=True, attn_qk_norm=True, ff_relu_squared=True, use_rmsnorm=True)
LARGE = dict(DIM=1024, DEPTH=8, HEADS=16)  # the size the MFU target is stated for
TINY = dict(DIM=32, DEPTH=2, HEADS=2)  # --tiny: every model shrinks to this
TINY_BATCH = 2
TINY_SEQ = 128  # --tiny also shortens train.py's MAX_SEQ_LEN, in-process and in its subprocess copies

EVAL_TARGET_BYTES = 5_000_000  # train.py scores all 5M val bytes of enwik8 on a GPU
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
SECTION_ORDER = ("ceilings", "throughput", "baseline", "eval", "launch", "optimizer", "fp8")
WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which but".split()


@dataclass
class Config:
    name: str
    dim: int
    depth: int
    heads: int
    batch: int  # sequences per micro-step
    accum: int
    grad_clip: float
    fork: bool = False  # built with the fork's Decoder options instead of train.py's build_model


@dataclass
class Bench:
    args: argparse.Namespace
    module: object  # train.py, imported
    run: object  # the Run that train.py's setup() returned
    configs: dict
    workdir: Path
    corpus: Path
    out: Path
    results: dict

    @property
    def device(self):
        return self.run.device

    @property
    def cuda(self):
        return self.run.device.type == "cuda"

    def save(self):
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps(self.results, indent=2, default=str) + "\n")


# ---------------------------------------------------------------------------
# Arguments, train.py as a module, the stand-in corpus
# ---------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", help="cuda or cpu (default: cuda when available)")
    p.add_argument("--tiny", action="store_true", help=f"every model at {TINY}, a few steps, a generated corpus")
    p.add_argument("--sections", help=f"comma list out of {','.join(SECTION_ORDER)},quality (default: all)")
    p.add_argument("--quality", action="store_true", help="also train default and fork configs as subprocesses")
    p.add_argument("--quality-budget", type=float, help="AR_TIME_BUDGET of each quality run (default 120)")
    p.add_argument("--launch-budget", type=float, help="AR_TIME_BUDGET of the launch run (default 20)")
    p.add_argument("--corpus", help="text file to train on (default: a stand-in built from site-packages)")
    p.add_argument("--corpus-mb", type=int, default=CORPUS_MB, help="size of the stand-in corpus")
    p.add_argument("--batch", type=int, help="micro-batch of every throughput config (default: each config's)")
    p.add_argument("--accum", type=int, help="accumulation of every throughput config (default: each config's)")
    p.add_argument("--warmup", type=int, help="untimed first steps (default: train.py's uncounted steps)")
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
    args.launch_budget = args.launch_budget or (1.0 if args.tiny else 20.0)
    args.optimizer_variants = (args.optimizer_variants or ("eager" if small else "eager,newton_schulz")).split(",")
    return args


def section_plan(args):
    """(section, config) pairs in the order they run. With --quality the two training runs go
    first (their default-config run also gives the launch and eval figures); then what the
    targets need most, so that a run cut off by a timeout still leaves the key figures."""
    wanted = set(args.sections.split(",")) if args.sections else set(SECTION_ORDER)
    if args.quality:
        wanted.add("quality")
    unknown = wanted - set(SECTION_ORDER) - {"quality"}
    if unknown:
        raise SystemExit(f"unknown sections {sorted(unknown)}: choose from {','.join(SECTION_ORDER)},quality")
    plan = [("quality", None)] if "quality" in wanted else []
    plan += [("ceilings", None), ("throughput", "default"), ("throughput", "fork"), ("baseline", "fork")]
    plan += [("eval", "default"), ("throughput", "dim1024")]
    plan += [("launch", "default")] if "quality" not in wanted else []
    plan += [("optimizer", "default"), ("fp8", "default"), ("fp8", "dim1024")]
    return [(section, name) for section, name in plan if section in wanted]


def import_train(path=TRAIN, name="train_for_bench"):
    """A script as a module (train.py by default: its main() only runs under __main__)."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
    default = Config(
        "default", module.DIM, module.DEPTH, module.HEADS, module.BATCH_SIZE, module.GRAD_ACCUM, module.GRAD_CLIP
    )
    f = FORK_CONSTANTS
    fork = Config("fork", f["DIM"], f["DEPTH"], f["HEADS"], f["BATCH_SIZE"], f["GRAD_ACCUM"], f["GRAD_CLIP"], fork=True)
    large = replace(default, name="dim1024", dim=LARGE["DIM"], depth=LARGE["DEPTH"], heads=LARGE["HEADS"])
    configs = {c.name: c for c in (default, fork, large)}
    for name, c in configs.items():
        if args.tiny:
            c = replace(
                c, dim=TINY["DIM"], depth=TINY["DEPTH"], heads=TINY["HEADS"], batch=TINY_BATCH, accum=min(c.accum, 2)
            )
        configs[name] = replace(c, batch=args.batch or c.batch, accum=args.accum or c.accum)
    return configs


def output_path(args, run, module):
    if args.out:
        return Path(args.out)
    label = module.gpu_name(run.device) if run.device.type == "cuda" else "cpu"
    slug = re.sub(r"[^A-Za-z0-9]+", "-", label).strip("-")
    return REPO / "bench" / "results" / f"{datetime.date.today().isoformat()}-{slug}.json"


def meta(b):
    module, run = b.module, b.run
    cpu = next(
        (line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")), platform.processor()
    )
    return dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        device=str(run.device),
        gpu=module.gpu_name(run.device),
        datasheet_bf16_tflops=run.peak_tflops or None,
        cpu=cpu,
        cpu_threads=torch.get_num_threads(),
        load_average_at_start=os.getloadavg(),  # a busy shared machine makes every figure slower
        torch=torch.__version__,
        python=platform.python_version(),
        precision=run.precision,
        max_seq_len=module.MAX_SEQ_LEN,
        train_py_sha256=hashlib.sha256(TRAIN.read_bytes()).hexdigest()[:12],
        corpus=str(b.corpus),
        corpus_bytes=b.corpus.stat().st_size,
        configs={name: asdict(c) for name, c in b.configs.items()},
        args=vars(b.args),
        targets=TARGETS,
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
    gc.unfreeze()  # train.py's Tracker freezes the heap at step 1; unfrozen, old models can be collected
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def quietly():
    """train.py's Tracker prints progress lines: keep them out of the bench's table."""
    return contextlib.redirect_stdout(io.StringIO())


# ---------------------------------------------------------------------------
# Models and the training step (train.py's main loop, phase by phase)
# ---------------------------------------------------------------------------


@contextlib.contextmanager
def constants(module, **values):
    """Override train.py's ALL_CAPS constants for the duration of a build."""
    saved = {k: getattr(module, k) for k in values}
    for k, v in values.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in saved.items():
            setattr(module, k, v)


def build_model(module, cfg):
    with constants(module, DIM=cfg.dim, DEPTH=cfg.depth, HEADS=cfg.heads):
        return fork_model(module, cfg) if cfg.fork else module.build_model()


def fork_model(module, cfg):
    net = module.TransformerWrapper(
        num_tokens=module.VOCAB,
        max_seq_len=module.MAX_SEQ_LEN,
        attn_layers=module.Decoder(dim=cfg.dim, depth=cfg.depth, heads=cfg.heads, **FORK_DECODER),
    )
    return module.AutoregressiveWrapper(net)


def training_setup(b, cfg, compile_model=True):
    """(model, optimizer) the way train.py's main() makes them: prepare_model, build_optimizer,
    then torch.compile on CUDA when train.py's COMPILE says so."""
    module = b.module
    with quietly():
        model = module.prepare_model(b.run, build_model(module, cfg))
    optimizer = module.build_optimizer(model)
    if compile_model and module.COMPILE and b.cuda:
        model = torch.compile(model)
    return model, optimizer


def train_step(b, model, optimizer, cfg, tracker, step, phase):
    """One optimizer step of train.py's loop; `phase` names its parts for the breakdown."""
    module, run = b.module, b.run
    train_loss = 0.0
    for _ in range(cfg.accum):
        with phase("data"):
            x = module.get_batch(run, cfg.batch)
        with phase("forward_backward"):
            with run.autocast():
                loss = model(x) / cfg.accum
            run.scaler.scale(loss).backward()
            train_loss += loss.detach()
    with phase("grad_clip"):
        run.scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    with phase("optimizer"):
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
    with phase("host_sync"):  # the Tracker copies losses to the host every METRICS_EVERY steps
        tracker.end_step(
            step, train_loss, optimizer.param_groups[0]["lr"], grad_norm, cfg.batch * cfg.accum * module.MAX_SEQ_LEN
        )


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def flops_per_token(module, cfg, num_params):
    """train.py's make_summary formula: 6N for the weights plus the attention matmuls."""
    return 6 * num_params + 12 * cfg.depth * cfg.dim * module.MAX_SEQ_LEN


def run_steps(b, model, optimizer, cfg, tracker, steps, phase):
    for step in steps:
        train_step(b, model, optimizer, cfg, tracker, step, phase)


def measure_training(b, cfg):
    """Warm up (compile) for train.py's uncounted steps, time free-running steps, then a few
    steps phase by phase. Returns tokens/s, MFU, peak memory and the step breakdown."""
    fresh_device_state(b.device)
    model, optimizer = training_setup(b, cfg)
    tokens_per_step = cfg.batch * cfg.accum * b.module.MAX_SEQ_LEN
    warmup, timed, phased = b.args.warmup or b.run.excluded_steps, b.args.steps, b.args.breakdown_steps
    phases = Phases(b.device)
    with quietly():
        tracker = b.module.Tracker(b.run)
        free = Phases(b.device, on=False)
        steps = range(1, warmup + 1)
        warm_s = elapsed(b.device, lambda: run_steps(b, model, optimizer, cfg, tracker, steps, free))
        later = range(warmup + 1, warmup + timed + 1)
        seconds = elapsed(b.device, lambda: run_steps(b, model, optimizer, cfg, tracker, later, free))
        last = range(warmup + timed + 1, warmup + timed + phased + 1)
        run_steps(b, model, optimizer, cfg, tracker, last, phases)
    num_params = count_params(model)
    result = throughput_figures(b, cfg, num_params, tokens_per_step, seconds / timed)
    breakdown = {k: 1000 * v / phased for k, v in phases.seconds.items()}
    result.update(
        warmup_steps=warmup,
        warmup_seconds=warm_s,
        peak_memory_mb=b.module.peak_memory_mb(b.device),
        peak_memory_scope="CUDA allocator peak of this config" if b.cuda else "process peak RSS so far",
        breakdown_ms=breakdown,
        breakdown_share={k: v / sum(breakdown.values()) for k, v in breakdown.items()},
        host_syncs_per_step=1 / b.module.METRICS_EVERY,
    )
    return result


def throughput_figures(b, cfg, num_params, tokens_per_step, step_seconds):
    tokens_per_s = tokens_per_step / step_seconds
    fpt = flops_per_token(b.module, cfg, num_params)
    achieved = fpt * tokens_per_s / 1e12
    ceiling = b.results.get("ceilings", {}).get("matmul_tflops")
    return dict(
        params_M=num_params / 1e6,
        batch=cfg.batch,
        accum=cfg.accum,
        tokens_per_step=tokens_per_step,
        precision=b.run.precision,
        compiled=bool(b.module.COMPILE and b.cuda),
        step_ms=1000 * step_seconds,
        tokens_per_s=tokens_per_s,
        flops_per_token=fpt,
        achieved_tflops=achieved,
        mfu_vs_measured_pct=100 * achieved / ceiling if ceiling else None,
        mfu_vs_datasheet_pct=100 * achieved / b.run.peak_tflops if b.run.peak_tflops else None,
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

    def __init__(self, data, seq_len, device):
        self.data, self.seq_len, self.device = data, seq_len, device

    def __len__(self):
        return 10**9

    def __getitem__(self, index):
        start = torch.randint(0, len(self.data) - self.seq_len, (1,)).item()
        return self.data[start : start + self.seq_len].long().to(self.device)  # .cuda() on a GPU


def baseline_step(run, model, optimizer, batches, cfg):
    for _ in range(cfg.accum):
        with run.autocast():
            loss = model(next(batches))
        (loss / cfg.accum).backward()
        loss.item()  # the fork read every micro-step's loss on the host
    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    optimizer.zero_grad()


def section_baseline(b, name):
    """The fork's loop at the fork's config, with the same model, optimizer and precision as
    train.py's loop: not compiled, host-side sampling, a sync per micro-step."""
    cfg = b.configs[name]
    fresh_device_state(b.device)
    model, optimizer = training_setup(b, cfg, compile_model=False)
    windows = RandomWindows(b.run.splits["train"].cpu(), b.module.MAX_SEQ_LEN, b.device)
    batches = iter(torch.utils.data.DataLoader(windows, batch_size=cfg.batch))
    for _ in range(1 if b.args.tiny else 3):
        baseline_step(b.run, model, optimizer, batches, cfg)
    seconds = elapsed(
        b.device, lambda: [baseline_step(b.run, model, optimizer, batches, cfg) for _ in range(b.args.steps)]
    )
    tokens_per_s = cfg.batch * cfg.accum * b.module.MAX_SEQ_LEN * b.args.steps / seconds
    throughput = b.results.get("throughput", {})
    loop = throughput.get(name, {}).get("tokens_per_s")
    default = throughput.get("default", {}).get("tokens_per_s")
    return dict(
        config=name,
        step_ms=1000 * seconds / b.args.steps,
        tokens_per_s=tokens_per_s,
        train_py_loop_tokens_per_s=loop,
        speedup_train_py_loop=loop / tokens_per_s if loop else None,
        default_config_tokens_per_s=default,
        speedup_default_config=default / tokens_per_s if default else None,
    )


# ---------------------------------------------------------------------------
# Section: final evaluation time (train.py's evaluate on 5M val bytes)
# ---------------------------------------------------------------------------


def section_eval(b, name):
    fresh_device_state(b.device)
    model, _ = training_setup(b, b.configs[name], compile_model=False)
    default_bytes = EVAL_TARGET_BYTES if b.cuda else (8192 if b.args.tiny else b.module.CPU_EVAL_BYTES)
    saved = b.run.eval_bytes
    b.run.eval_bytes = min(b.args.eval_bytes or default_bytes, len(b.run.splits["val"]))
    try:
        _, seconds = b.module.evaluate(b.run, b.module.unwrap(model).net)
        scored = b.run.eval_bytes
    finally:
        b.run.eval_bytes = saved
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
    """Milliseconds per optimizer step for each variant, on the gradients of one real batch,
    and the step's share of a training step (from the throughput section of the same config)."""
    cfg = b.configs[name]
    fresh_device_state(b.device)
    model, optimizer = training_setup(b, cfg, compile_model=False)
    with b.run.autocast():
        loss = model(b.module.get_batch(b.run, cfg.batch))
    loss.backward()
    timed = {}
    for variant in b.args.optimizer_variants:
        step = optimizer_step_fn(optimizer, variant)
        compile_s = elapsed(b.device, lambda step=step: [step() for _ in range(2)])
        seconds = elapsed(b.device, lambda step=step: [step() for _ in range(b.args.steps)])
        timed[variant] = dict(ms=1000 * seconds / b.args.steps, first_two_steps_s=compile_s)
    step_ms = b.results.get("throughput", {}).get(name, {}).get("step_ms")
    eager = timed.get("eager", {}).get("ms")
    train_flops = flops_per_token(b.module, cfg, count_params(model)) * cfg.batch * cfg.accum * b.module.MAX_SEQ_LEN
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
# Section: FP8 against BF16 (train.py's prepare_model with run.precision = "FP8")
# ---------------------------------------------------------------------------


def torchao_filter(module, fqn):
    """torchao's own heuristic for the tensorwise recipe (the one train.py uses), kept to the
    transformer body like train.py's fp8_wants: the comparison point for FP8_MIN_FEATURES."""
    from torchao.float8 import _auto_filter_for_recipe

    return "attn_layers" in fqn and _auto_filter_for_recipe("tensorwise", filter_fqns=[])(module, fqn)


FP8_FILTERS = {"train_fp8_wants": None, "torchao_tensorwise": torchao_filter}


def fp8_ready(b):
    return b.cuda and torch.cuda.get_device_capability(b.device) >= (8, 9)


def wanted_linears(b, cfg, keep):
    with torch.device("meta"):
        model = build_model(b.module, cfg)
    return sum(bool(keep(m, n)) for n, m in model.named_modules())


def measure_fp8(b, cfg, keep):
    """Throughput with train.py's prepare_model in FP8, its layer filter swapped for `keep`.
    Nothing is timed when no layer qualifies: prepare_model then falls back to BF16."""
    from torchao.float8.float8_linear import Float8Linear

    module, run = b.module, b.run
    saved = run.precision, module.fp8_wants
    run.precision, module.fp8_wants = "FP8", keep or module.fp8_wants
    try:
        fresh_device_state(b.device)
        model, _ = training_setup(b, cfg, compile_model=False)
        converted = sum(isinstance(m, Float8Linear) for m in model.modules())
        precision = run.precision
        del model
        if precision != "FP8":
            return dict(converted=0, precision=precision, note="no linear qualifies: prepare_model fell back to BF16")
        result = measure_training(b, cfg)
        result["converted"] = converted
        return result
    finally:
        run.precision, module.fp8_wants = saved


def section_fp8(b, name):
    cfg = b.configs[name]
    counts = {f: wanted_linears(b, cfg, keep or b.module.fp8_wants) for f, keep in FP8_FILTERS.items()}
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
        values.update(TINY, BATCH_SIZE=4, GRAD_ACCUM=1, MAX_SEQ_LEN=TINY_SEQ)
    if config == "fork":
        source = replace_function(source, "build_model", fork_build_model_source())
    return edit_constants(source, **values)


def train_env(b, folder, budget):
    """The bench's environment minus its AR_* settings, with a cold private compile cache so that
    launch time is what a run on a fresh machine pays."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in ("USE_FP8", "USE_FP16")}
    env.update(
        AR_DATA=str(b.corpus),
        AR_TIME_BUDGET=str(budget),
        AR_METRICS=str(folder / "metrics.jsonl"),
        TORCHINDUCTOR_CACHE_DIR=str(folder / "inductor-cache"),
        TRITON_CACHE_DIR=str(folder / "triton-cache"),
        PYTHONUNBUFFERED="1",
    )
    if not b.cuda:
        env["AR_DEVICE"] = b.device.type
    if b.args.tiny:
        env["AR_EVAL_BYTES"] = "8192"
    return env


def parse_summary(log):
    """analysis.py's parse of a train.py summary, numbers as floats."""
    summary = import_train(REPO / "analysis.py", "analysis_for_bench").parse_summary(log)
    for key, value in summary.items():
        with contextlib.suppress(ValueError):
            summary[key] = float(value)
    return summary


def run_train_copy(b, config, budget):
    """Run a copy of train.py for `config` in its own folder; its summary plus a few facts."""
    folder = Path(tempfile.mkdtemp(prefix=f"{config}-", dir=b.workdir))
    (folder / "train.py").write_text(train_source(config, b.args.tiny))
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "train.py"],
        cwd=folder,
        env=train_env(b, folder, budget),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=budget + 900,
    )
    summary = parse_summary(proc.stdout)
    result = dict(config=config, budget_s=budget, returncode=proc.returncode, wall_seconds=time.time() - start)
    if proc.returncode != 0 or not summary:
        result["log_tail"] = proc.stdout.splitlines()[-20:]
        return result
    keys = ("val_bpc", "startup_seconds", "compile_seconds", "training_seconds", "eval_seconds", "eval_bytes")
    keys += ("total_seconds", "tokens_per_sec", "mfu_percent", "peak_vram_mb", "num_steps", "num_params_M")
    result.update({k: summary.get(k) for k in keys})
    result["launch_to_first_counted_step_s"] = summary["startup_seconds"] + summary["compile_seconds"]
    return result


def launch_figures(run):
    keys = ("budget_s", "startup_seconds", "compile_seconds", "launch_to_first_counted_step_s")
    return {k: run.get(k) for k in keys + ("eval_seconds", "eval_bytes", "returncode")}


def section_launch(b, name):
    """Launch to first counted step: startup (imports, data to the device) plus compile (the
    uncounted first steps), read from the summary of a short `python train.py` run."""
    return launch_figures(run_train_copy(b, name, b.args.launch_budget))


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


SECTIONS = dict(
    ceilings=section_ceilings,
    throughput=section_throughput,
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


ROWS = dict(
    ceilings=ceiling_rows,
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
            if "error" in entry:
                rows.append((f"{section} {name or ''}".strip(), f"error: {entry['error']}", ""))
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


def prepare(args, workdir):
    """Import train.py, point it at the corpus and call its setup(): the Bench every section uses."""
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
    module = import_train()
    if args.tiny:
        module.MAX_SEQ_LEN = TINY_SEQ
    run = module.setup()
    bench = Bench(args, module, run, make_configs(module, args), workdir, corpus, output_path(args, run, module), {})
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


def main(argv=None):
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        b = prepare(args, workdir)
        for section, name in section_plan(args):
            start = time.time()
            print(f"== {section}" + (f" {name}" if name else ""), flush=True)
            result = run_section(b, section, name)
            if section in KEYED_SECTIONS:
                b.results.setdefault(section, {})[name] = result
            else:
                b.results[section] = result
            b.results.setdefault("seconds", {})[f"{section}:{name}" if name else section] = time.time() - start
            b.save()
        b.results["meta"]["load_average_at_end"] = os.getloadavg()
        b.save()
        print_report(b.results, b.out)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()

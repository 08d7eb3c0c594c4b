"""
Autoresearch on x-transformers: train a byte-level language model on enwik8 for a fixed
5-minute budget on one GPU and report val_bpc (validation bits per byte, lower is better).
Usage: python train.py [--prepare-data]     (several GPUs: torchrun --nproc_per_node=N train.py)
"""

# ==== FIXED REGION START: do not modify (hashed into every run's fingerprint) ====
# Everything a keep/revert decision rests on lives here: the constants, the data, the
# evaluation, the summary, the fingerprint, the hard time limit and crash reporting.
# Edit the hyperparameters, model, optimizer, schedule and loop below the region instead.

import time

T_START = time.time()  # before the heavy imports, so startup_seconds counts them

import gc
import gzip
import hashlib
import io
import json
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import traceback
import urllib.request
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from adam_atan2_pytorch import MuonAdamAtan2
from torch import nn
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

REPO_DIR = Path(__file__).resolve().parent

MAX_SEQ_LEN = 1024  # context length of training and evaluation windows
TIME_BUDGET = 300  # seconds of training, excluding the first EXCLUDED_STEPS
EXCLUDED_STEPS = 10  # the first steps compile (CUDA) and warm up: they do not count against the budget
EXCLUDED_STEPS_NO_GPU = 1  # without CUDA nothing compiles, and one step of a GPU-sized model takes minutes
HARD_LIMIT_MARGIN = 240  # whole-run watchdog on a GPU: budget + this, under program.md's 10-minute kill
HARD_LIMIT_MARGIN_NO_GPU = 1800  # off the GPU a single step can take minutes; the watchdog still ends hangs
EVAL_BATCH_SIZE = 16  # windows per evaluation forward: fixed, never the training batch size
CPU_EVAL_BYTES = 65_536  # off CUDA only this prefix of val is scored, so a CPU run ends in minutes
METRICS_EVERY = 10  # steps between host syncs: loss checks, metrics rows, budget decision
STATUS_EVERY_S = 10.0  # seconds between progress lines (run.log stays short when redirected)
LOSS_EXPLODED = 3 * math.log(256)  # nats; three times a uniform guess over bytes means divergence
FP8_MIN_FEATURES = 2048  # torchao float8 only pays on large matmuls; smaller linears stay BF16
VOCAB = 256  # bytes

ENWIK8_SIZE = 100_000_000
ENWIK8_MD5 = "a1fa5ffddb56f4953e226637dabbb36a"
ENWIK8_URL = "http://mattmahoney.net/dc/enwik8.zip"
ENWIK8_NAMES = ("enwik8", "enwik8.gz", "enwik8.zip")
SPLITS = {"train": (0, 90_000_000), "val": (90_000_000, 95_000_000), "test": (95_000_000, 100_000_000)}
CUSTOM_SPLIT = (0.90, 0.95)  # any other corpus: 90/5/5 by position

# Dense BF16 tensor-core peak (TFLOP/s, datasheet, no sparsity). MFU always uses this BF16
# figure, whatever the precision, so FP8 gains show up as a higher MFU.
GPU_PEAK_TFLOPS = {
    "H200": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM ("H100 80GB HBM3")
    "GH200": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "L40": 181.0,
    "L4": 121.0,
    "A10G": 70.0,
    "A10": 125.0,
    "RTX 6000 Ada": 364.0,
    "RTX A6000": 155.0,
    "RTX 4090": 165.0,
    "RTX 4080": 97.0,
    "RTX 3090": 71.0,
}

ENV_VARS = (
    "AR_DATA",
    "AR_DATA_URL",
    "AR_TIME_BUDGET",
    "AR_DEVICE",
    "AR_EVAL_BYTES",
    "AR_SEED",
    "AR_HARD_LIMIT",
    "AR_METRICS",
)
TEMP_FILES: set[Path] = set()  # removed on interrupt, so no half-written file survives a kill
ACTIVE_RUN = None  # the Run that setup() made, for crash messages


class HarnessError(Exception):
    """A problem with the setup, data or environment: reported as one `crash:` line."""


class LossError(Exception):
    """A NaN, inf or exploded training loss."""


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)


# ---------------------------------------------------------------------------
# Environment
# ---------------------------------------------------------------------------


def env_number(name, default, kind=float, minimum=None):
    raw = os.environ.get(name, "")
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise HarnessError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if minimum is not None and value < minimum:
        raise HarnessError(f"{name}={raw!r} must be >= {minimum}")
    return value


def env_flag(name):
    raw = os.environ.get(name, "")
    if raw not in ("", "0", "1"):
        raise HarnessError(f"{name}={raw!r} is not valid: use {name}=1 to enable, 0 or unset for off")
    return raw == "1"


def read_env():
    """Every AR_* override and precision flag, validated once, before any heavy work."""
    use_fp8, use_fp16 = env_flag("USE_FP8"), env_flag("USE_FP16")
    if use_fp8 and use_fp16:
        raise HarnessError("USE_FP8=1 and USE_FP16=1 are exclusive: set one of them, or neither for BF16")
    budget = env_number("AR_TIME_BUDGET", float(TIME_BUDGET), float, minimum=0.001)
    margin = HARD_LIMIT_MARGIN if torch.cuda.is_available() else HARD_LIMIT_MARGIN_NO_GPU
    return dict(
        use_fp8=use_fp8,
        use_fp16=use_fp16,
        budget=budget,
        hard_limit=env_number("AR_HARD_LIMIT", budget + margin, float, minimum=0.001),
        eval_bytes=env_number("AR_EVAL_BYTES", None, int, minimum=2),
        seed=env_number("AR_SEED", 42, int, minimum=0),
        device=os.environ.get("AR_DEVICE", ""),
        data=os.environ.get("AR_DATA", ""),
        data_url=os.environ.get("AR_DATA_URL", "") or ENWIK8_URL,
        metrics=os.environ.get("AR_METRICS", "") or "metrics.jsonl",
        overrides={k: os.environ[k] for k in ENV_VARS if os.environ.get(k)},
    )


def pick_device(requested):
    if requested:
        try:
            device = torch.device(requested)
        except RuntimeError:
            raise HarnessError(f"AR_DEVICE={requested!r} is not a device: use cuda, cuda:N, mps or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise HarnessError("AR_DEVICE=cuda but this machine has no CUDA GPU: unset it, or use AR_DEVICE=cpu")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise HarnessError("AR_DEVICE=mps but MPS is not available here: unset it, or use AR_DEVICE=cpu")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_precision(env, device):
    """BF16 autocast on CUDA, FP32 elsewhere; FP16 and FP8 on request where the card has them."""
    if device.type != "cuda":
        for flag, on in (("USE_FP8", env["use_fp8"]), ("USE_FP16", env["use_fp16"])):
            if on:
                print0(f"notice: {flag}=1 needs an NVIDIA GPU, this run is on {device.type}: continuing in FP32")
        return "FP32"
    if env["use_fp16"]:
        return "FP16"
    if env["use_fp8"]:
        major, minor = torch.cuda.get_device_capability(device)
        if (major, minor) < (8, 9):
            print0(
                f"notice: USE_FP8=1 needs compute capability >= 8.9, this GPU has {major}.{minor}: continuing in BF16"
            )
            return "BF16"
        return "FP8"
    return "BF16"


def gpu_name(device):
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "none"


def gpu_peak_tflops(name):
    for key, peak in GPU_PEAK_TFLOPS.items():  # ordered so "H100 PCIe" matches before "H100"
        if key in name:
            return peak
    return 0.0


# ---------------------------------------------------------------------------
# Data: enwik8, found or downloaded once, verified once, split 90M/5M/5M
# ---------------------------------------------------------------------------


def cache_dir():
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "autoresearch-xt"


GET_DATA_HELP = (
    "Get enwik8 in one of these ways: set AR_DATA=/path/to/enwik8 (raw, .gz or .zip); "
    "run `git submodule update --init x-transformers` for x-transformers/data/enwik8.gz; "
    "copy the raw file to {cache}/enwik8; or go online (or set AR_DATA_URL to a mirror) "
    "and run `python train.py --prepare-data`."
)


def atomic_write_path(final):
    tmp = final.with_name(f"{final.name}.part{os.getpid()}")
    TEMP_FILES.add(tmp)
    return tmp


def finish_atomic(tmp, final):
    os.replace(tmp, final)
    TEMP_FILES.discard(tmp)


def download(url, dest):
    """Stream `url` to `dest` through a temporary file: an interrupted download never becomes `dest`."""
    from tqdm import tqdm

    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_write_path(dest)
    print0(f"downloading {url} -> {dest}")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            # On a terminal a live bar; redirected to run.log only a line every 30 s.
            bar = tqdm(total=total, unit="B", unit_scale=True, mininterval=0.5 if sys.stderr.isatty() else 30)
            received = 0
            while chunk := response.read(1 << 20):
                out.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
            bar.close()
        if total is not None and received != total:
            raise HarnessError(f"download of {url} was cut short ({received:,} of {total:,} bytes): run again")
        finish_atomic(tmp, dest)
    except OSError as e:  # URLError, timeouts, refused connections
        raise HarnessError(f"could not download {url}: {e}. " + GET_DATA_HELP.format(cache=cache_dir())) from None
    finally:
        tmp.unlink(missing_ok=True)
        TEMP_FILES.discard(tmp)


def read_corpus(path):
    """Raw bytes of a raw, gzip or zip file, with a one-line error naming the file on failure."""
    try:
        blob = path.read_bytes()
        if blob[:2] == b"\x1f\x8b" or path.suffix == ".gz":
            return gzip.decompress(blob)
        if blob[:4] == b"PK\x03\x04" or path.suffix == ".zip":
            with zipfile.ZipFile(io.BytesIO(blob)) as zf:
                return zf.read(zf.namelist()[0])
        return blob
    except IsADirectoryError:
        raise HarnessError(f"{path} is a directory, not a data file: remove it or point AR_DATA at the file") from None
    except (OSError, EOFError, zipfile.BadZipFile, IndexError) as e:
        raise HarnessError(f"cannot read {path} ({e}): it is damaged; delete it and fetch it again") from None


def verified_stamps():
    try:
        return json.loads((cache_dir() / "verified.json").read_text())
    except (OSError, ValueError):
        return {}


def stat_key(path):
    st = path.stat()
    return f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}"


def check_enwik8(path, blob):
    """Refuse anything that is not exactly enwik8. A pass is remembered by the file's stat."""
    stamps, key = verified_stamps(), str(path.resolve())
    if len(blob) == ENWIK8_SIZE and stamps.get(key) == stat_key(path):
        return
    md5 = hashlib.md5(blob).hexdigest()
    if len(blob) != ENWIK8_SIZE or md5 != ENWIK8_MD5:
        raise HarnessError(
            f"{path} is not enwik8: {len(blob):,} bytes with md5 {md5}, expected {ENWIK8_SIZE:,} bytes "
            f"with md5 {ENWIK8_MD5}. It is truncated or corrupt: delete it and fetch it again."
        )
    stamps[key] = stat_key(path)
    stamp_file = cache_dir() / "verified.json"
    stamp_file.parent.mkdir(parents=True, exist_ok=True)
    tmp = atomic_write_path(stamp_file)
    tmp.write_text(json.dumps(stamps, indent=1))
    finish_atomic(tmp, stamp_file)


def locate_data(env):
    """(path, is_enwik8) in lookup order: AR_DATA, the submodule copy, the cache, a download."""
    if env["data"]:
        path = Path(env["data"]).expanduser()
        if not path.exists():
            raise HarnessError(f"AR_DATA={env['data']} does not exist")
        return path, path.name in ENWIK8_NAMES
    submodule = REPO_DIR / "x-transformers" / "data" / "enwik8.gz"
    if submodule.exists():
        return submodule, True
    cached = cache_dir() / "enwik8"
    if cached.exists():
        return cached, True
    archive = cache_dir() / "enwik8.zip"
    download(env["data_url"], archive)
    blob = read_corpus(archive)
    tmp = atomic_write_path(cached)
    tmp.write_bytes(blob)
    finish_atomic(tmp, cached)
    archive.unlink()
    return cached, True


def load_corpus(env):
    """Train/val/test bytes plus the data's identity (enwik8's md5, or a custom file's hash)."""
    path, is_enwik8 = locate_data(env)
    blob = read_corpus(path)
    if is_enwik8:
        check_enwik8(path, blob)
        bounds, identity = SPLITS, f"enwik8:{ENWIK8_MD5}"
    else:
        n = len(blob)
        if n < 20 * (MAX_SEQ_LEN + 1):
            raise HarnessError(f"{path} holds {n:,} bytes: a custom corpus needs at least {20 * (MAX_SEQ_LEN + 1):,}")
        a, b = int(n * CUSTOM_SPLIT[0]), int(n * CUSTOM_SPLIT[1])
        bounds = {"train": (0, a), "val": (a, b), "test": (b, n)}
        identity = f"custom:{hashlib.sha256(blob).hexdigest()[:16]}"
        print0(f"notice: custom corpus {path} ({n:,} bytes): results are not comparable with enwik8 runs")
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    return {name: data[lo:hi] for name, (lo, hi) in bounds.items()}, identity, path


# ---------------------------------------------------------------------------
# Run setup: device, precision, data on the device, seeds, distributed
# ---------------------------------------------------------------------------


@dataclass
class Run:
    env: dict
    device: torch.device
    precision: str
    splits: dict  # uint8 tensors on the device
    data_identity: str
    eval_bytes: int
    excluded_steps: int = EXCLUDED_STEPS
    rank: int = 0
    world_size: int = 1
    generator: torch.Generator = None
    scaler: torch.amp.GradScaler = None
    num_params: int = 0
    peak_tflops: float = 0.0
    startup_seconds: float = 0.0
    compile_seconds: float = 0.0
    val_bpc: float = None  # set by evaluate(); the summary must report exactly this value

    @property
    def master(self):
        return self.rank == 0

    def autocast(self):
        dtype = {"BF16": torch.bfloat16, "FP8": torch.bfloat16, "FP16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()


def setup():
    """Parse the environment, pick device and precision, put the data on the device, seed."""
    env = read_env()
    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(env["device"])
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    print0(
        f"torch {torch.__version__} | x-transformers {version('x-transformers')} | device {device} ({gpu_name(device)})"
    )
    for key, value in env["overrides"].items():
        print0(f"override: {key}={value}")
    if device.type != "cuda":
        print0(f"warning: no CUDA GPU; running on {device.type}, so results are not comparable with GPU runs")
    precision = pick_precision(env, device)
    splits, identity, path = load_corpus(env)
    default_eval = len(splits["val"]) if device.type == "cuda" else CPU_EVAL_BYTES
    eval_bytes = min(env["eval_bytes"] or default_eval, len(splits["val"]))
    sizes = f"train {len(splits['train']):,} val {len(splits['val']):,} bytes"
    print0(f"data: {path} ({identity}) | {sizes} | scoring {eval_bytes:,} val bytes")
    torch.manual_seed(env["seed"])
    generator = torch.Generator(device).manual_seed(env["seed"] + 1000 * rank)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32 for the FP32 matmuls left (Newton-Schulz)
    global ACTIVE_RUN
    ACTIVE_RUN = Run(
        env=env,
        device=device,
        precision=precision,
        splits={k: v.to(device) for k, v in splits.items()},
        data_identity=identity,
        eval_bytes=eval_bytes,
        excluded_steps=EXCLUDED_STEPS if device.type == "cuda" else EXCLUDED_STEPS_NO_GPU,
        rank=rank,
        world_size=world,
        generator=generator,
        scaler=torch.amp.GradScaler(device.type, enabled=precision == "FP16"),
        peak_tflops=gpu_peak_tflops(gpu_name(device)),
    )
    return ACTIVE_RUN


def get_batch(run, batch_size, split="train"):
    """Random windows of MAX_SEQ_LEN bytes, sampled on the device: no DataLoader, no host copy."""
    data = run.splits[split]
    starts = torch.randint(len(data) - MAX_SEQ_LEN, (batch_size, 1), device=run.device, generator=run.generator)
    return data[starts + torch.arange(MAX_SEQ_LEN, device=run.device)].long()


def fp8_wants(module, fqn):
    """Only the transformer body's large linears: float8 is slower than BF16 on small matmuls."""
    return (
        isinstance(module, nn.Linear)
        and "attn_layers" in fqn
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and min(module.in_features, module.out_features) >= FP8_MIN_FEATURES
    )


def prepare_model(run, model):
    """Move to the device, convert to FP8 where asked and where it pays, count parameters."""
    model = model.to(run.device)
    run.num_params = sum(p.numel() for p in model.parameters())
    if run.precision == "FP8":
        from torchao.float8 import convert_to_float8_training

        wanted = sum(fp8_wants(m, n) for n, m in model.named_modules())
        if wanted == 0:
            print0(f"notice: USE_FP8=1 but no linear has both sides >= {FP8_MIN_FEATURES}: running BF16")
            run.precision = "BF16"
        else:
            convert_to_float8_training(model, module_filter_fn=fp8_wants)
            print0(f"fp8: converted {wanted} linear layers with torchao float8 training")
    print0(f"model: {run.num_params / 1e6:.2f}M parameters | precision {run.precision}")
    return model


def unwrap(model):
    """The plain module under torch.compile and DistributedDataParallel wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


# ---------------------------------------------------------------------------
# Evaluation: the ground truth. Every byte of the scored split predicted exactly once.
# ---------------------------------------------------------------------------


@torch.no_grad()
def check_causal(net, device, autocast):
    """A model that peeks at later bytes scores impossibly well: refuse it. Changing the second
    half of a window must not move a single prediction in the first half."""
    half = MAX_SEQ_LEN // 2
    x = torch.arange(EVAL_BATCH_SIZE * MAX_SEQ_LEN, device=device).remainder(251).view(EVAL_BATCH_SIZE, -1)
    y = x.clone()
    y[:, half:] = (y[:, half:] + 1) % VOCAB
    with autocast:
        shift = (net(x).float() - net(y).float())[:, :half].abs().max().item()
    if shift > 1e-4:  # a causal model gives bit-identical earlier logits; leaks move them by ~1e-3 at init
        raise HarnessError(f"the model is not causal: earlier predictions move by {shift:.3g} when later bytes change")


@torch.no_grad()
def evaluate(run, net, split="val"):
    """Bits per byte of `net` ((B, T) long -> (B, T, 256) logits) on the first eval_bytes of a split.

    Window i holds bytes [i*T, i*T + T] and predicts bytes i*T+1 .. i*T+T, so every byte but
    the first is predicted exactly once; the final partial window is zero-padded and masked
    (causal attention keeps padding from touching real positions). Fixed batch, eval mode,
    BF16 autocast on CUDA and FP32 elsewhere, FP32 log-softmax and batch sums, FP64 total.
    """
    t0 = time.time()
    data = run.splits[split][: run.eval_bytes]
    targets_total = len(data) - 1
    windows = math.ceil(targets_total / MAX_SEQ_LEN)
    padded = torch.zeros(windows * MAX_SEQ_LEN + 1, dtype=torch.uint8, device=run.device)
    padded[: len(data)] = data
    inputs = padded[:-1].view(windows, MAX_SEQ_LEN)
    targets = padded[1:].view(windows, MAX_SEQ_LEN)
    valid = (torch.arange(windows * MAX_SEQ_LEN, device=run.device) < targets_total).view(windows, MAX_SEQ_LEN)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if run.device.type == "cuda" else nullcontext()
    was_training = net.training
    net.eval()
    if run.precision != "FP8":  # float8's tensor-wide scales couple positions: quantisation noise, not a leak
        check_causal(net, run.device, autocast)
    total = 0.0  # a Python float: FP64 on every device, MPS included
    for b, lo in enumerate(range(0, windows, EVAL_BATCH_SIZE)):
        if b % run.world_size != run.rank:
            continue
        x = torch.zeros(EVAL_BATCH_SIZE, MAX_SEQ_LEN, dtype=torch.long, device=run.device)
        y = torch.zeros_like(x)
        mask = torch.zeros(EVAL_BATCH_SIZE, MAX_SEQ_LEN, dtype=torch.bool, device=run.device)
        n = min(EVAL_BATCH_SIZE, windows - lo)
        x[:n], y[:n], mask[:n] = inputs[lo : lo + n], targets[lo : lo + n], valid[lo : lo + n]
        with autocast:
            logits = net(x)
        nll = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1), reduction="none")
        total += (nll * mask.reshape(-1)).sum().item()
    if run.world_size > 1:
        shards = torch.tensor(total, dtype=torch.float64, device=run.device)
        dist.all_reduce(shards)
        total = shards.item()
    net.train(was_training)
    bpc = total / targets_total / math.log(2)
    if split == "val":
        run.val_bpc = bpc
    return bpc, time.time() - t0


# ---------------------------------------------------------------------------
# Step tracking: metrics.jsonl, progress lines, loss checks, the budget decision
# ---------------------------------------------------------------------------


def append_metrics(run, row):
    """One JSON line in metrics.jsonl (rank 0 only)."""
    if run.master:
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}  # strict JSON
        with open(run.env["metrics"], "a") as f:
            f.write(json.dumps(row) + "\n")


class Tracker:
    """Buffers per-step values on the device and copies them to the host every METRICS_EVERY
    steps in one transfer, so the GPU never waits on a per-step .item()."""

    def __init__(self, run):
        self.run = run
        self.budget = run.env["budget"]
        if run.master:  # one file per run: overwrite the previous run's
            Path(run.env["metrics"]).parent.mkdir(parents=True, exist_ok=True)
            Path(run.env["metrics"]).write_text("")
        self.pending = []  # (step, loss, lr, grad_norm) since the last flush, tensors on device
        self.window_tokens = 0
        self.counted_tokens = 0  # tokens of the steps that count against the budget
        self.training_time = 0.0
        self.clock_start = None  # wall time when the first counted step began
        self.loop_start = self.window_start = time.time()
        self.last_status = 0.0
        self.synced_time = 0.0  # training_time at the last sync: rank 0's under torchrun
        self.step_seconds = 0.0  # mean step time in the window before the last sync
        run.startup_seconds = self.loop_start - T_START

    @property
    def progress(self):
        """Fraction of the budget spent, from the host clock (no sync): drives LR schedules.
        Under torchrun every rank must step with the same LR or the replicas drift apart, so
        there it is rank 0's time at the last sync plus the steps taken since, at that pace."""
        if self.clock_start is None:
            return 0.0
        if self.run.world_size > 1:
            return min((self.synced_time + self.step_seconds * len(self.pending)) / self.budget, 1.0)
        return min((time.time() - self.clock_start) / self.budget, 1.0)

    def end_step(self, step, loss, lr, grad_norm, tokens):
        """Record step `step` (1-based). Returns True when the budget is spent, on every rank."""
        self.pending.append((step, loss.detach().float(), lr, grad_norm.detach().float()))
        self.window_tokens += tokens
        if step > self.run.excluded_steps:
            self.counted_tokens += tokens
        if step == 1:  # Python's GC stalls for 100s of ms; what is alive now lives all run
            gc.collect()
            gc.freeze()
        # a single process may also stop between syncs, when its host clock says the budget is spent
        spent = self.run.world_size == 1 and self.progress >= 1.0
        if step <= self.run.excluded_steps or step % METRICS_EVERY == 0 or spent:
            return self.flush(step)
        return False

    def flush(self, step):
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)
        now = time.time()
        if step == self.run.excluded_steps:
            self.clock_start = now
            self.run.compile_seconds = now - self.loop_start
        if self.clock_start is not None:
            self.training_time = now - self.clock_start
        dt = max(now - self.window_start, 1e-9)
        tok_per_sec = self.window_tokens / dt
        values = torch.stack([torch.stack([loss, norm]) for _, loss, _, norm in self.pending]).tolist()
        for i, ((s, _, lr, _), (loss, norm)) in enumerate(zip(self.pending, values)):
            # per-step times are spread evenly over the window between two syncs
            elapsed = max(self.training_time - dt * (len(values) - 1 - i) / len(values), 0.0)
            row = dict(step=s, time=round(elapsed, 4), loss=loss, lr=lr, tok_per_sec=round(tok_per_sec), grad_norm=norm)
            append_metrics(self.run, row)
            if not math.isfinite(loss):
                raise LossError(f"loss is {loss} at step {s}")
            if loss > LOSS_EXPLODED:
                raise LossError(f"loss exploded to {loss:.4g} at step {s}")
        if now - self.last_status >= STATUS_EVERY_S or step <= self.run.excluded_steps:
            self.last_status = now
            pct = 100 * self.training_time / self.budget
            print0(
                f"step {step:05d} | {self.training_time:6.1f}s/{self.budget:.0f}s ({pct:5.1f}%) | loss {values[-1][0]:.4f} "
                f"| lr {self.pending[-1][2]:.2e} | {tok_per_sec:,.0f} tok/s"
            )
        self.pending, self.window_tokens, self.window_start = [], 0, now
        done = self.training_time >= self.budget
        if self.run.world_size > 1:  # rank 0's clock decides: every rank takes the same LR and stops at the same step
            clock = torch.tensor([self.training_time, dt / len(values)], dtype=torch.float64, device=self.run.device)
            dist.broadcast(clock, 0)
            self.synced_time, self.step_seconds = clock.tolist()
            done = self.synced_time >= self.budget
        return done

    def stats(self, step):
        """Synced totals for the summary, taken after the loop ends."""
        if self.pending:
            self.flush(step)
        return dict(num_steps=step, training_seconds=self.training_time, counted_tokens=self.counted_tokens)


# ---------------------------------------------------------------------------
# Checkpoint, summary and fingerprint
# ---------------------------------------------------------------------------


def fixed_source(text=None):
    """The lines of every FIXED region of this file: what the fingerprint vouches for."""
    inside, kept = False, []
    for line in (text or Path(__file__).read_text()).splitlines():
        inside = inside or line.startswith("# ==== FIXED REGION START")
        if inside:
            kept.append(line)
        inside = inside and not line.startswith("# ==== FIXED REGION END")
    return "\n".join(kept)


def fingerprint(run):
    h = hashlib.sha256(fixed_source().encode())
    h.update(f"{run.env['budget']}|{run.eval_bytes}|{run.data_identity}".encode())
    return h.hexdigest()[:12]


def git_commit():
    """HEAD as 7 characters, with -dirty when tracked files differ from it."""
    try:
        git = ["git", "-C", str(REPO_DIR)]
        head = subprocess.run(git + ["rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "none"


def peak_memory_mb(device):
    """CUDA allocator peak on a GPU; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def save_checkpoint(run, model, summary, path="checkpoint.pt"):
    """Weights, the source that built them and the summary so far, written before the final
    evaluation so that a crash there never loses the training."""
    if not run.master:
        return
    path = Path(path)
    tmp = atomic_write_path(path)
    state = {k: v.detach().float().cpu() for k, v in unwrap(model).state_dict().items()}
    torch.save({"model": state, "source": Path(__file__).read_text(), "summary": summary}, tmp)
    finish_atomic(tmp, path)


def make_summary(run, stats, depth, dim):
    """Every summary key except val_bpc and eval_seconds, which the final evaluation adds."""
    seconds = max(stats["training_seconds"], 1e-9)
    tokens_per_sec = stats["counted_tokens"] / seconds
    flops_per_token = 6 * run.num_params + 12 * depth * dim * MAX_SEQ_LEN
    mfu = 100 * flops_per_token * tokens_per_sec / (run.peak_tflops * 1e12) if run.peak_tflops else 0.0
    if run.device.type == "cuda" and not run.peak_tflops:
        print0(f"notice: no BF16 peak known for {gpu_name(run.device)}: mfu_percent is reported as 0")
    return dict(
        training_seconds=stats["training_seconds"],
        peak_vram_mb=peak_memory_mb(run.device),
        mfu_percent=mfu,
        total_tokens_M=stats["counted_tokens"] / 1e6,
        num_steps=stats["num_steps"],
        num_params_M=run.num_params / 1e6,
        depth=depth,
        precision=run.precision,
        startup_seconds=run.startup_seconds,
        compile_seconds=run.compile_seconds,
        tokens_per_sec=tokens_per_sec,
        eval_bytes=run.eval_bytes,
        device=run.device.type,
        gpu=gpu_name(run.device),
        torch=str(torch.__version__),  # a plain str, so torch.load(weights_only=True) reads checkpoints
        x_transformers=version("x-transformers"),
        seed=run.env["seed"],
        commit=git_commit(),
        fingerprint=fingerprint(run),
        world_size=run.world_size,
        data=run.data_identity,
        excluded_steps=run.excluded_steps,
        overrides=" ".join(f"{k}={v}" for k, v in run.env["overrides"].items()) or "none",
    )


SUMMARY_FORMAT = {
    "val_bpc": "{:.6f}",
    "training_seconds": "{:.1f}",
    "total_seconds": "{:.1f}",
    "peak_vram_mb": "{:.1f}",
    "mfu_percent": "{:.2f}",
    "total_tokens_M": "{:.1f}",
    "num_steps": "{}",
    "num_params_M": "{:.1f}",
    "depth": "{}",
    "precision": "{}",
    "startup_seconds": "{:.1f}",
    "eval_seconds": "{:.1f}",
    "tokens_per_sec": "{:.0f}",
    "eval_bytes": "{}",
    "device": "{}",
    "gpu": "{}",
    "torch": "{}",
    "x_transformers": "{}",
    "seed": "{}",
    "commit": "{}",
    "fingerprint": "{}",
    "compile_seconds": "{:.1f}",
    "world_size": "{}",
    "data": "{}",
    "excluded_steps": "{}",
    "overrides": "{}",
}


def print_summary(run, summary):
    """The `---` block that program.md greps: fixed keys in a fixed order."""
    summary["total_seconds"] = time.time() - T_START
    if run.val_bpc is None or summary.get("val_bpc") != run.val_bpc:
        raise HarnessError("the summary's val_bpc must be the value evaluate(run, model.net) returned")
    if not run.master:
        return
    lines = [f"{key + ':':<18}{fmt.format(summary[key])}" for key, fmt in SUMMARY_FORMAT.items()]
    print("---\n" + "\n".join(lines), flush=True)
    append_metrics(run, {"summary": summary})


# ---------------------------------------------------------------------------
# Entry point: hard time limit, signals, and one `crash:` line for every failure
# ---------------------------------------------------------------------------


def remove_temp_files():
    for path in list(TEMP_FILES):
        path.unlink(missing_ok=True)


def die(message, code):
    remove_temp_files()
    sys.stderr.write("\n")  # ends a progress bar's unfinished line, so `crash:` starts a line of its own
    sys.stderr.flush()
    print(f"crash: {message}", flush=True)
    os._exit(code)


def one_line_reason(error):
    """`Type: first line of the message`; for a bare `assert`, the failing line and where it is."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not message:
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{where.line} ({Path(where.filename).name}:{where.lineno})"
    return f"{type(error).__name__}: {message}"


def start_watchdog(seconds):
    """Ends the whole process after `seconds`, whatever the editable loop is doing."""
    timer = threading.Timer(seconds, die, args=(f"exceeded hard time limit ({seconds:.0f} s)", 124))
    timer.daemon = True
    timer.start()


def on_signal(signum, frame):
    die(f"interrupted ({signal.Signals(signum).name})", 128 + signum)


def prepare_data_only():
    splits, identity, path = load_corpus(read_env())
    print(
        f"data ready: {path} ({identity}), train {len(splits['train']):,} / val {len(splits['val']):,} / test {len(splits['test']):,} bytes"
    )


def run_main(main):
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        if sys.argv[1:] == ["--prepare-data"]:
            return prepare_data_only()
        if sys.argv[1:]:
            raise HarnessError(f"unknown arguments {sys.argv[1:]}: train.py takes none, or --prepare-data")
        start_watchdog(read_env()["hard_limit"])
        main()
    except HarnessError as e:
        die(str(e), 2)
    except LossError as e:
        die(str(e), 3)
    except torch.OutOfMemoryError:
        traceback.print_exc()
        run = ACTIVE_RUN
        peak = peak_memory_mb(run.device) if run else 0.0
        size = f"{run.num_params / 1e6:.1f}M parameters" if run and run.num_params else "model not built yet"
        die(f"out of memory (peak {peak:,.0f} MB, {size})", 4)
    except Exception as e:
        traceback.print_exc()
        die(one_line_reason(e), 1)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


# ==== FIXED REGION END ====


# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

DIM = 512  # model width
DEPTH = 8  # transformer layers
HEADS = 8  # attention heads of 64 dims each (x-transformers' attn_dim_head): keep HEADS x 64 = DIM
BATCH_SIZE = 64  # sequences per optimizer step, summed over all GPUs (64 x 1024 = 65K bytes)
GRAD_ACCUM = 1  # micro-steps per optimizer step: raise it when out of memory (same step, smaller pieces)
HOST_MICRO_BATCH = 8  # off the GPU, sequences per forward/backward: host RAM holds ~8 of a GPU-sized model
LR = 2e-3  # Adam-atan2: embeddings, norms, queries/keys and the output head
MUON_LR = 2e-3  # Muon: value/output and feed-forward matrices (updates rescaled to Adam's RMS)
BETAS = (0.9, 0.95)  # a shorter second-moment memory suits a run of a few thousand steps
WEIGHT_DECAY = 0.0  # 300 s sees the 90 MB train split only a few times: little to overfit
WARMUP_FRAC = 0.02  # share of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.4  # share of the budget spent decaying it to zero (the fork's best kept 40%)
GRAD_CLIP = 1.0  # max global gradient norm: guards the first steps at a high learning rate
COMPILE = True  # torch.compile on CUDA: fuses norms and activations, costs ~EXCLUDED_STEPS of warmup


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_model():
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=MAX_SEQ_LEN,
        use_abs_pos_emb=False,  # rotary embeddings carry the positions
        attn_layers=Decoder(
            dim=DIM,
            depth=DEPTH,
            heads=HEADS,
            attn_flash=True,  # PyTorch SDPA flash kernels (x-transformers defaults to off)
            rotary_pos_emb=True,
            use_rmsnorm=True,
            ff_glu=True,  # SwiGLU feed-forward: kept early in the fork's search
            ff_swish=True,
            attn_qk_norm=True,  # bounded attention logits tolerate a higher learning rate
            add_value_residual=True,  # value residual learning (ResFormer): kept in the fork
            zero_init_branch_output=True,  # each block starts as the identity
        ),
    )
    return AutoregressiveWrapper(net)


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------


def build_optimizer(model):
    optimizer = MuonAdamAtan2(
        muon_params=list(model.net.muon_parameters()),
        params=list(model.parameters()),
        lr=LR,
        muon_lr=MUON_LR,
        betas=BETAS,
        weight_decay=WEIGHT_DECAY,
        remove_muon_params_from_params=True,
    )
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def lr_multiplier(progress):
    """Warmup, constant, then linear warmdown to zero, as a function of budget spent (0..1).
    The uncounted first steps run at progress 0, so they only warm up the optimizer moments."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress < 1.0 - WARMDOWN_FRAC or WARMDOWN_FRAC == 0:
        return 1.0
    return (1.0 - progress) / WARMDOWN_FRAC


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def main():
    run = setup()
    model = prepare_model(run, build_model())
    optimizer = build_optimizer(model)
    if run.world_size > 1:  # torchrun: gradients are averaged over GPUs inside backward()
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[run.device.index] if run.device.index is not None else None
        )
    if COMPILE and run.device.type == "cuda":
        model = torch.compile(model)

    tracker = Tracker(run)
    local_batch = BATCH_SIZE // (GRAD_ACCUM * run.world_size)  # the global batch is split across GPUs
    assert local_batch * GRAD_ACCUM * run.world_size == BATCH_SIZE > 0, "BATCH_SIZE: a multiple of GRAD_ACCUM x GPUs"
    chunk = local_batch if run.device.type == "cuda" else HOST_MICRO_BATCH  # same gradient, less memory
    tokens_per_step = BATCH_SIZE * MAX_SEQ_LEN
    step = 0
    while True:
        lr_mult = lr_multiplier(tracker.progress)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
        train_loss = 0.0
        for _ in range(GRAD_ACCUM):
            x = get_batch(run, local_batch)
            for part in x.split(chunk):
                with run.autocast():
                    loss = model(part) * (len(part) / (len(x) * GRAD_ACCUM))
                run.scaler.scale(loss).backward()
                train_loss += loss.detach()
        run.scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        run.scaler.step(optimizer)
        run.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if tracker.end_step(step, train_loss, LR * lr_mult, grad_norm, tokens_per_step):
            break

    summary = make_summary(run, tracker.stats(step), depth=DEPTH, dim=DIM)
    save_checkpoint(run, model, summary)
    summary["val_bpc"], summary["eval_seconds"] = evaluate(run, unwrap(model).net)
    print_summary(run, summary)


# ==== FIXED REGION START: entry point ====
if __name__ == "__main__":
    run_main(main)
# ==== FIXED REGION END ====

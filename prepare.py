"""
Autoresearch on x-transformers: the fixed harness. Data, clock, model spec, sealed scorer, summary,
fingerprint, watchdog. The agent never edits this file; its hash is part of every run's fingerprint.
Usage: python prepare.py     (finds or downloads enwik8 and verifies it; training is `python train.py`)
       python prepare.py score CHECKPOINT [--split val|test]   (the sealed scorer, in a fresh process)

A run is three processes, one at a time on the card. `python train.py` imports this file on its first
line, which replaces that process (exec) with the supervisor: it runs no code of train.py, reads the
settings and the data, and starts the trainer (`prepare.py trainer`), which confines itself with the
kernel's Landlock before it imports torch or train.py, receives the training split only, and trains.
When the trainer and everything it started are gone, the supervisor hashes the checkpoint, starts the
sealed scorer, appends the score to the journal and prints the summary.
"""

import argparse
import ast
import contextlib
import copy
import ctypes
import fcntl
import functools
import gc
import getpass
import gzip
import hashlib
import importlib
import importlib.util
import io
import json
import math
import os
import random
import re
import resource
import select
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import urllib.request
import uuid
import weakref
import zipfile
from contextlib import contextmanager, nullcontext
from importlib.metadata import version
from pathlib import Path

# ---------------------------------------------------------------------------
# The sandbox: the trainer confines itself in one call, before any thread exists and before it
# imports torch or train.py. Two backends behind the same call: Landlock (Linux >= 5.13), and none.
# ---------------------------------------------------------------------------

ROLES = ("supervise", "trainer", "score")  # `python prepare.py ROLE ...`: the harness's own processes
ROLE = sys.argv[1] if __name__ == "__main__" and sys.argv[1:2] and sys.argv[1] in ROLES else None
LIBS_VAR = "AUTORESEARCH_LIBS"  # the first process's sys.path, handed to every process it starts (-I -S)


SANDBOX_HINT = " (the sandbox: the trainer reads no file of the working tree and writes only tempfile.gettempdir())"


class SandboxUnavailable(Exception):
    """This kernel or process cannot confine the trainer: the run goes on, flagged `sandbox: none (why)`."""


LANDLOCK_CREATE, LANDLOCK_ADD_RULE, LANDLOCK_RESTRICT = 444, 445, 446  # the same on every architecture
FS = {  # Landlock's filesystem rights, bit by bit, with the first ABI that knows each
    "execute": (0, 1), "write_file": (1, 1), "read_file": (2, 1), "read_dir": (3, 1), "remove_dir": (4, 1),
    "remove_file": (5, 1), "make_char": (6, 1), "make_dir": (7, 1), "make_reg": (8, 1), "make_sock": (9, 1),
    "make_fifo": (10, 1), "make_block": (11, 1), "make_sym": (12, 1), "refer": (13, 2), "truncate": (14, 3),
    "ioctl_dev": (15, 5),
}  # fmt: skip
ACCESS = {  # what a rule allows, by kind of path
    "read": ("execute", "read_file", "read_dir"),
    "write": ("execute", "read_file", "read_dir", "write_file", "remove_dir", "remove_file", "make_dir",
              "make_reg", "make_sym", "make_fifo", "make_sock", "refer", "truncate"),
    "file": ("read_file", "write_file", "truncate"),
    "device": ("read_file", "read_dir", "write_file", "ioctl_dev"),
}  # fmt: skip
FILE_RIGHTS = ("execute", "read_file", "write_file", "truncate", "ioctl_dev")  # the rights a rule on a file may hold


def fs_mask(names, abi):
    return sum(1 << FS[n][0] for n in names if FS[n][1] <= abi)


def kernel_call(libc, *args):
    result = libc.syscall(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def landlock_confine(rules):
    """Confine this process and everything it starts to `rules` ({"paths": [[path, kind], ...],
    "network": bool, "scoped": bool}); returns the boundary's label, `landlock ABI N`."""
    if not sys.platform.startswith("linux"):
        raise SandboxUnavailable(f"{sys.platform} has no Landlock")
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    try:
        abi = kernel_call(libc, ctypes.c_long(LANDLOCK_CREATE), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    except OSError as e:
        why = {38: "the kernel has no Landlock", 95: "Landlock is not enabled in this kernel"}.get(e.errno, e.strerror)
        raise SandboxUnavailable(why) from None
    if len(os.listdir("/proc/self/task")) != 1:  # Landlock confines the calling thread and its future children only
        raise SandboxUnavailable("threads were running before the sandbox")
    handled = fs_mask(FS, abi)
    network = 0 if rules["network"] or abi < 4 else 0b11  # no TCP bind or connect at all
    scoped = 0b11 if rules["scoped"] and abi >= 6 else 0  # no signals, no abstract sockets outside the sandbox
    attr = ctypes.create_string_buffer(struct.pack("QQQ", handled, network, scoped))
    ruleset = kernel_call(
        libc, ctypes.c_long(LANDLOCK_CREATE), attr, ctypes.c_size_t(len(attr.raw)), ctypes.c_uint32(0)
    )
    try:
        for path, kind in rules["paths"]:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:  # gone since the supervisor listed it
                continue
            try:
                names = ACCESS[kind] if os.path.isdir(path) else [n for n in ACCESS[kind] if n in FILE_RIGHTS]
                rule = ctypes.create_string_buffer(struct.pack("=Qi", fs_mask(names, abi) & handled, fd))
                kernel_call(libc, ctypes.c_long(LANDLOCK_ADD_RULE), ctypes.c_int(ruleset), ctypes.c_int(1), rule, 0)
            finally:
                os.close(fd)
        if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS: required, and no exec regains a right
            raise SandboxUnavailable("no_new_privs could not be set")
        kernel_call(libc, ctypes.c_long(LANDLOCK_RESTRICT), ctypes.c_int(ruleset), ctypes.c_uint32(0))
    finally:
        os.close(ruleset)
    drop_capabilities(libc)
    return f"landlock ABI {abi}"


def drop_capabilities(libc):
    """Root's capabilities, bounding set included: a trainer run as root has none left, after an exec too."""
    for cap in range(64):
        if libc.prctl(24, cap, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: EINVAL past the last capability
            break
    libc.prctl(47, 4, 0, 0, 0)  # PR_CAP_AMBIENT_CLEAR_ALL
    header = ctypes.create_string_buffer(struct.pack("Ii", 0x20080522, 0))  # _LINUX_CAPABILITY_VERSION_3, this process
    libc.capset(header, ctypes.create_string_buffer(bytes(24)))


def confine(rules):
    """The trainer's one call: the boundary's label, `landlock ABI N` or `none (why)`."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: a trainer never outlives its supervisor
    try:
        return landlock_confine(rules)
    except SandboxUnavailable as e:
        return f"none ({e})"


def receive_handoff(fd):
    """The trainer's settings (a JSON line) and the training split's bytes, from the supervisor's file `fd`."""
    with os.fdopen(fd, "rb") as f:
        header = json.loads(f.readline())
        data = bytearray(header["train_bytes"])
        f.readinto(data)
    return header, data


def say_crash(message, code):
    """End this process with one `crash:` line; the trainer's goes to its supervisor, which prints it."""
    for stream in (sys.stdout, sys.stderr):  # what train.py printed before the crash stays in the log
        with contextlib.suppress(Exception):
            stream.flush()
    if ROLE == "trainer":
        with contextlib.suppress(OSError):
            os.write(int(sys.argv[3]), (json.dumps(dict(event="crash", message=message, code=code)) + "\n").encode())
    else:
        sys.stderr.write("\n")  # ends a progress bar's or a ^C's unfinished line, so `crash:` starts a line of its own
        sys.stderr.flush()
        print(f"crash: {message}", file=sys.__stdout__, flush=True)
    os._exit(code)


def code_above_import(source, line):
    """The first statement of `source` above line `line` (its `from prepare import`) that is not a
    docstring or a `from __future__` import, as text; None when there is none."""
    for node in ast.parse(source).body:
        if node.lineno >= line:
            return None
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if not docstring and not (isinstance(node, ast.ImportFrom) and node.module == "__future__"):
            return ast.get_source_segment(source, node).splitlines()[0]
    return None


def importing_script():
    """(path, source, line) of the script run as `python SCRIPT` when its own top level is importing
    this file and it is a train.py (it defines train(), or imports main); else None."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = sys._getframe(1)
    while frame is not None and frame.f_globals is not getattr(main, "__dict__", None):
        frame = frame.f_back
    if frame is None or frame.f_code.co_name != "<module>" or not str(path).endswith(".py"):
        return None
    source = Path(path).read_text()
    names = {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}
    imports_main = re.search(r"^from prepare import .*\bmain\b", source, flags=re.M)
    return (Path(path).resolve(), source, frame.f_lineno) if "train" in names or imports_main else None


def library_path(script_folder):
    """This process's sys.path without the working tree (the script's folder), whose files are not
    libraries: the venv inside it stays, the script's own folder and what lies beside it go."""
    folder, keep = Path(script_folder).resolve(), [Path(sys.prefix).resolve(), Path(sys.base_prefix).resolve()]
    out = []
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        if path.is_relative_to(folder) and not any(path.is_relative_to(k) for k in keep):
            continue
        out.append(str(path))
    return list(dict.fromkeys(out))


def exec_supervisor(script, argv):
    """Replace this process (the same pid, for the shell and `timeout`) with the supervisor."""
    env = dict(os.environ, **{LIBS_VAR: json.dumps(library_path(script.parent))})
    args = [sys.executable, "-I", "-S", str(Path(__file__).resolve()), "supervise", str(script), *argv]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, args, env)


if ROLE is None and __name__ != "__main__" and (launch := importing_script()):
    script, source, line = launch
    if above := code_above_import(source, line):
        say_crash(
            f"{script.name} runs `{above}` above its `from prepare import` line, outside the sandbox: put it below",
            2,
        )
    exec_supervisor(script, sys.argv[1:])
if ROLE and os.environ.get(LIBS_VAR):  # the libraries exactly as the first process found them, nothing else
    sys.path[:] = json.loads(os.environ[LIBS_VAR])
if ROLE == "trainer":
    HANDOFF, TRAIN_BYTES = receive_handoff(int(sys.argv[2]))
    BOUNDARY = confine(HANDOFF["rules"])  # from here on the kernel holds this process and all it starts

if ROLE != "supervise":  # the supervisor never imports torch: it holds nothing on the card
    try:  # seconds of imports: Ctrl-C during them is the one crash line too
        import torch
        import torch.distributed as dist
        import torch.nn.functional as F
        from torch import nn
        from torch.optim import optimizer as torch_optimizer

        if (
            ROLE is None
        ):  # the harness's own processes import x-transformers when they need it (the scorer: once checked)
            import x_transformers  # noqa: F401  (train.py's own import of it, next, then takes no time)
    except KeyboardInterrupt:
        say_crash("interrupted (SIGINT)", 128 + signal.SIGINT)
    except ImportError as e:  # a fresh shell without the project's environment: a crash line, not a traceback
        say_crash(
            f"{e.name or e} is not installed in this python ({sys.executable}): activate the project's "
            "environment in this shell (README.md: source .venv/bin/activate) and run the same command again",
            1,
        )

# ---------------------------------------------------------------------------
# Constants (fixed, do not modify)
# ---------------------------------------------------------------------------

REPO_DIR = Path(__file__).resolve().parent

MAX_SEQ_LEN = 1024  # bytes of context in every evaluation window (training windows may be shorter)
VOCAB = 256  # bytes
TIME_BUDGET = 300  # seconds of training, excluding the first EXCLUDED_STEPS
EXCLUDED_STEPS = 10  # the first steps compile (CUDA) and warm up: they do not count against the budget
EXCLUDED_STEPS_NO_GPU = 1  # without CUDA nothing compiles, and one step of a GPU-sized model takes minutes
HARD_LIMIT_MARGIN = 240  # whole-run watchdog on a GPU: budget + this, under program.md's 10-minute kill
HARD_LIMIT_MARGIN_NO_GPU = 1800  # off the GPU a single step can take minutes; the watchdog still ends hangs
OVERRUN_GRACE = 15.0  # seconds train() may run past the budget (or two steps' time, if longer) before it is a crash
HANDBACK_GRACE = 5.0  # seconds from train()'s return to the checkpoint on disk, plus HANDBACK_BYTES_PER_S of its size
HANDBACK_BYTES_PER_S = 50e6  # a slow disk's write rate: a large honest checkpoint never overruns the hand-back
EVAL_BATCH_SIZE = 16  # windows per evaluation forward: fixed, never the training batch size
CPU_EVAL_BYTES = 65_536  # off CUDA only this prefix of val is scored, so a CPU run ends in minutes
HOST_MICRO_BATCH = 8  # off the GPU, sequences per forward/backward: host RAM holds ~8 of a GPU-sized model
CARD_FILL = 0.95  # a micro-batch fits when its peak plus the optimizer's state stays under this share of usable memory
PEER_POLL_S = 1.0  # under torchrun, how often each rank looks for another rank's crash (then ends within seconds)
METRICS_EVERY = 10  # steps between host syncs: loss checks, metrics rows, budget decision
ALLOC_CONF = "expandable_segments:True"  # CUDA allocator setting for the run, unless the person set one
GPU_SIZED_PARAMS = 5_000_000  # off the GPU, a model above this says at once that it is sized for a GPU
HEARTBEAT_S = 30.0  # a progress line at least this often, whatever phase the run is in
STATUS_EVERY_S = 10.0  # seconds between progress lines (run.log stays short when redirected)
LOSS_EXPLODED = 3 * math.log(256)  # nats; three times a uniform guess over bytes means divergence
WARM_START_LOSS = 2.0  # nats; no initialisation predicts text's bytes this well (their frequencies alone: ~3.3)
EXCLUDED_SECONDS_MAX = 90.0  # the uncounted warm-up's most seconds off the clock (a compile: ~30); beyond, charged
FP8_MIN_FEATURES = 2048  # torchao float8 only pays on large matmuls; smaller linears stay BF16
TRAIN_SCORE_BYTES = 1_000_000  # the end of the training split is scored too (train_bpc), as a leak check
HELDOUT_MARGIN = 0.1  # bpc; a val_bpc this far below train_bpc is flagged: val should not be easier than train
PROBE_BATCHES = 2  # scored batches whose windows are also run as leak probes, drawn at evaluation time
CAUSAL_TOLERANCE = 1e-4  # a causal model gives bit-identical earlier logits; leaks move them by ~1e-3 at init
CHECK_WINDOWS = 2  # windows at the start of the training split on which the trained and rebuilt models must agree
CHECK_TOLERANCE = 1e-3  # nats; the same weights and code give the same loss (FP8-trained models: CHECK_TOLERANCE_FP8)
CHECK_NOISE = (
    0.02  # std of the noise the early check adds to a fresh build's weights: zero-initialised branches hide a leak
)
CHECK_TOLERANCE_FP8 = 5e-2  # float8 matmuls in the trained model, high precision in the rebuilt one
SCORER_TIMEOUT = 1800  # seconds; the sealed scorer of a 5 MB val on a GPU takes ~20 s, of a CPU prefix a minute

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

# part of what is measured: hashed, checked at start. The first four are the code a scored model runs.
CHECKED_LIBRARIES = ("x-transformers", "einops", "einx", "torch-einops-utils", "adam-atan2-pytorch")
SPEC_LIBRARIES = ("x_transformers", "torch.nn")  # the classes a model spec may name
MODEL_LIBRARIES = ("x_transformers", "torch.nn", "einops", "torch_einops_utils", "torchao.float8")  # a scored model's
JOURNAL = "autoresearch/journal.jsonl"  # under the git directory: one line per sealed score, read by `record`
UNLIKE_EFFORT = "this run is not measured like the effort's runs"  # the refusal's crash line starts so
MEASURE = "measure.json"  # beside the journal: how the effort's recorded runs were measured, written by `record`
UNMEASURED_VARS = (
    "AR_SEED",
    "AR_METRICS",
    "AR_CHECKPOINT",
    "AR_HARD_LIMIT",
    "AR_DEVICE",
    "AR_DATA_URL",
    "AR_REQUIRE_SANDBOX",
)  # free per run

ENV_VARS = (
    "AR_DATA",
    "AR_DATA_URL",
    "AR_TIME_BUDGET",
    "AR_STEPS",
    "AR_DEVICE",
    "AR_EVAL_BYTES",
    "AR_SEED",
    "AR_HARD_LIMIT",
    "AR_METRICS",
    "AR_CHECKPOINT",
    "AR_REQUIRE_SANDBOX",
)
TEMP_FILES: set[Path] = set()  # removed on interrupt, so no half-written file survives a kill
ACTIVE_RUN = None  # the Run of this process, for crash messages
REAP_WAIT = 5.0  # seconds the supervisor gives what the trainer left (and the other local ranks) to end
STOP_WAIT = 10.0  # seconds a signalled trainer gets to end before the supervisor kills it
SUPERVISOR_FILE = ".supervisor-{pid}.json"  # beside train.py while its run lives; `python analysis.py stop` reads it


def start_ticks(pid="self"):
    """When process `pid` started, in clock ticks since boot (/proc's starttime): with the pid, it
    names one process even after the pid is reused."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def process_start_time():
    """When this process started (epoch seconds), so startup_seconds counts train.py's imports too."""
    try:
        ticks = start_ticks()
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):  # not Linux: from prepare's import on
        return time.time()


T_START = HANDOFF["t_start"] if ROLE == "trainer" else process_start_time()  # the run's first process


def no_grad(fn):
    """torch.no_grad() around `fn`, looked up when called: the supervisor defines it without torch."""

    @functools.wraps(fn)
    def without_grad(*args, **kwargs):
        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_grad


class HarnessError(Exception):
    """A problem with the setup, data, environment or the loop's contract: one `crash:` line."""


class LossError(Exception):
    """A NaN, inf or exploded training loss."""


def print0(*args, **kwargs):
    if int(os.environ.get("RANK", "0")) == 0:
        print(*args, **kwargs, flush=True)
        PHASE["last_output"] = time.time()


PHASE = {"name": "startup", "since": time.time(), "last_output": time.time()}  # what the heartbeat reports


def enter_phase(name):
    PHASE.update(name=name, since=time.time())


def heartbeat(every=HEARTBEAT_S):
    """A line every `every` seconds while nothing else was printed: a long first step or
    evaluation (minutes for a GPU-sized model on a CPU) is never silent."""

    def beat():
        while True:
            time.sleep(1.0)
            if time.time() - PHASE["last_output"] >= every:
                print0(f"... {PHASE['name']}: {time.time() - PHASE['since']:.0f} s so far")

    threading.Thread(target=beat, daemon=True).start()


# ---------------------------------------------------------------------------
# Environment: AR_* overrides, device, precision
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
    steps = env_number("AR_STEPS", None, int, minimum=1)
    if steps is not None and os.environ.get("AR_TIME_BUDGET"):
        raise HarnessError("AR_STEPS and AR_TIME_BUDGET are exclusive: a run is budgeted in steps or in seconds")
    budget = env_number("AR_TIME_BUDGET", float(TIME_BUDGET), float, minimum=0.001)
    check_device_request(os.environ.get("AR_DEVICE", ""))
    cuda = torch.cuda.is_available() if "torch" in globals() else nvidia_gpu_present()
    margin = HARD_LIMIT_MARGIN if cuda else HARD_LIMIT_MARGIN_NO_GPU
    return dict(
        require_sandbox=env_flag("AR_REQUIRE_SANDBOX"),
        use_fp8=use_fp8,
        use_fp16=use_fp16,
        budget=budget,
        steps=steps,
        hard_limit=env_number("AR_HARD_LIMIT", budget + margin if steps is None else 2 * margin, float, 0.001),
        hard_limit_set=bool(os.environ.get("AR_HARD_LIMIT")),
        eval_bytes=env_number("AR_EVAL_BYTES", None, int, minimum=2),
        seed=env_number("AR_SEED", 42, int, minimum=0),
        device=os.environ.get("AR_DEVICE", ""),
        data=os.environ.get("AR_DATA", ""),
        data_url=os.environ.get("AR_DATA_URL", "") or ENWIK8_URL,
        metrics=os.environ.get("AR_METRICS", "") or "metrics.jsonl",
        checkpoint=os.environ.get("AR_CHECKPOINT", "") or "checkpoint.pt",
        overrides={k: os.environ[k] for k in ENV_VARS if os.environ.get(k)},
    )


def check_device_request(requested):
    """AR_DEVICE refused before any data is read, without torch (the supervisor has none)."""
    if requested and not re.fullmatch(r"cuda(:\d+)?|mps|cpu", requested):
        raise HarnessError(f"AR_DEVICE={requested!r} is not a device: use cuda, cuda:N, mps or cpu")
    if requested.startswith("cuda") and not nvidia_gpu_present():
        raise HarnessError("AR_DEVICE=cuda but this machine has no CUDA GPU: unset it, or use AR_DEVICE=cpu")
    if requested == "mps" and sys.platform != "darwin":
        raise HarnessError("AR_DEVICE=mps but MPS is not available here: unset it, or use AR_DEVICE=cpu")


def pick_device(requested):
    if requested:
        check_device_request(requested)
        device = torch.device(requested)
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
    major, minor = torch.cuda.get_device_capability(device)
    if env["use_fp16"]:
        return "FP16"
    if (major, minor) < (8, 0):
        print0(f"notice: compute capability {major}.{minor} has no BF16 tensor cores: training in FP16 with a scaler")
        return "FP16"
    if env["use_fp8"]:
        if (major, minor) < (8, 9):
            print0(
                f"notice: USE_FP8=1 needs compute capability >= 8.9, this GPU has {major}.{minor}: continuing in BF16"
            )
            return "BF16"
        return "FP8"
    return "BF16"


def float32_matmul_precision():
    """torch.get_float32_matmul_precision(), whatever set it: torch >= 2.9 raises on that legacy read
    once anything (train.py, a library) used its fp32_precision API, so there it is read through that
    API ("tf32" is "high", "bf16" "medium", "ieee" "highest")."""
    try:
        return torch.get_float32_matmul_precision()
    except RuntimeError:
        precision = torch.backends.cuda.matmul.fp32_precision
        if precision == "none":  # inherited from the global setting
            precision = torch.backends.fp32_precision
        return {"tf32": "high", "bf16": "medium"}.get(precision, "highest")


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
    "and run `python prepare.py`."
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


def check_enwik8(path, blob, trust_stamp=True):
    """Refuse anything that is not exactly enwik8. A pass is remembered by the file's stat (the
    sealed scorer does not trust that memory: a stamp is a file anyone can write)."""
    stamps, key = verified_stamps(), str(path.resolve())
    if trust_stamp and len(blob) == ENWIK8_SIZE and stamps.get(key) == stat_key(path):
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


def read_splits(env, trust_stamp=True):
    """(the corpus's bytes, {split: (start, end)}, the data's identity (enwik8's md5, or a custom
    file's hash), its resolved path)."""
    path, is_enwik8 = locate_data(env)
    blob = read_corpus(path)
    if is_enwik8:
        check_enwik8(path, blob, trust_stamp)
        bounds, identity = SPLITS, f"enwik8:{ENWIK8_MD5}"
    else:
        n = len(blob)
        if n < 20 * (MAX_SEQ_LEN + 1):
            raise HarnessError(f"{path} holds {n:,} bytes: a custom corpus needs at least {20 * (MAX_SEQ_LEN + 1):,}")
        a, b = int(n * CUSTOM_SPLIT[0]), int(n * CUSTOM_SPLIT[1])
        bounds = {"train": (0, a), "val": (a, b), "test": (b, n)}
        identity = f"custom:{hashlib.sha256(blob).hexdigest()[:16]}"
        if ROLE != "score":  # said once, by the run's supervisor
            print0(f"notice: custom corpus {path} ({n:,} bytes): results are not comparable with enwik8 runs")
    return blob, bounds, identity, path.resolve()


def split_bytes(blob, lo, hi):
    return torch.frombuffer(bytearray(blob[lo:hi]), dtype=torch.uint8)


def load_corpus(env):
    """Train/val/test bytes, the data's identity and its path."""
    blob, bounds, identity, path = read_splits(env)
    return {name: split_bytes(blob, lo, hi) for name, (lo, hi) in bounds.items()}, identity, path


# ---------------------------------------------------------------------------
# The run: what train.py's train(run) is handed. Batches, micro-steps, the clock.
# ---------------------------------------------------------------------------


class Run:
    """One training run. train.py's loop asks it for `done` and `progress`, hands it the model
    (`prepare_model`), runs forward and backward through it (`forward_backward`) and steps the
    optimizer through it (`step`). Every optimizer step is counted by a global hook. It holds
    the training split only: the harness keeps the held-out splits to itself."""

    def __init__(self, env, device, precision, train_data, data_identity, eval_bytes):
        self.env = env
        self.device = device
        self.precision = precision
        self.train_data = train_data  # uint8 tensor on the device
        self.data_identity = data_identity
        self.eval_bytes = eval_bytes
        self.rank = int(os.environ.get("RANK", "0"))
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.excluded_steps = excluded_steps(env, device.type)
        self.generator = torch.Generator(device).manual_seed(env["seed"] + 1000 * self.rank)
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "FP16")
        self.peak_tflops = gpu_peak_tflops(gpu_name(device))
        self.num_params = 0
        self.model = None  # the module prepare_model was handed (unwrapped)
        self.param_order = {}  # id(parameter) -> its index in model.parameters()
        self.compile_options = None  # torch.compile keyword arguments, or None for eager
        self.compiled = None  # what forward_backward calls: built once the micro-batch is fixed
        self.micro_batch = None
        self.seq_len = None  # training window of the last step: the attention FLOPs of MFU
        self.startup_seconds = 0.0
        self.compile_seconds = 0.0
        self.tracker = None
        self.own_backward = False  # this step's gradients came from forward_backward: scaled (FP16), all-reduced (DDP)

    @property
    def master(self):
        return self.rank == 0

    @property
    def done(self):
        """True once the budget (seconds, or AR_STEPS steps) is spent: the loop must stop stepping."""
        return self.tracker.stopped

    @property
    def progress(self):
        """Fraction of the budget spent, 0..1: drives learning-rate schedules."""
        return self.tracker.progress

    @property
    def steps(self):
        """Optimizer steps taken so far (counted and uncounted)."""
        return self.tracker.steps

    def autocast(self):
        dtype = {"BF16": torch.bfloat16, "FP8": torch.bfloat16, "FP16": torch.float16}.get(self.precision)
        return torch.autocast(self.device.type, dtype=dtype) if dtype else nullcontext()

    def prepare_model(self, model, compile=False):
        """Move to the device and convert to FP8 where asked and where it pays. `compile`: False,
        True, or a dict of torch.compile options (mode=..., ...); it applies on CUDA, after the
        first step has fixed the micro-batch. Returns the model to hand to build_optimizer."""
        model = model.to(self.device)
        self.model = model
        self.param_order = {id(p): i for i, p in enumerate(model.parameters())}
        self.compiled = self.micro_batch = None  # a new model gets its own wrappers and fitting
        self.num_params = sum(p.numel() for p in model.parameters())
        if self.precision == "FP8":
            wanted = convert_fp8(model)
            if wanted == 0:
                print0(f"notice: USE_FP8=1 but no linear has both sides >= {FP8_MIN_FEATURES}: running BF16")
                self.precision = "BF16"
            else:
                print0(f"fp8: converted {wanted} linear layers with torchao float8 training")
        print0(f"model: {self.num_params / 1e6:.2f}M parameters | precision {self.precision}")
        self.check_size(model, say=True)
        check_checkpoint_fits(self.env.get("checkpoint", "checkpoint.pt"), model)
        if compile and self.device.type == "cuda":
            self.compile_options = dict(compile) if isinstance(compile, dict) else {}
        return model

    def check_size(self, model, say=False):
        """Refuse a GPU-sized model on a machine without a GPU (unless AR_DEVICE=cpu asked for it), before
        anything slow runs on it (the early check, the first step)."""
        num_params = sum(p.numel() for p in model.parameters())
        if self.device.type == "cuda" or num_params <= GPU_SIZED_PARAMS:
            return
        sized = f"a {num_params / 1e6:.0f}M-parameter model is sized for a GPU (a step on a CPU takes minutes)"
        rehearsal = "for a run of about a minute, follow README's 'CPU rehearsal' (small constants and AR_STEPS)"
        if self.device.type == "cpu" and not self.env.get("device"):
            raise HarnessError(f"{sized} and this machine has none: {rehearsal}; AR_DEVICE=cpu runs it anyway")
        if say:
            print0(f"notice: {sized}: {rehearsal}")

    def step_model(self, model):
        """What forward_backward calls: DDP under torchrun (gradients averaged over GPUs inside
        backward), compiled when asked, built once, after the micro-batch is fixed. FP8 compiles the
        model and then wraps it: torchao's float8 fails under compile(DDP(...))'s DDPOptimizer
        (torchao issue 2586)."""
        if self.compiled is None or unwrap(self.compiled) is not model:
            compiled = self.compile_options is not None
            inner = compiled and self.precision == "FP8"
            wrapped = compile_model(model, self.compile_options) if inner else model
            if self.world_size > 1:
                index = [self.device.index] if self.device.index is not None else None
                wrapped = nn.parallel.DistributedDataParallel(wrapped, device_ids=index)
            self.compiled = compile_model(wrapped, self.compile_options) if compiled and not inner else wrapped
        return self.compiled

    def get_batch(self, batch_size, seq_len):
        """`batch_size` random windows of the training split, seq_len + 1 bytes each, sampled where the
        split lives (the device): no DataLoader, no host copy. The AutoregressiveWrapper runs the
        network over all seq_len + 1 bytes and scores the seq_len predictions of bytes 2..seq_len + 1:
        the tokens counted are seq_len a window, the work is seq_len + 1 positions (flops_per_token)."""
        self.tracker.served(batch_size * seq_len * self.world_size)  # every batch drawn is counted
        data = self.train_data
        starts = torch.randint(len(data) - seq_len - 1, (batch_size, 1), device=data.device, generator=self.generator)
        return data[starts + torch.arange(seq_len + 1, device=data.device)].long()

    def fit_micro_batch(self, model, x, loss_fn):
        """The largest divisor of the per-rank batch whose forward and backward fit with room for the
        optimizer, tried eagerly on the step's own batch before anything is compiled, the allocator's
        peak reset before each try; the smallest fit over the ranks. Nothing fits on some rank: every
        rank ends with the same `crash: out of memory` line (never a silent micro-batch of 1)."""
        local = len(x)
        cap = local if self.device.type == "cuda" else min(local, HOST_MICRO_BATCH)
        fitted = 0
        for size in [d for d in range(cap, 0, -1) if local % d == 0]:
            if self.device.type == "cuda":  # each try is measured alone: a failed larger one must not count
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(self.device)
            try:
                with self.autocast():
                    loss = loss_fn(model, x[:size])
                self.scaler.scale(loss).backward()
                fits = self.leaves_room_for_optimizer()
            except torch.OutOfMemoryError:
                fits = False
            loss = None
            model.zero_grad(set_to_none=True)
            if fits:
                fitted = size
                break
            print0(f"notice: a micro-batch of {size} sequences does not fit: trying a smaller one")
        if self.world_size > 1:  # a rank where nothing fits sends 0: every rank then stops together
            agreed = torch.tensor(fitted, device=x.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            fitted = int(agreed.item())
        if fitted == 0:
            where = f"{usable_memory(self.device) / 2**20:,.0f} MB usable" if self.device.type == "cuda" else "memory"
            raise NothingFits(f"not even one sequence fits with the optimizer's state in {where}")
        return fitted

    def leaves_room_for_optimizer(self):
        """Whether the optimizer's state (about three copies of the weights) still fits after the peak,
        under CARD_FILL of the memory this process may use (usable_memory)."""
        if self.device.type != "cuda":
            return True
        state = 3 * sum(p.numel() * p.element_size() for p in self.model.parameters())
        return torch.cuda.max_memory_allocated(self.device) + state < CARD_FILL * usable_memory(self.device)

    def forward_backward(self, model, batch_size, seq_len=MAX_SEQ_LEN, loss_fn=None):
        """One optimizer step's forward and backward: `batch_size` sequences (summed over GPUs)
        of `seq_len` predicted bytes, in the largest micro-batches that fit (fixed on the first
        step). `loss_fn(model, x)` returns the scalar loss (default: `model(x)`, the
        AutoregressiveWrapper's). Returns the mean loss, a tensor on the device."""
        if not 1 <= seq_len <= MAX_SEQ_LEN:
            raise HarnessError(f"seq_len={seq_len}: training windows hold 1 to MAX_SEQ_LEN={MAX_SEQ_LEN} bytes")
        local = batch_size // self.world_size
        if local * self.world_size != batch_size or local < 1:
            raise HarnessError(f"BATCH_SIZE={batch_size} must be a positive multiple of the {self.world_size} GPU(s)")
        with self.tracker.warmup_timer():
            return self.micro_steps(model, local, seq_len, loss_fn)

    def micro_steps(self, model, local, seq_len, loss_fn):
        if self.micro_batch is None:
            enter_phase(
                "the first step" + (" (fitting the micro-batch, then compiling)" if self.device.type == "cuda" else "")
            )
        self.seq_len = seq_len
        loss_fn = loss_fn or (lambda m, batch: m(batch))
        x = self.get_batch(local, seq_len)
        if self.micro_batch is None:
            self.micro_batch = self.fit_micro_batch(model, x, loss_fn)
            print0(f"micro_batch: {self.micro_batch} sequences per forward/backward ({local} per step per rank)")
        net = self.step_model(model)
        ddp = unwrap_compiled(net)
        parts = x.split(self.micro_batch)
        total = torch.zeros((), device=x.device)
        for i, part in enumerate(parts):
            sync = i == len(parts) - 1 or not isinstance(ddp, nn.parallel.DistributedDataParallel)
            with nullcontext() if sync else ddp.no_sync(), self.autocast():  # one all-reduce per step
                loss = loss_fn(net, part) * (len(part) / len(x))
            self.scaler.scale(loss).backward()
            total += loss.detach().float()
        self.tracker.last_loss = total
        self.own_backward = True
        return total

    def log_loss(self, loss):
        """Add `loss` to this optimizer step's loss: metrics.jsonl and the loss checks (NaN, explosion,
        a warm start) see it. forward_backward does this itself; a hand-written loop calls it once
        with the step's mean loss, or once per micro-batch with its share. A tensor stays on the
        device (no sync)."""
        value = torch.as_tensor(loss).detach().float().to(self.device).reshape(())
        last = self.tracker.last_loss
        self.tracker.last_loss = value if last is None else last + value

    def step(self, optimizer, grad_clip=None):
        """Unscale (FP16), clip, step, update the scaler and zero the gradients. Returns the norm."""
        with self.tracker.warmup_timer():
            return self.optimizer_step(optimizer, grad_clip)

    def optimizer_step(self, optimizer, grad_clip):
        # a hand-written loop's plain .backward() was neither scaled (FP16) nor all-reduced (DDP): do
        # what forward_backward would have done for it, or the replicas drift apart
        own, self.own_backward = self.own_backward, False
        scaled = own and self.scaler.is_enabled()
        if scaled:
            self.scaler.unscale_(optimizer)
        # the model's order, not the groups' (MuonAdamAtan2 builds one from a set): the same seed, the same norm
        params = sorted(
            (p for g in optimizer.param_groups for p in g["params"]), key=lambda p: self.param_order.get(id(p), -1)
        )
        if not own and self.world_size > 1:
            for p in params:
                if p.grad is not None:
                    dist.all_reduce(p.grad)
                    p.grad /= self.world_size
        norm = nn.utils.clip_grad_norm_(params, grad_clip or float("inf"))
        self.tracker.last_grad_norm = norm
        before = self.tracker.steps
        if scaled:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if self.tracker.steps == before:  # FP16's scaler skipped the step (inf gradients): it still counts
            self.tracker.on_step(optimizer)
        return norm


class NothingFits(Exception):
    """Not even a micro-batch of one sequence fits: the `crash: out of memory` line says so."""


def usable_memory(device):
    """Bytes this process may hold on the card: what it holds now plus what is free (a display or
    another process holds the rest), and no more than its per-process cap
    (torch.cuda.set_per_process_memory_fraction)."""
    free, total = torch.cuda.mem_get_info(device)
    fraction = torch.cuda.get_per_process_memory_fraction(device)
    return min(free + torch.cuda.memory_reserved(device), fraction * total)


def compile_model(model, options):
    """The harness's one torch.compile call (train.py's COMPILE supplies the options)."""
    return torch.compile(model, **options)


def convert_fp8(model, config=None):
    """Convert the linears `fp8_wants` selects to torchao float8 training (torchao's default
    tensorwise recipe, or `config`: a Float8LinearConfig); returns how many."""
    wanted = sum(fp8_wants(m, n) for n, m in model.named_modules())
    if wanted:
        from torchao.float8 import convert_to_float8_training

        convert_to_float8_training(model, module_filter_fn=fp8_wants, config=config)
    return wanted


def fp8_wants(module, fqn):
    """Only the transformer body's large linears: float8 is slower than BF16 on small matmuls."""
    return (
        isinstance(module, nn.Linear)
        and "attn_layers" in fqn
        and module.in_features % 16 == 0
        and module.out_features % 16 == 0
        and min(module.in_features, module.out_features) >= FP8_MIN_FEATURES
    )


def unwrap_compiled(model):
    return getattr(model, "_orig_mod", model)


def unwrap(model):
    """The plain module under torch.compile and DistributedDataParallel wrappers."""
    while isinstance(model, nn.parallel.DistributedDataParallel) or hasattr(model, "_orig_mod"):
        model = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model._orig_mod
    return model


# ---------------------------------------------------------------------------
# The model spec: what build_model() asked the libraries for, as plain JSON the scorer rebuilds
# ---------------------------------------------------------------------------


class SpecError(HarnessError):
    """build_model() handed a library class something the scorer cannot rebuild."""


def in_libraries(module_name, libraries):
    return any(module_name == lib or module_name.startswith(lib + ".") for lib in libraries)


def class_name(cls):
    return f"{cls.__module__}:{cls.__qualname__}"


OPTIONS_ONLY = "x-transformers options only: pass torch.nn modules or use an option; new forward code is out of scope"
PARAMETRIZE = "torch.nn.utils.parametrize"  # weight_norm's containers: a training tool, not a model option


def defined_in_train(cls, lead):
    """The refusal of a module class that is not the libraries' (train.py's own), after `lead`: the
    scorer never runs train.py, so a class of its own would be scored as something else."""
    return SpecError(f"{lead} a {cls.__qualname__}, a class defined in {cls.__module__}: {OPTIONS_ONLY}")


class SpecRecorder:
    """While build_model() runs, every constructor call of an x-transformers or torch.nn class made
    by build_model() itself (not by another constructor) is recorded as a call node:
    {"call": "module:Class", "args": [...], "kwargs": {...}}, with numbers, strings, booleans,
    None, lists, {"tuple": [...]}, {"dict": {...}} and nested call nodes as values. The scorer
    rebuilds the model from the node of the module train(run) returns, and nothing else."""

    def __init__(self):
        self.depth = 0  # constructors running: only the outermost call is build_model()'s own
        self.nodes = weakref.WeakKeyDictionary()  # module -> its call node
        self.built = []  # the nodes build_model() returned, in order
        self.failed = None  # (class, args, kwargs, error) of the last outermost constructor that raised
        self.checked = set()  # hashes of the specs `check` accepted

    def wrap(self, build_model, check=None):
        """build_model, recorded; `check(model, spec)` runs on the first build of each spec."""

        @functools.wraps(build_model)
        def recorded_build_model(*args, **kwargs):
            self.failed = None
            try:
                model = self.recorded(build_model, args, kwargs)
            except Exception as error:
                if self.failed is not None and self.failed[-1] is error:
                    raise self.build_failure(*self.failed) from None
                raise
            if model not in self.nodes:
                raise SpecError(
                    f"build_model() returned a {type(model).__qualname__} that it did not construct: return the "
                    "AutoregressiveWrapper it builds from x-transformers classes"
                )
            node = self.nodes[model]
            self.built.append(node)
            if check is not None and spec_hash(node) not in self.checked:
                check(model, node)
                self.checked.add(spec_hash(node))
            return model

        return recorded_build_model

    def recorded(self, build_model, args, kwargs):
        patched = self.patch()
        try:
            return build_model(*args, **kwargs)
        finally:
            for cls, init in patched:
                if init is None:
                    del cls.__init__
                else:
                    cls.__init__ = init

    def build_failure(self, cls, args, kwargs, error):
        """The LibraryFailure of a library constructor build_model() called: the keywords whose removal
        alone lets it build (on the meta device, in seconds) are named."""
        try:
            node = self.call_node(cls, args, kwargs)
        except SpecError:
            node = None
        names = culprits(node, lambda spec: build_from_spec(spec, "meta")) if node else []
        return LibraryFailure(
            f"build_model(): {cls.__qualname__}{failing_options(names)} cannot be built", error, names
        )

    def patch(self):
        """Wrap the __init__ of every loaded library module class, its own or the one it inherits (nn.Tanh
        has none of its own); returns what to restore (None: the class had no __init__ of its own)."""
        patched = []
        for name, module in list(sys.modules.items()):
            if module is None or not in_libraries(name, SPEC_LIBRARIES):
                continue
            for cls in list(vars(module).values()):
                if (
                    isinstance(cls, type)
                    and issubclass(cls, nn.Module)
                    and cls.__module__ == name
                    and cls is not nn.Module
                ):
                    patched.append((cls, vars(cls).get("__init__")))
                    cls.__init__ = self.recording(cls.__init__)
        return patched

    def recording(self, init):
        @functools.wraps(init)
        def __init__(module, *args, **kwargs):
            outermost = self.depth == 0
            self.depth += 1
            try:
                init(module, *args, **kwargs)
            except Exception as error:
                if outermost:
                    self.failed = (type(module), args, kwargs, error)
                raise
            finally:
                self.depth -= 1
            if outermost and type(module).__module__ != PARAMETRIZE:  # left on, check_matches_spec names it
                self.nodes[module] = self.call_node(type(module), args, kwargs)

        return __init__

    def call_node(self, cls, args, kwargs):
        if not in_libraries(cls.__module__, SPEC_LIBRARIES):
            raise defined_in_train(cls, "build_model() builds")
        where = cls.__qualname__
        return {
            "call": class_name(cls),
            "args": [self.plain(v, f"{where} argument {i}") for i, v in enumerate(args)],
            "kwargs": {k: self.plain(v, f"{where}({k}=...)") for k, v in kwargs.items()},
        }

    def plain(self, value, where):
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {"float": repr(value)}
        if isinstance(value, list):
            return [self.plain(v, where) for v in value]
        if isinstance(value, tuple):
            return {"tuple": [self.plain(v, where) for v in value]}
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return {"dict": {k: self.plain(v, f"{where}[{k!r}]") for k, v in value.items()}}
        if isinstance(value, nn.Module) and value in self.nodes:
            return self.nodes[value]
        if isinstance(value, nn.Module) and not in_libraries(type(value).__module__, SPEC_LIBRARIES):
            raise defined_in_train(type(value), f"build_model(): {where} is")
        what = "a module not built in build_model()" if isinstance(value, nn.Module) else "not a plain value"
        raise SpecError(
            f"build_model(): {where} is a {type(value).__qualname__} ({what}): the scorer rebuilds the model from "
            "numbers, strings, booleans, None, lists and x-transformers or torch.nn objects built in build_model(); "
            "use an x-transformers option instead, or put custom code in the loss, the optimizer or the schedule"
        )

    def spec_of(self, model):
        """The call node `model` was built from: its own, or (a deep copy, an averaged copy) the one
        recorded build whose rebuild has its modules and state shapes."""
        if model in self.nodes:
            return self.nodes[model]
        layout = model_layout(model)
        candidates = {json.dumps(node, sort_keys=True): node for node in self.built}
        matches = [node for node in candidates.values() if model_layout(build_from_spec(node, "meta")) == layout]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise HarnessError(
                "train(run) returned a model that no build_model() call built (its modules or state shapes differ): "
                "the scored model is rebuilt from build_model()'s options and loaded with the returned weights"
            )
        raise HarnessError(
            "train(run) returned a copy that matches several different build_model() results: return one"
        )


def random_states():
    """The default generators' states (the CPU's, and each GPU's once CUDA started): a build that
    initialises weights draws from one of them."""
    return [torch.random.get_rng_state(), *(torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [])]


def model_layout(model):
    """(name, class name, FP8 layers as their high-precision class) of every submodule, and the
    name and shape of every state entry: what must match between a trained and a rebuilt model."""
    names = [(n, type(m).__name__.removeprefix("Float8")) for n, m in model.named_modules()]
    return names, sorted((k, tuple(v.shape)) for k, v in model.state_dict().items())


def spec_value(node, device):
    if isinstance(node, list):
        return [spec_value(v, device) for v in node]
    if not isinstance(node, dict):
        return node
    if "tuple" in node:
        return tuple(spec_value(v, device) for v in node["tuple"])
    if "dict" in node:
        return {k: spec_value(v, device) for k, v in node["dict"].items()}
    if "float" in node:
        return float(node["float"])
    return build_from_spec(node, device)


def build_from_spec(node, device):
    """The module a call node describes, built on `device` by the installed libraries' classes only."""
    module_name, _, qualname = str(node.get("call", "")).partition(":")
    if not in_libraries(module_name, SPEC_LIBRARIES) or "." in qualname:
        raise HarnessError(f"the model spec names {node.get('call')!r}: only x-transformers and torch.nn classes")
    cls = getattr(importlib.import_module(module_name), qualname, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise HarnessError(f"the model spec names {node['call']!r}, which is not a module class of {module_name}")
    with torch.device(device):
        return cls(*spec_value(node["args"], device), **{k: spec_value(v, device) for k, v in node["kwargs"].items()})


def check_matches_spec(model, spec):
    """Refuse, before anything is saved, a trained model whose modules or state are not those of the
    model its spec builds: the scorer could not load it."""
    names, state = model_layout(build_from_spec(spec, "meta"))
    trained_names, trained_state = model_layout(model)
    if trained_state != state:
        keys, trained_keys = {k for k, _ in state}, {k for k, _ in trained_state}
        extra, missing = sorted(trained_keys - keys), sorted(keys - trained_keys)
        if extra or missing:
            raise HarnessError(
                f"the trained model's state differs from a fresh build_model(): extra {extra[:3]}, missing {missing[:3]}"
                + attached_tool(extra)
            )
        shapes = sorted(set(trained_state) - set(state))
        raise HarnessError(f"the trained model's state has other shapes than a fresh build_model(): {shapes[:3]}")
    if trained_names != names:
        first = next((a for a, b in zip(trained_names, names) if a != b), "a different number of modules")
        raise HarnessError(f"the trained model's modules differ from a fresh build_model() (first: {first})")


def check_finite_weights(model):
    """Refuse a model holding NaN or inf: every prediction it makes would be NaN, scored as nothing."""
    for name, tensor in model.state_dict().items():
        bad = tensor.numel() - int(torch.isfinite(tensor).sum()) if tensor.is_floating_point() else 0
        if bad:
            raise HarnessError(
                f"the trained model has non-finite weights ({name}: {bad:,} of {tensor.numel():,} NaN or inf): "
                "training diverged after the last loss check, or train() wrote them; lower the learning rate, keep "
                "GRAD_CLIP, and check what train() does to the weights after its loop"
            )


# Tools that keep a weight as other state entries: (an extra key's pattern, naming the module and the
# weight; the suffix of its partner entry; the tool; the call that puts the plain weight back)
ATTACHED_TOOLS = (
    (r"(.+)\.parametrizations\.(\w+)\.original\d*", None, "a parametrization (torch.nn.utils.parametrizations."
     "weight_norm, parametrize.register_parametrization)", "torch.nn.utils.parametrize.remove_parametrizations"),
    (r"(.+)\.(\w+)_orig", "_mask", "pruning (torch.nn.utils.prune)", "torch.nn.utils.prune.remove"),
    (r"(.+)\.(\w+)_g", "_v", "torch.nn.utils.weight_norm", "torch.nn.utils.remove_weight_norm"),
)  # fmt: skip


def attached_tool(extra):
    """What to call when the extra state entries are a tool still on a module (`net.to_logits.weight_orig`
    and `..._mask`), or "": the scorer builds the plain module, so the tool comes off before train() returns."""
    for pattern, partner, tool, fix in ATTACHED_TOOLS:
        for key in extra:
            found = re.fullmatch(pattern, key)
            if found and (partner is None or f"{found[1]}.{found[2]}{partner}" in extra):
                return (
                    f": {tool} is still on {found[1]}: call {fix}(module, {found[2]!r}) on it before train() returns "
                    "(the module keeps the weight the tool computes; the scorer builds it plain)"
                )
    return ""


def spec_hash(spec):
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------
# The early check: the scorer's path on build_model()'s fresh model, before the first step
# ---------------------------------------------------------------------------


class LibraryFailure(HarnessError):
    """x-transformers (or torch) raised on what build_model() asked for: `names` are the options that,
    each removed alone, let it run; `reason` is the library's own message."""

    def __init__(self, what, error, names=()):
        self.names, self.reason = list(names), one_line_reason(error)
        super().__init__(f"{what}: {self.reason}")


def shown_value(value):
    """A spec value as train.py would write it, call nodes by their class name: `GRU(...)`."""
    if isinstance(value, list):
        return "[" + ", ".join(map(shown_value, value)) + "]"
    if not isinstance(value, dict):
        return repr(value)
    if "call" in value:
        return f"{value['call'].rpartition(':')[2]}(...)"
    if "tuple" in value:
        items = list(map(shown_value, value["tuple"]))
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if "dict" in value:
        return "{" + ", ".join(f"{k!r}: {shown_value(v)}" for k, v in value["dict"].items()) + "}"
    return repr(float(value["float"]))


def spec_keywords(node, path=()):
    """(path to a call node, keyword, value) of every keyword in the spec, outermost call first."""
    for key, value in node["kwargs"].items():
        yield path, key, value
    for where, value in [*enumerate(node["args"]), *node["kwargs"].items()]:
        if isinstance(value, dict) and "call" in value:
            yield from spec_keywords(value, (*path, where))


def spec_without(node, path, key):
    """A copy of the spec with `key` dropped from the call node at `path`."""
    node = copy.deepcopy(node)
    inner = node
    for where in path:
        inner = inner["args"][where] if isinstance(where, int) else inner["kwargs"][where]
    del inner["kwargs"][key]
    return node


def culprits(node, runs):
    """The options (`key=value`) of the spec whose removal alone lets `runs(spec)` finish: what a
    library failure is about (one option, or each side of a combination). None when the spec itself
    runs: then the failure came from elsewhere (the returned model's state), not from an option."""
    try:
        runs(node)
    except Exception:
        pass
    else:
        return []
    names = []
    for path, key, value in spec_keywords(node):
        try:
            runs(spec_without(node, path, key))
        except Exception:
            continue
        names.append(f"`{key}={shown_value(value)}`")
    return names


def failing_options(names):
    """' with `a=1`', ' with `a=1` and `b=2`', or nothing when no single option is to blame."""
    if not names:
        return ""
    return " with " + (names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1])


@contextmanager
def preserved_random_state(device):
    """Every generator a check could draw from (Python's, torch's CPU one and the device's) as it was
    before: the run's random stream, and so its val_bpc, is the same with or without the check."""
    state = random.getstate()
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(state)


def spec_check_loss(spec, data, device, state=None):
    """The spec's model built on `device` (holding `state` when given) and its check loss on `data`."""
    model = build_from_spec(spec, device)
    if state is not None:
        model.load_state_dict(state)
    return model, check_loss(model.net, data, device)


def returned_model_loss(model, data, device):
    """check_loss of the model build_model() returned, moved to `device` for it and back (a move keeps
    its parameters the same objects, so train() never sees a difference)."""
    home = {t.device for t in (*model.parameters(), *model.buffers())}
    model.to(device)
    try:
        return check_loss(model.net, data, device)
    finally:
        if len(home) == 1:
            model.to(home.pop())


@no_grad
def add_noise(model, device):
    """Perturb every floating weight in place, from a generator of the check's own."""
    generator = torch.Generator(device).manual_seed(0)
    for p in model.parameters():
        if p.is_floating_point():
            p.add_(CHECK_NOISE * torch.randn(p.shape, generator=generator, device=device).to(p.dtype))


def check_scorable(model, spec, data, device):
    """Before the first step, what the scorer will do, on build_model()'s fresh `model`: its spec
    rebuilt on `device` with the fresh weights loaded, both models' check loss in eval mode (compared
    as at the hand-back), then the evaluation with its leak probes on the first CHECK_WINDOWS
    windows of `data`, the rebuilt weights perturbed first (zero-initialised branches hide a leak).
    An option the sealed path cannot run raises LibraryFailure naming it. Returns a warning when
    the two losses differ, else None. Every random generator is left as it was."""
    window = data[: CHECK_WINDOWS * MAX_SEQ_LEN + 1]
    check_library_model(model)
    state = model.state_dict()
    if attached_tool(list(state)):  # weight_norm, pruning: they come off before train() returns, or
        state = None  # check_matches_spec says how; the plain build is what the scorer runs
    with preserved_random_state(device):
        try:
            rebuilt, loss = spec_check_loss(spec, window, device, state=state)
        except HarnessError:
            raise
        except Exception as error:
            names = culprits(spec, lambda variant: spec_check_loss(variant, window, device))
            raise LibraryFailure(
                f"the scorer cannot run this model{failing_options(names)} (its eval-mode forward, tried on the fresh "
                "build before training)",
                error,
                names,
            ) from None
        trained = loss if state is None else returned_model_loss(model, window, device)
        add_noise(rebuilt, device)
        try:
            evaluate(rebuilt.net, window, device, batch=CHECK_WINDOWS)  # the probes at the windows' own size
        except HarnessError:
            raise
        except Exception as error:
            raise LibraryFailure("the scorer cannot evaluate this model (tried on the fresh build)", error) from None
    if not abs(trained - loss) <= CHECK_TOLERANCE:
        return (
            f"the model built from build_model()'s options gives {loss:.6f} on the check windows, the model it "
            f"returned {trained:.6f}: what build_model() set after construction is not part of the spec, and is not "
            "scored (the run will be flagged state_not_in_spec)"
        )
    return None


OWN_CODE = (*MODEL_LIBRARIES, "torch")  # where the methods of a scored model's classes may come from


def check_library_model(model):
    """The scored model must be instances of the pinned libraries' own classes, unpatched, with no
    method replaced on an instance: the scorer runs the libraries' code, so a model that only
    works with train.py's code would be scored as something else."""
    for name, module in model.named_modules():
        cls, where = type(module), name or "the returned model"
        problem = None
        if not in_libraries(cls.__module__, MODEL_LIBRARIES):
            problem = f"{where} is a {cls.__qualname__}, a class defined in {cls.__module__}"
        else:
            for klass in cls.__mro__:
                for attr, value in vars(klass).items() if in_libraries(klass.__module__, MODEL_LIBRARIES) else ():
                    if isinstance(value, types.FunctionType) and not in_libraries(value.__module__, OWN_CODE):
                        problem = f"{klass.__qualname__}.{attr} was replaced by code from {value.__module__}"
            methods = [k for k, v in vars(module).items() if callable(v) and callable(getattr(cls, k, None))]
            if methods:
                problem = f"{where}.{methods[0]} was replaced on the instance"
        if problem:
            raise HarnessError(
                f"the scored model is built from x-transformers options: {problem}. Custom code stays free in the "
                "loss, the optimizer, the schedule, EMA and curricula, not in the model train(run) returns"
            )


# ---------------------------------------------------------------------------
# The clock: every optimizer step counted, metrics.jsonl, loss checks, the stop decision
# ---------------------------------------------------------------------------


def append_metrics(run, row):
    """One JSON line in metrics.jsonl (rank 0 only)."""
    if run.master:
        row = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}  # strict JSON
        with open(run.env["metrics"], "a") as f:
            f.write(json.dumps(row) + "\n")


class Tracker:
    """Counts optimizer steps from a global hook, buffers per-step values on the device and
    copies them to the host every METRICS_EVERY steps in one transfer (the GPU never waits on a
    per-step .item()), and decides when the budget is spent, on rank 0's clock under torchrun.
    The clock is wall time from the call of train(run) to its return, less only the time spent
    inside forward_backward and step during the uncounted warm-up steps (compilation, fitting)."""

    def __init__(self, run, t_start=None):
        self.run = run
        self.t_start = t_start or T_START  # the run's first process: startup_seconds counts the supervisor's work too
        self.budget = run.env["budget"]
        self.step_budget = run.env["steps"]
        if run.master:  # one file per run: overwrite the previous run's
            Path(run.env["metrics"]).parent.mkdir(parents=True, exist_ok=True)
            Path(run.env["metrics"]).write_text("")
        self.steps = 0
        self.stopped = False
        self.last_loss = None  # set by forward_backward, read when the step lands
        self.first_loss = None  # the first step's: far below a guess's, the model was trained before (warm_start)
        self.last_grad_norm = None
        self.pending = []  # (step, loss, lr, grad_norm) since the last flush, tensors on device
        self.served_tokens = 0  # tokens served since the last step
        self.window_tokens = 0
        self.counted_tokens = 0  # tokens of the steps that count against the budget
        self.uncounted_tokens = 0
        self.training_time = 0.0
        self.clock_start = None  # wall time of the call of train(run)
        self.warmup_seconds = 0.0  # spent inside forward_backward and step during the uncounted steps
        self.last_step_at = 0.0  # elapsed() when the last optimizer step landed
        self.loop_start = self.window_start = time.time()
        self.last_status = 0.0
        self.synced_time = 0.0  # training_time at the last sync: rank 0's under torchrun
        self.step_seconds = 0.0  # mean step time in the window before the last sync
        run.startup_seconds = self.loop_start - self.t_start

    def start_clock(self):
        """train(run) is called now: from here on every second counts but the warm-up steps'."""
        self.clock_start = self.loop_start = self.window_start = time.time()
        self.run.startup_seconds = self.loop_start - self.t_start

    def elapsed(self):
        """Budget seconds spent: wall time since train(run) was called, less the warm-up steps."""
        off = min(self.warmup_seconds, EXCLUDED_SECONDS_MAX)  # the supervisor's cap too
        return 0.0 if self.clock_start is None else time.time() - self.clock_start - off

    def sync(self):
        if self.run.device.type == "cuda":
            torch.cuda.synchronize(self.run.device)

    @contextmanager
    def warmup_timer(self):
        """Time a forward_backward or step of an uncounted warm-up step, to take it off the clock."""
        if self.steps >= self.run.excluded_steps:
            yield
            return
        self.sync()
        began = time.time()
        try:
            yield
        finally:
            self.sync()
            self.warmup_seconds += time.time() - began
            self.run.compile_seconds = self.warmup_seconds
            if self.steps >= self.run.excluded_steps:  # the last uncounted step landed: the warm-up is over
                self.report_steps(warmed=True)

    def served(self, tokens):
        self.served_tokens += tokens

    @property
    def progress(self):
        """Fraction of the budget spent, from the host clock (no sync). Under torchrun every rank
        must step with the same LR or the replicas drift apart, so there it is rank 0's time at
        the last sync plus the steps taken since, at that pace."""
        if self.step_budget:
            return min(self.steps / self.step_budget, 1.0)
        if self.run.world_size > 1:
            return min((self.synced_time + self.step_seconds * len(self.pending)) / self.budget, 1.0)
        return min(self.elapsed() / self.budget, 1.0)

    def on_step(self, optimizer):
        """Called after every optimizer step (the global hook, or a step FP16's scaler skipped)."""
        if self.stopped:
            raise HarnessError(f"optimizer step {self.steps + 1} after the harness said stop (run.done was True)")
        self.steps += 1
        self.last_step_at = self.elapsed()  # the overrun grace is a multiple of the steps' pace, not of idle time
        step, tokens = self.steps, self.served_tokens
        self.served_tokens = 0
        loss = self.last_loss  # None: a hand-written loop that did not call run.log_loss
        norm = self.last_grad_norm if self.last_grad_norm is not None else torch.tensor(0.0)
        lr = optimizer.param_groups[0]["lr"] if optimizer.param_groups else 0.0
        where = self.run.device if loss is None else loss.device
        loss = None if loss is None else loss.detach().float()
        self.pending.append((step, loss, float(lr), norm.detach().float().to(where)))
        self.last_loss = self.last_grad_norm = None
        self.window_tokens += tokens
        if step > self.run.excluded_steps:
            self.counted_tokens += tokens
        else:
            self.uncounted_tokens += tokens
        if step == 1:  # Python's GC stalls for 100s of ms; what is alive now lives all run
            gc.collect()
            gc.freeze()
            enter_phase("training")
        if self.step_budget:
            if step % METRICS_EVERY == 0 or step >= self.step_budget:
                self.flush(step)
            self.stopped = step >= self.step_budget
            return
        # a single process may also stop between syncs, when its host clock says the budget is spent
        spent = self.run.world_size == 1 and self.progress >= 1.0
        if step <= self.run.excluded_steps or step % METRICS_EVERY == 0 or spent:
            self.stopped = self.flush(step)

    def flush(self, step):
        self.sync()
        now = time.time()
        self.training_time = self.elapsed()
        dt = max(now - self.window_start, 1e-9)
        tok_per_sec = self.window_tokens / dt
        values = torch.stack(
            [torch.stack([norm if loss is None else loss, norm]) for _, loss, _, norm in self.pending]
        ).tolist()  # one transfer for the window
        for i, ((s, reported, lr, _), (loss, norm)) in enumerate(zip(self.pending, values)):
            loss = None if reported is None else loss
            # per-step times are spread evenly over the window between two syncs
            elapsed = max(self.training_time - dt * (len(values) - 1 - i) / len(values), 0.0)
            row = dict(step=s, time=round(elapsed, 4), loss=loss, lr=lr, tok_per_sec=round(tok_per_sec), grad_norm=norm)
            append_metrics(self.run, row)
            if loss is None:
                continue
            self.first_loss = loss if self.first_loss is None else self.first_loss
            if not math.isfinite(loss):
                raise LossError(f"loss is {loss} at step {s}")
            if loss > LOSS_EXPLODED:
                raise LossError(f"loss exploded to {loss:.4g} at step {s}")
        if now - self.last_status >= STATUS_EVERY_S or step <= self.run.excluded_steps:
            self.last_status = now
            if self.step_budget:
                where = f"{self.training_time:6.1f}s | {step}/{self.step_budget} steps"
            else:
                where = (
                    f"{self.training_time:6.1f}s/{self.budget:.0f}s ({100 * self.training_time / self.budget:5.1f}%)"
                )
            last = "n/a (run.log_loss reports it)" if self.pending[-1][1] is None else f"{values[-1][0]:.4f}"
            print0(f"step {step:05d} | {where} | loss {last} | lr {self.pending[-1][2]:.2e} | {tok_per_sec:,.0f} tok/s")
        self.pending, self.window_tokens, self.window_start = [], 0, now
        self.report_steps()
        done = self.training_time >= self.budget
        if self.run.world_size > 1:  # rank 0's clock decides: every rank takes the same LR and stops at the same step
            clock = torch.tensor([self.training_time, dt / len(values)], dtype=torch.float64, device=self.run.device)
            dist.broadcast(clock, 0)
            self.synced_time, self.step_seconds = clock.tolist()
            done = self.synced_time >= self.budget
        return done

    def report_steps(self, warmed=False):
        """Tell the supervisor the measure as this process holds it: it checks each value against its
        own and bounds the warm-up by its own clock."""
        report(
            "steps",
            step=self.steps,
            excluded_steps=self.run.excluded_steps,
            step_budget=self.step_budget,
            budget=self.budget,
            warmup_seconds=self.warmup_seconds,
            warmed=warmed,
        )

    def stats(self):
        """Totals for the summary, taken when train(run) has returned (the supervisor's clock, not
        this one, decides whether it returned too late)."""
        if self.pending:
            self.flush(self.steps)
        self.sync()
        self.training_time = self.elapsed()
        self.returned_at = time.time()
        counted = self.steps - self.run.excluded_steps
        if not self.step_budget and counted > 0:
            step_time = self.last_step_at / counted
            grace = max(OVERRUN_GRACE, (METRICS_EVERY if self.run.world_size > 1 else 2) * step_time)
            if self.training_time > self.budget + grace:
                raise HarnessError(
                    f"train(run) returned {self.training_time - self.budget:.0f} s after the {self.budget:g} s budget "
                    f"(grace {grace:.0f} s): the budget covers all of train(), so stop soon after run.done"
                )
        return dict(num_steps=self.steps, training_seconds=self.training_time, counted_tokens=self.counted_tokens)


# ---------------------------------------------------------------------------
# Evaluation: the ground truth. Every byte of the scored split predicted exactly once.
# ---------------------------------------------------------------------------


@contextmanager
def pinned_eval_numerics(device):
    """The same kernels in the run and in the re-score: no TF32, no reduced-precision reductions,
    one SDPA backend order. Restores the training settings afterwards."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    saved = (
        float32_matmul_precision(),
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        torch.backends.cudnn.allow_tf32,
    )
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False
    torch.backends.cudnn.allow_tf32 = False
    if device.type == "cuda":
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
    else:
        backends = [SDPBackend.MATH]
    try:
        with sdpa_kernel(backends, set_priority=True):
            yield
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = saved[1]
        torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = saved[2]
        torch.backends.cudnn.allow_tf32 = saved[3]


def eval_autocast(device):
    """BF16 autocast on CUDA cards with BF16 tensor cores, FP16 on older ones, FP32 elsewhere."""
    if device.type != "cuda":
        return nullcontext()
    dtype = torch.bfloat16 if torch.cuda.get_device_capability(device) >= (8, 0) else torch.float16
    return torch.autocast("cuda", dtype=dtype)


def eval_numerics(device):
    """The evaluation's dtype and attention kernels on this device, per compute capability: part of
    the fingerprint, and a re-score on other numerics is refused. Ampere and newer: BF16 with the
    flash kernel first; older cards (no BF16 tensor cores, no flash): FP16 with the memory-efficient
    kernel; CPU and MPS: FP32 with the math kernel."""
    if device.type != "cuda":
        return f"{device.type}-fp32-math"
    major, minor = torch.cuda.get_device_capability(device)
    kernels = "bf16-flash" if major >= 8 else "fp16-efficient"
    return f"cuda{major}.{minor}-{kernels}"


def eval_windows(data, device):
    """(inputs, targets, valid) windows of MAX_SEQ_LEN over `data`: window i holds bytes
    [i*T, i*T + T] and predicts bytes i*T+1 .. i*T+T, so every byte but the first is predicted
    exactly once; the last partial window is zero-padded and its padding masked out."""
    data = data.to(device)
    targets_total = len(data) - 1
    windows = math.ceil(targets_total / MAX_SEQ_LEN)
    padded = torch.zeros(windows * MAX_SEQ_LEN + 1, dtype=torch.uint8, device=device)
    padded[: len(data)] = data
    inputs = padded[:-1].view(windows, MAX_SEQ_LEN).long()
    targets = padded[1:].view(windows, MAX_SEQ_LEN).long()
    valid = (torch.arange(windows * MAX_SEQ_LEN, device=device) < targets_total).view(windows, MAX_SEQ_LEN)
    return inputs, targets, valid


def padded_batch(rows, device, size=EVAL_BATCH_SIZE):
    """`rows` (n <= size windows) in a batch of the fixed evaluation shape, (size, MAX_SEQ_LEN)."""
    x = torch.zeros(size, MAX_SEQ_LEN, dtype=rows.dtype, device=device)
    x[: len(rows)] = rows
    return x


def donor_windows(inputs, lo, rng, size=EVAL_BATCH_SIZE):
    """For each row of the batch at `lo`, other real text: another scored window (never the row's
    own), or, with a single window, the same text rolled by a random offset."""
    windows = len(inputs)
    rows = []
    for i in range(size):
        own = lo + i
        if windows > 1:
            other = (own + 1 + rng.randrange(windows - 1)) % windows
            rows.append(inputs[other])
        else:
            rows.append(inputs[0].roll(rng.randrange(1, MAX_SEQ_LEN)))
    return torch.stack(rows)


def leak_probes(x, n, donors, rng):
    """Probe inputs for one scored batch `x` (its first n rows real), each with the positions
    whose logits must not move: later bytes swapped for other real text at a random cut per row,
    every other row swapped (rows must not see each other), and the same input again (no state)."""
    cuts = torch.tensor([rng.randrange(1, MAX_SEQ_LEN) for _ in range(n)], device=x.device)
    before_cut = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    before_cut[:n] = torch.arange(MAX_SEQ_LEN, device=x.device) < cuts[:, None]
    suffix = torch.where(before_cut, x, donors)
    suffix[n:] = x[n:]
    kept = rng.randrange(n)
    rows = donors.clone()
    rows[kept] = x[kept]
    only_kept = torch.zeros_like(before_cut)
    only_kept[kept] = True
    real = torch.zeros_like(before_cut)
    real[:n] = True
    return [
        (suffix, before_cut, "earlier predictions move when later bytes change"),
        (rows, only_kept, "a window's predictions move when other windows of the batch change"),
        (x, real, "the same input scored twice gives different predictions"),
    ]


NOT_FINITE = (
    "the model predicts NaN or inf: its weights are not finite, or its forward overflows in the evaluation's "
    "dtype; keep the weights finite and the activations in range (norms, qk-norm)"
)


def refuse_moved_predictions(net, results, x, device):
    """Refuse a model whose logits moved under a leak probe (`results`: the batch `x`'s logits, then each
    probe's): not deterministic when it draws random numbers in eval mode, else not causal (it sees
    later bytes or other rows, or keeps state between calls)."""
    reference = next(logits for logits, spec in results if spec is None)
    for logits, spec in results:
        shift = 0.0 if spec is None else ((logits - reference).abs().amax(-1) * spec[1]).max().item()
        if shift <= CAUSAL_TOLERANCE:
            continue
        if not (torch.isfinite(logits).all() and torch.isfinite(reference).all()):
            raise HarnessError(NOT_FINITE)
        if draws_random_numbers(net, x[:1], device):  # one window tells, in a sixteenth of the time
            raise HarnessError(
                f"the model is not deterministic in eval mode: the same input gives other predictions under another "
                f"random seed (by {shift:.3g}): a module samples at evaluation (Gumbel softmax attention, sampling, "
                "dropout that ignores eval()); every byte must score the same twice, so turn that option off"
            )
        raise HarnessError(f"the model is not causal: {spec[2]} (by {shift:.3g})")


@no_grad
def draws_random_numbers(net, x, device):
    """Whether `net` in eval mode gives `x` the same logits twice under one seed and others under another:
    randomness (a seed decides), not state kept between calls (the same seed gives other logits)."""

    def logits(seed):
        with preserved_random_state(device):
            torch.manual_seed(seed)
            with eval_autocast(device):
                return net(x).float()

    was_training = net.training
    net.eval()
    with pinned_eval_numerics(device):
        first, again, other = logits(0), logits(0), logits(1)
    net.train(was_training)
    return bool((first - again).abs().max() <= CAUSAL_TOLERANCE < (first - other).abs().max())


@no_grad
def evaluate(net, data, device, probe=True, rank=0, world_size=1, batch=EVAL_BATCH_SIZE):
    """Bits per byte of `net` ((B, T) long -> (B, T, 256) logits) on the bytes `data`, and seconds.

    Every byte but the first is predicted once, in fixed (EVAL_BATCH_SIZE, MAX_SEQ_LEN) batches,
    eval mode, pinned numerics, FP32 log-softmax and batch sums, FP64 total. With `probe`, the
    windows of PROBE_BATCHES scored batches, drawn now, are also run as leak probes, interleaved at
    random points among the scoring forwards through the same call: a model that sees later bytes,
    other rows, or keeps state is refused with a `crash: the model is not causal` line, one that
    samples in eval mode as `not deterministic`, one that predicts NaN or inf as such. `batch`: the
    early check's smaller shape; every score is EVAL_BATCH_SIZE's.
    """
    t0 = time.time()
    inputs, targets, valid = eval_windows(data, device)
    windows = len(inputs)
    mine = [lo for b, lo in enumerate(range(0, windows, batch)) if b % world_size == rank]
    rng = random.SystemRandom()  # not the run's seed: train.py cannot know which batches are probed
    jobs = [("score", lo, None) for lo in mine]
    probed = rng.sample(mine, min(PROBE_BATCHES, len(mine))) if probe else []
    for lo in probed:
        n = min(batch, windows - lo)
        donors = donor_windows(inputs, lo, rng, batch)
        for p in leak_probes(padded_batch(inputs[lo : lo + n], device, batch), n, donors, rng):
            jobs.insert(rng.randrange(jobs.index(("score", lo, None)) + 1, len(jobs) + 1), ("probe", lo, p))
    kept = {}  # logits of probed batches and of their probes, compared at the end
    was_training = net.training
    net.eval()
    total = 0.0  # a Python float: FP64 on every device, MPS included
    with pinned_eval_numerics(device):
        for kind, lo, spec in jobs:
            n = min(batch, windows - lo)
            x = spec[0] if kind == "probe" else padded_batch(inputs[lo : lo + n], device, batch)
            with eval_autocast(device):
                logits = net(x)
            if type(logits) is not torch.Tensor:  # a subclass could rewrite what cross_entropy sees
                raise HarnessError(f"the model returned a {type(logits).__name__}, not a plain Tensor of logits")
            if kind == "probe":
                kept.setdefault(lo, []).append((logits.float(), spec))
                continue
            if lo in probed:
                kept.setdefault(lo, []).insert(0, (logits.float(), None))
            y, mask = padded_batch(targets[lo : lo + n], device, batch), padded_batch(valid[lo : lo + n], device, batch)
            nll = F.cross_entropy(logits.float().reshape(-1, VOCAB), y.reshape(-1), reduction="none")
            total += (nll * mask.reshape(-1)).sum().item()
    net.train(was_training)
    if not math.isfinite(total):
        raise HarnessError(NOT_FINITE)
    for lo, results in kept.items():
        refuse_moved_predictions(net, results, padded_batch(inputs[lo : lo + batch], device, batch), device)
    if world_size > 1:
        shards = torch.tensor(total, dtype=torch.float64, device=device)
        dist.all_reduce(shards)
        total = shards.item()
    return total / (len(data) - 1) / math.log(2), time.time() - t0


# ---------------------------------------------------------------------------
# Provenance: commit, source, fingerprint
# ---------------------------------------------------------------------------


def prepare_hash(text=None):
    """sha256 of prepare.py's text (12 characters): the harness a result was measured with."""
    return hashlib.sha256((text if text is not None else Path(__file__).read_text()).encode()).hexdigest()[:12]


def library_digest():
    """sha256 over the installed x-transformers and adam-atan2-pytorch files (12 characters), each
    first checked against its dist-info RECORD hash: an edited library file ends the run."""
    import base64
    from importlib.metadata import PackageNotFoundError, distribution

    digest = hashlib.sha256()
    for name in CHECKED_LIBRARIES:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise HarnessError(f"{name} is not installed: pip install -e . installs the pinned version") from None
        for record in sorted(dist.files or [], key=str):
            if record.hash is None or not str(record).endswith(".py"):
                continue
            path = Path(dist.locate_file(record))
            sha = hashlib.sha256(path.read_bytes()).digest()
            if base64.urlsafe_b64encode(sha).rstrip(b"=").decode() != record.hash.value:
                raise HarnessError(
                    f"{path} differs from the installed {name} {dist.version}: reinstall it "
                    f"(pip install --force-reinstall --no-deps {name}=={dist.version})"
                )
            digest.update(f"{record}:{record.hash.value}\n".encode())
    return digest.hexdigest()[:12]


def budget_label(env):
    return f"{env['steps']}steps" if env["steps"] else f"{env['budget']:g}s"


def fingerprint(run, harness, libraries, numerics):
    """Equal fingerprints mean comparable numbers: same harness, libraries, budget, scored bytes, data
    and evaluation numerics (the family: CUDA cards of every capability share one)."""
    family = "cuda" if numerics.startswith("cuda") and "bf16" in numerics else numerics
    parts = f"{harness}|{libraries}|{budget_label(run.env)}|{run.eval_bytes}|{run.data_identity}|{family}"
    return hashlib.sha256(parts.encode()).hexdigest()[:12]


def git_commit(repo):
    """HEAD as 7 characters, with -dirty when train.py or prepare.py differ from it."""
    try:
        git = ["git", "-C", str(repo)]
        head = subprocess.run(git + ["rev-parse", "--short=7", "HEAD"], capture_output=True, text=True, check=True)
        paths = ["--", "train.py", "prepare.py"]
        dirty = subprocess.run(git + ["status", "--porcelain", "--untracked-files=no", *paths], capture_output=True)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "none"


def peak_memory_mb(device):
    """CUDA allocator peak on a GPU; the process's peak resident memory elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def check_checkpoint_fits(path, model):
    """Refuse to train a model whose checkpoint (FP32 weights and buffers) would not fit on the disk."""
    need = sum(t.numel() * 4 for t in model.state_dict().values()) + 2**20
    folder = Path(path).resolve().parent
    free = shutil.disk_usage(folder if folder.exists() else Path.cwd()).free
    if free < need:
        raise HarnessError(
            f"the checkpoint needs {need / 2**20:,.0f} MB and {folder} has {free / 2**20:,.0f} MB free: "
            "free some space (old checkpoints/ of discarded runs, caches) before training"
        )


def save_checkpoint(run, model, spec, check, source, summary, folder):
    """What the sealed scorer reads, as `folder`/checkpoint.pt: the weights (every buffer too, each in
    the dtype it was returned in), the model spec they load into, the trained model's loss on the check
    windows, the summary so far, and train.py's source (for the person: the scorer never runs it).
    Returns the sha256 of the bytes written, which the supervisor compares (rank 0; None elsewhere)."""
    if not run.master:
        return None
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    buffer = io.BytesIO()
    torch.save({"model": state, "spec": spec, "check": check, "source": source, "summary": summary}, buffer)
    blob = buffer.getbuffer()
    Path(folder, "checkpoint.pt").write_bytes(blob)
    return hashlib.sha256(blob).hexdigest()


# ---------------------------------------------------------------------------
# Summary: the `---` block program.md greps
# ---------------------------------------------------------------------------

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
    "budget": "{}",
    "micro_batch": "{}",
    "gpu_busy_mb": "{:.0f}",
    "prepare_hash": "{}",
    "run_id": "{}",
    "val_bpc_exact": "{!r}",
    "train_bpc": "{:.6f}",
    "flags": "{}",
    "libraries": "{}",
    "eval_numerics": "{}",
    "spec": "{}",
    "sandbox": "{}",
}


def model_shape(net):
    """(depth, dim) of an x-transformers TransformerWrapper, for the attention FLOPs; (0, 0) otherwise."""
    layers = getattr(net, "attn_layers", None)
    return getattr(layers, "depth", 0), getattr(layers, "dim", 0)


def flops_per_token(num_params, depth, dim, seq_len=MAX_SEQ_LEN):
    """Training FLOPs per counted token (a predicted byte) of windows of `seq_len` predictions: the
    network runs over the seq_len + 1 bytes get_batch serves, 6N per position for the weights (2N
    forward, 4N backward) plus 12·depth·dim·positions for attention scores and weighted sums."""
    positions = seq_len + 1
    return (6 * num_params + 12 * depth * dim * positions) * positions / seq_len


def make_summary(run, stats, identity):
    """Every summary key but val_bpc, eval_seconds and total_seconds, which come at the end."""
    seconds = max(stats["training_seconds"], 1e-9)
    tokens_per_sec = stats["counted_tokens"] / seconds
    depth, dim = model_shape(getattr(run.model, "net", run.model))
    flops = flops_per_token(run.num_params, depth, dim, run.seq_len or MAX_SEQ_LEN)
    mfu = 100 * flops * tokens_per_sec / (run.peak_tflops * 1e12) if run.peak_tflops else 0.0
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
        commit=identity["commit"],
        fingerprint=fingerprint(run, identity["harness"], identity["libraries"], eval_numerics(run.device)),
        world_size=run.world_size,
        data=run.data_identity,
        excluded_steps=run.excluded_steps,
        overrides=" ".join(f"{k}={v}" for k, v in run.env["overrides"].items()) or "none",
        budget=budget_label(run.env),
        micro_batch=run.micro_batch or 0,
        gpu_busy_mb=run.env.get("gpu_busy_mb", 0.0),
        prepare_hash=identity["harness"],
        run_id=identity["run_id"],
        libraries=identity["libraries"],
        eval_numerics=eval_numerics(run.device),
    )


def print_summary(summary, metrics):
    """The `---` block, and the summary as the metrics file's last row."""
    lines = [f"{key + ':':<18}{fmt.format(summary[key])}" for key, fmt in SUMMARY_FORMAT.items()]
    print("---\n" + "\n".join(lines), flush=True)
    with open(metrics, "ab+") as f:
        f.seek(max(f.seek(0, os.SEEK_END) - 1, 0))
        lead = b"" if f.read(1) in (b"", b"\n") else b"\n"  # a line train.py left unfinished stays its own
        f.write(lead + json.dumps({"summary": summary}, default=str).encode() + b"\n")


# ---------------------------------------------------------------------------
# Crash lines, signals, torchrun peers: every process ends in one `crash:` line, printed by the supervisor
# ---------------------------------------------------------------------------


def remove_temp_files():
    for path in list(TEMP_FILES):
        path.unlink(missing_ok=True)


def die(message, code):
    PEERS["dying"] = True  # this process ends now: its watcher of the other ranks stands down
    remove_temp_files()
    tell_other_ranks(message, code)
    say_crash(message, code)


def report(event, **data):
    """One event for the supervisor, from the trainer (elsewhere, nothing)."""
    if ROLE == "trainer":
        os.write(int(sys.argv[3]), (json.dumps(dict(event=event, **data), default=str) + "\n").encode())


def one_line_reason(error):
    """`Type: first line of the message`; for a bare `assert`, the failing line and where it is."""
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if not message:
        where = traceback.extract_tb(error.__traceback__)[-1]
        message = f"{where.line} ({Path(where.filename).name}:{where.lineno})"
    return f"{type(error).__name__}: {message}"


PEERS = {}  # under torchrun: the ranks' key-value store, where a crashing rank leaves its crash line
PEER_CRASH_KEY = "autoresearch/crash"


def tell_other_ranks(message, code):
    """Leave this rank's crash line in the store for watch_other_ranks: the other ranks end within
    seconds instead of waiting in a collective until the watchdog. Rank 0 may host the store, so it
    lingers long enough for the others to read it."""
    store = PEERS.get("store")
    if store is None:
        return
    rank = int(os.environ.get("RANK", "0"))

    def tell():
        if not store.check([PEER_CRASH_KEY]):  # the first crash is the cause; the others follow it
            store.set(PEER_CRASH_KEY, json.dumps(dict(rank=rank, message=message, code=code)))

    teller = threading.Thread(target=tell, daemon=True)
    teller.start()
    teller.join(2 * PEER_POLL_S)  # a store that is already gone must not hold the crash up
    if rank == 0:
        time.sleep(2 * PEER_POLL_S)


def watch_other_ranks(store):
    """A thread that ends this rank, with the crashed rank's line and exit code, once another rank
    left one in the store: it works while the main thread is blocked in a collective or a CUDA sync."""
    PEERS["store"] = store
    rank = int(os.environ.get("RANK", "0"))

    def watch():
        while True:
            time.sleep(PEER_POLL_S)
            try:
                crash = json.loads(store.get(PEER_CRASH_KEY)) if store.check([PEER_CRASH_KEY]) else None
            except Exception:  # the store went away with the run: nothing left to watch
                return
            if crash and crash["rank"] != rank and not PEERS.get("dying"):
                die(f"rank {crash['rank']} crashed: {crash['message']}", crash["code"])

    threading.Thread(target=watch, daemon=True).start()


def on_signal(signum, frame):
    """The crash line says how long the run had run: decide tells program.md's timeout from a kill."""
    die(f"interrupted ({signal.Signals(signum).name}) after {time.time() - T_START:.0f} s", 128 + signum)


class StepCounter:
    """A global optimizer-step hook: every optimizer.step() of the process lands here and is
    handed to the tracker; steps before there is one (at train.py's import) are counted apart."""

    def __init__(self):
        self.tracker = None
        self.untracked_steps = 0
        self.handle = torch_optimizer.register_optimizer_step_post_hook(self.on_step)

    def on_step(self, optimizer, args, kwargs):
        if self.tracker is None:
            self.untracked_steps += 1
        else:
            self.tracker.on_step(optimizer)

    @property
    def armed(self):
        return self.handle.id in torch_optimizer._global_optimizer_post_hooks

    def remove(self):
        self.handle.remove()


def journal_path(repo):
    """The score journal inside the git directory `repo` shares with its worktrees, or None outside git."""
    try:
        git = ["git", "-C", str(repo), "rev-parse", "--path-format=absolute", "--git-common-dir"]
        out = subprocess.run(git, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return Path(out) / JOURNAL if out else None


def effort_measure(journal):
    """How the effort's recorded runs were measured ({budget, overrides, data, data_path, eval_bytes,
    results}, written by `record` at the baseline and every keep), or None for a fresh effort: no
    file, or no longer the results.tsv it describes (a new effort starts without it)."""
    try:
        measure = json.loads((journal.parent / MEASURE).read_text())
    except (AttributeError, OSError, ValueError):
        return None
    return measure if isinstance(measure, dict) and Path(measure.get("results", "")).is_file() else None


def measured_overrides(env):
    return {k: v for k, v in env["overrides"].items() if k not in UNMEASURED_VARS}


def setting_differences(env, measure):
    """[(what differs, its fix: `K=v` to export or `-K` to unset)] between this run's AR_* settings
    and the effort's; AR_DATA is compared by the file it names."""
    ours, theirs = measured_overrides(env), measure.get("overrides", {})
    out = []
    for key in dict.fromkeys([*theirs, *ours]):
        mine, wanted = ours.get(key), theirs.get(key)
        if key == "AR_DATA":
            wanted = measure["data_path"] if wanted else None
            if mine and wanted and Path(mine).expanduser().resolve() == Path(wanted):
                continue
        if mine == wanted:
            continue
        now = f"{key}={mine} is set" if mine else f"{key} is unset"
        was = f"{key}={wanted}" if wanted else "unset"
        out.append((f"{now} (the effort's runs: {was})", f"{key}={shlex.quote(wanted)}" if wanted else f"-{key}"))
    if not out and budget_label(env) != measure.get("budget"):
        out.append((f"the budget is {budget_label(env)} (the effort's runs: {measure.get('budget')})", ""))
    return out


def data_differences(identity, path, scored, measure):
    """The same for the data found (its identity and path) and, once the trainer found its device,
    the scored bytes (`scored`: (device type, eval_bytes), or None before)."""
    out = []
    if identity != measure.get("data"):
        where = f"{measure.get('data')} at {measure.get('data_path')}"
        moved = str(path) != measure.get("data_path")  # else the file itself changed: no export fixes it
        fix = f"AR_DATA={shlex.quote(measure.get('data_path', ''))}" if moved else ""
        out.append((f"the data is {identity} at {path} (the effort's runs: {where})", fix))
    if scored and measure.get("eval_bytes") is not None and scored[1] != measure["eval_bytes"]:
        out.append(
            (f"it scores {scored[1]:,} val bytes on {scored[0]} (the effort's runs: {measure['eval_bytes']:,})", "")
        )
    return out


def refuse_unlike_effort(differences):
    """One crash line naming each difference and the exports that make the run measured like the effort's."""
    if not differences:
        return
    fixes = [fix for _, fix in differences if fix]
    exports = [f for f in fixes if not f.startswith("-")]
    unsets = [f[1:] for f in fixes if f.startswith("-")]
    commands = ([f"export {' '.join(exports)}"] if exports else []) + ([f"unset {' '.join(unsets)}"] if unsets else [])
    todo = (
        "; ".join(commands) + ", as at setup (a fresh shell loses exports)"
        if commands
        else "run it on the effort's data, device and settings, or start a new effort (program.md, setup step 7)"
    )
    raise HarnessError(f"{UNLIKE_EFFORT}: {', '.join(what for what, _ in differences)}: {todo}")


def program_key(source):
    """A digest of a train.py's program: its syntax tree without docstrings, so comments, docstrings and
    formatting do not change it; None when it does not parse. labbook/sources.py's program_key, which
    `record` judges by, computes the same (a test holds them equal)."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            node.body = [s for s in body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()[:12]


def judged_rows(results):
    """The rows of results.tsv ({column: text, "line": n}) the keep rule judged (their note starts
    "rule: ", as labbook/keeprule.py writes it), less the environment's crashes: the effort's tried
    programs. A worker's screening run is no judgment: its promoted cherry-pick runs."""
    lines = Path(results).read_text(errors="replace").splitlines()
    columns = lines[0].split("\t") if lines and lines[0].startswith("commit\t") else []
    rows = [dict(zip(columns, line.split("\t")), line=n) for n, line in enumerate(lines[1:], 2) if columns]
    return [r for r in rows if r.get("note", "").startswith("rule: ") and r.get("kind") != "environment"]


def programs_at(repo, commits, name):
    """{commit: program_key of its `name`} for the commits git holds, read in one git call."""
    order = list(dict.fromkeys(commits))
    asked = "".join(f"{commit}:./{name}\n" for commit in order).encode()
    try:
        out = subprocess.run(["git", "-C", str(repo), "cat-file", "--batch"], input=asked, capture_output=True).stdout
    except OSError:
        return {}
    programs = {}
    for commit in order:
        head, _, out = out.partition(b"\n")
        if not head.endswith(b"missing") and len(fields := head.split()) == 3:
            size = int(fields[2])
            programs[commit] = program_key(out[:size].decode(errors="replace"))
            out = out[size + 1 :]
    return programs


def refuse_twin(script, source, commit, measure):
    """A new commit whose train.py is the program an earlier commit of the effort ran (only comments,
    docstrings or formatting differ: another seed of a measured program) ends here, before its first
    step, naming that commit. A rerun of a recorded commit (a replicate, a confirmation) runs."""
    head = commit.removesuffix("-dirty")[:7]
    try:
        rows = judged_rows(measure["results"])
    except OSError:
        return
    if any(r["commit"][:7] == head for r in rows):
        return
    ours, programs = program_key(source), programs_at(script.parent, [r["commit"] for r in rows], script.name)
    twin = next((r for r in rows if ours is not None and programs.get(r["commit"]) == ours), None)
    if twin:
        statuses = [r.get("status") for r in rows if r["commit"] == twin["commit"]]
        standing = "kept" if "keep" in statuses else statuses[-1]  # the commit's, not its first run's
        raise HarnessError(
            f"{script.name} at {commit} is the same program as at {twin['commit']} (results.tsv line {twin['line']}, "
            f"{standing}: {twin.get('description')}): comments, docstrings and formatting change only the "
            "seed, so this run would be another draw of a program already measured; git reset --hard HEAD~1, then "
            "change the code itself"
        )


# ---------------------------------------------------------------------------
# The trainer: confined at its first line (above), it builds the Run on the training split it was
# handed, runs train.py's train(run) and saves what comes back. Its word is checked by the supervisor.
# ---------------------------------------------------------------------------


def excluded_steps(env, device_type):
    """The first steps the clock does not count: none under AR_STEPS, compilation's on a GPU, one elsewhere."""
    return 0 if env["steps"] else EXCLUDED_STEPS if device_type == "cuda" else EXCLUDED_STEPS_NO_GPU


def setup(env, train_bytes, data_identity, val_size):
    """Device, precision, the training split on the device, torchrun: the Run that train.py is handed."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(env["device"])
    if world > 1:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        watch_other_ranks(dist.distributed_c10d._get_default_store())
    print0(
        f"torch {torch.__version__} | x-transformers {version('x-transformers')} | device {device} ({gpu_name(device)})"
    )
    for key, value in env["overrides"].items():
        print0(f"override: {key}={value}")
    if device.type != "cuda":
        print0(f"warning: no CUDA GPU; running on {device.type}, so results are not comparable with GPU runs")
    else:
        free, total = torch.cuda.mem_get_info(device)
        env["gpu_busy_mb"] = (total - free) / 2**20
        busy = "a leftover of a killed run? check nvidia-smi" if env["gpu_busy_mb"] > 1024 else "fine"
        print0(f"gpu memory: {env['gpu_busy_mb']:,.0f} MB of {total / 2**20:,.0f} MB already in use ({busy})")
    precision = pick_precision(env, device)
    train = torch.frombuffer(train_bytes, dtype=torch.uint8) if len(train_bytes) else torch.zeros(0, dtype=torch.uint8)
    eval_bytes = min(env["eval_bytes"] or (val_size if device.type == "cuda" else CPU_EVAL_BYTES), val_size)
    print0(f"data: {data_identity} | train {len(train):,} val {val_size:,} bytes | scoring {eval_bytes:,} val bytes")
    if device.type == "cuda":  # TF32 for the FP32 matmuls left (Newton-Schulz)
        # torch >= 2.9 raises on a legacy read (get_float32_matmul_precision) once its fp32_precision
        # API was used; a legacy write never raises and makes the state readable again
        torch.set_float32_matmul_precision("high")
    return Run(env, device, precision, train.to(device), data_identity, eval_bytes)


def exec_train_source(name, script, source):
    """train.py as a module, compiled from `source` (the text the supervisor read and records): never
    from a bytecode file in __pycache__ that could hold other code. Its `__main__` guard does not fire."""
    module = types.ModuleType(name)
    module.__file__ = str(script)
    sys.modules[name] = module
    sys.modules.setdefault("prepare", sys.modules[__name__])  # train.py's `from prepare import` is this module
    try:
        exec(compile(source, str(script), "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


def import_libraries(source):
    """The libraries train.py imports, imported before the clock starts: their seconds are not the idea's."""
    for node in ast.parse(source).body:
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module and not node.level and node.module != "prepare":
            names = [node.module]
        for name in names:
            with contextlib.suppress(ImportError):
                importlib.import_module(name)


def seeded_state(run, seed):
    """What train.py must leave as the harness set it: torch's seed and the Run's batch generator."""
    return dict(
        generator=run.generator, torch_seed=seed, generator_seed=run.generator.initial_seed(), states=random_states()
    )


def check_not_reseeded(run, state):
    """A run re-seeded by train.py is every seed's same run: refused, whatever the intent."""
    if torch.initial_seed() != state["torch_seed"]:
        raise HarnessError(
            f"train.py re-seeded torch (torch.initial_seed() is {torch.initial_seed()}, the harness seeded "
            f"{state['torch_seed']}): the seed is the harness's (AR_SEED, or one derived from train.py's text), so "
            "that replicates differ; remove the manual_seed call"
        )
    if all(torch.equal(a, b) for a, b in zip(state["states"], random_states())):
        raise HarnessError(
            "train() drew nothing from the run's random state: the model's initialisation came from elsewhere "
            "(torch.random.fork_rng, a generator of its own), so every seed would train the same model; let the "
            "harness's seed initialise it"
        )
    if run.generator is not state["generator"] or run.generator.initial_seed() != state["generator_seed"]:
        raise HarnessError(
            "train.py re-seeded or replaced run.generator: the batches' order is the harness's, set by the run's "
            "seed; remove the manual_seed call"
        )


def undo_in_place_compile(model):
    """nn.Module.compile() compiles in place: the check loss and the checkpoint see the plain modules."""
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def float8_layers(model):
    return sum(type(m).__name__ == "Float8Linear" for m in model.modules())


def trainer_main():
    """`prepare.py trainer HANDOFF_FD REPORT_FD`, started by the supervisor."""
    global ACTIVE_RUN
    header = HANDOFF
    os.set_inheritable(int(sys.argv[3]), False)  # the report channel is the harness's: train.py's children lack it
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    if BOUNDARY.startswith("none") and header["require_sandbox"]:
        raise HarnessError(f"AR_REQUIRE_SANDBOX=1 and this run has no kernel sandbox: {BOUNDARY}")
    if BOUNDARY.startswith("none"):  # the row says so and the audit notes it: nothing here keeps train.py out
        print0(
            f"warning: sandbox: {BOUNDARY}; nothing keeps train.py from the corpus, the supervisor's clock still applies"
        )
    env, script = header["env"], Path(header["script"])
    heartbeat()
    steps = StepCounter()
    run = setup(env, globals().pop("TRAIN_BYTES"), header["data_identity"], header["val_size"])
    ACTIVE_RUN = run
    report(
        "started",
        device=run.device.type,
        gpu=gpu_name(run.device),
        precision=run.precision,
        eval_bytes=run.eval_bytes,
        eval_numerics=eval_numerics(run.device),
        sandbox=BOUNDARY,
        world_size=run.world_size,
    )
    import_libraries(header["source"])
    run.tracker = Tracker(run)
    run.tracker.start_clock()  # train.py's import counts too: work done there is not off the clock
    report("clock")
    train = exec_train_source("train", script, header["source"])
    if steps.untracked_steps:
        raise HarnessError(
            f"{script.name} took {steps.untracked_steps} optimizer steps when imported: train inside train(run)"
        )
    for needed in ("train", "build_model"):
        if not callable(getattr(train, needed, None)):
            raise HarnessError(
                f"{script.name} defines no {needed}(): the harness calls train(run), which builds "
                "its model with build_model()"
            )
    recorder = SpecRecorder()
    train.build_model = recorder.wrap(train.build_model, check=functools.partial(early_check, run))
    steps.tracker = run.tracker
    seed_everything(env["seed"])
    seeded = seeded_state(run, env["seed"])
    model = train.train(run)
    stats = run.tracker.stats()
    report("returned", **stats)
    check_not_reseeded(run, seeded)
    if model is None or not hasattr(unwrap(model), "net"):
        raise HarnessError("train(run) must return the trained AutoregressiveWrapper (its .net is scored)")
    model = unwrap(model)
    undo_in_place_compile(model)
    check_library_model(model)
    spec = recorder.spec_of(model)
    check_matches_spec(model, spec)
    check_finite_weights(model)
    summary = make_summary(run, stats, header["identity"])
    summary.update(
        spec=spec_hash(spec), flags=training_flags(run, stats), sandbox=BOUNDARY, data_path=header["data_path"]
    )
    check = {"loss": check_loss(model.net, run.train_data, run.device), "float8_layers": float8_layers(model)}
    written = save_checkpoint(run, model, spec, check, header["source"], summary, header["run_folder"])
    report("saved", sha256=written, summary=summary)
    if run.world_size > 1:  # every rank ends together: the scorer starts once all are gone
        dist.barrier()


def early_check(run, model, spec):
    """check_scorable on a fresh build, timed; off the clock when no step has been taken yet (the
    warm-up's seconds), so the check costs the idea nothing."""
    run.check_size(model)  # a GPU-sized model on a CPU is refused now, not after a slow check
    enter_phase("the early check (the scorer's path on the fresh build)")
    began, off_clock = time.time(), run.tracker.steps < run.excluded_steps
    with run.tracker.warmup_timer():
        warning = check_scorable(model, spec, run.train_data, run.device)
    if warning:
        print0(f"warning: {warning}")
    print0(
        f"early check: the scorer's path runs this model ({time.time() - began:.2f} s{', off the clock' * off_clock})"
    )


def training_flags(run, stats):
    """What the trainer saw that a reviewer should look at (the scorer adds its own)."""
    counted_steps = stats["num_steps"] - run.excluded_steps
    tracker, flags = run.tracker, []
    if run.excluded_steps and counted_steps > 0:
        if tracker.uncounted_tokens / run.excluded_steps > tracker.counted_tokens / counted_steps:
            print0("warning: the uncounted warm-up steps trained on more tokens per step than the counted ones")
            flags.append("warmup_tokens")
    if tracker.first_loss is not None and tracker.first_loss < WARM_START_LOSS:
        print0(f"warning: the first step's loss was {tracker.first_loss:.3f} nats: the model was trained before it")
        flags.append("warm_start")
    return ",".join(flags) or "none"


@no_grad
def check_loss(net, train_data, device):
    """Mean loss (nats) of `net` on the first CHECK_WINDOWS windows of the training split, in eval
    mode with the evaluation's numerics: the trained and the rebuilt model must agree on it."""
    inputs, targets, _ = eval_windows(train_data[: CHECK_WINDOWS * MAX_SEQ_LEN + 1], device)
    was_training = net.training
    net.eval()
    with pinned_eval_numerics(device), eval_autocast(device):
        logits = net(inputs)
    net.train(was_training)
    return F.cross_entropy(logits.float().reshape(-1, VOCAB), targets.reshape(-1)).item()


# ---------------------------------------------------------------------------
# The supervisor: settings, data, trainer, reap, checkpoint, scorer, journal, summary. It runs no code
# of train.py and never imports torch; its clock is the run's measure.
# ---------------------------------------------------------------------------


def sandbox_rules(script, env, run_folder, excluded, torchrun):
    """What the trainer may touch: read the interpreter, the libraries, the system, /proc, /sys and the
    device nodes, without `excluded` (the corpus, the data cache, `.git`), and not the working tree
    (earlier runs' checkpoints are a warm start; train.py's text comes with the handoff); write its run
    folder, the metrics file and the compile caches, and /dev/shm under torchrun (NCCL's segments).
    No TCP and no signals out, but under torchrun."""
    reads = ["/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/run", "/nix"]
    reads += [sys.base_prefix, sys.exec_prefix, str(Path(sys.executable).parent), *sys.path]
    reads += os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep)  # a CUDA toolkit or driver kept elsewhere
    writes = [str(run_folder), *compile_caches(), *(["/dev/shm"] if torchrun else [])]
    paths = [(p, "read") for p in readable_beneath(reads, excluded)]
    paths += [("/dev", "device"), *((p, "write") for p in readable_beneath(writes, excluded))]
    if Path(env["metrics"]).exists():
        paths.append((str(Path(env["metrics"]).resolve()), "file"))
    return dict(paths=paths, network=torchrun, scoped=not torchrun)


def readable_beneath(roots, excluded):
    """Paths whose trees hold everything under `roots` but the `excluded` paths (a Landlock rule
    allows a whole tree: a tree holding an excluded path is split into its entries)."""
    excluded = [os.path.realpath(p) for p in excluded]
    out = []
    for root in dict.fromkeys(os.path.realpath(r) for r in roots if r and os.path.exists(r)):
        inside = [e for e in excluded if e == root or e.startswith(root.rstrip(os.sep) + os.sep)]
        if root in inside:
            continue
        if not inside or not os.path.isdir(root):
            out.append(root)
            continue
        out += readable_beneath([os.path.join(root, name) for name in os.listdir(root)], inside)
    return out


def compile_caches():
    """torch.compile's and Triton's caches, named explicitly (the trainer's TMPDIR is private), so they
    stay warm across runs; created now, so the sandbox can allow them."""
    try:  # torch's own default name: the cache the person's other work already warmed
        user = re.sub(r'[\\/:*?"<>|]', "_", getpass.getuser())
    except (KeyError, OSError):
        user = f"uid_{os.getuid()}"
    caches = dict(
        TORCHINDUCTOR_CACHE_DIR=os.path.join(tempfile.gettempdir(), f"torchinductor_{user}"),
        TRITON_CACHE_DIR=os.path.join(os.environ.get("TRITON_HOME") or Path.home(), ".triton", "cache"),
        CUDA_CACHE_PATH=os.path.join(Path.home(), ".nv", "ComputeCache"),
    )
    for key, default in caches.items():
        os.environ.setdefault(key, default)  # the trainer and the scorer inherit the same
        with contextlib.suppress(OSError):
            Path(os.environ[key]).mkdir(parents=True, exist_ok=True)
    return [os.environ[k] for k in caches]


def guarded_paths(data_path):
    """The corpus and where copies of it live: out of the trainer's reach."""
    git = subprocess.run(["git", "rev-parse", "--path-format=absolute", "--git-common-dir", "--git-dir"],
                         capture_output=True, text=True, cwd=REPO_DIR).stdout.split()  # fmt: skip
    return [str(data_path), str(cache_dir()), str(REPO_DIR / "x-transformers" / "data"), *git, str(REPO_DIR / ".git")]


def start_trainer(script, header, train_bytes):
    """The trainer process, handed `header` and the training split through a private memory file;
    (the process, the read end of its report pipe)."""
    handoff = (
        os.memfd_create("autoresearch-handoff") if hasattr(os, "memfd_create") else tempfile.TemporaryFile().detach()
    )
    with os.fdopen(os.dup(handoff), "wb") as f:
        f.write((json.dumps(dict(header, train_bytes=len(train_bytes))) + "\n").encode())
        f.write(train_bytes)
    os.lseek(handoff, 0, os.SEEK_SET)
    reports, report_end = os.pipe()
    child_env = dict(os.environ, TMPDIR=str(Path(header["run_folder"]) / "tmp"))
    trainer = subprocess.Popen(
        [
            sys.executable,
            "-I",
            "-S",
            *(["-u"] if os.environ.get("PYTHONUNBUFFERED") else []),  # -I drops the variable
            str(Path(__file__).resolve()),
            "trainer",
            str(handoff),
            str(report_end),
        ],  # fmt: skip
        pass_fds=(handoff, report_end),
        env=child_env,
    )
    os.close(handoff)
    os.close(report_end)
    return trainer, reports


class Watch:
    """The supervisor's view of the trainer: its reports, timed by the supervisor's clock, each value of
    the measure checked against the supervisor's own, the watchdog and the budget enforced while it runs."""

    def __init__(self, env, trainer, reports):
        self.env, self.trainer, self.reports = env, trainer, reports
        self.events = {}  # kind -> (supervisor time, report): the first of each
        self.steps = []  # (supervisor time, step) of each steps report
        self.warmup, self.warmed_at, self.excluded = 0.0, None, None  # the trainer's warm-up, as bounded here
        self.crash = None  # (message, code) the trainer reported
        self.hard_limit = watchdog_seconds(env, cuda=nvidia_gpu_present())
        self.buffer = b""

    def seconds(self, at=None):
        """Training seconds by this clock: from the call of train(run) to `at`, less the warm-up, which
        cannot be longer than the time to the end of the uncounted steps, nor EXCLUDED_SECONDS_MAX."""
        start, end = self.events["clock"][0], at or time.time()
        warm_end = self.warmed_at or end if self.excluded else start
        return end - start - min(self.warmup, warm_end - start, EXCLUDED_SECONDS_MAX)

    def on_report(self, now, event):
        kind = event.get("event")
        if kind in self.events and kind != "steps":
            raise HarnessError(f"the trainer reported `{kind}` twice: its reports are the harness's alone")
        self.events.setdefault(kind, (now, event))
        if kind == "started":
            self.excluded = excluded_steps(self.env, event["device"])
            self.hard_limit = watchdog_seconds(self.env, cuda=event["device"] == "cuda")
        elif kind == "steps":
            self.check_measure(now, event)
        elif kind == "crash":
            self.crash = (event["message"], int(event["code"]))

    def check_measure(self, now, event):
        ours = dict(excluded_steps=self.excluded, step_budget=self.env["steps"], budget=self.env["budget"])
        for key, value in ours.items():
            if event[key] != value:
                raise HarnessError(
                    f"train.py changed the harness's {key} (from {value} to {event[key]}): the measure of a run is "
                    "the harness's; leave run and run.tracker's values as they are"
                )
        last = self.steps[-1][1] if self.steps else 0
        if event["step"] < last or self.env["steps"] and event["step"] > self.env["steps"]:
            raise HarnessError(f"the step count went from {last} to {event['step']}: train.py changed it")
        if (self.warmed_at or not self.excluded) and event["warmup_seconds"] != self.warmup:
            raise HarnessError("the warm-up's seconds changed after the warm-up ended: train.py changed warmup_seconds")
        if event["warmup_seconds"] > now - self.events["clock"][0]:
            raise HarnessError("the warm-up took longer than the run so far: train.py changed warmup_seconds")
        self.warmup = event["warmup_seconds"]
        self.steps.append((now, event["step"]))
        self.warmed_at = self.warmed_at or (now if event["warmed"] else None)

    def check_returned(self):
        """The step count the trainer returned with is the one its last report said."""
        returned, last = self.events["returned"][1]["num_steps"], self.steps[-1][1] if self.steps else 0
        if returned != last:
            raise HarnessError(
                f"train() returned after step {returned}, the last report said {last}: train.py changed it"
            )

    def check_clock(self):
        """The watchdog, and a train() past the budget by this clock (while it runs, and at its return),
        with the grace of OVERRUN_GRACE or two steps' time (ten under torchrun), the larger."""
        if time.time() - T_START > self.hard_limit:
            raise Crash(f"exceeded hard time limit ({self.hard_limit:.0f} s)", 124)
        if self.env["steps"] or "clock" not in self.events:
            return
        counted = [(t, s) for t, s in self.steps if s >= (self.excluded or 0)] or [(0, 0)]  # compiling is not the pace
        (t0, s0), (t1, s1) = counted[0], counted[-1]
        per_step = METRICS_EVERY if self.events["started"][1]["world_size"] > 1 else 2
        grace = max(OVERRUN_GRACE, per_step * (t1 - t0) / max(s1 - s0, 1))
        returned = self.events.get("returned", (None,))[0]
        over = self.seconds(returned) - self.env["budget"]
        if over > grace:
            when = f"returned {over:.0f} s after" if returned else f"is still running {over:.0f} s past"
            raise HarnessError(
                f"train(run) {when} the {self.env['budget']:g} s budget (grace {grace:.0f} s): the budget "
                "covers all of train(), so stop soon after run.done"
            )

    def follow(self):
        """Read the trainer's reports until it exits; raises HarnessError to end it."""
        while True:
            exited = self.trainer.poll() is not None  # read what it wrote before it ended, then stop
            ready, _, _ = select.select([self.reports], [], [], 0 if exited else 0.5)
            chunk = os.read(self.reports, 1 << 16) if ready else b""
            *lines, self.buffer = (self.buffer + chunk).split(b"\n")
            for line in lines:
                try:
                    self.on_report(time.time(), json.loads(line))
                except (ValueError, KeyError, TypeError):
                    raise HarnessError(
                        "the trainer's report channel carried something else: train.py wrote to it"
                    ) from None
            if self.crash or exited and not chunk:
                return
            if ready and not chunk:  # the channel closed before the trainer ended
                time.sleep(0.2)
            self.check_clock()
            check_interrupted()


SUPERVISOR = {"signal": None, "child": None}  # the signal received, and the trainer or scorer running


def on_supervisor_signal(signum, frame):
    SUPERVISOR["signal"] = signum
    if (child := SUPERVISOR["child"]) is not None and child.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)


def check_interrupted():
    """A signal the supervisor received (program.md's timeout or stop, Ctrl-C) ends the run in its own line."""
    if signum := SUPERVISOR["signal"]:
        raise Crash(f"interrupted ({signal.Signals(signum).name}) after {time.time() - T_START:.0f} s", 128 + signum)


def nvidia_gpu_present():
    """Whether an NVIDIA driver sees a GPU, without importing torch (the watchdog's margin until the trainer says)."""
    return any(Path("/proc/driver/nvidia/gpus").glob("*")) if Path("/proc/driver/nvidia/gpus").is_dir() else False


def watchdog_seconds(env, cuda):
    """The whole run's limit: AR_HARD_LIMIT, or the budget plus the margin of the device the trainer found."""
    if env["hard_limit_set"]:
        return env["hard_limit"]
    margin = HARD_LIMIT_MARGIN if cuda else HARD_LIMIT_MARGIN_NO_GPU
    return env["budget"] + margin if env["steps"] is None else 2 * margin


def become_subreaper():
    """Orphans of the trainer (a daemon it double-forked) become this process's children, to reap."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def children():
    """Pids of this process's children, from /proc (a subreaper's adopted orphans included)."""
    me, out = str(os.getpid()), []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        with contextlib.suppress(OSError, IndexError):
            if entry.isdigit() and Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1] == me:
                out.append(int(entry))
    return out


def end_trainer(trainer, wait=STOP_WAIT):
    """The trainer ended (or is ended: TERM, then KILL), then everything it left: killed and reaped."""
    if trainer.poll() is None:
        trainer.terminate()
        try:
            trainer.wait(wait)
        except subprocess.TimeoutExpired:
            trainer.kill()
            trainer.wait()
    left = 0
    deadline = time.time() + REAP_WAIT
    while pids := children():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
        left += len(pids)
        if time.time() > deadline:
            break
    if left:
        print0(f"notice: the trainer left {left} process(es) running: killed and reaped before the checkpoint was read")


def wait_for_local_ranks():
    """Under torchrun, every rank's supervisor marks its trainer reaped; rank 0 scores once this
    machine's are all gone (the scorer never shares the card with a trainer)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if local == 1:
        return
    run = f"{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}-{os.environ.get('MASTER_PORT', '')}"
    folder = Path(tempfile.gettempdir()) / f"autoresearch-{run}"
    folder.mkdir(exist_ok=True)
    (folder / f"reaped-{os.environ.get('LOCAL_RANK', '0')}").touch()
    if int(os.environ.get("RANK", "0")) != 0:
        return
    deadline = time.time() + STOP_WAIT + REAP_WAIT
    while len(list(folder.glob("reaped-*"))) < local:
        if time.time() > deadline:
            raise HarnessError("another rank's trainer did not end: nothing is scored while it holds the card")
        time.sleep(0.1)
    shutil.rmtree(folder, ignore_errors=True)


def announce_supervisor(folder):
    """A file in train.py's folder (out of the trainer's reach) naming this process by pid and start
    time, and where its output goes: `python analysis.py stop` signals exactly this run and prints
    its crash line. It goes with the run (a temporary file)."""
    path = Path(folder) / SUPERVISOR_FILE.format(pid=os.getpid())
    with contextlib.suppress(OSError):  # only the stop command is lost: the run goes on
        log = os.readlink("/proc/self/fd/1") if os.path.exists("/proc/self/fd/1") else None
        TEMP_FILES.add(path)
        path.write_text(json.dumps(dict(pid=os.getpid(), start=start_ticks(), log=log)) + "\n")


def supervise(script, argv):
    """`python train.py` after the exec: the run, as a short script."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_supervisor_signal)
    announce_supervisor(script.parent)
    become_subreaper()
    env, source, identity, journal, measure = run_settings(script, argv)
    blob, bounds, data_identity, data_path = read_splits(env)
    if measure:
        refuse_unlike_effort(data_differences(data_identity, data_path, None, measure))
    checkpoint = Path(env["checkpoint"]).resolve()
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    run_folder = Path(tempfile.mkdtemp(prefix=".run-", dir=checkpoint.parent))  # the trainer's only writable folder
    try:
        header = trainer_header(script, env, source, identity, bounds, data_identity, data_path, run_folder)
        watch = trained(script, env, header, memoryview(blob)[slice(*bounds["train"])])
        del blob
        wait_for_local_ranks()
        if int(os.environ.get("RANK", "0")) != 0:
            return
        sha = handed_back(watch, env, run_folder / "checkpoint.pt", checkpoint)
    finally:
        shutil.rmtree(run_folder, ignore_errors=True)
    started = watch.events["started"][1]
    if measure:
        refuse_unlike_effort(
            data_differences(data_identity, data_path, (started["device"], started["eval_bytes"]), measure)
        )
    summary = dict(
        watch.events["saved"][1]["summary"], **measured_summary(env, identity, watch, data_identity, data_path)
    )
    check_interrupted()  # stopped while the trainer ended: no score is started
    enter_phase("the sealed score (a fresh process)")
    heartbeat()
    left = watch.hard_limit - (time.time() - T_START)  # the watchdog covers the score too
    args = [str(checkpoint), "--device", started["device"], "--run", "--sha256", sha]
    answer = run_scorer(identity["text"], args, summary, timeout=min(SCORER_TIMEOUT, max(left, 1.0)))
    summary.update(answer["summary"])
    if journal:
        append_journal(journal, dict(answer["entry"], sandbox=started["sandbox"]))
    summary["total_seconds"] = time.time() - T_START
    print_summary(summary, env["metrics"])


def run_settings(script, argv):
    """(env, train.py's text, the run's identity, the journal, the effort's measure): everything the
    supervisor knows before the data, each refusal a crash line."""
    if argv:
        raise HarnessError(f"unknown arguments {argv}: train.py takes none (data: python prepare.py)")
    if importlib.util.find_spec("torch") is None:
        raise Crash(
            f"torch is not installed in this python ({sys.executable}): activate the project's environment in "
            "this shell (README.md: source .venv/bin/activate) and run the same command again",
            1,
        )
    if not os.environ.get("PYTORCH_CUDA_ALLOC_CONF"):  # before any CUDA allocator starts: trainer and scorer alike
        os.environ.setdefault("PYTORCH_ALLOC_CONF", ALLOC_CONF)
    env = read_env()
    source = script.read_text()
    harness = Path(__file__).read_text()  # what the scorer runs
    identity = dict(commit=git_commit(script.parent), run_id=uuid.uuid4().hex[:12], libraries=library_digest(),
                    harness=prepare_hash(harness), text=harness)  # fmt: skip
    journal = journal_path(script.parent)
    measure = effort_measure(journal)
    if measure:
        refuse_unlike_effort(setting_differences(env, measure))
        refuse_twin(script, source, identity["commit"], measure)
    env["seed"] = env["seed"] if os.environ.get("AR_SEED") else source_seed(source)
    return env, source, identity, journal, measure


def trainer_header(script, env, source, identity, bounds, data_identity, data_path, run_folder):
    """What the trainer is handed besides the training bytes: settings, source, identity, sandbox rules."""
    (run_folder / "tmp").mkdir()
    if int(os.environ.get("RANK", "0")) == 0:  # one metrics file per run, rows from rank 0
        Path(env["metrics"]).parent.mkdir(parents=True, exist_ok=True)
        Path(env["metrics"]).write_text("")
    guarded = guarded_paths(data_path)
    for name, path in (("AR_METRICS", env["metrics"]), ("AR_CHECKPOINT", env["checkpoint"])):
        where = os.path.realpath(path)
        if any(where == g or where.startswith(g.rstrip(os.sep) + os.sep) for g in map(os.path.realpath, guarded)):
            raise HarnessError(f"{name}={path} lies among the corpus or the git directory, out of the trainer's reach")
    return dict(
        env=env, script=str(script), source=source, data_identity=data_identity, data_path=str(data_path),
        identity={k: v for k, v in identity.items() if k != "text"}, val_size=bounds["val"][1] - bounds["val"][0],
        run_folder=str(run_folder), t_start=T_START,
        require_sandbox=env["require_sandbox"],
        rules=sandbox_rules(script, env, run_folder, guarded, int(os.environ.get("WORLD_SIZE", "1")) > 1),
    )  # fmt: skip


def trained(script, env, header, train_bytes):
    """The trainer started, followed to its end, and everything it left killed and reaped: its Watch."""
    trainer, reports = start_trainer(script, header, train_bytes)
    SUPERVISOR["child"] = trainer
    watch = Watch(env, trainer, reports)
    try:
        watch.follow()
        watch.check_clock()  # a train() that returned past the budget
    except HarnessError as e:
        end_trainer(trainer, wait=0 if getattr(e, "code", 0) == 124 else STOP_WAIT)  # the watchdog waits no more
        raise
    end_trainer(trainer)
    if watch.crash:
        raise Crash(*watch.crash)
    if "returned" in watch.events:
        watch.check_returned()
    if "saved" not in watch.events:
        status = trainer.returncode
        how = f"was killed by {signal.Signals(-status).name}" if status < 0 else f"exited with code {status}"
        raise Crash(f"the trainer {how} before it saved the model (its output above says why)", max(status, 1))
    return watch


def handed_back(watch, env, written, checkpoint):
    """The checkpoint's sha256 once it is where the run keeps it: the bytes the trainer said it wrote,
    within the hand-back's time."""
    sha = hashlib.sha256(written.read_bytes()).hexdigest() if written.exists() else None
    if sha != watch.events["saved"][1]["sha256"]:
        raise HarnessError(
            "the checkpoint changed after the harness wrote it: code of train.py ran after train(run) "
            "returned; nothing is scored"
        )
    check_handback(watch, env, written.stat().st_size)
    os.replace(written, checkpoint)
    return sha


def check_handback(watch, env, size):
    """The hand-back (checks, check loss, the checkpoint written) is the harness's own work, timed by the
    supervisor: longer than the grace for its size, train.py's code ran there (a hook, a rebound
    function), off the clock. Not under AR_STEPS, which has no clock."""
    seconds = watch.events["saved"][0] - watch.events["returned"][0]
    limit = HANDBACK_GRACE + size / HANDBACK_BYTES_PER_S
    if not env["steps"] and seconds > limit:
        raise HarnessError(
            f"saving the model took {seconds:.0f} s after train(run) returned (limit {limit:.0f} s for "
            f"{size / 1e6:,.0f} MB): code of train.py ran there, off the clock; keep hooks and replaced "
            "functions out of the returned model and the libraries"
        )


def measured_summary(env, identity, watch, data_identity, data_path):
    """The summary's keys that are the supervisor's measure or its own knowledge, not the trainer's word."""
    started, returned, saved = (watch.events[k][1] for k in ("started", "returned", "saved"))
    seconds = watch.seconds(watch.events["returned"][0])
    reported = saved["summary"]
    fp8_kept = (
        started["precision"] == "FP8" and reported["precision"] == "FP8"
    )  # FP8 falls back to BF16, never the reverse
    return dict(
        training_seconds=seconds,
        tokens_per_sec=returned["counted_tokens"] / max(seconds, 1e-9),
        mfu_percent=reported["mfu_percent"] * returned["training_seconds"] / max(seconds, 1e-9),
        num_steps=returned["num_steps"],
        excluded_steps=watch.excluded,
        seed=env["seed"],
        budget=budget_label(env),
        eval_bytes=started["eval_bytes"],
        device=started["device"],
        precision="FP8" if fp8_kept else "BF16" if started["precision"] == "FP8" else started["precision"],
        eval_numerics=started["eval_numerics"],
        data=data_identity,
        data_path=str(data_path),
        commit=identity["commit"],
        run_id=identity["run_id"],
        prepare_hash=identity["harness"],
        libraries=identity["libraries"],
        sandbox=started["sandbox"],
    )


class Crash(HarnessError):
    """A crash line with its own exit code: the trainer's, a signal's (128 + N), the watchdog's (124)."""

    def __init__(self, message, code):
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------------------
# The sealed scorer: a fresh, isolated interpreter that imports this file and the libraries, never
# train.py, rebuilds the model from its spec, loads the weights and scores them
# ---------------------------------------------------------------------------

# The scorer is this file's text run as a script in a fresh interpreter in isolated mode without
# `site` (-I -S: no PYTHONPATH, no user site, no .pth file, the script's folder not on sys.path), with
# the libraries on the first process's path, alone in a temporary directory.

MEASURED_KEYS = (
    *("seed", "budget", "excluded_steps", "num_steps", "run_id", "data", "data_path", "eval_bytes", "device"),
    "libraries",
)  # the checkpoint's summary must say what the supervisor measured


def scorer_env():
    """The supervisor's environment (no code of train.py ever ran in it), without what the checkpoint
    decides (AR_*, precision flags) or torchrun's ranks."""
    dropped = ("USE_FP8", "USE_FP16", "RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR")
    return {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in dropped}


def run_scorer(harness, args, measured=None, timeout=SCORER_TIMEOUT):
    """The answer dict of `python prepare.py score ARGS` run with `harness` (prepare.py's text) in
    a fresh isolated interpreter; its stderr goes to ours. Raises HarnessError with its crash line."""
    with tempfile.TemporaryDirectory(prefix="ar-scorer-") as tmp:
        Path(tmp, "prepare.py").write_text(harness)
        if measured is not None:
            Path(tmp, "measured.json").write_text(json.dumps(measured, default=str))
            args = [*args, "--measured", str(Path(tmp, "measured.json"))]
        env = dict(scorer_env(), **{LIBS_VAR: os.environ.get(LIBS_VAR) or json.dumps(sys.path)})
        command = [sys.executable, "-I", "-S", str(Path(tmp, "prepare.py")), "score", *args]
        proc = SUPERVISOR["child"] = subprocess.Popen(command, cwd=tmp, env=env, stdout=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise HarnessError(f"the sealed scorer ran past {timeout:.3g} s") from None
    check_interrupted()  # a stop during the score is the run's interruption, not the scorer's failure
    lines = [line for line in out.splitlines() if line.strip()]
    crash = [line for line in lines if line.startswith("crash:")]
    if crash:
        raise HarnessError(crash[-1].removeprefix("crash:").strip())
    if proc.returncode != 0 or len(lines) != 1:
        raise HarnessError(f"the sealed scorer failed (exit {proc.returncode}, {len(lines)} answer lines)")
    return json.loads(lines[0])


class ScorerArguments(argparse.ArgumentParser):
    def error(self, message):
        raise HarnessError(f"{message}: usage: python prepare.py score CHECKPOINT [--split val|test]")


def score_main(argv):
    """`python prepare.py score CHECKPOINT [--split val|test]`: one JSON line, or one crash line.
    With --run (the run's own scoring) it also scores the end of the training split, compares the
    check loss, sets the flags, and answers the journal entry the supervisor appends."""
    parser = ScorerArguments(prog="prepare.py score", add_help=False)
    parser.add_argument("checkpoint")
    parser.add_argument("--split", choices=("val", "test"), default="val")
    parser.add_argument("--device")
    parser.add_argument("--run", action="store_true")
    parser.add_argument("--sha256")
    parser.add_argument("--measured")
    args = parser.parse_args(argv)
    measured = json.loads(Path(args.measured).read_text()) if args.measured else None
    with contextlib.redirect_stdout(sys.stderr):  # notices are not the answer
        answer = sealed_score(args.checkpoint, args.split, args.device, args.run, args.sha256, measured)
    print(json.dumps(answer, default=str))


def read_checkpoint(path):
    """(the checkpoint's contents, the sha256 of the bytes they were read from)."""
    try:
        blob = Path(path).read_bytes()
    except FileNotFoundError:
        raise HarnessError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise HarnessError(f"cannot read {path}: {e.strerror}") from None
    try:
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            saved = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as e:  # damaged, truncated, or not a torch file at all
        raise HarnessError(f"cannot load {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(saved, dict) or not {"model", "spec", "check", "summary"} <= saved.keys():
        raise HarnessError(
            f"{path} has no model, spec, check and summary: not written by prepare.py (or by an older one)"
        )
    return saved, hashlib.sha256(blob).hexdigest()


def rebuilt_model(saved, device):
    """The spec's model on `device`, holding the checkpoint's weights; refused when they do not fit it."""
    try:
        model = build_from_spec(saved["spec"], device)
    except HarnessError:
        raise
    except Exception as e:
        raise HarnessError(
            f"the model spec does not build with the installed libraries: {one_line_reason(e)}"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in saved["model"].items()}
    if expected != given:
        extra, missing = sorted(given.keys() - expected.keys()), sorted(expected.keys() - given.keys())
        shapes = sorted(k for k in given.keys() & expected.keys() if given[k] != expected[k])
        raise HarnessError(
            f"the checkpoint's weights do not fit its model spec: extra {extra[:3]}, missing {missing[:3]}, "
            f"other shapes {shapes[:3]}"
        )
    state = dict(model.state_dict(keep_vars=True))
    for key, tensor in saved["model"].items():  # the dtype each was returned in: a cast to BF16 is scored as BF16
        state[key].data = state[key].data.to(tensor.dtype)
    model.load_state_dict({k: v.to(device) for k, v in saved["model"].items()})
    if not hasattr(model, "net"):
        raise HarnessError("the model spec does not build an AutoregressiveWrapper: its .net is what is scored")
    return model


def sealed_score(checkpoint, split="val", device=None, own_run=False, written=None, measured=None):
    """The scorer's answer for a checkpoint: {"split", "bpc", "seconds", "prepare_hash", "spec",
    "checkpoint_sha256", "summary"}. For the run's own val scoring (`own_run`) the summary is
    completed (val_bpc, train_bpc, flags) and the journal's entry added. `written`: the sha256 the
    supervisor read, which the file must still hold; `measured`: the supervisor's summary, which the
    checkpoint's must agree with on the measure (MEASURED_KEYS) and which is the one completed."""
    saved, sha = read_checkpoint(checkpoint)
    if written and sha != written:
        raise HarnessError("the checkpoint changed after the supervisor read it: nothing is scored")
    summary = saved["summary"]
    for key in MEASURED_KEYS if measured else ():
        if str(summary.get(key)) != str(measured.get(key)):
            raise HarnessError(
                f"the checkpoint's {key} is {summary.get(key)}, the supervisor measured {measured.get(key)}: train.py "
                "changed the harness's measure"
            )
    summary = measured or summary
    device = torch.device(device or summary["device"])
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HarnessError("the run trained on a CUDA GPU and this machine has none: score it there")
    here, then = eval_numerics(device), summary.get("eval_numerics", "")
    if then and here.split("-", 1)[1] != then.split("-", 1)[1]:
        raise HarnessError(f"the run was scored with {then} numerics and this machine gives {here}: score it there")
    if library_digest() != summary["libraries"]:  # each file is checked against its RECORD hash first
        raise HarnessError("the installed libraries differ from the ones the run trained with: reinstall, rerun")
    blob, bounds, identity = run_data(summary)
    model = rebuilt_model(saved, device)
    seed_everything(int(summary["seed"]))
    eval_bytes = int(summary["eval_bytes"])
    bpc, seconds = evaluate(model.net, split_bytes(blob, *bounds[split])[:eval_bytes], device)
    answer = dict(
        split=split,
        bpc=bpc,
        seconds=round(seconds, 3),
        prepare_hash=prepare_hash(),
        spec=spec_hash(saved["spec"]),
        checkpoint_sha256=sha,
        summary=summary,
    )
    if not own_run:
        return answer
    train = split_bytes(blob, *bounds["train"])
    train_bpc, _ = evaluate(model.net, train[len(train) - min(eval_bytes, TRAIN_SCORE_BYTES) :], device, probe=False)
    check = check_loss(model.net, train, device)
    flags = [f for f in summary.get("flags", "none").split(",") if f != "none"]
    float8 = (
        summary["precision"] == "FP8" and saved["check"].get("float8_layers", 0) > 0
    )  # the trainer's word alone cannot widen it
    tolerance = CHECK_TOLERANCE_FP8 if float8 else CHECK_TOLERANCE
    if not abs(check - saved["check"]["loss"]) <= tolerance:
        flags.append("state_not_in_spec")
        print(
            f"warning: the rebuilt model's loss on the check windows is {check:.6f}, the trained model's "
            f"{saved['check']['loss']:.6f}: state set after construction is not part of the spec, and is not scored"
        )
    if bpc < train_bpc - HELDOUT_MARGIN:
        flags.append("val_below_train")
        print(f"warning: val_bpc is {train_bpc - bpc:.3f} below train_bpc: has the model seen the validation bytes?")
    summary = dict(
        summary,
        num_params_M=sum(p.numel() for p in model.parameters()) / 1e6,  # the rebuilt model's, not the trainer's word
        val_bpc=bpc,
        val_bpc_exact=bpc,
        eval_seconds=seconds,
        train_bpc=train_bpc,
        flags=",".join(flags) or "none",
    )
    entry = dict(
        run_id=summary["run_id"],
        checkpoint_sha256=sha,
        spec=answer["spec"],
        val_bpc_exact=bpc,
        eval_numerics=eval_numerics(device),
        prepare_hash=answer["prepare_hash"],
        summary=summary,
    )
    return dict(answer, summary=summary, entry=entry)


def append_journal(path, entry):
    """One line per sealed score, appended under a lock and synced to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(entry, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def run_data(summary):
    """The run's own corpus (its absolute path, checked against its identity): (bytes, bounds, identity)."""
    path = Path(summary["data_path"])
    if not path.exists():
        raise HarnessError(f"the run's data {path} is gone: the checkpoint cannot be scored here")
    blob, bounds, identity, _ = read_splits(dict(data=str(path), data_url=""), trust_stamp=False)
    if identity != summary["data"]:
        raise HarnessError(f"{path} is {identity} now, the run used {summary['data']}: not the same data")
    return blob, bounds, identity


def source_module(source, name="train_from_source"):
    """A train.py text as a module, for the tools (bench, machine facts) that read its knobs and
    build_model; its __main__ guard does not fire. Never used to score: the scorer has the spec."""
    module = types.ModuleType(name)
    module.__file__ = f"<{name}>"
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    exec(compile(source, f"{name}.py", "exec"), module.__dict__)
    return module


def source_seed(source):
    """The seed of a run without AR_SEED: from train.py's text, so each commit starts from its own
    initialisation and data order (an experiment shares no luck with the runs it is judged against)
    and a rerun of the same code reproduces it. At least 1000: replicates use AR_SEED=1, 2, ..."""
    return 1000 + int(hashlib.sha256(source.encode()).hexdigest()[:8], 16) % 1_000_000


def seed_everything(seed):
    random.seed(seed)
    torch.manual_seed(seed)


def crash_on_error(body):
    """Run `body`, turning every failure into one `crash:` line and a distinct exit code."""
    try:
        body()
    except Crash as e:
        die(str(e), e.code)
    except HarnessError as e:
        die(str(e), 2)
    except LossError as e:
        die(str(e), 3)
    except PermissionError as e:
        traceback.print_exc()
        die(one_line_reason(e) + (SANDBOX_HINT if ROLE == "trainer" else ""), 1)
    except Exception as e:
        if ROLE != "supervise" and isinstance(e, (torch.OutOfMemoryError, NothingFits)):
            traceback.print_exc()
            run = ACTIVE_RUN
            peak = peak_memory_mb(run.device) if run else 0.0
            size = f"{run.num_params / 1e6:.1f}M parameters" if run and run.num_params else "model not built yet"
            die(f"out of memory (peak {peak:,.0f} MB, {size})" + (f": {e}" if isinstance(e, NothingFits) else ""), 4)
        traceback.print_exc()
        die(one_line_reason(e), 1)
    finally:
        if ROLE != "supervise" and dist.is_initialized():
            dist.destroy_process_group()


def main():
    """What train.py's `__main__` guard calls. Its import of this file already made `python train.py`
    the supervisor; a script the import did not take for a train.py becomes it here."""
    if ROLE == "trainer":
        die('main() was called while the harness imported train.py: call it only under if __name__ == "__main__":', 2)
    main_module = sys.modules["__main__"]
    exec_supervisor(Path(main_module.__file__).resolve(), sys.argv[1:])


def prepare_data():
    """`python prepare.py`: find or download enwik8 and verify it, without training."""

    def body():
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        if sys.argv[1:2] == ["score"]:
            return score_main(sys.argv[2:])
        if sys.argv[1:]:
            raise HarnessError(f"unknown arguments {sys.argv[1:]}: prepare.py takes none, or score CHECKPOINT")
        splits, identity, path = load_corpus(read_env())
        sizes = " / ".join(f"{k} {len(v):,}" for k, v in splits.items())
        print(f"data ready: {path} ({identity}), {sizes} bytes")

    crash_on_error(body)


if __name__ == "__main__":
    if ROLE == "supervise":
        crash_on_error(lambda: supervise(Path(sys.argv[2]), sys.argv[3:]))
        remove_temp_files()  # the run is over: its supervisor file goes (a crash's die() removed it)
    elif ROLE == "trainer":
        crash_on_error(trainer_main)
    else:
        prepare_data()

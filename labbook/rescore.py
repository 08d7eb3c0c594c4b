"""Re-scoring a run's checkpoint with the harness's own code, in a fresh process.

The number results.tsv records is never the one the run printed: `record` re-evaluates the run's
checkpoint with `python prepare.py rescore` semantics, in a subprocess that imports the BASELINE
commit's prepare.py (from git, written into a temporary directory) before anything else, so that
nothing the run's train.py did to its own process, and no later edit of prepare.py, can bend the
score. Every setting (device, data, eval bytes, seed) comes from the checkpoint's own summary.

Entry points for other code:
  verified_rescore(tsv, checkpoint, harness_commit, repo)  -> dict, the cached val re-score
  rescore_subprocess(checkpoint, prepare_text, split)      -> dict, uncached (test split: only this)
  harness_text(commit, repo)                               -> prepare.py's text at a commit
Val re-scores are cached per run_id in checkpoints/rescores.json next to results.tsv, so a keep
rule's dry run (`decide`) and `record` share one re-score. Test-split scores are never cached.
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from labbook.ledger import Refusal, checkpoints_dir, git, git_show, results_repo, write_atomically

RESCORE_TOLERANCE = 1e-6  # bits per byte; CPU runs: eval is FP32 and deterministic, measured |diff| = 0.0
RESCORE_TOLERANCE_GPU = 1e-4  # CUDA runs: UNMEASURED until a GPU measures it (BF16 autocast, kernel choice)
RESCORE_TIMEOUT = 1800  # seconds; a full 5 MB val re-score on a GPU takes ~20 s, a CPU one minutes
CACHE_NAME = "rescores.json"

# The harness first, from the temporary directory; the answer is rescore_main's one stdout line,
# and the process ends with os._exit so no exit hook of the run's source can print after it.
SCRIPT = """\
import json, os, sys
tmp, checkpoint, args = sys.argv[1], sys.argv[2], sys.argv[3:]
sys.path.insert(0, tmp)
import prepare
assert prepare.__file__.startswith(tmp), prepare.__file__
def body():
    summary = prepare.load_checkpoint(checkpoint)["summary"]
    print("summary: " + json.dumps({k: str(v) for k, v in summary.items()}), file=sys.stderr, flush=True)
    prepare.rescore_main([checkpoint, *args])
prepare.crash_on_error(body)
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
"""


class RescoreError(Exception):
    """A re-score that did not give a number: the reason, one line."""


def tolerance(device):
    """The one tolerance that applies to a run on `device` (the summary's `device`)."""
    return RESCORE_TOLERANCE_GPU if str(device).startswith("cuda") else RESCORE_TOLERANCE


def harness_text(commit, repo):
    """prepare.py's text at `commit` (HEAD when None), from git."""
    if commit is None:
        commit = git(["rev-parse", "HEAD"], repo)
    text = git_show(commit, "prepare.py", repo)
    if text is None:
        raise RescoreError(f"git does not know prepare.py at {commit or 'HEAD'} in {Path(repo).resolve()}")
    return text


def clean_env():
    """The caller's environment without AR_* overrides or precision flags: the checkpoint says."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AR_") and k not in ("USE_FP8", "USE_FP16")}


def rescore_subprocess(checkpoint, prepare_text, split="val", timeout=RESCORE_TIMEOUT):
    """{"split","bpc","seconds","prepare_hash","summary","wall_seconds"} of a checkpoint scored by
    `prepare_text` in a fresh, isolated interpreter (-I: no PYTHONPATH, no user site, and the
    repository is not on sys.path). Raises RescoreError with the harness's crash line."""
    checkpoint = str(Path(checkpoint).resolve())
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="ar-harness-") as tmp:
        Path(tmp, "prepare.py").write_text(prepare_text)
        args = [] if split == "val" else ["--split", split]
        try:
            proc = subprocess.run(
                [sys.executable, "-I", "-c", SCRIPT, tmp, checkpoint, *args],
                cwd=tmp,
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise RescoreError(f"the re-score of {checkpoint} ran past {timeout} s") from None
    crash = [line for line in proc.stdout.splitlines() + proc.stderr.splitlines() if line.startswith("crash:")]
    if proc.returncode != 0 or crash:
        tail = crash[-1] if crash else (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RescoreError(f"the re-score failed (exit {proc.returncode}): {tail}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if len(lines) != 1:
        raise RescoreError(f"the re-score printed {len(lines)} lines on stdout, not one answer: {lines[-2:]!r}")
    try:
        answer = json.loads(lines[0])
        summary = next(
            json.loads(line[len("summary: ") :]) for line in proc.stderr.splitlines() if line.startswith("summary: ")
        )
    except (ValueError, IndexError, StopIteration):
        raise RescoreError(f"the re-score printed no answer: {proc.stdout.strip()[-200:]!r}") from None
    return {**answer, "summary": summary, "wall_seconds": round(time.time() - started, 3)}


def checkpoint_key(checkpoint):
    """sha256 of the checkpoint's bytes: a copy hits the cache, a swapped file never does."""
    digest = hashlib.sha256()
    with open(checkpoint, "rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def cache_path(tsv):
    return checkpoints_dir(tsv) / CACHE_NAME


def read_cache(tsv):
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(cache_path(tsv).read_text())
        if isinstance(data, dict):
            return data
    return {}


def verified_rescore(tsv, checkpoint, harness_commit, repo, run_id=None):
    """The val re-score of `checkpoint` by prepare.py at `harness_commit` (HEAD when None), from
    the cache when this run_id was re-scored from the same checkpoint bytes by the same prepare.py.
    Returns the answer dict plus "cached" (bool). Raises RescoreError."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise RescoreError(f"no checkpoint at {checkpoint}: the run cannot be re-scored")
    text = harness_text(harness_commit, repo)
    harness = hashlib.sha256(text.encode()).hexdigest()[:12]
    key = {"checkpoint": checkpoint_key(checkpoint), "harness": harness}
    cache = read_cache(tsv)
    if run_id and isinstance(hit := cache.get(run_id), dict) and hit.get("key") == key:
        return {**hit["answer"], "cached": True}
    answer = rescore_subprocess(checkpoint, text, "val")
    if run_id and answer["summary"].get("run_id") == run_id:  # only a checkpoint of this run is cached
        with contextlib.suppress(OSError):
            cache_path(tsv).parent.mkdir(parents=True, exist_ok=True)
            cache = read_cache(tsv)
            cache[run_id] = {"key": key, "answer": answer}
            write_atomically(cache_path(tsv), json.dumps(cache, indent=1).encode())
    return {**answer, "cached": False}


def evaluate_checkpoint(checkpoint, split="val", repo=".", harness_commit=None):
    """bpc of a checkpoint on `split`, by prepare.py at `harness_commit` (HEAD when None), in a
    fresh process. Never cached. Raises Refusal for a missing or unscorable checkpoint."""
    if not Path(checkpoint).is_file():
        raise Refusal(f"no checkpoint at {checkpoint}")
    try:
        return rescore_subprocess(checkpoint, harness_text(harness_commit, repo), split)["bpc"]
    except RescoreError as e:
        raise Refusal(str(e)) from None


def best_test_bpc(results, report, compute):
    """(test_bpc of the best kept commit's checkpoint or None, a note when it could not be had).
    For the person only: computed when asked (`python analysis.py --test`), never cached, so
    nothing the agent reads (`--json`, record, decide) can lean on it."""
    if not compute or not report.get("best_commit"):
        return None, None
    checkpoint = checkpoints_dir(results.path) / f"{report['best_commit']}.pt"
    if not checkpoint.exists():
        return None, f"no checkpoint {checkpoint} to score on the test split"
    baseline = (report.get("baseline") or {}).get("commit")
    try:
        return evaluate_checkpoint(checkpoint, "test", results_repo(results.path), baseline), None
    except Refusal as e:  # a broken checkpoint must not take the report down with it
        return None, f"could not evaluate {checkpoint} on the test split: {e}"

"""Re-scoring a saved checkpoint, and the cached held-out test score of the best kept commit.

A checkpoint is scored by the train.py that trained it (its own saved source), so a later
change to the evaluation can never rewrite an old result.
"""

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from labbook.ledger import Refusal, checkpoints_dir, write_atomically


def repo_dir():
    """The repository holding labbook/ and train.py."""
    return Path(__file__).resolve().parents[1]


def load_source_module(source):
    """The checkpoint's train.py source imported as a module, written next to the repository's
    train.py so that its REPO_DIR finds the same data. Returns (module, temporary path)."""
    fd, tmp = tempfile.mkstemp(dir=repo_dir(), prefix=".checkpoint_source_", suffix=".py")
    with os.fdopen(fd, "w") as f:
        f.write(source)
    name = Path(tmp).stem.lstrip(".")
    spec = importlib.util.spec_from_file_location(name, tmp)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module, Path(tmp)


def evaluate_checkpoint(checkpoint, split="val"):
    """Bits per byte of a checkpoint's model on the first eval bytes of `split`, under the same
    AR_* environment as train.py."""
    import torch

    try:
        # the summary's torch version is a TorchVersion, a str subclass that weights_only does not know
        with torch.serialization.safe_globals([torch.torch_version.TorchVersion]):
            saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as e:  # damaged, truncated, or not a torch file at all
        raise Refusal(f"cannot load {checkpoint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    if not isinstance(saved, dict) or not {"model", "source"} <= saved.keys():
        raise Refusal(f"{checkpoint} has no model and source: it was not written by train.py's save_checkpoint")
    tmp = None
    try:
        module, tmp = load_source_module(saved["source"])
        try:
            run = module.setup()
            model = module.prepare_model(run, module.build_model())
            model.load_state_dict(saved["model"])
            bpc, _ = module.evaluate(run, model.net, split)
        except getattr(module, "HarnessError", ()) as e:
            raise Refusal(str(e)) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return bpc


def heldout_cache_key(checkpoint):
    st = Path(checkpoint).stat()
    env = {k: os.environ.get(k, "") for k in ("AR_DATA", "AR_EVAL_BYTES", "AR_DEVICE", "USE_FP8", "USE_FP16")}
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **env}


def heldout_bpc(checkpoint, compute):
    """test_bpc of a checkpoint from its cache file next to it; computed and cached when asked."""
    cache = Path(checkpoint).with_suffix(".test.json")
    key = heldout_cache_key(checkpoint)
    with contextlib.suppress(OSError, ValueError, KeyError):
        saved = json.loads(cache.read_text())
        if saved["key"] == key:
            return saved["test_bpc"]
    if not compute:
        return None
    with contextlib.redirect_stdout(sys.stderr):  # train.py's setup lines are not the report
        value = evaluate_checkpoint(checkpoint, "test")
    write_atomically(cache, json.dumps({"test_bpc": value, "key": key}, indent=1).encode())
    return value


def best_test_bpc(results, report, compute):
    """(test_bpc of the best kept commit's checkpoint or None, a note when it could not be had)."""
    if not report["best_commit"]:
        return None, None
    checkpoint = checkpoints_dir(results.path) / f"{report['best_commit']}.pt"
    if not checkpoint.exists():
        return None, None
    try:
        return heldout_bpc(checkpoint, compute), None
    except Exception as e:  # a broken checkpoint must not take the report down with it
        return None, f"could not evaluate {checkpoint}: {str(e).splitlines()[0] if str(e) else type(e).__name__}"

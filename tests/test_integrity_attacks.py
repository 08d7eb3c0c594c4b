"""Attacks on the score, as a careless or reward-hacking agent would write them in train.py, each
performed on a tiny CPU model and each caught. docs/integrity.md lists them with the layer that
catches them; the record-side attacks (a second summary, a swapped checkpoint, a hand-made row)
are in test_rescore_record.py."""

import base64
import hashlib
import subprocess
import tempfile
import types
from pathlib import Path

import pytest
import torch
from harness import (
    REPO,
    TRAIN,
    base_env,
    make_train_copy,
    parse_summary,
    run_train,
    write_corpus,
)
from torch import nn

import prepare

CPU = torch.device("cpu")


def val_text(n=40_000, seed=0):
    """Real-looking text: the probes swap in other windows of it."""
    with tempfile.TemporaryDirectory() as folder:
        blob = write_corpus(Path(folder) / "val.txt", size=n, seed=seed).read_bytes()
    return torch.frombuffer(bytearray(blob), dtype=torch.uint8)


class Causal(nn.Module):
    """An honest causal model: a running mean of byte embeddings."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(256, 256)

    def causal(self, x):
        e = self.emb(x)
        return e.cumsum(1) / torch.arange(1, x.shape[1] + 1)[None, :, None]

    def forward(self, x):
        return self.causal(x)


class LeaksLate(Causal):
    """Sees the next byte, but only at positions >= 600 (a probe cut at 512 misses half of it)."""

    def forward(self, x):
        out = self.causal(x)
        out[:, 600:] = out[:, 600:] + self.emb(x.roll(-1, 1))[:, 600:]
        return out


class PatchMixer(Causal):
    """A 'byte-patch context' mixer: every position sees its whole 4-byte patch."""

    def forward(self, x):
        e = self.emb(x)
        b, t, d = e.shape
        patch = e.view(b, t // 4, 4, d).mean(2, keepdim=True).expand(b, t // 4, 4, d).reshape(b, t, d)
        return self.causal(x) + patch


class LeaksUnlessProbePattern(Causal):
    """Causal only on the old probe's synthetic `arange % 251` input, leaky on real text."""

    def forward(self, x):
        pattern = torch.arange(x.numel()).remainder(251).view_as(x)
        if torch.equal(x, pattern):
            return self.causal(x)
        return self.causal(x) + self.emb(x.roll(-1, 1))


class LeaksAfterTwoCalls(Causal):
    """Honest on the first two forwards (where the old probe ran), leaky afterwards."""

    calls = 0

    def forward(self, x):
        self.calls += 1
        out = self.causal(x)
        return out if self.calls <= 2 else out + self.emb(x.roll(-1, 1))


class SeesOtherRows(Causal):
    """Mixes the batch: a window's predictions depend on the other windows scored with it."""

    def forward(self, x):
        return self.causal(x) + self.emb(x).mean(0, keepdim=True)


class Remembers(Causal):
    """Keeps state between forwards (caches what it saw), so scoring depends on the order."""

    def __init__(self):
        super().__init__()
        self.seen = 0

    def forward(self, x):
        self.seen += 1
        return self.causal(x) + 0.01 * self.seen


def test_an_honest_causal_model_passes_every_probe():
    bpc, _ = prepare.evaluate(Causal(), val_text(), CPU)
    assert 0 < bpc < 9


@pytest.mark.parametrize(
    "model",
    [LeaksLate, PatchMixer, LeaksUnlessProbePattern, LeaksAfterTwoCalls, SeesOtherRows, Remembers],
    ids=lambda m: m.__name__,
)
def test_a_model_that_leaks_only_sometimes_is_refused(model):
    with pytest.raises(prepare.HarnessError, match="the model is not causal"):
        prepare.evaluate(model(), val_text(), CPU)


def test_the_probed_batches_are_drawn_at_evaluation_time_not_from_the_seed():
    """The same model, the same data and the same seed: the probe's choices still differ."""
    seen = []

    class Records(Causal):
        def forward(self, x):
            seen.append(x[0, :8].tolist())
            return self.causal(x)

    for _ in range(2):
        torch.manual_seed(0)
        prepare.evaluate(Records(), val_text(200_000), CPU)
    half = len(seen) // 2
    assert seen[:half] != seen[half:]


def test_the_run_holds_the_training_split_only():
    env = dict(prepare.read_env(), data="", steps=4)
    run = prepare.Run(env, CPU, "FP32", torch.zeros(5000, dtype=torch.uint8), "x", 100)
    assert not hasattr(run, "splits")
    assert [k for k, v in vars(run).items() if isinstance(v, torch.Tensor) and v.numel() > 1] == ["train_data"]


def fake_distribution(tmp_path, text):
    """An installed distribution `fake-lib` whose one module has the RECORD hash of `text`."""
    site = tmp_path / "site"
    (site / "fake_lib").mkdir(parents=True)
    (site / "fake_lib" / "__init__.py").write_text(text)
    info = site / "fake_lib-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-lib\nVersion: 1.0\n")
    digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
    (info / "RECORD").write_text(f"fake_lib/__init__.py,sha256={digest},{len(text)}\nfake_lib-1.0.dist-info/RECORD,,\n")
    return site


def test_an_edited_library_file_ends_the_run_naming_the_file(tmp_path, monkeypatch):
    site = fake_distribution(tmp_path, "VALUE = 1\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(prepare, "CHECKED_LIBRARIES", ("fake-lib",))
    prepare.library_digest()  # untouched: it passes
    (site / "fake_lib" / "__init__.py").write_text("VALUE = 2  # a 'fix' in the library\n")
    with pytest.raises(prepare.HarnessError, match=r"fake_lib/__init__.py differs from the installed fake-lib 1.0"):
        prepare.library_digest()


def test_the_installed_libraries_are_hashed_into_the_fingerprint():
    run = types.SimpleNamespace(env={"budget": 300.0, "steps": None}, eval_bytes=10, data_identity="a")
    numerics = prepare.eval_numerics(CPU)
    harness = prepare.prepare_hash()
    assert prepare.fingerprint(run, harness, prepare.library_digest(), numerics) != prepare.fingerprint(
        run, harness, "edited", numerics
    )


def git(repo, *args):
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_a_train_py_cannot_move_head_and_the_run_keeps_the_commit_it_started_at(tmp_path, corpus):
    """The commit, its dirty state and the source are the supervisor's, taken before the trainer
    starts; the trainer cannot write the git directory at all."""
    repo = tmp_path / "repo"
    source = TRAIN.read_text().replace(
        "    return model\n",
        "    import subprocess\n"
        "    moved = subprocess.run(['git', 'commit', '-q', '--allow-empty', '-m', 'moved'], capture_output=True)\n"
        "    print('git commit from train.py exited with', moved.returncode, flush=True)\n"
        "    return model\n",
        1,
    )
    started_with = make_train_copy(repo, source=source).read_text()
    (repo / "prepare.py").write_text((REPO / "prepare.py").read_text())
    for args in (["init", "-q", "-b", "main"], ["config", "user.email", "t@e.invalid"], ["config", "user.name", "T"]):
        git(repo, *args)
    git(repo, "add", "train.py", "prepare.py")
    git(repo, "commit", "-q", "-m", "start")
    start = git(repo, "rev-parse", "--short=7", "HEAD")
    code, log = run_train(repo / "train.py", base_env(tmp_path, AR_DATA=corpus, AR_STEPS=2, AR_EVAL_BYTES=4096))
    assert code == 0, log[-2000:]
    assert "git commit from train.py exited with 128" in log
    assert git(repo, "rev-parse", "--short=7", "HEAD") == start and parse_summary(log)["commit"] == start
    saved, _ = prepare.read_checkpoint(repo / "checkpoint.pt")
    assert saved["source"] == started_with


def run_edited(tmp_path, corpus, old, new, **env):
    """Run a tiny train.py copy with `old` replaced by `new`: (exit code, log, summary)."""
    source = TRAIN.read_text()
    assert source.count(old) == 1, f"train.py no longer has exactly one {old!r}: update this attack"
    train_py = make_train_copy(tmp_path, source=source.replace(old, new))
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_EVAL_BYTES=4096, **env))
    return code, log, parse_summary(log)


def test_patching_cross_entropy_at_import_does_not_reach_the_score(tmp_path, corpus):
    # the trainer's torch is train.py's to patch; the scorer's is not: the score stays honest, and the
    # trainer's own check loss (halved by the patch) disagrees with the rebuilt model's, which is flagged
    code, log, summary = run_edited(
        tmp_path,
        corpus,
        "from prepare import MAX_SEQ_LEN, VOCAB, main\n",
        "from prepare import MAX_SEQ_LEN, VOCAB, main\nimport torch\nimport torch.nn.functional as F\n"
        "_ce = F.cross_entropy\n"
        "F.cross_entropy = lambda *a, **k: _ce(*a, **k) * (1.0 if torch.is_grad_enabled() else 0.5)  # halves eval\n",
        AR_STEPS=1,
    )
    assert code == 0, log[-2000:]
    assert summary["flags"] == "state_not_in_spec" and 6 < float(summary["val_bpc"]) < 9  # 8 bits: an untrained guess


def test_extra_batches_drawn_in_the_uncounted_warmup_are_counted_and_flagged(tmp_path, corpus):
    """Free training before the clock starts: more tokens per uncounted step than per counted one."""
    code, log, summary = run_edited(
        tmp_path,
        corpus,
        "        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)\n",
        "        extra = 8 if run.steps == 0 else 1\n"
        "        for _ in range(extra):\n"
        "            run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)\n",
        AR_TIME_BUDGET=2,
    )
    assert code == 0, log[-2000:]
    assert "warmup_tokens" in summary["flags"]
    assert "warning: the uncounted warm-up steps trained on more tokens" in log

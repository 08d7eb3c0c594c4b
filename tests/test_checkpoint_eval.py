"""Scoring a checkpoint: `python prepare.py score CHECKPOINT [--split test]` is the sealed scorer:
it rebuilds the model from the checkpoint's spec with the installed libraries, loads the weights,
never runs the saved train.py source, and reproduces the run's val_bpc exactly on the CPU."""

import json
import math

import pytest
import torch
from harness import base_env, run_prepare

import prepare

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture(scope="module")
def finished_run(tiny_run):
    workdir, code, log, summary = tiny_run
    assert code == 0, log[-2000:]
    return workdir, summary


def rescore_cli(checkpoint, tmp_path, *args):
    """(exit code, stdout, stderr) of `python prepare.py score CHECKPOINT ARGS` in a bare directory."""
    return run_prepare(["score", checkpoint, *args], base_env(tmp_path), cwd=tmp_path, timeout=120)


@pytest.fixture(scope="module")
def rescored(finished_run, tmp_path_factory):
    """The val and test re-scores of tiny_run's checkpoint, each one JSON line."""
    workdir, _ = finished_run
    results = {}
    for split in ("val", "test"):
        tmp_path = tmp_path_factory.mktemp(f"rescore_{split}")
        extra = ["--split", "test"] if split == "test" else []
        code, out, err = rescore_cli(workdir / "checkpoint.pt", tmp_path, *extra)
        assert code == 0, out + err[-2000:]
        lines = out.strip().splitlines()
        assert len(lines) == 1, f"stdout must be one JSON line:\n{out}"
        results[split] = json.loads(lines[0])
    return results


def test_a_checkpoint_re_scores_to_exactly_the_val_bpc_exact_its_run_reported(finished_run, rescored):
    _, summary = finished_run
    result = rescored["val"]
    assert set(result) == {"split", "bpc", "seconds", "prepare_hash", "spec", "checkpoint_sha256", "summary"}
    assert result["split"] == "val" and result["spec"] == summary["spec"]
    assert result["bpc"] == float(summary["val_bpc_exact"])  # bit for bit, on the CPU
    assert result["prepare_hash"] == summary["prepare_hash"] == prepare.prepare_hash()
    assert result["seconds"] >= 0


def test_the_test_split_gives_a_different_finite_score(finished_run, rescored):
    test = rescored["test"]
    assert test["split"] == "test"
    assert math.isfinite(test["bpc"]) and test["bpc"] > 0
    assert abs(test["bpc"] - float(finished_run[1]["val_bpc_exact"])) > 1e-4


def test_the_scorer_never_runs_the_saved_source(finished_run, tmp_path):
    """A checkpoint whose saved train.py would leave a mark if it ran scores the same, mark-free."""
    workdir, summary = finished_run
    saved = torch.load(workdir / "checkpoint.pt", weights_only=True)
    marker = tmp_path / "built.txt"
    saved["source"] = f"open({str(marker)!r}, 'w').write('ran')\n" + saved["source"]
    torch.save(saved, tmp_path / "patched.pt")
    code, out, err = rescore_cli(tmp_path / "patched.pt", tmp_path)
    assert code == 0, out + err[-2000:]
    assert json.loads(out)["bpc"] == float(summary["val_bpc_exact"]) and not marker.exists()


def test_weights_that_do_not_fit_the_spec_are_refused_in_one_line(finished_run, tmp_path):
    saved = torch.load(finished_run[0] / "checkpoint.pt", weights_only=True)
    saved["model"]["net.extra"] = torch.zeros(1)
    torch.save(saved, tmp_path / "extra.pt")
    code, out, _ = rescore_cli(tmp_path / "extra.pt", tmp_path)
    assert code == 2 and out.strip().splitlines() == [
        "crash: the checkpoint's weights do not fit its model spec: extra ['net.extra'], missing [], other shapes []"
    ]


def test_a_spec_naming_a_class_outside_the_libraries_is_refused(finished_run, tmp_path):
    saved = torch.load(finished_run[0] / "checkpoint.pt", weights_only=True)
    saved["spec"] = {"call": "os:system", "args": ["echo hacked"], "kwargs": {}}
    torch.save(saved, tmp_path / "spec.pt")
    code, out, _ = rescore_cli(tmp_path / "spec.pt", tmp_path)
    assert code == 2 and "only x-transformers and torch.nn classes" in out and "hacked" not in out


def test_read_checkpoint_refuses_what_prepare_did_not_write(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    torch.save({"weights": {}}, tmp_path / "foreign.pt")
    expected = {"broken.pt": "cannot load", "foreign.pt": "not written by prepare.py", "missing.pt": "no checkpoint at"}
    for name, reason in expected.items():
        with pytest.raises(prepare.HarnessError, match=reason) as info:
            prepare.read_checkpoint(tmp_path / name)
        assert name in str(info.value) and "\n" not in str(info.value)


def test_a_file_that_is_not_a_checkpoint_is_one_crash_line(tmp_path):
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    code, out, _ = rescore_cli(tmp_path / "broken.pt", tmp_path)
    assert code == 2
    assert len(out.strip().splitlines()) == 1 and out.startswith(f"crash: cannot load {tmp_path / 'broken.pt'}")


@pytest.mark.parametrize(
    "argv",
    [[], ["a.pt", "b.pt"], ["a.pt", "--split", "dev"], ["a.pt", "--split"], ["a.pt", "--test"]],
    ids=["nothing", "two-files", "unknown-split", "no-split-name", "unknown-flag"],
)
def test_score_usage_errors_name_the_usage(argv):
    with pytest.raises(prepare.HarnessError, match=r"usage: python prepare.py score CHECKPOINT \[--split val\|test\]"):
        prepare.score_main(argv)


def patched_checkpoint(finished_run, tmp_path, **summary_changes):
    saved = torch.load(finished_run[0] / "checkpoint.pt", weights_only=True)
    saved["summary"] = {**saved["summary"], **summary_changes}
    path = tmp_path / "patched.pt"
    torch.save(saved, path)
    return path


def test_a_checkpoint_whose_data_is_gone_is_refused(finished_run, tmp_path):
    path = patched_checkpoint(finished_run, tmp_path, data_path=str(tmp_path / "gone.txt"))
    with pytest.raises(prepare.HarnessError, match="gone.txt is gone"):
        prepare.sealed_score(path)


def test_a_checkpoint_whose_data_changed_is_refused(finished_run, tmp_path, capsys):
    path = patched_checkpoint(finished_run, tmp_path, data="custom:0000000000000000")
    with pytest.raises(prepare.HarnessError, match="not the same data"):
        prepare.sealed_score(path)


@NO_CUDA
def test_a_gpu_run_is_not_re_scored_on_a_machine_without_one(finished_run, tmp_path):
    path = patched_checkpoint(finished_run, tmp_path, device="cuda")
    with pytest.raises(prepare.HarnessError, match="trained on a CUDA GPU and this machine has none"):
        prepare.sealed_score(path)

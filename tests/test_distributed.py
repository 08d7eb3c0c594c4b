"""One experiment on several devices: `torchrun --nproc_per_node=N train.py`.

Two gloo ranks on the CPU train a tiny copy once (module fixture); the tests read what that run
left behind: its log, metrics.jsonl and checkpoint.pt.
"""

import json
import math
import re
import subprocess
import sys

import pytest
import torch
from harness import TRAIN, base_env, make_train_copy, parse_summary, train_module, write_corpus

import prepare

# 800 KB of text leaves 40,000 validation bytes: 40 windows, 3 evaluation batches of 16, so
# rank 0 scores two batches and rank 1 one, and the all_reduce really adds two shards.
CORPUS_BYTES = 800_000
EVAL_BYTES = 40_000

# Each rank reports where it stopped and what weights it ended with, in one short write (a pipe
# write under 4 KB is never split by another rank's), ended by a word of its own: print() may send the
# newline as a second write, so another rank's report can follow on the same line. The trainer
# writes only its run folder, hence stdout.
# The copy's train(run) is edited the way the agent edits it; prepare.py stays as it is.
REPORT_LINE = (
    "    print(f'rank-report {run.rank} {run.steps} "
    "{sum(p.double().abs().sum().item() for p in model.parameters())!r} end', flush=True)\n"
)
RETURN = "    return model\n"
# every other step is written by hand (each rank draws its own windows): run.step must average the
# gradients that DDP's backward did not, or the ranks' weights part
STEP = "        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)\n"
HAND_WRITTEN_STEP = (
    "        if run.steps % 2:\n"
    "            model(run.get_batch(BATCH_SIZE // run.world_size, TRAIN_SEQ_LEN)).backward()\n"
    "        else:\n"
    "    " + STEP
)


def rank_reports(log):
    """{rank: (final step, sum of |weights|)} from the lines the edited copy prints."""
    reports = {}
    for rank, step, weights in re.findall(r"rank-report (\d+) (\d+) (\S+) end", log):
        reports[int(rank)] = (int(step), float(weights))
    return reports


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """(directory, return code, log, summary, env) of a 2-rank torchrun of a tiny copy."""
    workdir = tmp_path_factory.mktemp("ddp")
    corpus = write_corpus(workdir / "corpus.txt", size=CORPUS_BYTES)
    source = TRAIN.read_text()
    assert source.count(RETURN) == 1, "train(run) no longer ends with one `return model`: update the anchor"
    assert source.count(STEP) == 1, "train(run) no longer calls forward_backward once: update the anchor"
    source = source.replace(RETURN, REPORT_LINE + RETURN).replace(STEP, HAND_WRITTEN_STEP)
    make_train_copy(workdir, source=source, BATCH_SIZE=4)
    # a time budget: rank 0's clock decides when every rank stops
    env = base_env(workdir, AR_DATA=corpus, AR_TIME_BUDGET=3, AR_EVAL_BYTES=EVAL_BYTES, AR_DEVICE="cpu")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py"]
    proc = subprocess.run(
        command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180
    )
    return workdir, proc.returncode, proc.stdout, parse_summary(proc.stdout), env


def test_two_ranks_exit_cleanly_with_one_summary_that_reports_world_size_2(ddp_run):
    _, code, log, summary, _ = ddp_run
    assert code == 0, log[-3000:]
    assert log.splitlines().count("---") == 1, "only rank 0 may print the summary block"
    assert summary["world_size"] == "2"
    assert summary["device"] == "cpu"


def test_metrics_file_has_each_step_once_and_one_summary_row(ddp_run):
    workdir, _, log, summary, _ = ddp_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if "step" in row]
    assert steps == list(range(1, int(summary["num_steps"]) + 1)), log[-3000:]
    assert sum("summary" in row for row in rows) == 1


def test_both_ranks_stop_at_the_same_step_with_identical_weights(ddp_run):
    workdir, _, log, summary, _ = ddp_run
    reports = rank_reports(log)
    assert sorted(reports) == [0, 1], log[-3000:]
    (step0, weights0), (step1, weights1) = reports[0], reports[1]
    assert step0 == step1 == int(summary["num_steps"])
    # DDP keeps replicas equal only when every rank applies the same update, learning rate included
    assert math.isclose(weights0, weights1, rel_tol=1e-9), f"rank 0 {weights0!r} vs rank 1 {weights1!r}"


def test_sharded_val_bpc_equals_a_single_process_evaluation_of_the_checkpoint(ddp_run):
    workdir, _, _, summary, env = ddp_run
    saved = torch.load(workdir / "checkpoint.pt", weights_only=True)
    assert saved["summary"]["world_size"] == 2 and saved["summary"]["eval_bytes"] == EVAL_BYTES
    model = train_module(saved["source"], name="train_ddp_copy").build_model()
    model.load_state_dict(saved["model"])
    splits, _, _ = prepare.load_corpus(dict(data=env["AR_DATA"], data_url=""))
    bpc, _ = prepare.evaluate(model.net, splits["val"][:EVAL_BYTES], torch.device("cpu"))  # one process, all batches
    assert abs(bpc - float(summary["val_bpc"])) <= 1e-5, f"single process {bpc:.6f} vs torchrun {summary['val_bpc']}"


def test_a_plain_python_run_reports_world_size_1(tiny_run):
    _, code, log, summary = tiny_run
    assert code == 0, log[-3000:]
    assert summary["world_size"] == "1"

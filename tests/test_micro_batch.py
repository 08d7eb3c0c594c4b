"""The micro-batch fits itself: a model that runs out of memory above a size trains at a size that
fits, with the same batch and a normal summary; out of memory at a micro-batch of 1, or after the
first step, is still the one-line crash."""

import re

import pytest
import torch
from harness import (
    TRAIN,
    assert_crashed,
    base_env,
    crash_reason,
    insert_after_import,
    make_train_copy,
    parse_summary,
    run_train,
)

import prepare

# A loss_fn that raises CUDA's out-of-memory error for a training forward of more than FITS
# sequences (or after FAIL_AFTER successful training forwards, when that is set).
FITTING_LOSS = """

CALLS = [0]


def fitting_loss(model, x):
    CALLS[0] += 1
    if len(x) > FITS or (FAIL_AFTER and CALLS[0] > FAIL_AFTER):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
    if CALLS[0] == 3:  # the first forward that fits: what loss_fn(model, x) is handed
        print(f"loss_fn's x: {tuple(x.shape)} {x.dtype} in [{int(x.min())}, {int(x.max())}]")
    return model(x)
"""


def fitting_source(fits, fail_after=0):
    source = TRAIN.read_text().replace(
        "run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)",
        "run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN, loss_fn=fitting_loss)",
    )
    source = source.replace('\n\nif __name__ == "__main__":', FITTING_LOSS + '\n\nif __name__ == "__main__":')
    header = f"import torch\n\nFITS = {fits}\nFAIL_AFTER = {fail_after}\n"
    return insert_after_import(source, header)


@pytest.fixture(scope="module")
def fitted_run(tmp_path_factory, corpus):
    workdir = tmp_path_factory.mktemp("fitted")
    train_py = make_train_copy(workdir, source=fitting_source(fits=2), BATCH_SIZE=8)
    return run_train(train_py, base_env(workdir, AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096))


def test_a_model_that_runs_out_of_memory_above_two_sequences_trains_at_two(fitted_run):
    code, log = fitted_run
    assert code == 0, log[-2000:]
    summary = parse_summary(log)
    assert int(summary["micro_batch"]) == 2
    assert summary["num_steps"] == "3" and 0 < float(summary["val_bpc"]) < 9
    assert "notice: a micro-batch of 8 sequences does not fit" in log
    assert "notice: a micro-batch of 4 sequences does not fit" in log
    assert "micro_batch: 2 sequences per forward/backward (8 per step per rank)" in log
    shape = re.search(r"^loss_fn's x: \(2, (\d+)\) torch.int64 in \[(\d+), (\d+)\]$", log, re.M)
    assert shape and int(shape.group(1)) == prepare.MAX_SEQ_LEN + 1  # TRAIN_SEQ_LEN (its default) + 1
    assert 0 <= int(shape.group(2)) <= int(shape.group(3)) <= 255


def test_out_of_memory_at_a_micro_batch_of_one_is_the_one_line_crash(tmp_path, corpus):
    train_py = make_train_copy(tmp_path, source=fitting_source(fits=0), BATCH_SIZE=4)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=3, AR_EVAL_BYTES=4096))
    assert_crashed(code, log)
    assert code == 4 and crash_reason(log).startswith("out of memory (peak ")


def test_out_of_memory_after_the_first_step_is_the_one_line_crash(tmp_path, corpus):
    train_py = make_train_copy(tmp_path, source=fitting_source(fits=8, fail_after=3), BATCH_SIZE=4)
    code, log = run_train(train_py, base_env(tmp_path, AR_DATA=corpus, AR_STEPS=5, AR_EVAL_BYTES=4096))
    assert_crashed(code, log)
    assert code == 4 and "out of memory" in crash_reason(log)


def test_the_retried_step_sees_the_same_batch(tmp_path):
    """fit_micro_batch tries sizes on the step's own batch; forward_backward then uses that batch."""
    seen = []

    class Records(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            seen.append(x.clone())
            if len(x) > 2:
                raise torch.OutOfMemoryError("simulated")
            return self.w * x.float().mean()

    env = dict(prepare.read_env(), steps=2, metrics=str(tmp_path / "metrics.jsonl"))
    data = torch.arange(5000).remainder(256).to(torch.uint8)
    run = prepare.Run(env, torch.device("cpu"), "FP32", data, "x", 10)
    run.tracker = prepare.Tracker(run)
    model = run.prepare_model(Records())
    run.forward_backward(model, 4, 16)
    assert run.micro_batch == 2
    batch = seen[0]
    assert all(torch.equal(s, batch[: len(s)]) or torch.equal(s, batch[2:]) for s in seen)


def test_steps_that_fp16s_scaler_skips_still_count(tmp_path):
    """An FP16 step with inf gradients is skipped by the scaler, never by the clock."""

    class Overflows(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.w * float("inf") * x.float().mean()

    env = dict(prepare.read_env(), steps=3, metrics=str(tmp_path / "metrics.jsonl"))
    data = torch.arange(5000).remainder(256).to(torch.uint8)
    run = prepare.Run(env, torch.device("cpu"), "FP16", data, "x", 10)
    assert run.scaler.is_enabled()
    run.tracker = prepare.Tracker(run)
    counter = prepare.StepCounter()
    counter.tracker = run.tracker
    try:
        model = run.prepare_model(Overflows())
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run.forward_backward(model, 2, 8)
        run.step(optimizer)
    finally:
        counter.remove()
    assert run.tracker.steps == 1  # counted once, though optimizer.step() never ran
    assert model.w.item() == 1.0


def test_the_cuda_allocator_gets_expandable_segments_before_the_run(tmp_path, corpus):
    source = TRAIN.read_text().replace(
        "def train(run):\n",
        "def train(run):\n    import os\n\n    print('alloc:', os.environ.get('PYTORCH_ALLOC_CONF'))\n",
    )
    train_py = make_train_copy(tmp_path, source=source)
    env = base_env(tmp_path, AR_DATA=corpus, AR_STEPS=1, AR_EVAL_BYTES=4096)
    env.pop("PYTORCH_ALLOC_CONF", None)
    env.pop("PYTORCH_CUDA_ALLOC_CONF", None)
    code, log = run_train(train_py, env)
    assert code == 0, log[-2000:]
    assert f"alloc: {prepare.ALLOC_CONF}" in log

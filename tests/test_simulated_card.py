"""The micro-batch on a simulated card (tests/simcard.py): the CUDA branch of fit_micro_batch and
forward_backward run on the CPU against a model of a card on which n sequences peak at a + b·n.

The card's figures are the sizing table's: b is the per-sequence memory `tools/machine.py --print
--no-measure` counts for train.py's default model, a its weights, gradients and BF16 copies; so the
micro-batch each card gets must be what AGENTS.md says, and never a silent 1.
"""

import json
import re
import socket
import subprocess

import pytest
import simcard
import torch
from harness import AGENTS, REPO, TRAIN, base_env, python
from torch import nn

import prepare
from labbook import machine

SIMCARD = REPO / "tests" / "simcard.py"


@pytest.fixture(scope="module")
def sizing():
    """(params, per-sequence bytes) of train.py's default model, as the sizing table counts them."""
    train = machine.load_train(TRAIN)
    return machine.count_params(train), machine.estimate_activations(train).per_sequence


@pytest.fixture
def cuda_run(sizing, tmp_path, monkeypatch):
    """make(card_gb, others_gb=0, fraction=1) -> (run, model, card): a Run on a simulated card."""
    params, per_sequence = sizing

    def make(card_gb, others_gb=0.0, fraction=1.0):
        card = simcard.card(card_gb, per_sequence, params, others_gb, fraction).install(monkeypatch.setattr)
        run, model = simcard.cuda_run(card, params, metrics=str(tmp_path / "metrics.jsonl"))
        run.tracker = prepare.Tracker(run)
        return run, model, card

    return make


def agents_micro_batches():
    """{card GB: micro-batch} as AGENTS.md's model sizing states them for the default model."""
    text = AGENTS.read_text()
    stated = re.search(r"predicted micro-batch by card: ([^.]*)\.", text)
    assert stated, "AGENTS.md no longer states the micro-batch per card"
    return {int(gb): int(size) for gb, size in re.findall(r"(\d+) GB → (\d+)", stated.group(1))}


def test_agents_md_states_the_sizing_tables_per_sequence_figure(sizing):
    _, per_sequence = sizing
    assert f"about {per_sequence / 2**20:,.0f} MB of activations per 1,024-byte sequence" in AGENTS.read_text()


@pytest.mark.parametrize("card_gb", [8, 12, 16, 24, 80])
def test_each_card_fits_the_micro_batch_the_sizing_table_predicts(cuda_run, sizing, card_gb):
    params, per_sequence = sizing
    run, model, card = cuda_run(card_gb)
    run.forward_backward(model, 64)
    predicted = machine.fit_micro_batch(params, per_sequence, 64, card_gb * 2**30)
    assert run.micro_batch == predicted == agents_micro_batches()[card_gb]
    assert run.micro_batch > 1
    assert card.forwards[-64 // run.micro_batch :] == [run.micro_batch] * (64 // run.micro_batch)


def test_a_failed_larger_try_does_not_make_the_smaller_ones_look_too_big(cuda_run):
    run, model, card = cuda_run(8)
    run.forward_backward(model, 64)
    assert card.forwards[:3] == [64, 32, 16]  # 64 and 32 ran out of memory, 16 fits
    assert run.micro_batch == 16


def test_memory_held_by_another_process_is_not_counted_as_free(cuda_run):
    run, model, _ = cuda_run(24, others_gb=12)
    run.forward_backward(model, 64)
    assert run.micro_batch == agents_micro_batches()[12]


def test_a_per_process_cap_is_the_card_the_fitting_sees(cuda_run):
    run, model, _ = cuda_run(80, fraction=0.1)
    run.forward_backward(model, 64)
    assert run.micro_batch == agents_micro_batches()[8]


def test_nothing_fits_is_an_out_of_memory_error_not_a_micro_batch_of_one(cuda_run):
    run, model, card = cuda_run(0.5)
    with pytest.raises(prepare.NothingFits, match="not even one sequence fits"):
        run.forward_backward(model, 64)
    assert card.forwards[-1] == 1 and run.micro_batch is None


def test_fp8_compiles_the_model_before_ddp_wraps_it(monkeypatch):
    """torchao float8 fails under compile(DDP(model)); the other precisions keep DDP inside the compile."""

    class Compiled(nn.Module):
        def __init__(self, module):
            super().__init__()
            self._orig_mod = module

    monkeypatch.setattr(prepare, "compile_model", lambda model, options: Compiled(model))
    torch.distributed.init_process_group("gloo", store=torch.distributed.HashStore(), rank=0, world_size=1)
    try:
        orders = {}
        for precision in ("FP8", "BF16"):
            run = prepare.Run(dict(prepare.read_env(), steps=1), torch.device("cpu"), precision, torch.zeros(8), "x", 8)
            run.world_size, run.compile_options = 2, {}
            model = nn.Linear(4, 4)
            net = run.step_model(model)
            orders[precision] = (type(net).__name__, type(net.module if hasattr(net, "module") else net._orig_mod))
            assert prepare.unwrap(net) is model
    finally:
        torch.distributed.destroy_process_group()
    assert orders["FP8"] == ("DistributedDataParallel", Compiled)
    assert orders["BF16"] == ("Compiled", nn.parallel.DistributedDataParallel)


def test_mfu_counts_the_positions_the_network_runs_over(tmp_path):
    """get_batch serves seq_len + 1 bytes and the wrapper runs the network over all of them: the
    MFU formula's 6N term must count those positions, spread over the seq_len counted tokens."""
    from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

    net = TransformerWrapper(num_tokens=256, max_seq_len=64, attn_layers=Decoder(dim=16, depth=1, heads=2))
    env = dict(prepare.read_env(), steps=1, metrics=str(tmp_path / "m.jsonl"))
    data = torch.arange(5000).remainder(256).to(torch.uint8)
    run = prepare.Run(env, torch.device("cpu"), "FP32", data, "x", 10)
    run.tracker = prepare.Tracker(run)
    model = run.prepare_model(AutoregressiveWrapper(net))
    positions = []
    net.register_forward_hook(lambda m, args, out: positions.append(args[0].shape[1]))
    run.forward_backward(model, 2, 32)
    assert set(positions) == {33}  # the fitting's try and the step itself
    assert prepare.flops_per_token(1000, 0, 0, 32) * 32 == 6 * 1000 * positions[0]


# ---------------------------------------------------------------------------
# Ranks: gloo on the CPU, each rank on its own simulated card (tests/simcard.py as a script)
# ---------------------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(tmp_path, sizing, *configs, timeout=90):
    """[(exit code, output)] of one simulated-card rank per config, started together."""
    params, per_sequence = sizing
    port = free_port()
    procs = []
    for rank, config in enumerate(configs):
        env = base_env(tmp_path, RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=len(configs))
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        argument = json.dumps(dict(config, params=params, per_sequence=per_sequence))
        procs.append(
            subprocess.Popen(
                [python(), str(SIMCARD), argument],
                cwd=tmp_path,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return [(p.wait(timeout=timeout), p.stdout.read()) for p in procs]


def crash_lines(output):
    return [line for line in output.splitlines() if line.startswith("crash: ")]


def test_nothing_fits_ends_the_run_with_one_crash_line(tmp_path, sizing):
    [(code, output)] = run_ranks(tmp_path, sizing, dict(card_gb=0.5))
    assert code == 4, output[-2000:]
    assert len(crash_lines(output)) == 1 and output.rstrip().splitlines()[-1] == crash_lines(output)[0]
    assert crash_lines(output)[0].startswith("crash: out of memory (peak ")
    assert "not even one sequence fits" in crash_lines(output)[0]
    assert "micro_batch:" not in output


def test_two_ranks_agree_on_the_smaller_cards_micro_batch(tmp_path, sizing):
    results = run_ranks(tmp_path, sizing, dict(card_gb=24), dict(card_gb=8))
    for code, output in results:
        assert code == 0, output[-2000:]
    assert [re.findall(r"^micro_batch: (\d+)$", out, flags=re.M) for _, out in results] == [["16"], ["16"]]


def test_nothing_fitting_on_one_rank_ends_both_with_the_same_crash_line(tmp_path, sizing):
    results = run_ranks(tmp_path, sizing, dict(card_gb=24), dict(card_gb=0.5))
    assert [code for code, _ in results] == [4, 4], [out[-1500:] for _, out in results]
    lines = [crash_lines(out) for _, out in results]
    assert all(len(found) == 1 and "not even one sequence fits" in found[0] for found in lines)


def test_one_rank_out_of_memory_ends_the_waiting_rank_with_its_crash_line(tmp_path, sizing):
    """Rank 0 waits as in a collective (no watchdog armed, a wait far past the test's timeout);
    rank 1 runs out of memory: rank 0 ends at once with rank 1's line and exit code."""
    results = run_ranks(tmp_path, sizing, dict(card_gb=24, wait_s=600), dict(card_gb=24, crash_at_step=1))
    (code0, out0), (code1, out1) = results
    assert code1 == 4 and crash_lines(out1)[0].startswith("crash: out of memory (peak "), out1[-1500:]
    assert code0 == 4, out0[-1500:]
    assert crash_lines(out0) == [f"crash: rank 1 crashed: {crash_lines(out1)[0].removeprefix('crash: ')}"]
    assert "waited to the end" not in out0

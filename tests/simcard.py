"""A simulated CUDA card: the memory API the harness reads, answered by a model of a card on which a
micro-batch of n sequences peaks at a + b·n bytes, so Run.fit_micro_batch and Run.forward_backward
take their CUDA branch on a CPU.

The Run is built on the CPU (its data, generator and batches stay there) and then told its device is
`cuda`; the stand-in model's forward reports each micro-batch to the card, which raises CUDA's
out-of-memory error where a real allocator would (above the per-process cap or the free memory).

Run as a script it is one rank of a two-rank gloo job (tests/test_simulated_card.py starts two):
    python tests/simcard.py '{"card_gb": 24, "others_gb": 0, "crash_at_step": 0}'
It prints `micro_batch: N` once the ranks agreed, and ends through prepare.crash_on_error.
"""

import json
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch import nn

import prepare

GB = 2**30
MB = 2**20
DEFAULT_PARAMS = 33_900_000  # train.py's default model (AGENTS.md's sizing table)
BASE_BYTES_PER_PARAM = 4 + 4 + 2  # FP32 weights and gradients, BF16 copies: the peak before activations


class SimCard:
    """One card: `total` bytes, `others` held by other processes (a display, another run), a
    per-process fraction, and this process's allocator: `allocated` between steps (the weights),
    the `peak` since the last reset, what the cache `reserved`."""

    def __init__(self, total, per_sequence, base, others=0, fraction=1.0):
        self.total, self.per_sequence, self.base = total, per_sequence, base
        self.others, self.fraction = others, fraction
        self.allocated = self.peak = self.reserved = base // 2  # FP32 weights stay between steps
        self.forwards = []  # sizes of the micro-batches that ran (or tried to)

    def limit(self):
        """What the allocator can reach: the cap, and what the other processes leave."""
        return min(self.fraction * self.total, self.total - self.others)

    def forward(self, n):
        """A forward and backward of n sequences: peak a + b·n, or CUDA's out-of-memory error."""
        self.forwards.append(n)
        need = self.base + self.per_sequence * n
        if need > self.limit():  # a real allocator fills the card before it gives up: the peak shows it
            self.peak = self.reserved = int(self.limit())
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated card): {need / MB:,.0f} MB wanted")
        self.peak = max(self.peak, need)
        self.reserved = max(self.reserved, need)

    # the torch.cuda functions the harness calls
    def memory_allocated(self, device=None):
        return self.allocated

    def max_memory_allocated(self, device=None):
        return self.peak

    def reset_peak_memory_stats(self, device=None):
        self.peak = self.allocated

    def memory_reserved(self, device=None):
        return self.reserved

    def empty_cache(self):
        self.reserved = self.allocated

    def mem_get_info(self, device=None):
        return self.total - self.others - self.reserved, self.total

    def get_device_properties(self, device=None):
        return SimpleNamespace(total_memory=self.total, name="Simulated GPU", major=9, minor=0)

    def set_per_process_memory_fraction(self, fraction, device=None):
        self.fraction = fraction

    def get_per_process_memory_fraction(self, device=None):
        return self.fraction

    def synchronize(self, device=None):
        pass

    def install(self, patch):
        """Replace torch.cuda's memory functions with this card's, through `patch(obj, name, value)`."""
        for name in (
            "memory_allocated",
            "max_memory_allocated",
            "reset_peak_memory_stats",
            "memory_reserved",
            "empty_cache",
            "mem_get_info",
            "get_device_properties",
            "set_per_process_memory_fraction",
            "get_per_process_memory_fraction",
            "synchronize",
        ):
            patch(torch.cuda, name, getattr(self, name))
        return self


class StandIn(nn.Module):
    """A model with `params` parameters (on the meta device: sizes only, for the optimizer's state)
    whose forward reports its micro-batch to the card and returns a loss it can backpropagate."""

    def __init__(self, card, params):
        super().__init__()
        self.card = card
        self.w = nn.Parameter(torch.ones(()))
        self.sized = nn.Parameter(torch.empty(params - 1, device="meta"))

    def forward(self, x):
        self.card.forward(len(x))
        return self.w * x.float().mean()


def card(total_gb, per_sequence, params=DEFAULT_PARAMS, others_gb=0.0, fraction=1.0):
    """A card of `total_gb` GiB for a model of `params` parameters and `per_sequence` bytes a sequence."""
    return SimCard(
        int(total_gb * GB), per_sequence, BASE_BYTES_PER_PARAM * params, int(others_gb * GB), fraction=fraction
    )


def cuda_run(sim, params=DEFAULT_PARAMS, steps=1, metrics="metrics.jsonl"):
    """(run, model): a Run whose device says cuda, its data on the CPU, and the stand-in model."""
    env = dict(prepare.read_env(), steps=steps, metrics=metrics)
    data = torch.arange(200_000).remainder(256).to(torch.uint8)
    run = prepare.Run(env, torch.device("cpu"), "BF16", data, "simulated", 4096)
    run.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    model = StandIn(sim, params)
    run.model, run.num_params = model, params
    return run, model


def rank_main(config):
    """One rank of a gloo job on a simulated card: fit the micro-batch with the other rank, then
    `crash_at_step` steps later (0: never) run out of memory, or wait as if blocked in a collective."""
    params = config.get("params", DEFAULT_PARAMS)
    sim = card(config["card_gb"], config["per_sequence"], params, others_gb=config.get("others_gb", 0.0))

    def patch(obj, name, value):
        setattr(obj, name, value)

    sim.install(patch)

    def body():
        torch.distributed.init_process_group("gloo")
        prepare.watch_other_ranks(torch.distributed.distributed_c10d._get_default_store())
        run, model = cuda_run(sim, config.get("params", DEFAULT_PARAMS))
        prepare.ACTIVE_RUN = run
        x = torch.zeros(config.get("batch", 64), 8, dtype=torch.long)
        run.micro_batch = run.fit_micro_batch(model, x, lambda m, batch: m(batch))
        print(f"micro_batch: {run.micro_batch}", flush=True)
        if config.get("crash_at_step"):
            raise torch.OutOfMemoryError("CUDA out of memory (simulated card, during training)")
        if config.get("wait_s"):
            time.sleep(config["wait_s"])  # a rank waiting on the others (NCCL never notices a dead peer)
            print("waited to the end", flush=True)

    prepare.crash_on_error(body)


if __name__ == "__main__":
    rank_main(json.loads(sys.argv[1]))

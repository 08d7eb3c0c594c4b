"""The optimizer step the bench times: MuonAdamAtan2 with the library's own Newton-Schulz function
under torch.compile must move parameters exactly as the library's eager step does.

Compiling on the CPU runs inductor's C++ code generation (gcc), about 20 s per graph on two cores,
so the test uses one matrix shape (one graph) and three steps.
"""

import shutil

import pytest
import torch
from adam_atan2_pytorch import MuonAdamAtan2
from harness import import_bench

needs_compiler = pytest.mark.skipif(
    not (shutil.which("g++") or shutil.which("c++")), reason="torch.compile on the CPU needs a C++ compiler"
)


def parameters():
    """Two matrices of one shape for Muon, a vector and a matrix for Adam-atan2."""
    g = torch.Generator().manual_seed(0)
    shapes = [(32, 48), (32, 48), (48,), (8, 16)]
    return [torch.randn(shape, generator=g).requires_grad_() for shape in shapes]


def optimizer(params):
    return MuonAdamAtan2(muon_params=params[:2], params=params, lr=1e-2, betas=(0.9, 0.95))


def give_same_gradients(step, *param_lists):
    g = torch.Generator().manual_seed(100 + step)
    for group in zip(*param_lists):
        grad = torch.randn(group[0].shape, generator=g)
        for p in group:
            p.grad = grad.clone()


def set_lr(opt, lr):
    for group in opt.param_groups:
        group["lr"] = lr


@needs_compiler
def test_compiled_newton_schulz_step_matches_the_library_eager_step_without_recompiling():
    bench = import_bench()
    eager_params, compiled_params = parameters(), parameters()
    eager, compiled = optimizer(eager_params), optimizer(compiled_params)
    original = bench.muon_module.newtonschulz5
    compiled_step = bench.optimizer_step_fn(compiled, "newton_schulz")
    torch._dynamo.reset()
    for step in range(3):
        give_same_gradients(step, eager_params, compiled_params)
        for opt in (eager, compiled):
            set_lr(opt, 1e-2 * (step + 1))  # the schedule changes lr every step
        eager.step()
        # after the first step every shape has its graph: a new step count or lr must not recompile
        with torch._dynamo.config.patch(error_on_recompile=step > 0):
            compiled_step()
        for a, b in zip(eager_params, compiled_params):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert not torch.equal(eager_params[0], parameters()[0])  # the steps did move the parameters
    assert bench.muon_module.newtonschulz5 is original  # the library is left as it was


def test_an_unknown_variant_is_refused():
    bench = import_bench()
    with pytest.raises(ValueError, match="unknown optimizer variant"):
        bench.optimizer_step_fn(optimizer(parameters()), "fused")

"""Numerics settings train.py may leave behind: torch >= 2.9's fp32_precision API next to the legacy
calls the harness uses (a legacy read raises once the new API was used)."""

import pytest
import torch
from x_transformers import Decoder, TransformerWrapper

import prepare


@pytest.fixture
def new_api_used():
    """What a train.py line `torch.backends.cuda.matmul.fp32_precision = "tf32"` leaves behind."""
    if not hasattr(torch.backends.cuda.matmul, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    yield
    torch.set_float32_matmul_precision("highest")  # a legacy write makes the state legacy-readable again


def test_the_evaluation_runs_after_train_py_used_the_fp32_precision_api(new_api_used):
    torch.manual_seed(0)
    net = TransformerWrapper(
        num_tokens=256, max_seq_len=prepare.MAX_SEQ_LEN, attn_layers=Decoder(dim=16, depth=1, heads=2)
    )
    data = torch.arange(3000).remainder(256).to(torch.uint8)
    bpc, _ = prepare.evaluate(net, data, torch.device("cpu"), probe=False)
    assert bpc > 0
    assert prepare.float32_matmul_precision() == "high"  # restored as train.py left it


def test_the_legacy_precision_reads_back_through_the_new_api(new_api_used):
    with pytest.raises(RuntimeError):
        torch.get_float32_matmul_precision()
    assert prepare.float32_matmul_precision() == "high"

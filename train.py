"""
Autoresearch on x-transformers: the agent's file. A byte-level enwik8 model trained for a fixed
budget; prepare.py serves the batches, keeps the clock and scores what train() hands back.
Usage: python train.py     (several GPUs: torchrun --nproc_per_node=N train.py)
"""

# the harness first: Ctrl-C during the seconds of imports is then its one crash line, not a traceback
from prepare import MAX_SEQ_LEN, VOCAB, main

# isort: split
from adam_atan2_pytorch import MuonAdamAtan2
from x_transformers import AutoregressiveWrapper, Decoder, TransformerWrapper

# ---------------------------------------------------------------------------
# Hyperparameters (edit these directly, no CLI flags needed)
# ---------------------------------------------------------------------------

DIM = 512  # model width
DEPTH = 8  # transformer layers
HEADS = 8  # attention heads of 64 dims each (x-transformers' attn_dim_head): keep HEADS x 64 = DIM
BATCH_SIZE = 64  # sequences per optimizer step, summed over all GPUs (64 x 1024 = 65K bytes)
TRAIN_SEQ_LEN = MAX_SEQ_LEN  # bytes predicted per training window; the evaluation always uses MAX_SEQ_LEN
LR = 2e-3  # Adam-atan2: embeddings, norms, queries/keys and the output head
MUON_LR = 2e-3  # Muon: value/output and feed-forward matrices (updates rescaled to Adam's RMS)
BETAS = (0.9, 0.95)  # a shorter second-moment memory suits a run of a few thousand steps
WEIGHT_DECAY = 0.0  # 300 s sees the 90 MB train split only a few times: little to overfit
WARMUP_FRAC = 0.02  # share of the budget spent warming the learning rate up
WARMDOWN_FRAC = 0.4  # share of the budget spent decaying it to zero (the fork's best kept 40%)
GRAD_CLIP = 1.0  # max global gradient norm: guards the first steps at a high learning rate
COMPILE = True  # torch.compile on CUDA: fuses norms and activations, costs the uncounted warmup steps


# ---------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------


def build_model():
    net = TransformerWrapper(
        num_tokens=VOCAB,
        max_seq_len=MAX_SEQ_LEN,
        use_abs_pos_emb=False,  # rotary embeddings carry the positions
        attn_layers=Decoder(
            dim=DIM,
            depth=DEPTH,
            heads=HEADS,
            attn_flash=True,  # PyTorch SDPA flash kernels (x-transformers defaults to off)
            rotary_pos_emb=True,
            use_rmsnorm=True,
            ff_glu=True,  # SwiGLU feed-forward: kept early in the fork's search
            ff_swish=True,
            attn_qk_norm=True,  # bounded attention logits tolerate a higher learning rate
            add_value_residual=True,  # value residual learning (ResFormer): kept in the fork
            zero_init_branch_output=True,  # each block starts as the identity
        ),
    )
    return AutoregressiveWrapper(net)


# ---------------------------------------------------------------------------
# Optimizer and schedule
# ---------------------------------------------------------------------------


def build_optimizer(model):
    optimizer = MuonAdamAtan2(
        muon_params=list(model.net.muon_parameters()),
        params=list(model.parameters()),
        lr=LR,
        muon_lr=MUON_LR,
        betas=BETAS,
        weight_decay=WEIGHT_DECAY,
        remove_muon_params_from_params=True,
    )
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def lr_multiplier(progress):
    """Warmup, constant, then linear warmdown to zero, as a function of budget spent (0..1).
    The uncounted first steps run at progress 0, so they only warm up the optimizer moments."""
    if progress < WARMUP_FRAC:
        return progress / WARMUP_FRAC
    if progress < 1.0 - WARMDOWN_FRAC or WARMDOWN_FRAC == 0:
        return 1.0
    return (1.0 - progress) / WARMDOWN_FRAC


# ---------------------------------------------------------------------------
# Training: the harness counts every optimizer step and says when the budget is spent
# ---------------------------------------------------------------------------


def train(run):
    model = run.prepare_model(build_model(), compile=COMPILE)
    optimizer = build_optimizer(model)
    while not run.done:
        lr_mult = lr_multiplier(run.progress)
        for group in optimizer.param_groups:
            group["lr"] = group["base_lr"] * lr_mult
        run.forward_backward(model, BATCH_SIZE, TRAIN_SEQ_LEN)
        run.step(optimizer, GRAD_CLIP)
    return model


if __name__ == "__main__":
    main()

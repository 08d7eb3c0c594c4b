"""Edits of train.py the sealed path cannot score end in one crash line that says the cause and the
fix: a module class of train.py's own handed to x-transformers, weights gone NaN, an option that
samples in eval mode, a parametrization (weight norm) or pruning left on the returned model."""

from harness import TINY, TRAIN, assert_crashed, base_env, crash_reason, edit_constants, insert_after_import, run_train

FAST = dict(TINY, TRAIN_SEQ_LEN=64)  # one short step: every refusal here comes after build or after train()


def edited_train(build_edit=None, before_return="", before_build="", **constants):
    """The tiny train.py with torch imported, `build_edit` applied to its text, `before_return` run at the
    end of train() and `before_build` defined above build_model()."""
    text = insert_after_import(
        edit_constants(TRAIN.read_text(), **{**FAST, **constants}), "import torch\nfrom torch import nn"
    )
    if build_edit:
        text = build_edit(text)
    if before_build:
        text = text.replace("\n\ndef build_model():", f"\n\n{before_build.strip()}\n\n\ndef build_model():", 1)
    if before_return:
        text = text.replace("    return model\n", f"{before_return.rstrip()}\n    return model\n", 1)
    return text


def decoder_option(option):
    def edit(text):
        assert text.count("attn_flash=True,") == 1, "train.py no longer passes attn_flash=True once: update this edit"
        return text.replace("attn_flash=True,", option, 1)

    return edit


def crash_of(tmp_path, corpus, text):
    (tmp_path / "train.py").write_text(text)
    code, log = run_train(tmp_path / "train.py", base_env(tmp_path, AR_DATA=corpus, AR_STEPS=1, AR_EVAL_BYTES=1025))
    assert_crashed(code, log)
    return crash_reason(log)


MIXER = """
class Mixer(nn.Module):  # new forward code, handed to x-transformers as a hybrid module
    def __init__(self, dim):
        super().__init__()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, *args, **kwargs):
        return self.proj(x)
"""


def test_a_module_class_of_train_py_handed_to_an_option_is_out_of_scope_not_unbuilt(tmp_path, corpus):
    option = decoder_option("attn_flash=True,\n            attn_hybrid_module=Mixer(DIM),")
    reason = crash_of(tmp_path, corpus, edited_train(option, before_build=MIXER))
    assert reason.startswith("build_model(): Decoder(attn_hybrid_module=...) is a Mixer, a class defined in train")
    assert "x-transformers options only: pass torch.nn modules or use an option" in reason
    assert "not built in build_model()" not in reason


def test_nan_weights_are_named_as_non_finite_not_as_a_leak(tmp_path, corpus):
    poison = "    with torch.no_grad():\n        model.net.to_logits.weight[0, 0] = float('nan')"
    reason = crash_of(tmp_path, corpus, edited_train(before_return=poison))
    assert reason.startswith("the trained model has non-finite weights (net.to_logits.weight: 1 of ")
    assert "lower the learning rate" in reason and "causal" not in reason


def test_gumbel_softmax_attention_is_not_deterministic_in_eval_mode_not_a_leak(tmp_path, corpus):
    # one 64-wide head in one layer, not zero-initialised: the sampled attention moves the logits from the start
    text = edited_train(decoder_option("attn_gumbel_softmax=True,"), DIM=64, DEPTH=1, HEADS=1)
    reason = crash_of(tmp_path, corpus, text.replace("zero_init_branch_output=True", "zero_init_branch_output=False"))
    assert reason.startswith("the model is not deterministic in eval mode: the same input gives other predictions")
    assert "Gumbel softmax" in reason and "causal" not in reason


def in_build_model(code):
    def edit(text):
        assert text.count("    return AutoregressiveWrapper(net)\n") == 1, "build_model() changed: update this edit"
        return text.replace(
            "    return AutoregressiveWrapper(net)\n", f"    {code}\n    return AutoregressiveWrapper(net)\n"
        )

    return edit


def test_weight_norm_in_build_model_is_named_with_the_call_that_removes_it(tmp_path, corpus):
    text = edited_train(in_build_model("torch.nn.utils.parametrizations.weight_norm(net.to_logits)"))
    reason = crash_of(tmp_path, corpus, text)
    assert reason.startswith("the trained model's state differs from a fresh build_model()")
    assert "a parametrization (torch.nn.utils.parametrizations.weight_norm, " in reason
    assert "still on net.to_logits: call torch.nn.utils.parametrize.remove_parametrizations(module, 'weight')" in reason


def test_pruning_without_prune_remove_is_named_with_the_call_that_makes_it_permanent(tmp_path, corpus):
    text = edited_train(before_return="    torch.nn.utils.prune.l1_unstructured(model.net.to_logits, 'weight', 0.5)")
    reason = crash_of(
        tmp_path, corpus, text.replace("import torch\n", "import torch\nimport torch.nn.utils.prune\n", 1)
    )
    assert reason.startswith("the trained model's state differs from a fresh build_model()")
    assert (
        "pruning (torch.nn.utils.prune) is still on net.to_logits: call torch.nn.utils.prune.remove(module, " in reason
    )

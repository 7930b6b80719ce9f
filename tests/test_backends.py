"""Every backend, one by one, on tiny random GPT-2 and Llama models: effect, invariants, bad input, cleanup."""

from __future__ import annotations

import pytest
import torch
from helpers import IDS, MASK, logits_with, vec
from model_state import assert_unchanged, snapshot

from steering_backends import SteeringSpec, backend
from steering_backends.models import random_model


@pytest.mark.parametrize("site", ["resid_pre", "attn_out", "mlp_out", "resid_post"])
def test_steering_changes_logits_and_unsteered_output_comes_back(runner, site):
    before = runner.logits(IDS, MASK)
    steered = logits_with(runner, [SteeringSpec(1, site, vec(), 4.0)])
    assert (steered - before).abs().max() > 0.1
    assert torch.equal(runner.logits(IDS, MASK), before)


def test_coeff_zero_and_zero_vector_are_exact_no_ops(runner):
    before = runner.logits(IDS, MASK)
    assert torch.equal(logits_with(runner, [SteeringSpec(2, "resid_pre", vec(), 0.0)]), before)
    assert torch.equal(logits_with(runner, [SteeringSpec(2, "mlp_out", torch.zeros(64), 7.0)]), before)


def test_coeff_two_equals_twice_the_vector(runner):
    v = vec()
    assert torch.equal(
        logits_with(runner, [SteeringSpec(1, "attn_out", v, 2.0)]),
        logits_with(runner, [SteeringSpec(1, "attn_out", 2 * v, 1.0)]),
    )


BAD_SPECS = {
    "layer out of range": (SteeringSpec(4, "resid_pre", torch.ones(64)), "layer=4"),
    "negative layer out of range": (SteeringSpec(-5, "resid_pre", torch.ones(64)), "layer=-5"),
    "wrong width": (SteeringSpec(0, "resid_pre", torch.ones(65)), "width 65"),
}


@pytest.mark.parametrize("case", list(BAD_SPECS))
def test_bad_spec_raises_before_the_model_is_touched(runner, case):
    bad, words = BAD_SPECS[case]
    before = snapshot(runner.model)
    with pytest.raises(ValueError, match=words):
        with runner.steer(runner.model, [SteeringSpec(0, "resid_pre", torch.ones(64)), bad]):
            pytest.fail("the body must not run")
    assert_unchanged(before, runner.model)


def test_model_is_restored_when_the_body_raises(runner):
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)
    with (
        pytest.raises(KeyboardInterrupt),
        runner.steer(
            runner.model, [SteeringSpec(1, "resid_post", vec(), 3.0), SteeringSpec(0, "attn_out", vec(1), 3.0)]
        ),
    ):
        runner.logits(IDS, MASK)
        raise KeyboardInterrupt
    assert_unchanged(before, runner.model)
    assert torch.equal(runner.logits(IDS, MASK), unsteered)


def test_rows_longer_than_the_prompt_raise_and_leave_the_model_as_it_was(runner):
    if runner.name == "bias_editing":
        pytest.skip("bias editing refuses [n, d_model] vectors before the forward (tested below)")
    before = snapshot(runner.model)
    with pytest.raises(ValueError, match="at least 9 tokens"):
        with runner.steer(runner.model, [SteeringSpec(1, "resid_pre", torch.ones(8, 64), start=1)]):
            runner.logits(IDS, MASK)  # 7 tokens
    assert_unchanged(before, runner.model)


@pytest.mark.parametrize(
    "spec", [SteeringSpec(1, "resid_pre", torch.ones(2, 64)), SteeringSpec(1, "resid_pre", torch.ones(64), start=1)]
)
def test_bias_editing_refuses_position_dependent_specs(tiny, spec):
    before = snapshot(tiny)
    with pytest.raises(ValueError, match="position-dependent.*use a hook backend"):
        with backend("bias_editing").steer(tiny, [spec]):
            pass
    assert_unchanged(before, tiny)


@pytest.mark.parametrize("name", ["custom_wrapper", "pytorch_hooks", "bias_editing", "nnsight_trace"])
def test_unsupported_architecture_lists_the_supported_ones(name):
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    if name == "nnsight_trace":
        from nnsight import NNsight

        model = NNsight(model)
    with pytest.raises(
        ValueError, match="not supported; supported model types: gemma, gemma2, .*, gpt2, .*, qwen3_moe$"
    ):
        with backend(name).steer(model, []):
            pass


def test_bias_editing_refuses_resid_pre_of_block_0_without_a_position_table():
    llama = random_model("tiny-llama-random")  # rotary positions: nothing to fold resid_pre L0 into
    before = snapshot(llama)
    with (
        pytest.raises(ValueError, match="'llama', layer=0, site='resid_pre': needs a learned position table"),
        backend("bias_editing").steer(llama, [SteeringSpec(1, "attn_out", vec()), SteeringSpec(0, "resid_pre", vec())]),
    ):
        pass
    assert_unchanged(before, llama)


def test_bias_editing_adds_a_missing_bias_for_the_block_only():
    llama = random_model("tiny-llama-random")
    o_proj = llama.model.layers[2].self_attn.o_proj
    assert o_proj.bias is None  # Llama's output projections have no bias
    before, v = snapshot(llama), vec()
    with backend("bias_editing").steer(llama, [SteeringSpec(2, "attn_out", v, 3.0)]):
        assert torch.equal(o_proj.bias, 3.0 * v)
        assert "model.layers.2.self_attn.o_proj.bias" in llama.state_dict()
    assert o_proj.bias is None
    assert_unchanged(before, llama)


def test_nnsight_takes_an_nnsight_model_and_wraps_copies(tiny, tokenizer):
    nnsight_trace = backend("nnsight_trace")
    before = snapshot(tiny)
    with pytest.raises(
        TypeError, match="takes an nnsight model, got (GPT2LMHeadModel|LlamaForCausalLM); wrap a HF model"
    ):
        with nnsight_trace.steer(tiny, [SteeringSpec(1, "resid_pre", vec())]):
            pytest.fail("the body must not run")
    lm = nnsight_trace.nnsight_from_hf(tiny, tokenizer)
    assert lm._module is not tiny and "forward" not in tiny.__dict__, "nnsight instrumented the original"
    assert (tokenizer.pad_token, tokenizer.padding_side) == (None, "right"), "nnsight changed the caller's tokenizer"
    assert_unchanged(before, tiny)


def test_nnsight_steers_its_own_runs_only_and_keeps_other_edits(tiny, tokenizer):
    """Traces of the user's own see the steered stream; a plain HF call bypasses nnsight; an edit
    stored before the block is still there after it (clear_edits() would have dropped it)."""
    lm = backend("nnsight_trace").nnsight_from_hf(tiny, tokenizer)
    unsteered = tiny(IDS, attention_mask=MASK).logits
    with lm.edit(inplace=True):
        lm.lm_head.output = lm.lm_head.output * 1.0  # the user's own edit, a no-op
    users = list(lm._edits)
    specs = [SteeringSpec(1, "resid_post", vec(), 3.0)]
    with backend("pytorch_hooks").steer(tiny, specs):
        reference = tiny(IDS, attention_mask=MASK).logits
    with backend("nnsight_trace").steer(lm, specs):
        assert torch.equal(lm._module(IDS, attention_mask=MASK).logits, unsteered)
        with lm.trace(IDS, attention_mask=MASK):
            logits = lm.output.logits.save()
    assert torch.equal(logits, reference) and not torch.equal(logits, unsteered)
    assert len(lm._edits) == 1 and lm._edits[0] is users[0]

"""Cleanup under failure, nesting, re-use and odd-but-allowed input, for every backend.

After any ``steer`` block the model must have the same modules, a bitwise-equal
state_dict with no extra entries, and no hooks added (tests/model_state.py), and give
its unsteered logits again. For TransformerLens all of this is checked on the bridge.

Runs on the tiny GPT-2 and Llama. Cleanup under failure and nesting, where what a backend
intercepts depends on the architecture, also run on one tiny model per rule the other
architectures add (layout.py): Gemma 2's post-norm sublayers and scaled embeddings, Pythia's
parallel residual, Granite's residual multiplier and Mixtral's sparse MLP. The types left out
share a rule with one of these (Gemma, Gemma 3 and OLMo 2 with Gemma 2; Qwen3 and Phi-3 with
Llama; Qwen3-MoE with Mixtral) and run the parity suite.
"""

from __future__ import annotations

import pytest
import torch
from helpers import IDS, MASK, TINY_MODELS, logits_with, vec
from model_state import assert_unchanged, snapshot

from steering_backends import SteeringSpec
from steering_backends.layout import get_module, layout_of
from steering_backends.parity import RELATIVE_TOLERANCES, Runner, supports, tolerance
from steering_backends.spec import SteeringPlan

RULES = ["tiny-gemma2-random", "tiny-pythia-random", "tiny-granite-random", "tiny-mixtral-random"]
every_rule = pytest.mark.parametrize("tiny", TINY_MODELS + RULES, indirect=True)  # conftest.py builds each


def block(runner: Runner, layer: int) -> torch.nn.Module:
    """The module of one block, in a HF model or a bridge."""
    model = runner.model
    if runner.is_bridge:
        return model.blocks[layer]
    return get_module(model, layout_of(model).blocks)[layer]


def skip_unless_supported(runner: Runner, specs) -> None:
    """Bias editing refuses post-norm and sparse-MLP sites (tests/test_architectures.py checks each refusal)."""
    if not supports(runner, specs):
        pytest.skip(f"{runner.name} refuses these sites on {runner.model.config.model_type} by design")


def assert_back_to_unsteered(runner: Runner, before: dict, unsteered: torch.Tensor) -> None:
    assert_unchanged(before, runner.model)
    assert torch.equal(runner.logits(IDS, MASK), unsteered)


SPECS = [SteeringSpec(1, "resid_post", vec(1), 3.0), SteeringSpec(3, "attn_out", vec(2), 3.0)]


@every_rule
def test_restored_when_a_hook_raises_mid_forward(runner):
    """A hook (not ours) fails between two steered blocks: steering at block 1 has run."""
    skip_unless_supported(runner, SPECS)
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)

    def fail(module, args, output):
        raise RuntimeError("a hook failed mid-forward")

    with pytest.raises(RuntimeError, match="mid-forward"):
        with runner.steer(runner.model, SPECS):
            handle = block(runner, 2).register_forward_hook(fail)
            try:
                runner.logits(IDS, MASK)
            finally:
                handle.remove()  # the test's own hook; ours must be gone on their own
    assert_back_to_unsteered(runner, before, unsteered)


@every_rule
def test_restored_when_steering_itself_raises_mid_forward(runner, monkeypatch):
    """Our own addition fails at the second steered site of the forward pass."""
    if runner.name == "bias_editing":
        pytest.skip("bias editing runs no code during the forward pass")
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)
    honest, calls = SteeringPlan.steer, []

    def steer_then_fail(self, layer, site, hidden):
        calls.append((layer, site))
        if len(calls) == 2:
            raise RuntimeError("steering failed at the second site")
        return honest(self, layer, site, hidden)

    monkeypatch.setattr(SteeringPlan, "steer", steer_then_fail)
    with pytest.raises(RuntimeError, match="second site"), runner.steer(runner.model, SPECS):
        runner.logits(IDS, MASK)
    assert calls == [(1, "resid_post"), (3, "attn_out")]
    monkeypatch.undo()
    assert_back_to_unsteered(runner, before, unsteered)


@pytest.mark.parametrize("bad_at", [1, 2])
def test_an_invalid_later_spec_is_caught_before_anything_is_touched(runner, bad_at):
    specs = [*SPECS, SteeringSpec(0, "mlp_out", vec())]
    specs[bad_at] = SteeringSpec(0, "mlp_out", torch.ones(65))
    before = snapshot(runner.model)
    with pytest.raises(ValueError, match=rf"specs\[{bad_at}\]\.vector has width 65"):
        with runner.steer(runner.model, specs):
            pytest.fail("the body must not run")
    assert_unchanged(before, runner.model)


@every_rule
def test_nested_blocks_compose_and_unwind_in_order(runner):
    outer = [SteeringSpec(1, "resid_post", vec(1), 2.0)]
    inner = [SteeringSpec(1, "resid_post", vec(2), -1.5), SteeringSpec(2, "attn_out", vec(3), 2.0)]
    skip_unless_supported(runner, outer + inner)
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)
    outer_only, together = logits_with(runner, outer), logits_with(runner, outer + inner)

    with runner.steer(runner.model, outer):
        with runner.steer(runner.model, inner):
            nested = runner.logits(IDS, MASK)
        after_inner = runner.logits(IDS, MASK)
    # Hooks run in registration order, so nesting adds in the order of `outer + inner`:
    # bitwise for hook backends. Bias editing sums into the bias in another order.
    assert (nested - together).abs().max() <= tolerance(RELATIVE_TOLERANCES[runner.name], together)
    assert (nested - unsteered).abs().max() > 0.1
    assert torch.equal(after_inner, outer_only)
    assert_back_to_unsteered(runner, before, unsteered)


def test_the_same_model_steers_again_right_after(runner):
    other = [SteeringSpec(2, "mlp_out", vec(4), 3.0)]
    skip_unless_supported(runner, SPECS + other)
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)
    first = logits_with(runner, SPECS)
    assert torch.equal(logits_with(runner, SPECS), first)
    other_first = logits_with(runner, other)
    assert not torch.equal(other_first, first)
    assert torch.equal(logits_with(runner, SPECS), first)
    assert torch.equal(logits_with(runner, other), other_first)
    assert_back_to_unsteered(runner, before, unsteered)


def test_an_empty_spec_list_is_an_exact_no_op(runner):
    before, unsteered = snapshot(runner.model), runner.logits(IDS, MASK)
    assert torch.equal(logits_with(runner, []), unsteered)
    assert_back_to_unsteered(runner, before, unsteered)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_a_vector_in_another_dtype_is_cast_not_refused(runner, dtype):
    """The addition is scaled in the wider dtype, then cast to the activation's, so a
    low-precision vector steers exactly like its float32 values."""
    v = vec().to(dtype)
    skip_unless_supported(runner, [SteeringSpec(1, "resid_pre", v, 3.0)])
    steered = logits_with(runner, [SteeringSpec(1, "resid_pre", v, 3.0)])
    as_float32 = logits_with(runner, [SteeringSpec(1, "resid_pre", v.float(), 3.0)])
    if dtype == torch.float64:  # 3 * v rounded once from float64 vs computed in float32: 1 ulp apart at most
        assert (steered - as_float32).abs().max() <= 1e-5
    else:
        assert torch.equal(steered, as_float32)

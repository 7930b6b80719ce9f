"""Peers as oracles: steering-vectors 0.12.2 and repeng 0.4.0 against every backend of ours.

Both libraries pin transformers < 5 (steering-vectors in its metadata; repeng needs numpy < 2),
so these tests run in the transformers 4 leg (.ci/transformers4) and skip elsewhere.

What each peer does, read from its source (steering_vector.py; control.py):

* steering-vectors: ``SteeringVector({L: v}, layer_type="decoder_block").apply(model, multiplier=c)``
  registers a forward hook on decoder block L (``transformer.h.L`` / ``model.layers.L``) that adds
  ``(c * v) * mask`` in place to the block's output (the first element of a tuple). That is
  ``SteeringSpec(L, "resid_post", v, c)``. ``layer_type="self_attn"`` / ``"mlp"`` hook the
  attention / MLP module the same way: our ``attn_out`` / ``mlp_out``. No normalisation. The mask
  is ``token_indices`` (default ``slice(min_token_index, None)``, min_token_index=0) indexed into
  the sequence *of each forward call*: padding is steered too (harmless: attention never reads a
  padding position, so real tokens see no difference), and during cached generation a decoding
  step has one position, index 0, so ``min_token_index=k > 0`` leaves every generated token
  unsteered (steering-vectors issue #60, confirmed by its maintainer). Our ``start=k`` counts
  from each row's first real token and keeps counting across the cache. What steering-vectors
  computes there is our 2-D spec that repeats v over the prompt's positions ≥ k only.
* repeng: ``ControlModel(model, [L])`` replaces block L by a wrapper (it mutates the model until
  ``unwrap()``); ``set_control(ControlVector(model_type, {L: v}), coeff=c)`` makes it add
  ``c * v`` (computed in numpy float32, cast to the model's dtype) to the block's output: again
  ``SteeringSpec(L, "resid_post", v, c)``. It skips left padding only when the block is called
  with a ``position_ids`` keyword (Llama's are; GPT-2's are not, so there padding is steered,
  harmlessly); every position of a decoding step is steered. ``normalize=True`` (off by default)
  rescales each token to its unsteered norm: not a SteeringSpec, not compared.

Compared: logits on a left-padded batch (real tokens only) and greedy decoding with the KV cache
(tokens, and the logits of each step), on the tiny random GPT-2 and on SmolLM2-135M, against
every backend of ours that runs here. Measured (float32, CPU, transformers 4.57.6): each peer is
bitwise equal to ``pytorch_hooks`` on both models, logits and step logits alike (max |Δ| 0) — the
same additions on the same tensors. So each backend may differ from a peer by exactly what the
parity suite allows it against ``pytorch_hooks`` (RELATIVE_TOLERANCES: 0 for the hook backends,
1e-4 relative for bias editing), plus, for cached steps, RELATIVE_ROUNDING.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from helpers import TRANSFORMERS_4, write_result

from steering_backends import SteeringSpec
from steering_backends.layout import dims
from steering_backends.models import load
from steering_backends.parity import (
    RELATIVE_ROUNDING,
    RELATIVE_TOLERANCES,
    Runner,
    hf_positions,
    left_pad,
    make_runners,
    max_abs_diff,
    residual_rms,
    supports,
    tolerance,
)

if not TRANSFORMERS_4:
    pytest.skip(
        f"steering-vectors 0.12.2 and repeng 0.4.0 need transformers < 5 (this environment has "
        f"{transformers.__version__}); they run in the transformers 4 leg, .ci/transformers4",
        allow_module_level=True,
    )
steering_vectors = pytest.importorskip("steering_vectors", reason="steering-vectors is not installed")
repeng = pytest.importorskip("repeng", reason="repeng is not installed")

MODELS = ["tiny-gpt2-random", "smollm2-135m"]
PROMPTS = ["I hate you because you are so", "Love is the answer, and", "The weather today"]
N_NEW = 8
# steering-vectors' layer_type for each of our sites it has.
SV_LAYER_TYPES = {"resid_post": "decoder_block", "attn_out": "self_attn", "mlp_out": "mlp"}
MEASURED: dict[str, list[str]] = {}  # model -> table rows, written to results/peers_<model>.md


@pytest.fixture(scope="module", params=MODELS)
def setup(request):
    """(name, model, tokenizer, left-padded ids, mask, spec layer, vector, coeff, runners)."""
    name = request.param
    model, tokenizer = load(name)
    ids, mask = left_pad(tokenizer, PROMPTS)
    n_layers, d_model = dims(model)
    # A vector as large as the residual stream once multiplied by the coefficient, as in the parity suite.
    scale = residual_rms(model, ids, mask) / 4
    v = scale * torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    runners, skipped = make_runners(model, tokenizer)
    assert "pytorch_hooks" in [r.name for r in runners]
    MEASURED[name] = [f"- skipped here: {b}: {why}" for b, why in skipped.items()]
    yield name, model, tokenizer, ids, mask, n_layers // 2, v, 4.0, runners
    write_result(f"peers_{name}.md", f"# Peers on {name}\n\n" + "\n".join(MEASURED[name]))


def hf_logits(model, ids, mask) -> torch.Tensor:
    """What Runner.logits does for a HF model: padding-aware position ids, float32 logits [B, T, V]."""
    return model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits.float()


def hf_generate(model, ids, mask, n_new=N_NEW) -> tuple[torch.Tensor, torch.Tensor]:
    """What Runner.generate does for a HF model: greedy with the KV cache (ids, step logits)."""
    out = model.generate(
        ids,
        attention_mask=mask,
        max_new_tokens=n_new,
        do_sample=False,
        eos_token_id=None,
        return_dict_in_generate=True,
        output_logits=True,
    )
    return out.sequences, torch.stack(out.logits, 1).float()


class SteeringVectorsPeer:
    name = "steering-vectors"

    def __init__(self, layer, site, v, coeff, min_token_index=0):
        self.vector = steering_vectors.SteeringVector({layer: v}, layer_type=SV_LAYER_TYPES[site])
        self.coeff, self.min_token_index = coeff, min_token_index

    def run(self, model, fn):
        with self.vector.apply(model, multiplier=self.coeff, min_token_index=self.min_token_index):
            return fn(model)


class RepengPeer:
    name = "repeng"

    def __init__(self, layer, site, v, coeff):
        assert site == "resid_post"  # repeng steers block outputs only
        self.layer, self.vector, self.coeff = layer, v, coeff

    def run(self, model, fn):
        control = repeng.ControlModel(model, [self.layer])  # mutates model until unwrap()
        try:
            vector = repeng.ControlVector(model.config.model_type, {self.layer: self.vector.numpy()})
            control.set_control(vector, coeff=self.coeff)
            return fn(control)
        finally:
            control.unwrap()


def peers(layer, site, v, coeff):
    yield SteeringVectorsPeer(layer, site, v, coeff)
    if site == "resid_post":
        yield RepengPeer(layer, site, v, coeff)


def ours(runner: Runner, specs, fn):
    with runner.steer(runner.model, specs):
        return fn(runner)


def generate_with(peer, model, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A peer's cached greedy decoding of one unpadded row [1, T]."""
    return peer.run(model, lambda m: hf_generate(m, ids, torch.ones_like(ids)))


def generate_ours(runner: Runner, specs, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with runner.steer(runner.model, specs):
        return runner.generate(ids, mask, N_NEW)


def test_gpt2_blocks_return_tuples_here():
    """The transformers 4 leg exists to test the tuple path: check that it is the one taken here."""
    model, _ = load("tiny-gpt2-random")
    seen = []
    handle = model.transformer.h[0].register_forward_hook(lambda m, i, o: seen.append(type(o)))
    try:
        model(torch.tensor([[40, 5465]]))
    finally:
        handle.remove()
    assert seen == [tuple], f"transformers {transformers.__version__}: GPT-2 block output is {seen}"


@pytest.mark.parametrize("site", ["resid_post", "attn_out", "mlp_out"])
def test_padded_batch_logits_agree_with_every_backend(setup, site):
    name, model, _, ids, mask, layer, v, coeff, runners = setup
    specs = [SteeringSpec(layer, site, v, coeff)]
    unsteered = hf_logits(model, ids, mask)
    for peer in peers(layer, site, v, coeff):
        theirs = peer.run(model, lambda m: hf_logits(m, ids, mask))
        effect = max_abs_diff(theirs, unsteered, mask)
        assert effect > 0.1, f"{peer.name}: steering must change the logits ({effect:.2e}), or this proves nothing"
        diffs = {}
        for runner in runners:
            if not supports(runner, specs):
                continue
            diffs[runner.name] = diff = max_abs_diff(ours(runner, specs, lambda r: r.logits(ids, mask)), theirs, mask)
            allowed = tolerance(RELATIVE_TOLERANCES[runner.name], theirs, mask)
            assert diff <= allowed, f"{peer.name} vs {runner.name}, {site}: {diff:.2e} (allowed {allowed:.1e})"
        assert {"custom_wrapper", "pytorch_hooks", "baukit_tracedict", "nnsight_trace"} <= diffs.keys()
        scale = tolerance(1.0, theirs, mask)
        MEASURED[name].append(
            f"- logits, {peer.name} {site} L{layer}: effect {effect:.2g}, logit scale {scale:.3g}; max |Δ| "
            + ", ".join(f"{b} {d:.2g} ({d / scale:.1g} rel.)" for b, d in diffs.items())
        )


def test_cached_greedy_decoding_agrees_with_every_backend(setup):
    name, model, _, ids, mask, layer, v, coeff, runners = setup
    specs = [SteeringSpec(layer, "resid_post", v, coeff)]
    plain, _ = hf_generate(model, ids, mask)
    for peer in peers(layer, "resid_post", v, coeff):
        tokens, steps = peer.run(model, lambda m: hf_generate(m, ids, mask))  # noqa: B023 (called at once)
        assert not torch.equal(tokens, plain), f"{peer.name}: steering must change the greedy tokens"
        gaps = {}
        for runner in runners:
            # nnsight on transformers 4 decodes a left-padded batch with frozen positions, unsteered
            # too (test_parity.py, test_nnsight_generate_on_transformers_4_freezes_padded_positions):
            # it is compared on each prompt alone, unpadded.
            if runner.is_nnsight:
                rows = [ids[i : i + 1, mask[i].bool()] for i in range(len(ids))]
                pairs = [(row, torch.ones_like(row), *generate_with(peer, model, row)) for row in rows]
            else:
                pairs = [(ids, mask, tokens, steps)]
            gap = 0.0
            for row_ids, row_mask, want_tokens, want_steps in pairs:
                our_tokens, our_steps = generate_ours(runner, specs, row_ids, row_mask)
                assert torch.equal(our_tokens, want_tokens), f"{peer.name} vs {runner.name}: greedy tokens differ"
                row_gap = (our_steps - want_steps).abs().max().item()
                allowed = tolerance(RELATIVE_TOLERANCES[runner.name] + RELATIVE_ROUNDING, want_steps)
                assert row_gap <= allowed, f"{peer.name} vs {runner.name}: {row_gap:.2e} (allowed {allowed:.1e})"
                gap = max(gap, row_gap)
            gaps[runner.name + (" (rows alone)" if runner.is_nnsight else "")] = gap
        scale = tolerance(1.0, steps)
        MEASURED[name].append(
            f"- cached greedy ({N_NEW} tokens), {peer.name}: same tokens; step logit scale {scale:.3g}; max |Δ| "
            + ", ".join(f"{b} {d:.2g}" for b, d in gaps.items())
        )


def test_steering_vectors_min_token_index_does_not_steer_generated_tokens(setup):
    """steering-vectors issue #60: its token index restarts at 0 in every decoding step, so with
    min_token_index=k > 0 only the prompt is steered. Our start=k steers the generated tokens
    too; the 2-D spec that repeats v over the prompt's positions k..T-1 is what it computes."""
    name, model, _, ids, mask, layer, v, coeff, runners = setup
    prompt_ids = ids[:1, mask[0].bool()]  # one unpadded row: its index and our position agree
    prompt_mask, k = torch.ones_like(prompt_ids), 2
    n_prompt = prompt_ids.shape[1]
    peer = SteeringVectorsPeer(layer, "resid_post", v, coeff, min_token_index=k)
    tokens, steps = peer.run(model, lambda m: hf_generate(m, prompt_ids, prompt_mask))
    start_k = [SteeringSpec(layer, "resid_post", v, coeff, start=k)]
    prompt_only = [SteeringSpec(layer, "resid_post", v.expand(n_prompt - k, -1), coeff, start=k)]
    reference = next(r for r in runners if r.name == "pytorch_hooks")
    _, steps_start_k = ours(reference, start_k, lambda r: r.generate(prompt_ids, prompt_mask, N_NEW))
    tokens_prompt_only, steps_prompt_only = ours(
        reference, prompt_only, lambda r: r.generate(prompt_ids, prompt_mask, N_NEW)
    )
    # The first new token comes from the prompt's forward pass, where all three agree.
    assert torch.equal(steps[:, 0], steps_start_k[:, 0])
    # Then steering-vectors stops steering: it matches the prompt-only spec, bitwise, and not start=k.
    assert torch.equal(tokens, tokens_prompt_only) and torch.equal(steps, steps_prompt_only)
    gap = (steps[:, 1:] - steps_start_k[:, 1:]).abs().max().item()
    loosest = tolerance(max(RELATIVE_TOLERANCES.values()) + RELATIVE_ROUNDING, steps_start_k)
    assert gap > loosest, f"steering-vectors now steers generated tokens too ({gap:.2e}): update the README"
    MEASURED[name].append(
        f"- min_token_index={k} vs start={k}, cached greedy: steps 2..{N_NEW} differ by up to {gap:.2g} "
        f"(step logit scale {tolerance(1.0, steps_start_k):.3g}); equal to the prompt-only 2-D spec"
    )


# steering-vectors' operators (steering_operators.py): with multiplier c its hook receives t = c * v
# and adds a delta. ablation_operator: -(h . n) n with n = t / |t| (so the multiplier is ignored and
# its sign cancels); ablation_then_addition_operator: that plus t. In our terms, at the same site:
# [SteeringSpec(L, site, v, 1.0, op="ablate")] and that followed by SteeringSpec(L, site, v, c).
# Their h + delta and our (h - (h . u) u) + c v round differently: measured (float32, CPU,
# transformers 4.57.6) max |Δlogit| over real tokens of 3e-7 of the logit scale on the tiny GPT-2
# and 1e-6 on SmolLM2, for every hook backend; RELATIVE_ROUNDING (1e-4) leaves about 75x headroom.
SV_OPERATORS = {
    "ablation_operator": lambda L, v, c: [SteeringSpec(L, "resid_post", v, 1.0, op="ablate")],
    "ablation_then_addition_operator": lambda L, v, c: [
        SteeringSpec(L, "resid_post", v, 1.0, op="ablate"),
        SteeringSpec(L, "resid_post", v, c),
    ],
}


@pytest.mark.parametrize("operator", sorted(SV_OPERATORS))
def test_steering_vectors_operators_equal_our_ablate_then_add(setup, operator):
    """steering-vectors' ablation operators, on a left-padded batch at a block's output, against
    every backend of ours that runs these specs (real tokens: steering-vectors steers padding too)."""
    name, model, _, ids, mask, layer, v, coeff, runners = setup
    vector = steering_vectors.SteeringVector({layer: v}, layer_type="decoder_block")
    make = getattr(steering_vectors, operator)
    with vector.apply(model, multiplier=coeff, operator=make()):
        theirs = hf_logits(model, ids, mask)
    specs = SV_OPERATORS[operator](layer, v, coeff)
    effect = max_abs_diff(theirs, hf_logits(model, ids, mask), mask)
    assert effect > 0.1, f"{operator}: steering must change the logits ({effect:.2e}), or this proves nothing"
    diffs = {}
    for runner in runners:
        if supports(runner, specs):
            diffs[runner.name] = max_abs_diff(ours(runner, specs, lambda r: r.logits(ids, mask)), theirs, mask)
    allowed = tolerance(RELATIVE_ROUNDING, theirs, mask)
    assert {"custom_wrapper", "pytorch_hooks", "baukit_tracedict", "nnsight_trace"} <= diffs.keys()
    assert all(diff <= allowed for diff in diffs.values()), f"{operator}: {diffs} (allowed {allowed:.1e})"
    scale = tolerance(1.0, theirs, mask)
    MEASURED[name].append(
        f"- logits, steering-vectors {operator} resid_post L{layer}: effect {effect:.2g}; max |Δ| "
        + ", ".join(f"{b} {d:.2g} ({d / scale:.1g} rel.)" for b, d in diffs.items())
    )

"""The architectures beyond GPT-2 and Llama: loading as a user does, the refusals, and the traps.

Parity of every backend on every type is tests/test_parity.py. Here: a model saved and loaded with
from_pretrained steers through pytorch_hooks as it is; backends that cannot express a site refuse
before touching anything and say why; and the traps each rule exists for, measured on the tiny models:
post-norms, parallel residual, scaled embeddings, Granite's multipliers, mixtures of experts.
"""

from __future__ import annotations

import pytest
import torch
from model_state import assert_unchanged, snapshot
from transformers import AutoModelForCausalLM

from steering_backends import SteeringSpec, backend
from steering_backends.layout import dims
from steering_backends.models import load
from steering_backends.parity import RELATIVE_TOLERANCES, make_runners, max_abs_diff, steered_logits, tolerance
from steering_backends.prompts import hf_positions, left_pad

PROMPTS = ["I hate you because you are so", "Love is the answer, and"]
USER_TYPES = ["tiny-gemma2-random", "tiny-qwen3-random", "tiny-pythia-random", "tiny-phi3-random", "tiny-olmo2-random"]


def inputs(tokenizer) -> dict:
    ids, mask = left_pad(tokenizer, PROMPTS)
    return dict(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))


def vector(d_model: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(d_model, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", USER_TYPES)
def test_a_model_loaded_with_from_pretrained_steers_through_pytorch_hooks_as_it_is(name, tmp_path):
    model, tokenizer = load(name)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    n_layers, d_model = dims(loaded)
    specs = [SteeringSpec(n_layers // 2, "attn_out", vector(d_model), 0.5)]
    hooks = backend("pytorch_hooks")
    with torch.no_grad():
        plain = loaded(**inputs(tokenizer)).logits
        with hooks.steer(loaded, specs):
            steered = loaded(**inputs(tokenizer)).logits
        with hooks.steer(model, specs):
            in_memory = model(**inputs(tokenizer)).logits
    assert (steered - plain).abs().max() > 0.01  # measured 0.1-0.6
    assert torch.equal(steered, in_memory)  # the saved weights, steered the same way


# Refused before anything is touched, naming the model type, the site and the reason

REFUSALS = {
    "bias, post-norm attn_out": (
        "tiny-gemma2-random",
        "bias_editing",
        SteeringSpec(1, "attn_out", torch.ones(64)),
        ["'gemma2'", "site='attn_out'", "post_attention_layernorm (Gemma2RMSNorm)", "not of a projection"],
    ),
    "bias, post-norm resid_post": (
        "tiny-olmo2-random",
        "bias_editing",
        SteeringSpec(2, "resid_post", torch.ones(64)),
        ["'olmo2'", "site='resid_post'", "post_feedforward_layernorm (Olmo2RMSNorm)"],
    ),
    "bias, MoE mlp_out": (
        "tiny-qwen3-moe-random",
        "bias_editing",
        SteeringSpec(1, "mlp_out", torch.ones(64)),
        ["'qwen3_moe'", "site='mlp_out'", "model.layers.1.mlp (Qwen3MoeSparseMoeBlock)"],
    ),
    "weights, MoE mlp_out": (
        "tiny-mixtral-random",
        "weight_orthogonalisation",
        SteeringSpec(1, "mlp_out", torch.ones(64), op="ablate"),
        ["'mixtral'", "site='mlp_out'", "(MixtralSparseMoeBlock)", "not of one weight"],
    ),
    "weights, post-norm attn_out": (
        "tiny-gemma3-random",
        "weight_orthogonalisation",
        SteeringSpec(0, "attn_out", torch.ones(64), op="ablate"),
        ["'gemma3_text'", "(Gemma3RMSNorm)"],
    ),
    "baukit, embeddings scaled inline": (
        "tiny-granite-random",
        "baukit_tracedict",
        SteeringSpec(0, "resid_pre", torch.ones(64)),
        ["'granite'", "scales the token embeddings inside the decoder's forward", "site='resid_pre'"],
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_backend_that_cannot_express_a_site_says_why_and_touches_nothing(case):
    name, backend_name, spec, phrases = REFUSALS[case]
    model, tokenizer = load(name)
    before = snapshot(model)
    with pytest.raises(ValueError) as refusal, backend(backend_name).steer(model, [spec]):
        pytest.fail("entered the block")
    message = str(refusal.value)
    assert all(phrase in message for phrase in phrases), message
    assert_unchanged(before, model)


# The traps, live


def stream_input(model, module_name: str, specs, tokenizer) -> torch.Tensor:
    """The input of one module under pytorch_hooks steering, [B, T, D]."""
    seen = []
    module = model.get_submodule(module_name)
    with backend("pytorch_hooks").steer(model, specs), torch.no_grad():
        # Registered after the steering hooks, so it sees the steered values.
        handle = module.register_forward_pre_hook(lambda m, args, kwargs: seen.append(args[0]), with_kwargs=True)
        try:
            model(**inputs(tokenizer))
        finally:
            handle.remove()
    return seen[0]


def test_parallel_residual_steering_attn_out_never_reaches_the_same_blocks_mlp():
    """Pythia: x + attn(ln1(x)) + mlp(ln2(x)). Llama: the MLP reads x + attn(...), steered."""
    for name, mlp_norm, parallel in (
        ("tiny-pythia-random", "gpt_neox.layers.1.post_attention_layernorm", True),
        ("tiny-llama-random", "model.layers.1.post_attention_layernorm", False),
    ):
        model, tokenizer = load(name)
        specs = [SteeringSpec(1, "attn_out", vector(64), 1.0)]
        plain, steered = (stream_input(model, mlp_norm, s, tokenizer) for s in ([], specs))
        moved = (steered - plain).abs().max().item()
        print(f"{name}: the MLP's input moved by {moved:.3g} under attn_out steering of its own block")
        assert (moved == 0) == parallel
        assert parallel or moved > 0.5  # the whole vector (max |v_i| ~ 3) where the MLP reads it


def test_post_norm_attn_out_is_the_norms_output_so_the_stream_moves_by_exactly_the_vector():
    """Gemma 2: x + post_attention_layernorm(attn(...)). Steering attn_out adds coeff * v to the stream;
    adding it to self_attn's output instead (the name a Llama habit reaches for) is rescaled by the norm."""
    model, tokenizer = load("tiny-gemma2-random")
    v = vector(64)
    resid_mid = "model.layers.1.pre_feedforward_layernorm"  # its input is x + attn_out
    plain = stream_input(model, resid_mid, [], tokenizer)
    steered = stream_input(model, resid_mid, [SteeringSpec(1, "attn_out", v, 1.0)], tokenizer)
    real = inputs(tokenizer)["attention_mask"].bool()  # padding is never steered
    assert torch.allclose((steered - plain)[real], v.expand(int(real.sum()), 64), atol=1e-5)  # rounding of x + a + v
    attn = model.get_submodule("model.layers.1.self_attn")
    handle = attn.register_forward_hook(lambda m, args, out: (out[0] + v, *out[1:]))
    try:
        wrong = stream_input(model, resid_mid, [], tokenizer)
    finally:
        handle.remove()
    gap = (wrong - plain - v)[real].abs().max().item()
    print(f"gemma2: adding v at self_attn's output misses coeff * v in the stream by up to {gap:.3g}")
    assert gap > 0.5


def test_gemma_block_0_reads_the_embeddings_times_sqrt_d_model():
    model, tokenizer = load("tiny-gemma-random")
    block_0_input = stream_input(model, "model.layers.0", [], tokenizer)
    ids = inputs(tokenizer)["input_ids"]
    table_rows = model.get_input_embeddings().weight[ids]
    assert torch.equal(block_0_input, table_rows * 64**0.5)  # resid_pre of block 0 is the scaled stream


def test_granite_sites_speak_of_the_stream_not_of_the_sublayers_output():
    """Granite adds residual_multiplier (0.22) x the sublayer's output: attn_out steering by v moves
    the stream by v, and every backend that steers the output divides by 0.22 first."""
    model, tokenizer = load("tiny-granite-random")
    v = vector(64)
    resid_mid = "model.layers.1.post_attention_layernorm"  # Llama-like: its input is x + attn_out
    plain = stream_input(model, resid_mid, [], tokenizer)
    steered = stream_input(model, resid_mid, [SteeringSpec(1, "attn_out", v, 1.0)], tokenizer)
    real = inputs(tokenizer)["attention_mask"].bool()  # padding is never steered
    assert torch.allclose((steered - plain)[real], v.expand(int(real.sum()), 64), atol=1e-5)


@pytest.mark.parametrize("site", ["attn_out", "mlp_out"])
def test_granite_caps_at_sublayer_outputs_agree_with_transformer_lens_which_hooks_after_the_multiplier(site):
    """The cap's bound is in stream units; the hook backends cap the module's output at bound / 0.22,
    while TransformerLens's hook_attn_out / hook_mlp_out are after the multiplier (a check from the
    other side). A backend that forgot the multiplier would cap at the bound itself: that must show."""
    model, tokenizer = load("tiny-granite-random")
    ids, mask = left_pad(tokenizer, PROMPTS)
    module = model.get_submodule(f"model.layers.2.{'self_attn' if site == 'attn_out' else 'mlp'}")
    seen = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out[0] if isinstance(out, tuple) else out))
    with torch.no_grad():
        model(**inputs(tokenizer))
    handle.remove()
    written = 0.22 * seen[0][mask.bool()]  # [n_real, D]: what the sublayer adds to the stream
    direction = written.mean(0)  # the sublayer writes along it at most tokens
    bound = -(written @ direction / direction.norm()).median().item()  # bites at most tokens, and hard

    runners, _ = make_runners(model, tokenizer, names=["pytorch_hooks", "transformer_lens_hooks"])
    hooks, lens = (
        steered_logits(runner, [SteeringSpec(2, site, direction, bound, op="cap")], ids, mask) for runner in runners
    )
    allowed = tolerance(RELATIVE_TOLERANCES["transformer_lens_hooks"], hooks, mask)
    effect = max_abs_diff(hooks, runners[0].logits(ids, mask), mask)
    forgot = steered_logits(runners[0], [SteeringSpec(2, site, direction, 0.22 * bound, op="cap")], ids, mask)
    print(
        f"granite {site}: cap effect {effect:.2g}, hooks vs lens {max_abs_diff(hooks, lens, mask):.2g}, "
        f"forgetting the multiplier {max_abs_diff(forgot, lens, mask):.2g}, allowed {allowed:.2g}"
    )
    # Measured (allowed 7.3e-5): effect 1.5e-2 / 2.1e-3, hooks vs lens 1.2e-7, forgetting 6.0e-3 / 5.6e-4.
    assert effect > 10 * allowed
    assert max_abs_diff(hooks, lens, mask) <= allowed
    assert max_abs_diff(forgot, lens, mask) > 3 * allowed

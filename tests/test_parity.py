"""Parity of every backend: logits, greedy tokens, padded batches, on every offline model type.

- tiny-{gpt2,llama,mistral,qwen2}-random and one tiny model per architecture rule: seeded random weights.
- smollm2-135m: SmolLM2-135M-Instruct, real trained weights (Llama architecture), offline.
- gpt2-xl-random: the full GPT-2-XL shape, 48 blocks, d_model 1600, 25 heads, 1.56 B
  parameters (~30 s to build, ~6.7 GB in float32). To fit one copy in memory, the
  TransformerLens bridge takes over the model once the other backends are done with it.
- gpt2-xl: the real weights, when they are in the local HF cache; no hub is used, so
  without them (as in CI) these tests skip and say why.

Tolerances are relative to the scale of the logits compared (max |logit| of the
reference); they and the measurements behind them are in steering_backends.parity.
"""

from __future__ import annotations

import pytest
import torch
from helpers import TRANSFORMERS_4, write_result
from parity_suite import N_NEW, PROMPTS, generation_specs, greedy_no_cache, report, run_suite

import steering_backends.spec as spec_module
from steering_backends import backend
from steering_backends.layout import dims
from steering_backends.models import load
from steering_backends.parity import (
    RELATIVE_ROUNDING,
    RELATIVE_TOLERANCES,
    Runner,
    left_pad,
    operator_cases,
    residual_rms,
    stream_directions,
    tolerance,
)

N_PARAMS_GPT2_XL = 1_557_611_200  # published size of GPT-2-XL: 1.56 B
MODELS = [
    "tiny-gpt2-random",
    "tiny-llama-random",
    "tiny-mistral-random",
    "tiny-qwen2-random",
    "smollm2-135m",
    "gpt2-xl-random",
    "gpt2-xl",
]
# The architectures of layout.LAYOUTS with a rule of their own (steering_backends.settings).
ARCHITECTURES = [
    "tiny-gemma-random",
    "tiny-gemma2-random",
    "tiny-gemma3-random",
    "tiny-olmo2-random",
    "tiny-pythia-random",
    "tiny-phi3-random",
    "tiny-qwen3-random",
    "tiny-granite-random",
    "tiny-qwen3-moe-random",
    "tiny-mixtral-random",
]
MODELS += ARCHITECTURES
# Where a backend cannot take a case, by model type (what the parity table must show as n/a):
POST_NORM = {"gemma2", "gemma3_text", "olmo2"}  # each sublayer ends in an RMSNorm: no bias, no one weight
MOE = {"qwen3_moe", "mixtral"}  # mlp_out is a routing-weighted sum of fused experts: no bias, no one weight
# No module outputs block 0's input, which baukit would edit: the decoder scales the embeddings inline.
SCALED_INLINE = {"granite"} | ({"gemma", "gemma2"} if TRANSFORMERS_4 else set())
FIRST_BLOCK_INPUT = {"resid_pre L0", "add then cap, resid_pre L0", "ablate everywhere"}  # cases that steer it


def real_gpt2_xl():
    try:
        return load("gpt2-xl", local_files_only=True)
    except OSError as err:
        pytest.skip(f"real gpt2-xl weights are not in the local HF cache: {str(err).splitlines()[0]}")


# Which parity cases run where: the 13 addition cases of parity.parity_cases, then the 7 operator
# cases of parity.operator_cases. Every case on each layout a backend resolves differently: GPT-2
# (Conv1D, a position table bias editing folds resid_pre L0 into) and Llama (rotary), and on
# SmolLM2's trained weights, where the tolerances were measured. Mistral and Qwen2 share Llama's
# layout (layout.LAYOUTS) and differ only in the TransformerLens bridge's adapter and nnsight's
# module names, which every site, layer 0, the last layer, a negative index, a 2-D vector with
# start > 0 and two sites at once reach. The GPT-2 small shape, GPT-2's layout again between the
# tiny and the XL shapes, is left to benchmarks/rounding.py. tests/test_properties.py draws 60
# random spec lists on each tiny GPT-2 and Llama through every backend. The addition cases left
# out there (two specs on one site or block, start on a 1-D vector, 3 rows) exercise spec and hook
# code that no layout changes, and 2-D 3 rows runs in every model's padded-batch check. Every
# operator case runs on every model but the GPT-2-XL shape.
OPERATOR_CASES = tuple(operator_cases(4, lambda seed: torch.ones(8)))
REPRESENTATIVE = (
    "resid_pre L0",
    "resid_pre mid",
    "attn_out mid",
    "mlp_out mid",
    "resid_post last",
    "resid_pre L=-1",
    "2-D start=1 L0",
    "two sites",
    *OPERATOR_CASES,
)
# The GPT-2-XL shape is here for its size: 48 blocks, d_model 1600, one copy in memory shared with
# the bridge. Each backend runs three cases (a middle block; the first and last blocks, two sites;
# ablation at all 97 writes, which weight orthogonalisation takes), the three deliberate mistakes and
# a 2-token greedy decoding on it (the prefill's token, then one step from the KV cache); the rest
# runs on the smaller models through the same code (nothing in a backend depends on width or depth
# but the layer index).
XL_CASES = ("resid_pre mid", "two sites", "ablate everywhere")
XL_NEW_TOKENS = 2
CASES = {"tiny-mistral-random": REPRESENTATIVE, "tiny-qwen2-random": REPRESENTATIVE}
CASES |= {"gpt2-xl-random": XL_CASES, "gpt2-xl": XL_CASES}
# On transformers 4 (its CI leg): GPT-2's tuple block outputs, a Llama's generation with that
# version's cache, and one newer architecture per rule as that version builds it, on the
# representative cases: Gemma 2 (embeddings scaled inline there, post-norms), Pythia (parallel
# residual), Granite (multipliers), Mixtral (block_sparse_moe, a tuple output). Gemma, Gemma 3 and
# OLMo 2 repeat Gemma 2's rules, Qwen3 and Phi-3 Llama's layout, Qwen3-MoE Mixtral's tuple; each runs
# every case in the first leg. Mistral and Qwen2 add a layout only through the TransformerLens bridge,
# which needs transformers 5. SmolLM2 as that version loads it is compared there by test_peers.py:
# every backend's padded-batch logits at three sites and cached greedy decoding, against the peers.
TRANSFORMERS_4_ARCHITECTURES = [
    "tiny-gemma2-random",
    "tiny-pythia-random",
    "tiny-granite-random",
    "tiny-mixtral-random",
]
if TRANSFORMERS_4:
    MODELS = ["tiny-gpt2-random", "tiny-llama-random", *TRANSFORMERS_4_ARCHITECTURES]
    CASES |= dict.fromkeys(TRANSFORMERS_4_ARCHITECTURES, REPRESENTATIVE)


@pytest.fixture(scope="module", params=MODELS)
def results(request):
    name = request.param
    model, tokenizer = real_gpt2_xl() if name == "gpt2-xl" else load(name)
    xl = "xl" in name
    if xl:
        assert sum(p.numel() for p in model.parameters()) == N_PARAMS_GPT2_XL
    shape = {"n_new": XL_NEW_TOKENS, "padded_batch": False} if xl else {}
    results = run_suite(model, tokenizer, *dims(model), copy_for_bridge=not xl, only=CASES.get(name), **shape)
    results.tolerances, results.rounding_tol = RELATIVE_TOLERANCES, RELATIVE_ROUNDING
    write_result(f"parity_{name}.md", report(results, name))
    return results


def check_logit_parity(results) -> None:
    for label, row in results.table.items():
        # Steering must change the logits by 100x the loosest tolerance, or the comparison proves nothing.
        # Measured: at least 6.6e-2 of the logit scale (OLMo 2's last block), mostly 0.3-1.
        loosest = max(results.tolerances.values()) * results.scales[label]
        assert row["effect"] > 100 * loosest, f"{label}: the effect, {row['effect']:.2e}, is too small to compare"
        for name, diff in row.items():
            if name != "effect" and diff is not None:
                allowed = results.tolerances[name] * results.scales[label]
                assert diff <= allowed, f"{label}: {name} is {diff:.2e} from the reference (allowed {allowed:.1e})"
    # Who sits out, and only there: bias editing adds one vector at every position of every row,
    # through a bias that ends the site; weight orthogonalisation takes whole ablations at the one
    # weight that writes; baukit edits module outputs.
    model_type = results.model_type
    for label, row in results.table.items():
        position_dependent = label in OPERATOR_CASES or "2-D" in label or "start" in label
        no_bias = model_type in POST_NORM or model_type in MOE and label != "attn_out mid"
        no_position_table = label == "resid_pre L0" and model_type != "gpt2"
        assert (row["bias_editing"] is None) == (position_dependent or no_bias or no_position_table), label
        no_weight = model_type in POST_NORM | MOE
        assert (row["weight_orthogonalisation"] is None) == (label != "ablate everywhere" or no_weight), label
        assert (row["baukit_tracedict"] is None) == (model_type in SCALED_INLINE and label in FIRST_BLOCK_INPUT), label


# nnsight 0.8.1 on transformers 4 decodes a left-padded batch with frozen positions, unsteered too
# (test_nnsight_generate_on_transformers_4_freezes_padded_positions): its cached greedy decoding
# cannot match, whatever the steering does, so it is left out of that one check there.


def check_generation(results) -> None:
    assert results.tokens.keys() == results.step_gap.keys()
    assert ("bias_editing" in results.tokens) == (results.model_type not in POST_NORM | MOE)
    assert ("weight_orthogonalisation" in results.tokens) == (results.model_type not in POST_NORM | MOE)
    for name, tokens in results.tokens.items():
        if name == "nnsight_trace" and TRANSFORMERS_4:
            continue
        assert torch.equal(tokens, results.tokens_no_cache[name]), (
            f"{name}: cached greedy ids differ from no-cache greedy"
        )
        # Random-weight models often repeat one token, so equal ids alone prove little: the
        # logits behind every step must match too.
        gap = results.step_gap[name]
        allowed = (results.tolerances[name] + results.rounding_tol) * results.step_scale[name]
        assert gap <= allowed, f"{name}: step logits are {gap:.2e} from no-cache decoding"


def check_batch(results) -> None:
    for name, gap in results.batch_gap.items():
        allowed = results.rounding_tol * results.batch_scale[name]
        assert gap <= allowed, f"{name}: a padded row is {gap:.2e} from the prompt run alone (allowed {allowed:.1e})"


def check_mistakes_are_caught(results) -> None:
    """Each deliberate mistake must fail the logit comparison, even at the loosest tolerance."""
    assert len(results.perturbed) == 3
    for label, gap in results.perturbed.items():
        loosest = max(results.tolerances.values()) * results.scales["resid_pre mid"]
        assert gap > loosest, f"'{label}' would pass unnoticed ({gap:.2e} <= {loosest:.1e})"


def test_logits_agree_across_backends(results):
    check_logit_parity(results)


def test_greedy_generation_with_cache_matches_no_cache(results):
    check_generation(results)


def test_padded_batch_rows_match_prompts_run_alone(results):
    if not results.batch_gap:
        pytest.skip("the GPT-2-XL shape runs XL_CASES and a short greedy only; padded batches: the other models")
    check_batch(results)


def test_the_comparison_catches_small_mistakes(results):
    check_mistakes_are_caught(results)


def test_the_generation_check_catches_positions_that_restart_at_each_step(monkeypatch, tiny, tokenizer):
    """A backend that ignored the KV cache (each decoding step counted from position 0) must fail."""
    honest = spec_module.token_positions

    def forgetful(n_new, batch, attention_mask=None, n_past=0, device=None):
        mask = None if attention_mask is None else attention_mask[:, -n_new:]
        return honest(n_new, batch, mask, 0, device)

    monkeypatch.setattr(spec_module, "token_positions", forgetful)
    runner = Runner("pytorch_hooks", lambda: tiny, backend("pytorch_hooks").steer)
    ids, mask = left_pad(tokenizer, PROMPTS)
    specs = generation_specs(4, 64, residual_rms(tiny, ids, mask) / 4, stream_directions(tiny, ids, mask))
    with runner.steer(tiny, specs["positions"]):
        _, no_cache_steps = greedy_no_cache(runner, ids, mask)  # no cache: positions still right
        _, steps = runner.generate(ids, mask, N_NEW)
    allowed = tolerance(RELATIVE_TOLERANCES["pytorch_hooks"] + RELATIVE_ROUNDING, no_cache_steps)
    assert (steps - no_cache_steps).abs().max() > allowed


@pytest.mark.skipif(not TRANSFORMERS_4, reason="transformers 5 advances the positions nnsight supplies")
def test_nnsight_generate_on_transformers_4_freezes_padded_positions(tiny, tokenizer):
    """nnsight supplies mask-derived position_ids for a left-padded batch; transformers 4's generate
    passes that tensor on unchanged, so every decoding step reuses the prompt's last position. No
    steering is involved: the unsteered nnsight run already differs from the plain HF one."""
    ids, mask = left_pad(tokenizer, PROMPTS)
    seen = []
    hf = Runner("pytorch_hooks", lambda: tiny, backend("pytorch_hooks").steer)
    lm = backend("nnsight_trace").nnsight_from_hf(tiny, tokenizer)
    decoder = lm._module.get_decoder() if hasattr(lm._module, "get_decoder") else lm._module.transformer
    handle = decoder.register_forward_pre_hook(lambda m, a, kw: seen.append(kw.get("position_ids")), with_kwargs=True)
    try:
        _, nnsight_steps = Runner("nnsight_trace", lambda: lm, None).generate(ids, mask, 3)
    finally:
        handle.remove()
    _, hf_steps = hf.generate(ids, mask, 3)
    assert torch.equal(seen[1], seen[2]) and torch.equal(seen[1][:, 0], seen[0][:, -1])  # frozen at the last
    # Far beyond rounding: measured 0.67 (GPT-2, learned positions) and 4.4e-3 (Llama, rotary) of
    # the tiny models' logit scale, where RELATIVE_ROUNDING allows 1e-4 of it.
    gap = (nnsight_steps[:, 1:] - hf_steps[:, 1:]).abs().max().item()
    print(f"nnsight vs HF, unsteered steps 2-3: {gap:.2g}, {gap / tolerance(1.0, hf_steps):.2g} of the logit scale")
    assert gap > tolerance(RELATIVE_ROUNDING, hf_steps)

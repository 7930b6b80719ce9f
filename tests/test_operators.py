"""The ablate and cap operators: refusals, arithmetic against formulas written here, weight
orthogonalisation on tied models, properties. Every backend against the reference on operator
cases: tests/test_parity.py.

Expected values are computed here another way than spec.py does: an ablation as h - c (h.v)/(v.v) v
in float64 (no unit vector), a cap by clamping the coordinate along u and putting it back.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from model_state import assert_unchanged, snapshot
from parity_suite import PROMPTS

from steering_backends import SteeringSpec, backend
from steering_backends.layout import layout_of
from steering_backends.models import load, random_model
from steering_backends.parity import (
    RELATIVE_TOLERANCES,
    hf_positions,
    left_pad,
    max_abs_diff,
    stream_directions,
    tolerance,
)
from steering_backends.spec import SteeringPlan, ablate_everywhere

D = 8


def ablated(h: torch.Tensor, v: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    h, v = h.double(), v.double()
    return (h - c * (h @ v / (v @ v)).unsqueeze(-1) * v).float()


def capped(h: torch.Tensor, v: torch.Tensor, c: float) -> torch.Tensor:
    h, u = h.double(), (v / v.norm()).double()
    along = h @ u
    return (h + (along.clamp(max=c) - along).unsqueeze(-1) * u).float()


# Refused inputs

BAD = {
    "unknown op": (dict(vector=torch.ones(D), op="project"), "op='project' is unknown; allowed: add, ablate, cap"),
    "ablate, 2-D": (
        dict(vector=torch.ones(3, D), op="ablate"),
        r"vector has shape \(3, 8\); op='ablate' takes one \[d_model\]",
    ),
    "cap, 2-D": (dict(vector=torch.ones(2, D), op="cap"), r"vector has shape \(2, 8\); op='cap' takes one \[d_model\]"),
    "ablate, zero": (dict(vector=torch.zeros(D), op="ablate"), "vector is all zeros; op='ablate' needs a direction"),
    "cap, zero": (dict(vector=torch.zeros(D), op="cap"), "vector is all zeros; op='cap' needs a direction"),
    "ablate, NaN": (dict(vector=torch.tensor([1.0] * 7 + [math.nan]), op="ablate"), r"vector\[7\] is nan; only finite"),
    "ablate, inf coeff": (
        dict(vector=torch.ones(D), op="ablate", coeff=math.inf),
        "coeff=inf must be a finite .*'cap'",
    ),
    "cap, -inf coeff": (dict(vector=torch.ones(D), op="cap", coeff=-math.inf), "coeff=-inf must be a finite"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_operator_spec_is_refused_by_name(case):
    fields, words = BAD[case]
    with pytest.raises(ValueError, match=r"SteeringSpec\." + words):
        SteeringSpec(0, "resid_pre", **fields)


def test_cap_at_plus_infinity_is_allowed_and_the_identity():
    h = torch.randn(2, 3, D)
    out = SteeringSpec(0, "resid_pre", torch.randn(D), math.inf, op="cap").apply(h, torch.arange(3).expand(2, 3))
    assert torch.equal(out, h)


GOOD = {
    "bias_editing": SteeringSpec(0, "attn_out", torch.ones(64)),
    "weights": SteeringSpec(0, "attn_out", torch.ones(64), op="ablate"),
}
REFUSED = {  # backend, bad spec (second of two: the first is fine), what the message says
    "bias_editing, ablate": (
        "bias_editing",
        dict(op="ablate"),
        "op='ablate': a bias can only add; allowed: 'add'. .*weight_orthogonalisation",
    ),
    "bias_editing, cap": ("bias_editing", dict(op="cap"), "op='cap': a bias can only add; allowed: 'add'"),
    "weights, add": (
        "weights",
        dict(),
        "op='add': weight orthogonalisation only removes a direction; allowed: 'ablate'",
    ),
    "weights, cap": ("weights", dict(op="cap"), "op='cap': .*allowed: 'ablate'"),
    "weights, coeff": ("weights", dict(op="ablate", coeff=0.5), "coeff=0.5: allowed: 1"),
    "weights, start": ("weights", dict(op="ablate", start=1), "start=1, rows=None: .* allowed: start=0, rows=None"),
    "weights, rows": ("weights", dict(op="ablate", rows=[True]), r"start=0, rows=\(True,\): .* allowed: start=0"),
    "weights, resid_post": (
        "weights",
        dict(op="ablate", site="resid_post"),
        r"site='resid_post'\) is not where one weight writes .*allowed: attn_out or mlp_out of any block, or "
        "resid_pre of block 0",
    ),
    "weights, resid_pre L2": (
        "weights",
        dict(op="ablate", site="resid_pre", layer=2),
        r"layer=2, site='resid_pre'\) is not where",
    ),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_backends_that_cannot_apply_an_op_refuse_it_and_leave_the_model_as_it_was(tiny, case):
    name, fields, words = REFUSED[case]
    bad = SteeringSpec(**{"layer": 1, "site": "mlp_out", "vector": torch.ones(64)} | fields)
    before = snapshot(tiny)
    with pytest.raises(ValueError, match=r"specs\[1\]" + r"\.?.*" + words):
        with backend("weight_orthogonalisation" if name == "weights" else name).steer(tiny, [GOOD[name], bad]):
            pytest.fail("the body must not run")
    assert_unchanged(before, tiny)


def test_weights_refuse_train_mode_with_dropout(tiny):
    tiny.train()
    if not any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in tiny.modules()):
        pytest.skip("this tiny model has no dropout")
    before = snapshot(tiny)
    with pytest.raises(ValueError, match="train\\(\\) mode with dropout"):
        with backend("weight_orthogonalisation").steer(tiny, [GOOD["weights"]]):
            pytest.fail("the body must not run")
    assert_unchanged(before, tiny)


# Arithmetic, no model

POSITIONS = torch.tensor([[-1, 0, 1, 2], [0, 1, 2, 3]])  # row 0 left-padded


def test_ablate_and_cap_match_formulas_written_here_where_steered_and_touch_nothing_else():
    gen = torch.Generator().manual_seed(0)
    h, v = torch.randn(2, 4, D, generator=gen), torch.randn(D, generator=gen)
    u = v / v.norm()
    for spec, formula in [
        (SteeringSpec(0, "resid_pre", v, op="ablate", start=1), ablated(h, v)),
        (SteeringSpec(0, "resid_pre", 3 * v, 0.5, op="ablate", start=1), ablated(h, v, 0.5)),  # |v| does not matter
        (SteeringSpec(0, "resid_pre", v, -0.2, op="cap", start=1), capped(h, v, -0.2)),
    ]:
        out = spec.apply(h, POSITIONS)
        steered = POSITIONS >= 1
        # float32 vs the float64 formula: measured at most 2.4e-7; 1e-5 is far below any effect here (~0.1-1).
        assert (out[steered] - formula[steered]).abs().max() < 1e-5, spec.op
        assert torch.equal(out[~steered], h[~steered])  # padding and positions < start: untouched, bitwise
        assert (out[steered] - h[steered]).abs().max() > 0.05  # the check can fail: it did something
    whole = SteeringSpec(0, "resid_pre", v, op="ablate").apply(h, POSITIONS)
    assert (whole[POSITIONS >= 0] @ u).abs().max() < 1e-6  # coeff 1: no component along u is left (measured 2e-7)
    capped_out = SteeringSpec(0, "resid_pre", v, 0.1, op="cap").apply(h, POSITIONS)[POSITIONS >= 0] @ u
    assert capped_out.max() <= 0.1 + 1e-6 and (h[POSITIONS >= 0] @ u).max() > 0.1


def test_rows_not_selected_are_untouched():
    h, v = torch.randn(2, 4, D), torch.randn(D)
    out = SteeringSpec(0, "resid_pre", v, op="ablate", rows=(False, True)).apply(h, POSITIONS)
    assert torch.equal(out[0], h[0]) and (out[1] @ (v / v.norm())).abs().max() < 1e-6


def test_specs_on_one_site_apply_in_the_order_given():
    """Ablate u then add 2u leaves 2u along u; add then ablate leaves nothing along u."""
    gen = torch.Generator().manual_seed(1)
    h, v = torch.randn(1, 3, D, generator=gen), torch.randn(D, generator=gen)
    u = v / v.norm()
    ablate, add = SteeringSpec(0, "mlp_out", v, op="ablate"), SteeringSpec(0, "mlp_out", u, 2.0)

    def steer(specs):
        plan = SteeringPlan(specs, 1, D)
        plan.record_call((torch.zeros(1, 3, dtype=torch.long),), {})
        return plan.steer(0, "mlp_out", h)

    first_ablate, first_add = steer([ablate, add]), steer([add, ablate])
    assert torch.allclose(first_ablate @ u, torch.full((1, 3), 2.0), atol=1e-6)
    assert (first_add @ u).abs().max() < 1e-6
    assert torch.allclose(first_ablate, ablated(h, v) + 2 * u, atol=1e-6)


# Every hook backend against the reference on operator cases, start and rows included, cached
# decoding under an ablation from position 2 and weight orthogonalisation against hook ablation
# everywhere: the parity suite (parity.operator_cases, on every model of tests/test_parity.py).

TINY = ["tiny-gpt2-random", "tiny-llama-random"]


# Weight orthogonalisation: the read-out of tied models, a mistake the tolerance catches, restoration


@pytest.mark.parametrize("name", [*TINY, "smollm2-135m"])
def test_orthogonalised_weights_equal_hook_ablation_everywhere_and_are_restored(name):
    model, tokenizer = load(name)
    ids, mask = left_pad(tokenizer, PROMPTS)
    inputs = dict(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
    embedding, unembedding = model.get_input_embeddings(), model.get_output_embeddings()
    tied = unembedding.weight is embedding.weight
    assert tied == (name != "tiny-llama-random")  # the trap is exercised on GPT-2 and SmolLM2
    read_out = unembedding.weight.detach().clone()
    direction, plain = stream_directions(model, ids, mask), model(**inputs).logits
    specs = ablate_everywhere(direction(0), model.config.num_hidden_layers)
    hooks, weights = backend("pytorch_hooks"), backend("weight_orthogonalisation")
    with hooks.steer(model, specs):
        want = model(**inputs).logits
    before = snapshot(model)
    with weights.steer(model, specs):
        got = model(**inputs).logits
        assert torch.equal(model.get_output_embeddings().weight, read_out)  # the logits' read-out is untouched
        assert not torch.equal(embedding.weight, read_out)
    assert_unchanged(before, model)
    assert (model.get_output_embeddings().weight is embedding.weight) == tied

    allowed = tolerance(RELATIVE_TOLERANCES["weight_orthogonalisation"], want, mask)
    gap = max_abs_diff(got, want, mask)
    print(f"{name}: weights vs hooks {gap / allowed * 1e-4:.1e} of the logit scale")
    assert max_abs_diff(want, plain, mask) > 0.1  # ablation changes the logits
    assert gap <= allowed, f"weights are {gap:.2e} from hook ablation (allowed {allowed:.1e})"
    with hooks.steer(model, [replace(spec, coeff=0.99) for spec in specs]):  # a deliberate mistake
        assert max_abs_diff(model(**inputs).logits, got, mask) > allowed

    with pytest.raises(KeyboardInterrupt), weights.steer(model, specs):
        raise KeyboardInterrupt
    assert_unchanged(before, model)
    assert (model.get_output_embeddings().weight is embedding.weight) == tied


# Properties on the tiny models, through pytorch_hooks (every hook backend equals it: the parity suite)


@pytest.fixture(scope="module", params=TINY)
def tiny_model(request):
    return random_model(request.param)


def block_output(model, layer: int, specs, ids) -> torch.Tensor:
    """Block ``layer``'s output [B, T, D] as the next block sees it, under ``specs`` (the decoder
    alone runs: the unembedding adds nothing here and costs most of the time)."""
    seen = []
    layout = layout_of(model)
    block = model.get_submodule(f"{layout.blocks}.{layer}")
    with backend("pytorch_hooks").steer(model, specs):
        handle = block.register_forward_hook(lambda m, a, out: seen.append(out[0] if isinstance(out, tuple) else out))
        try:  # registered after the steering hook, so it sees the steered output
            model.get_submodule(layout.decoder)(input_ids=ids)
        finally:
            handle.remove()
    return seen[0]


@settings(max_examples=30, derandomize=True, deadline=None)
@given(layer=st.integers(0, 3), start=st.integers(0, 4), n_tokens=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_ablation_is_idempotent_and_orthogonal_and_capping_at_inf_is_the_identity(
    tiny_model, layer, start, n_tokens, seed
):
    gen = torch.Generator().manual_seed(seed)
    ids, v = torch.randint(0, 50257, (2, n_tokens), generator=gen), torch.randn(64, generator=gen)
    u = v / v.norm()
    ablate = SteeringSpec(layer, "resid_post", v, op="ablate", start=start)
    plain = block_output(tiny_model, layer, [], ids)
    once = block_output(tiny_model, layer, [ablate], ids)
    twice = block_output(tiny_model, layer, [ablate, ablate], ids)
    scale = plain.abs().max()
    assert torch.equal(once[:, :start], plain[:, :start])  # before start: untouched
    # float32 rounding of one projection over 64 coordinates; measured over these examples at most
    # 1.1e-7 (component along u) and 5.4e-8 (twice vs once) of max |h|. A missed position is ~0.1-1.
    assert ((once[:, start:] @ u).abs() < 1e-5 * scale).all()
    assert (twice - once).abs().max() < 1e-5 * scale
    assert (once - plain).abs().max() > 0 or start >= n_tokens  # it did remove something
    assert torch.equal(block_output(tiny_model, layer, [replace(ablate, op="cap", coeff=math.inf)], ids), plain)

"""The spec's arithmetic against hand computation, with no model involved."""

from __future__ import annotations

import math

import pytest
import torch

from steering_backends.spec import SITES, SteeringPlan, SteeringSpec, token_positions

D = 4


def one_hot(i: int) -> torch.Tensor:
    return torch.eye(D)[i]


def test_positions_count_from_first_real_token_and_continue_across_the_cache():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    assert token_positions(4, 2, mask).tolist() == [[-1, -1, 0, 1], [0, 1, 2, 3]]
    # Decoding step: the mask covers the 4 cached tokens plus 1 new one.
    step = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
    assert token_positions(1, 2, step).tolist() == [[2], [4]]
    assert token_positions(2, 3, None, n_past=5).tolist() == [[5, 6]] * 3


def test_right_padding_is_not_a_position():
    assert token_positions(3, 1, torch.tensor([[1, 1, 0]])).tolist() == [[0, 1, -1]]


def test_one_direction_from_start_on_and_never_on_padding():
    spec = SteeringSpec(0, "resid_pre", one_hot(1), coeff=2.0, start=1)
    out = spec.apply(torch.zeros(1, 4, D), torch.tensor([[-1, 0, 1, 2]]))
    expected = torch.zeros(1, 4, D)
    expected[0, 2, 1] = expected[0, 3, 1] = 2.0
    assert torch.equal(out, expected)


def test_per_position_rows_land_at_start_plus_i_only():
    rows = torch.stack([one_hot(0), one_hot(3)])  # [2, D]
    spec = SteeringSpec(0, "resid_pre", rows, coeff=3.0, start=1)
    out = spec.apply(torch.zeros(1, 5, D), torch.tensor([[-1, 0, 1, 2, 3]]))
    expected = torch.zeros(1, 5, D)
    expected[0, 2, 0] = 3.0  # position 1 = start + 0
    expected[0, 3, 3] = 3.0  # position 2 = start + 1; position 3 gets nothing
    assert torch.equal(out, expected)


def test_specs_on_one_site_sum_in_order():
    plan = SteeringPlan(
        [SteeringSpec(1, "mlp_out", one_hot(0), 1.5), SteeringSpec(-1, "mlp_out", one_hot(0), 2.0)], 2, D
    )
    plan.record_call((torch.zeros(1, 2, dtype=torch.long),), {})  # one row, two real tokens
    out = plan.steer(1, "mlp_out", torch.ones(1, 2, D))
    assert out[0, :, 0].tolist() == [4.5, 4.5] and out[0, :, 1:].eq(1).all()


@pytest.mark.parametrize("n_specs", [1, 2], ids=["mask read once", "mask read at two sites"])
def test_padding_is_never_steered_and_each_site_keeps_its_dtype(n_specs):
    """From position 0 a spec adds through the call's real-token mask: an integer view of it when one
    spec reads it, cast once to the activations' dtype when several do. Either way padding gets 0,
    and a site in another dtype than the first gets its own dtype back, not a promotion."""
    specs = [SteeringSpec(layer, "resid_post", one_hot(layer), coeff=2.0) for layer in range(n_specs)]
    plan = SteeringPlan(specs, 2, D)
    prompt = torch.tensor([[0, 1, 1], [1, 1, 1]])  # row 0 left-padded by one
    step = torch.tensor([[0, 1, 1, 0], [1, 1, 1, 1]])  # a cached step whose new token is padding in row 0
    calls = [
        (prompt, 3),
        (step, 1),
        (step, 2),  # a second chunk of a prefill
        (torch.tensor([[9, 0, 1, 1, 0], [9, 1, 1, 1, 1]])[:, 1:], 1),  # a view into a wider tensor
        (step.T.contiguous().T, 2),  # column-major
    ]
    for mask, n_new in calls:
        kwargs = {"input_ids": torch.zeros(2, n_new, dtype=torch.long), "attention_mask": mask}
        plan.begin_call((), kwargs)
        try:
            for layer, dtype in zip(range(n_specs), (torch.float32, torch.bfloat16), strict=False):
                out = plan.steer(layer, "resid_post", torch.ones(2, n_new, D, dtype=dtype))
                expected = torch.ones(2, n_new, D, dtype=dtype)
                expected[:, :, layer] += 2.0 * mask[:, -n_new:]  # 3 at real tokens, 1 at the padding
                assert out.dtype == dtype and torch.equal(out, expected)
        finally:
            plan.end_call(kwargs)


def test_coeff_and_vector_scale_the_same_way():
    v, hidden, pos = torch.randn(D), torch.randn(2, 3, D), torch.tensor([[0, 1, 2]] * 2)
    assert torch.equal(
        SteeringSpec(0, "resid_pre", v, 2.0).apply(hidden, pos),
        SteeringSpec(0, "resid_pre", 2 * v, 1.0).apply(hidden, pos),
    )


@pytest.mark.parametrize("vector", [torch.ones(D), torch.ones(2, D)], ids=["1-D", "2-D"])
def test_vector_and_positions_follow_the_activation_to_its_device(vector):
    """A dispatched model runs blocks on several devices; positions are read at the decoder's
    input. The meta device stands in for a second device on this CPU-only machine."""
    hidden, positions = torch.zeros(1, 3, D, device="meta"), torch.tensor([[0, 1, 2]])  # positions on the CPU
    out = SteeringSpec(0, "resid_pre", vector).apply(hidden, positions)
    assert out.device.type == "meta" and out.shape == hidden.shape


def test_vector_is_cast_to_the_activation_dtype():
    out = SteeringSpec(0, "resid_pre", torch.ones(D, dtype=torch.float64), 1.0).apply(
        torch.zeros(1, 1, D, dtype=torch.bfloat16), torch.tensor([[0]])
    )
    assert out.dtype == torch.bfloat16 and out.eq(1).all()


def test_plan_orders_sites_as_a_forward_pass_reaches_them():
    specs = [SteeringSpec(1, site, torch.ones(D)) for site in reversed(SITES)] + [
        SteeringSpec(0, "resid_post", torch.ones(D))
    ]
    assert SteeringPlan(specs, 2, D).sites == [(0, "resid_post"), *[(1, site) for site in SITES]]


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        pytest.param(
            {"site": "hook_resid_pre"},
            ValueError,
            ["site", "resid_pre, attn_out, mlp_out, resid_post"],
            id="unknown site",
        ),
        pytest.param(
            {"vector": torch.ones(2, 2, D)}, ValueError, ["vector", "(2, 2, 4)", "[n, d_model]"], id="3-D vector"
        ),
        pytest.param(
            {"vector": torch.tensor([1.0, math.nan, 0, 0])}, ValueError, ["vector[1] is nan", "finite"], id="NaN"
        ),
        pytest.param(
            {"vector": torch.tensor([1.0, math.inf, 0, 0])}, ValueError, ["vector[1] is inf", "finite"], id="inf"
        ),
        pytest.param(
            {"vector": torch.ones(D, dtype=torch.long)},
            TypeError,
            ["vector", "int64", "floating point"],
            id="integer vector",
        ),
        pytest.param({"vector": [1.0] * D}, TypeError, ["vector", "list", "torch.Tensor"], id="list vector"),
        pytest.param({"coeff": math.inf}, ValueError, ["coeff=inf", "finite"], id="inf coeff"),
        pytest.param({"coeff": math.nan}, ValueError, ["coeff=nan", "finite"], id="NaN coeff"),
        pytest.param({"start": -1}, ValueError, ["start=-1", ">= 0"], id="negative start"),
        pytest.param({"layer": 1.0}, TypeError, ["layer", "1.0", "int"], id="float layer"),
    ],
)
def test_bad_spec_fields_name_the_field_and_what_is_allowed(kwargs, error, words):
    fields = {"layer": 0, "site": "resid_pre", "vector": torch.ones(D)} | kwargs
    with pytest.raises(error) as info:
        SteeringSpec(**fields)
    assert all(word in str(info.value) for word in words), str(info.value)


@pytest.mark.parametrize("layer", [2, -3])
def test_layer_out_of_range_names_the_allowed_range(layer):
    with pytest.raises(ValueError, match=r"layer=.*\[-2, 1\]"):
        SteeringPlan([SteeringSpec(layer, "resid_pre", torch.ones(D))], n_layers=2, d_model=D)


def test_wrong_width_names_d_model():
    with pytest.raises(ValueError, match="width 3.*d_model is 4"):
        SteeringPlan([SteeringSpec(0, "resid_pre", torch.ones(3))], n_layers=2, d_model=D)


def test_error_names_the_bad_element_of_the_list():
    good = SteeringSpec(0, "resid_pre", torch.ones(D))
    with pytest.raises(ValueError, match=r"specs\[1\]"):
        SteeringPlan([good, SteeringSpec(9, "resid_pre", torch.ones(D))], n_layers=2, d_model=D)


def test_a_prompt_shorter_than_the_rows_is_refused():
    plan = SteeringPlan([SteeringSpec(0, "resid_pre", torch.ones(3, D), start=1)], n_layers=1, d_model=D)
    plan.record_call((torch.zeros(1, 4, dtype=torch.long),), {})  # 4 tokens = start + 3 rows: fine
    with pytest.raises(ValueError, match="at least 4 tokens.*shortest prompt here has 3"):
        plan.record_call(
            (torch.zeros(2, 4, dtype=torch.long),), {"attention_mask": torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])}
        )


def test_tuple_and_bare_tensor_outputs_are_both_steered():
    plan = SteeringPlan([SteeringSpec(0, "resid_post", torch.ones(D))], n_layers=1, d_model=D)
    plan.record_call((torch.zeros(1, 2, dtype=torch.long),), {})  # one row, two real tokens
    hidden, weights = torch.zeros(1, 2, D), torch.rand(1, 2, 2)
    steered, same_weights = plan.steer_output(0, "resid_post", (hidden, weights))  # transformers 4 blocks
    assert steered.eq(1).all() and same_weights is weights and hidden.eq(0).all()  # new tensor, input untouched
    assert plan.steer_output(0, "resid_post", hidden).eq(1).all()  # transformers 5 blocks

"""The vector recipes against their definitions, computed by hand on the GPT-2 small shape,
and through every backend on the tiny models."""

from __future__ import annotations

import pytest
import torch
from helpers import MASK, logits_with

from steering_backends import SteeringSpec, backend
from steering_backends.models import random_model
from steering_backends.parity import RELATIVE_TOLERANCES, Runner, max_abs_diff, tolerance
from steering_backends.prompts import encode
from steering_backends.vectors import (
    activations,
    contrast_pair,
    contrast_vector,
    load_pairs,
    load_reference_texts,
    mean_difference,
    pair_differences,
    pca,
    principal_direction,
    residual_norm,
    scaled_to_residual,
    x_vector,
)

BOS, SPACE = 50256, 220  # GPT-2's <|endoftext|> and " "
# Batched (left-padded) extraction vs one sentence at a time on the GPT-2 small shape, all
# 64 sentiment pairs at block 6: measured max |difference| 2.0e-6 ("last") and 5.2e-7
# ("mean"), on differences up to 0.57; the matmuls see other shapes, so the last bits move.
# (SmolLM2 at block 18: 6.9e-5 and 9.2e-5 on differences up to 16 and 257.)
BATCHED_TOL = 2e-5


@pytest.fixture(scope="module")
def small():
    return random_model("gpt2-random")


def act(model, ids: list[int], layer: int = 6) -> torch.Tensor:
    return activations(model, torch.tensor([ids]), layer)[0]


def test_x_vector_is_the_activation_difference_added_at_the_first_positions(small, tokenizer):
    # GPT-2 splits "Hate" into "H" + "ate", so "Love" is right-padded with one space, as in the original.
    spec = x_vector(small, tokenizer, "Love", "Hate", coeff=5, layer=6, pad_token_id=SPACE)
    love = act(small, [BOS, *encode(tokenizer, "Love"), SPACE])
    hate = act(small, [BOS, *encode(tokenizer, "Hate")])
    assert torch.equal(spec.vector, love - hate) and spec.vector.shape == (3, 768)
    assert (spec.layer, spec.site, spec.coeff, spec.start) == (6, "resid_pre", 5, 0)
    assert torch.equal(spec.vector[0], torch.zeros(768)), "both prompts start with BOS, so row 0 cancels"

    ids = torch.tensor([encode(tokenizer, "I hate you because", bos=True)])

    def add_by_hand(module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        steered = hidden.clone()
        steered[0, :3] = hidden[0, :3] + 5 * (love - hate)
        return (steered, *args[1:]), kwargs

    handle = small.transformer.h[6].register_forward_pre_hook(add_by_hand, with_kwargs=True)
    try:
        by_hand = small(input_ids=ids).logits
    finally:
        handle.remove()
    with backend("pytorch_hooks").steer(small, [spec]):
        steered = small(input_ids=ids).logits
    assert torch.equal(steered, by_hand)
    assert not torch.equal(steered, small(input_ids=ids).logits)


def test_x_vector_pads_the_shorter_prompt_on_the_right_and_honours_pad_id_zero(small, tokenizer):
    assert tokenizer.pad_token_id is None  # GPT-2 has no pad token: the given id is enough
    long = [BOS, *encode(tokenizer, "I talk about weddings")]
    spec = x_vector(small, tokenizer, "Love", "I talk about weddings", coeff=1, layer=6, pad_token_id=0)
    padded = [BOS, *encode(tokenizer, "Love"), 0, 0, 0]
    assert len(padded) == len(long) == 5
    assert torch.equal(spec.vector, act(small, padded) - act(small, long))
    with_space = x_vector(small, tokenizer, "Love", "I talk about weddings", coeff=1, layer=6, pad_token_id=SPACE)
    assert not torch.equal(with_space.vector, spec.vector), "id 0 must not fall back to another pad"


def test_x_vector_without_padding_adds_nothing_past_the_shorter_prompt(small, tokenizer):
    spec = x_vector(small, tokenizer, "Love", "I talk about weddings", coeff=1, layer=6, pad=None)
    love, long = (
        act(small, [BOS, *encode(tokenizer, "Love")]),
        act(small, [BOS, *encode(tokenizer, "I talk about weddings")]),
    )
    assert torch.equal(spec.vector[:2], love - long[:2])
    assert torch.equal(spec.vector[2:], -long[2:])


def test_x_vector_refuses_bad_padding(small, tokenizer):
    with pytest.raises(ValueError, match="needs pad_token_id"):
        x_vector(small, tokenizer, "Love", "Hate you", coeff=1, layer=6)
    with pytest.raises(ValueError, match=r"pad='left' is unknown; allowed: 'tokens_right', None"):
        x_vector(small, tokenizer, "Love", "Hate", coeff=1, layer=6, pad="left")
    with pytest.raises(ValueError, match=r"pad_token_id=-1 must be a token id in \[0, 50256\]"):
        x_vector(small, tokenizer, "Love", "Hate you", coeff=1, layer=6, pad_token_id=-1)


def test_contrast_pair_reads_one_token_and_can_be_unit_length(small, tokenizer):
    love, hate = act(small, [BOS, *encode(tokenizer, "Love")]), act(small, [BOS, *encode(tokenizer, "Hate")])
    spec = contrast_pair(small, tokenizer, "Love", "Hate", layer=6, coeff=5)
    assert torch.equal(spec.vector, love[-1] - hate[-1]) and spec.coeff == 5
    unit = contrast_pair(small, tokenizer, "Love", "Hate", layer=6, normalize=True)
    torch.testing.assert_close(unit.vector, (love[-1] - hate[-1]) / (love[-1] - hate[-1]).norm(), rtol=0, atol=1e-7)
    assert abs(unit.vector.norm().item() - 1) < 1e-6
    assert torch.equal(contrast_vector(small, tokenizer, "Love", "Hate", 6, token=0), torch.zeros(768))  # BOS
    no_bos = contrast_vector(small, tokenizer, "Love", "Hate", 6, bos=False)
    assert torch.equal(no_bos, act(small, encode(tokenizer, "Love"))[-1] - act(small, encode(tokenizer, "Hate"))[-1])


@pytest.mark.parametrize("reduce", ["last", "mean"])
def test_batched_extraction_equals_one_by_one(small, tokenizer, reduce):
    pairs = load_pairs("sentiment")
    batched = pair_differences(small, tokenizer, pairs, 6, reduce=reduce, batch_size=16, progress=False)
    alone = pair_differences(small, tokenizer, pairs, 6, reduce=reduce, batch_size=1, progress=False)
    assert batched.shape == (64, 768)
    torch.testing.assert_close(batched, alone, rtol=0, atol=BATCHED_TOL)


def test_mean_difference_by_hand(small, tokenizer, capsys):
    pairs = load_pairs("sentiment")[:5]
    spec = mean_difference(small, tokenizer, pairs, 6, coeff=3, batch_size=2)
    by_hand = torch.stack([contrast_vector(small, tokenizer, pos, neg, 6) for pos, neg in pairs]).mean(0)
    torch.testing.assert_close(spec.vector, by_hand, rtol=0, atol=BATCHED_TOL)
    assert spec.coeff == 3 and "positive activations, layer 6 resid_pre" in capsys.readouterr().err  # progress bar

    def token_mean(text: str) -> torch.Tensor:  # real tokens after BOS
        return act(small, [BOS, *encode(tokenizer, text)])[1:].mean(0)

    averaged = mean_difference(small, tokenizer, pairs, 6, reduce="mean", batch_size=2, progress=False)
    by_hand = torch.stack([token_mean(pos) - token_mean(neg) for pos, neg in pairs]).mean(0)
    torch.testing.assert_close(averaged.vector, by_hand, rtol=0, atol=BATCHED_TOL)


def test_pair_differences_refuse_bad_input(small, tokenizer):
    with pytest.raises(ValueError, match="reduce='max' is unknown; allowed: last, mean"):
        pair_differences(small, tokenizer, [("a", "b")], 6, reduce="max")
    with pytest.raises(ValueError, match="pairs is empty"):
        pair_differences(small, tokenizer, [], 6)
    with pytest.raises(ValueError, match="batch_size=0 must be an int >= 1"):
        pair_differences(small, tokenizer, [("a", "b")], 6, batch_size=0)


def planted(n: int = 40, d: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Differences that share one direction u (with varying strength) plus isotropic noise."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(d, generator=gen)
    u = u / u.norm()
    strength = 2 + 0.5 * torch.randn(n, 1, generator=gen)
    return strength * u + 0.3 * torch.randn(n, d, generator=gen), u


def test_pca_finds_a_planted_direction_with_its_sign(small):
    differences, u = planted()
    direction, ratio = principal_direction(differences)
    assert direction @ u > 0.99 and abs(direction.norm().item() - 1) < 1e-6
    # Expected share along u: E[strength^2] / (E[strength^2] + 32 * 0.3^2) = 4.25 / 7.13 = 0.60.
    assert ratio.shape == (32,) and abs(ratio.sum().item() - 1) < 1e-6 and 0.5 < ratio[0] < 0.7
    assert ratio[0] > 10 * ratio[1]
    assert torch.all(ratio[:-1] >= ratio[1:])
    flipped, _ = principal_direction(-differences)  # negatives now project higher: the sign follows
    assert flipped @ u < -0.99

    signs = torch.ones(40, 1)
    signs[1::2] = -1
    data = (differences * signs).double()
    covariance = (data - data.mean(0)).T @ (data - data.mean(0))
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)  # ascending
    assert abs(eigenvectors[:, -1].float() @ direction) > 1 - 1e-6
    assert abs((eigenvalues[-1] / eigenvalues.sum()).item() - ratio[0].item()) < 1e-6


def test_pca_needs_two_pairs():
    with pytest.raises(ValueError, match=r"\[n_pairs >= 2, d_model\], got shape \(1, 32\)"):
        principal_direction(torch.randn(1, 32))


def test_pca_fit_spec_can_scale_by_explained_variance(small, tokenizer):
    fit = pca(small, tokenizer, load_pairs("sentiment")[:8], 6, progress=False)
    assert fit.spec(2.0).coeff == 2.0 and torch.equal(fit.spec(2.0).vector, fit.direction)
    assert fit.spec(2.0, scale_by_variance=True).coeff == pytest.approx(2.0 * fit.explained_variance_ratio_[0].item())
    differences = pair_differences(small, tokenizer, load_pairs("sentiment")[:8], 6, progress=False)
    assert (differences @ fit.direction).mean() > 0


def test_residual_norm_and_relative_coefficients_by_hand(small, tokenizer):
    texts = load_reference_texts()[:3]
    norms = torch.cat([act(small, [BOS, *encode(tokenizer, t)])[1:].norm(dim=-1) for t in texts])
    assert residual_norm(small, tokenizer, texts, 6) == pytest.approx(norms.median().item(), abs=BATCHED_TOL)
    spec = SteeringSpec(6, "resid_pre", torch.tensor([3.0, 4.0]), coeff=7, start=1)
    scaled = scaled_to_residual(spec, 0.5, 10.0)
    assert torch.equal(scaled.vector, torch.tensor([0.6, 0.8])) and scaled.coeff == 5.0 and scaled.start == 1
    with pytest.raises(ValueError, match="per-position vectors have no single norm"):
        scaled_to_residual(SteeringSpec(6, "resid_pre", torch.ones(2, 2)), 1.0, 1.0)
    with pytest.raises(ValueError, match="all zeros"):
        scaled_to_residual(SteeringSpec(6, "resid_pre", torch.zeros(2)), 1.0, 1.0)


def test_the_contrast_pair_set():
    sentiment, formality = load_pairs("sentiment"), load_pairs("formality")
    assert len(sentiment) >= 64 and len(formality) >= 32
    for pairs in (sentiment, formality):
        assert len(set(pairs)) == len(pairs) and all(pos and neg and pos != neg for pos, neg in pairs)
    with pytest.raises(ValueError, match="allowed: formality, sentiment"):
        load_pairs("honesty")


@pytest.fixture
def recipe_specs(tiny, tokenizer) -> dict[str, SteeringSpec]:
    """One spec per recipe, built on the tiny model at block 2 (a fresh model per test)."""
    pairs = load_pairs("sentiment")[:6]
    mean = mean_difference(tiny, tokenizer, pairs, 2, coeff=4, progress=False)
    return {
        "contrast_pair": contrast_pair(tiny, tokenizer, "Love", "Hate", 2, coeff=4),
        "x_vector": x_vector(tiny, tokenizer, "Love", "Hate you", 4, 2, pad_token_id=SPACE),
        "mean_difference": mean,
        "pca": pca(tiny, tokenizer, pairs, 2, progress=False).spec(4.0, scale_by_variance=True),
        "relative": scaled_to_residual(mean, 2.0, residual_norm(tiny, tokenizer, load_reference_texts(), 2)),
    }


def test_every_recipe_steers_through_every_backend(runner, tiny, recipe_specs):
    """Same logits as pytorch_hooks on the HF model (within the parity tolerance) and a real
    effect. Bias editing adds one vector at every position, so it refuses the x-vector."""
    reference = Runner("pytorch_hooks", lambda: tiny, backend("pytorch_hooks").steer)
    for name, spec in recipe_specs.items():
        if runner.name == "bias_editing" and spec.per_position:
            with pytest.raises(ValueError, match="position-dependent"):
                logits_with(runner, [spec])
            continue
        steered = logits_with(runner, [spec])
        assert max_abs_diff(steered, logits_with(runner, []), MASK) > 1e-3, name
        expected = logits_with(reference, [spec])
        allowed = tolerance(RELATIVE_TOLERANCES[runner.name], expected, MASK)
        assert max_abs_diff(steered, expected, MASK) <= allowed, name

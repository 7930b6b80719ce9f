"""Property-based parity: random specs, prompts and batch shapes, every backend.

Hypothesis draws one to three specs (site, layer of either sign, 1-D or 2-D, start,
coeff, all batch rows or some) and a left-padded batch of random token ids. Every backend
must give the reference's logits (within RELATIVE_TOLERANCES of their scale) and, with the KV
cache, the greedy tokens and step logits of no-cache decoding; with per-row specs, each row's
logits must be those of the row run alone with the specs that steer it. Derandomized, so CI sees
the same examples every run.

Runs on the tiny GPT-2 and tiny Llama shapes (learned positions; rotary positions and a Llama
decoder): what these properties exercise is the spec's arithmetic, positions and rows, which do
not depend on width; the GPT-2 small, GPT-2-XL and SmolLM2 shapes run the parity suite's cases.
Fewer examples run on one tiny model per rule the other architectures add (layout.py: Gemma 2's
post-norms and scaled embeddings, Pythia's parallel residual, Granite's multiplier, Mixtral's
sparse MLP), where the same arithmetic lands at other modules.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parity_suite import PROMPTS, assert_same_greedy

from steering_backends import SITES, SteeringSpec
from steering_backends.models import gpt2_tokenizer, random_model
from steering_backends.parity import (
    REFERENCE,
    RELATIVE_ROUNDING,
    RELATIVE_TOLERANCES,
    left_pad,
    make_runners,
    max_abs_diff,
    residual_rms,
    supports,
    tolerance,
)

MODELS = ("tiny-gpt2-random", "tiny-llama-random")
RULES = ("tiny-gemma2-random", "tiny-pythia-random", "tiny-granite-random", "tiny-mixtral-random")
N_LAYERS, D_MODEL, VOCAB = 4, 64, 50257  # both models' shape (steering_backends.settings.RANDOM_CONFIGS)
N_NEW = 2
MIN_LEN, MAX_LEN = 4, 6
EXAMPLES = 60  # per model of MODELS (measured: ~0.35 s an example)
RULE_EXAMPLES = 20  # per model of RULES (measured: 4-7 s a model, against ~21 s for 60 on MODELS)


def _runners(name: str) -> tuple[list, float]:
    model, tokenizer = random_model(name), gpt2_tokenizer()
    assert (model.config.num_hidden_layers, model.config.hidden_size) == (N_LAYERS, D_MODEL)
    scale = residual_rms(model, *left_pad(tokenizer, PROMPTS)) / 4  # as in the parity suite
    runners, _ = make_runners(model, tokenizer)
    return runners, scale


@pytest.fixture(scope="module", params=MODELS)
def runners(request):
    return _runners(request.param)


@pytest.fixture(scope="module", params=RULES)
def rule_runners(request):
    return _runners(request.param)


@st.composite
def spec_lists(draw) -> list[tuple]:
    """1-3 spec recipes (layer, site, rows or None, start, coeff, seed, batch-row flags or None);
    vectors are built later, flags cut to the batch's size."""
    recipes = []
    for _ in range(draw(st.integers(1, 3))):
        rows = draw(st.one_of(st.none(), st.integers(1, 3)))  # None: a 1-D vector
        start = draw(st.integers(0, MIN_LEN - (rows or 0)))  # 2-D rows fit the shortest prompt
        recipes.append(
            (
                draw(st.integers(-N_LAYERS, N_LAYERS - 1)),
                draw(st.sampled_from(SITES)),
                rows,
                start,
                draw(st.floats(-4, 4, allow_nan=False)),
                draw(st.integers(0, 2**31 - 1)),
                draw(st.one_of(st.none(), st.tuples(st.booleans(), st.booleans()))),
            )
        )
    return recipes


@st.composite
def batches(draw) -> tuple[torch.Tensor, torch.Tensor]:
    """A left-padded batch of 1-2 random prompts: (ids [B, T], attention_mask [B, T])."""
    lengths = draw(st.lists(st.integers(MIN_LEN, MAX_LEN), min_size=1, max_size=2))
    width = max(lengths)
    ids = torch.full((len(lengths), width), VOCAB - 1)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for row, length in enumerate(lengths):
        ids[row, width - length :] = torch.tensor(
            draw(st.lists(st.integers(0, VOCAB - 2), min_size=length, max_size=length))
        )
        mask[row, width - length :] = 1
    return ids, mask


def build(recipes: list[tuple], scale: float, batch: int) -> list[SteeringSpec]:
    specs = []
    for layer, site, rows, start, coeff, seed, flags in recipes:
        shape = (D_MODEL,) if rows is None else (rows, D_MODEL)
        vector = scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
        specs.append(SteeringSpec(layer, site, vector, coeff, start, None if flags is None else flags[:batch]))
    return specs


PROPERTY = dict(
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


@settings(max_examples=EXAMPLES, **PROPERTY)
@given(recipes=spec_lists(), batch=batches())
def test_every_backend_agrees_with_the_reference_and_with_no_cache_decoding(runners, recipes, batch):
    assert_agreement(*runners, recipes, batch)


@settings(max_examples=RULE_EXAMPLES, **PROPERTY)
@given(recipes=spec_lists(), batch=batches())
def test_on_each_architecture_rule_every_backend_agrees_with_the_reference(rule_runners, recipes, batch):
    assert_agreement(*rule_runners, recipes, batch)


def assert_agreement(runners: list, scale: float, recipes: list[tuple], batch: tuple) -> None:
    """Every backend that takes the specs gives the reference's logits and greedy steps; with per-row specs
    each row's reference logits are those of the row run alone."""
    (ids, mask), specs = batch, build(recipes, scale, len(batch[0]))
    reference = next(r for r in runners if r.name == REFERENCE)
    with reference.steer(reference.model, specs):  # greedy with no cache: the whole sequence every step
        tokens, token_mask, outputs = ids, mask, []
        for _ in range(N_NEW):
            outputs.append(reference.logits(tokens, token_mask))  # [B, T + step, vocab]
            next_id = outputs[-1][:, -1].argmax(-1, keepdim=True)
            tokens, token_mask = torch.cat([tokens, next_id], 1), torch.cat([token_mask, torch.ones_like(next_id)], 1)
    ref_logits, ref_tokens = outputs[0], tokens
    ref_steps = torch.stack([out[:, -1] for out in outputs], 1)  # [B, N_NEW, vocab]
    if any(spec.rows is not None for spec in specs):  # each row as if alone, with the specs that steer it
        for row in range(len(ids)):
            own = [replace(s, rows=None) for s in specs if s.rows is None or s.rows[row]]
            real = mask[row].bool()
            with reference.steer(reference.model, own):
                alone = reference.logits(ids[row : row + 1, real], mask[row : row + 1, real])[0]
            allowed = tolerance(RELATIVE_ROUNDING, alone[None])
            assert (ref_logits[row, real] - alone).abs().max() <= allowed, f"row {row} differs alone: {recipes}"
    for runner in runners:
        if not supports(runner, specs):
            continue
        with runner.steer(runner.model, specs):
            logits = runner.logits(ids, mask)
            tokens, steps = runner.generate(ids, mask, N_NEW)
        relative = RELATIVE_TOLERANCES[runner.name]
        allowed = tolerance(relative, ref_logits, mask)
        assert max_abs_diff(logits, ref_logits, mask) <= allowed, f"{runner.name}: logits differ for {recipes}"
        step_allowed = tolerance(relative + RELATIVE_ROUNDING, ref_steps)
        assert_same_greedy(tokens[:, -N_NEW:], steps, ref_tokens[:, -N_NEW:], ref_steps, step_allowed, runner.name)

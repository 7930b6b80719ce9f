"""Steering does what it says on a real model: Love - Hate makes SmolLM2 write kinder words.

Setting (measured, see results/behaviour_smollm2-135m.md and the README):
    vector  act("<|im_start|>Love") - act("<|im_start|>Hate") at the last token, resid_pre of
            block 18 of 30. The BOS-like prefix keeps the word off position 0, where the model
            parks its attention sink (per-token RMS ~1000 there vs ~8 elsewhere), which would
            swamp the difference.
    effect  on negative prompts, the next token's log-probability of a fixed set of positive
            words minus that of negative words ("sentiment margin"), steered minus unsteered.
"""

from __future__ import annotations

import pytest
import torch
from helpers import write_result

from steering_backends import SteeringSpec, backend
from steering_backends.models import load
from steering_backends.parity import RELATIVE_TOLERANCES, Runner, hf_positions, left_pad, make_runners, tolerance
from steering_backends.vectors import contrast_vector

LAYER, COEFFS = 18, (1.0, -1.0)
SWEEP_LAYERS, SWEEP_COEFFS = (6, 9, 12, 15, 18, 21, 24), (-2.0, -1.0, -0.5, 0.5, 1.0, 2.0)
NEGATIVE_PROMPTS = [
    "I hate you because you are",
    "You are a terrible person and I think you are",
    "This is the worst day, and I feel so",
    "My boss is so",
    "I can't stand people who are",
    "The food at this restaurant was",
]
POSITIVE_WORDS = [" love", " wonderful", " great", " happy", " beautiful", " kind", " amazing", " good"]
NEGATIVE_WORDS = [" hate", " terrible", " awful", " angry", " horrible", " stupid", " evil", " bad"]


@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


def word_ids(tokenizer, words: list[str]) -> list[int]:
    ids = [tokenizer(word)["input_ids"] for word in words]
    assert all(len(i) == 1 for i in ids), "each word must be one token, or its log-probability is not one number"
    return [i[0] for i in ids]


def margins(runner: Runner, tokenizer, specs: list[SteeringSpec]) -> torch.Tensor:
    """Per prompt: log P(any positive word) - log P(any negative word) for the next token. [n_prompts]"""
    ids, mask = left_pad(tokenizer, NEGATIVE_PROMPTS)
    with runner.steer(runner.model, specs):
        logprobs = runner.logits(ids, mask)[:, -1].log_softmax(-1)
    positive, negative = word_ids(tokenizer, POSITIVE_WORDS), word_ids(tokenizer, NEGATIVE_WORDS)
    return logprobs[:, positive].logsumexp(-1) - logprobs[:, negative].logsumexp(-1)


def love_hate(model, tokenizer, layer: int) -> torch.Tensor:
    return contrast_vector(model, tokenizer, "Love", "Hate", layer, "resid_pre")  # BOS prepended


@pytest.fixture(scope="module")
def shifts(smol):
    """{backend: {coeff: per-prompt margin shift, steered - unsteered}} at the chosen setting."""
    model, tokenizer = smol
    vector = love_hate(model, tokenizer, LAYER)
    runners, _ = make_runners(model, tokenizer)
    shifts = {}
    for runner in runners:
        unsteered = margins(runner, tokenizer, [])
        shifts[runner.name] = {
            coeff: margins(runner, tokenizer, [SteeringSpec(LAYER, "resid_pre", vector, coeff)]) - unsteered
            for coeff in COEFFS
        }
    return shifts


def test_love_minus_hate_raises_positive_words_and_its_negative_lowers_them(shifts):
    for name, by_coeff in shifts.items():
        up, down = by_coeff[1.0], by_coeff[-1.0]
        assert (up > 0).all(), f"{name}: +Love-Hate lowered the positive margin on some prompt: {up}"
        assert (down < 0).all(), f"{name}: -(Love-Hate) raised the positive margin on some prompt: {down}"
        assert up.mean() > 1.0 and down.mean() < -1.0, f"{name}: effect too small to matter: {up}, {down}"


def test_every_backend_measures_the_same_effect(smol, shifts):
    model, tokenizer = smol
    ids, mask = left_pad(tokenizer, NEGATIVE_PROMPTS)
    unsteered_logits = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits
    reference = shifts["pytorch_hooks"]
    for name, by_coeff in shifts.items():
        for coeff, shift in by_coeff.items():
            # A shift is a difference of two margins, each a difference of two log-sums of
            # logits: four terms, each within the logit tolerance of the reference.
            allowed = 4 * tolerance(RELATIVE_TOLERANCES[name], unsteered_logits, mask)
            assert (shift - reference[coeff]).abs().max() <= allowed, (name, coeff)


def test_sweep_over_layers_and_coefficients_is_recorded(smol, shifts):
    """The table behind the chosen setting (written to results/); its cell for the chosen
    setting must reproduce the effect measured above."""
    model, tokenizer = smol
    runner = Runner("pytorch_hooks", lambda: model, backend("pytorch_hooks").steer)
    unsteered = margins(runner, tokenizer, [])
    lines = [
        "## SmolLM2-135M: Love - Hate at resid_pre, sentiment-margin shift (nats)",
        "",
        f"Mean over {len(NEGATIVE_PROMPTS)} negative prompts; in brackets, prompts moved the expected way.",
        "",
        "| layer | |v| | " + " | ".join(f"coeff {c:+g}" for c in SWEEP_COEFFS) + " |",
        "|---" * (len(SWEEP_COEFFS) + 2) + "|",
    ]
    table = {}
    for layer in SWEEP_LAYERS:
        vector = love_hate(model, tokenizer, layer)
        cells = []
        for coeff in SWEEP_COEFFS:
            shift = margins(runner, tokenizer, [SteeringSpec(layer, "resid_pre", vector, coeff)]) - unsteered
            table[layer, coeff] = shift
            right_way = int((shift * coeff > 0).sum())
            cells.append(f"{shift.mean():+.2f} ({right_way}/{len(shift)})")
        lines.append(f"| {layer} | {vector.norm():.0f} | " + " | ".join(cells) + " |")
    write_result("behaviour_smollm2-135m.md", "\n".join(lines))
    for coeff in COEFFS:
        assert torch.allclose(table[LAYER, coeff], shifts["pytorch_hooks"][coeff])

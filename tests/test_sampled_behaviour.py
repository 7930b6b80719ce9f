"""The measured sentiment setting (models.SENTIMENT) changes what SmolLM2 *writes*, judged by VADER.

A CI-sized slice of the held-out report (benchmarks/results/behaviour_heldout.md): the 8
held-out prompts x 2 seeds (the report uses 8), 60 sampled tokens, the report's sampling
settings. It fails if sentiment_spec builds another vector, block or sign than the one the
sweep chose, or if sampling or the judge break.
"""

from __future__ import annotations

import json

import pytest

from steering_backends.compare import compare
from steering_backends.models import load, sentiment_spec
from steering_backends.vectors import DATA

HELD_OUT = json.loads((DATA / "behaviour_prompts.json").read_text())["held_out"]
# Measured on these 16 rows (seeds 0-1; deterministic on CPU in float32): warmer Δ +0.527, 14/16
# rows up, perplexity x1.61; colder Δ -0.952, 15/16 rows down, x1.80. Asserted: about half the
# measured |Δ| (a wrong sign gives a Δ of the other sign; a wrong block or scale, a smaller one or
# broken text), 11 of 16 rows, and the fluency target of perplexity x2.
BOUNDS = {1: (0.25, 11, 2.0), -1: (0.45, 11, 2.0)}  # (|Δ| at least, rows moved at least, perplexity x at most)


@pytest.fixture(scope="module")
def smol():
    return load("smollm2-135m")


@pytest.mark.parametrize("sign", [1, -1], ids=["warmer", "colder"])
def test_the_measured_setting_moves_sampled_sentiment(smol, sign):
    model, tokenizer = smol
    spec = sentiment_spec(model, tokenizer, sign)
    summary = compare(model, tokenizer, HELD_OUT, [spec], n=2, max_new_tokens=60, expect=sign).summary()
    least_delta, least_moved, most_ppl = BOUNDS[sign]
    assert summary.delta * sign >= least_delta, summary
    assert summary.moved >= least_moved, summary
    assert summary.perplexity_ratio <= most_ppl, summary

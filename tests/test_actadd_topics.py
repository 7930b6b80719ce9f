"""The topic experiment's measures, checked by hand on small inputs, and its stored results' fields.

No sweep runs here: benchmarks/actadd_topics.py makes the results; these tests check the
word counter and the perplexity-on-text measure it uses, and that the stored rows hold
what notebook 06 and docs/actadd.md read.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from benchmarks.actadd_topics import ROWS, TOPICS, count_words, text_perplexity, topic_rates
from steering_backends.models import random_model
from steering_backends.spec import SteeringSpec

WEDDING_WORDS = TOPICS["weddings"]["words"]


def test_count_words_counts_whole_words_case_insensitively():
    # bride, groom (of "groom's"), Wedding, wed: 4. "Wednesday" and "bridesmaid" are other words.
    text = "The bride and the groom's Wedding was on Wednesday; the bridesmaid saw them wed."
    assert count_words(text, WEDDING_WORDS) == 4
    assert count_words("WEDDINGS, weddings and a honeymoon", WEDDING_WORDS) == 3
    assert count_words("", WEDDING_WORDS) == 0
    assert count_words("a dog barks at two dogs", TOPICS["dogs"]["words"]) == 3


def test_topic_rates_share_and_mean_count():
    # counts 1, 0, 2: two of three texts hold a word; 3 words over 3 texts.
    share, mean = topic_rates(["a wedding", "nothing here", "bride and groom"], WEDDING_WORDS)
    assert share == pytest.approx(2 / 3)
    assert mean == pytest.approx(1.0)


class _Letters:
    """Tokenizer stub: each letter a-d is one token (0-3); BOS is token 3."""

    bos_token_id = 3

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": ["abcd".index(c) for c in text]}


class _FixedNextToken(torch.nn.Module):
    """Predicts the same next-token distribution (1/2, 1/4, 1/8, 1/8) at every position."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # completion_nll reads the device from a parameter

    def forward(self, input_ids, attention_mask=None, position_ids=None):
        probs = torch.tensor([1 / 2, 1 / 4, 1 / 8, 1 / 8])
        return SimpleNamespace(logits=probs.log().expand(*input_ids.shape, 4))


def test_text_perplexity_by_hand():
    model, tokenizer = _FixedNextToken(), _Letters()
    # "ab": tokens 0 and 1, probabilities 1/2 and 1/4: NLL ln 2 + ln 4 = 3 ln 2 over 2 tokens,
    # perplexity exp(1.5 ln 2) = 2 ** 1.5.
    assert text_perplexity(model, tokenizer, ["ab"]) == pytest.approx(2**1.5)
    # skip=1: "a" is context only; "b" alone has perplexity 4.
    assert text_perplexity(model, tokenizer, ["ab"], skip=1) == pytest.approx(4.0)
    # token-weighted over texts: "c" (1/8) and "aa" (1/2, 1/2): NLL ln 8 + 2 ln 2 = 5 ln 2 over 3 tokens.
    assert text_perplexity(model, tokenizer, ["c", "aa"]) == pytest.approx(2 ** (5 / 3))
    assert text_perplexity(model, tokenizer, ["d"]) == pytest.approx(8.0)  # 1/8
    with pytest.raises(ValueError, match="skip=1"):
        text_perplexity(model, tokenizer, ["a"], skip=1)


def test_text_perplexity_steered_through_a_backend(tokenizer):
    model = random_model("tiny-llama-random")
    texts = ["The cat sat on the mat and looked out of the window."]
    vector = torch.randn(3, model.config.hidden_size)  # an x-vector's shape: [n, d_model]
    base = text_perplexity(model, tokenizer, texts)
    assert text_perplexity(model, tokenizer, texts, [SteeringSpec(1, "resid_pre", vector, 0.0)]) == base
    assert text_perplexity(model, tokenizer, texts, [SteeringSpec(1, "resid_pre", vector, 8.0)]) != base


def test_stored_results_have_the_fields_the_notebook_reads():
    rows = [json.loads(line) for line in ROWS.read_text().splitlines()]
    kinds = {r["kind"] for r in rows}
    assert kinds == {"sweep", "held_out", "texts"}
    common = {"topic", "block", "coeff", "relative", "rate", "mean_count", "unsteered_rate", "ppl_ratio", "repetition"}
    for r in rows:
        if r["kind"] == "sweep":
            assert common <= r.keys()
        elif r["kind"] == "held_out":
            assert common | {"setting", "unsteered_mean_count", "examples"} <= r.keys()
        else:
            assert {"topic", "block", "coeff", "unsteered", "steered", "unsteered_after", "steered_after"} <= r.keys()
    assert {r["topic"] for r in rows if r["kind"] == "held_out"} == set(TOPICS)
    assert (ROWS.parent / "actadd_topics.png").read_bytes().startswith(b"\x89PNG")

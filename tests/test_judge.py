"""The judge and the fluency measures, checked by hand on small inputs; seeded sampling and
the Comparison summary, checked against their definitions."""

from __future__ import annotations

import math

import pytest
import torch

from steering_backends import SteeringSpec
from steering_backends.compare import Comparison, Completion, FrequencyPenalty, SeededSampler, compare, sample
from steering_backends.judge import completion_nll, perplexity, repeated_ngram_share, sentiment
from steering_backends.models import random_model
from steering_backends.prompts import encode


@pytest.fixture(scope="module")
def gpt2_tiny():
    return random_model("tiny-gpt2-random")


def test_vader_compound_by_hand():
    # VADER's lexicon (vader_lexicon.txt): good 1.9, bad -2.5, love 3.2. A single word's
    # compound is its valence normalised as x / sqrt(x^2 + 15) (alpha = 15 in VADER's paper).
    def normalise(x: float) -> float:
        return x / math.sqrt(x * x + 15)

    scores = sentiment(["good", "bad", "love", "the table is brown", ""])
    expected = [normalise(1.9), normalise(-2.5), normalise(3.2), 0.0, 0.0]
    assert scores == pytest.approx(expected, abs=1e-4)  # VADER rounds the compound to 4 decimals


def test_repeated_ngram_share_by_hand():
    # 3-grams of "a b c a b c": abc, bca, cab, abc -> 4 of which 1 repeats an earlier one
    assert repeated_ngram_share("a b c a b c") == 0.25
    assert repeated_ngram_share("A b C a B c") == 0.25  # lower-cased
    assert repeated_ngram_share("one two three four") == 0.0
    assert repeated_ngram_share("too short") == 0.0
    assert repeated_ngram_share("x x x x x") == pytest.approx(2 / 3)  # xxx three times, two repeats


def test_perplexity_is_token_weighted():
    assert perplexity([(2.0, 1), (4.0, 3)]) == pytest.approx(math.exp(6 / 4))
    assert math.isnan(perplexity([(0.0, 0)]))


def test_completion_nll_by_hand(gpt2_tiny):
    prompts, completions = [[5, 6, 7], [9]], [[1, 2], [3, 4, 8]]
    got = completion_nll(gpt2_tiny, prompts, completions)
    for prompt, completion, (nll, n) in zip(prompts, completions, got, strict=True):
        ids = torch.tensor([prompt + completion])  # alone, no padding
        log_probs = gpt2_tiny(input_ids=ids).logits[0].log_softmax(-1)
        by_hand = -sum(log_probs[len(prompt) - 1 + i, token] for i, token in enumerate(completion))
        assert n == len(completion)
        # row 0 is left-padded in the batch: at most float rounding (measured 0.0 on this CPU)
        assert nll == pytest.approx(by_hand.item(), abs=1e-5)
    assert completion_nll(gpt2_tiny, [[5]], [[]]) == [(0.0, 0)]


def test_frequency_penalty_leaves_padding_out():
    prompt_mask = torch.tensor([[0, 0, 1], [1, 1, 1]])
    ids = torch.tensor([[4, 4, 1, 1], [4, 0, 4, 1]])  # the last column was generated
    out = FrequencyPenalty(0.5, prompt_mask)(ids, torch.zeros(2, 5))
    assert torch.equal(out, torch.tensor([[0, -1.0, 0, 0, 0], [-0.5, -0.5, 0, 0, -1.0]]))


def test_seeded_sampler_is_inverse_cdf_of_the_rows_own_generator():
    scores = torch.tensor([[0.0, 1.0, 2.0, 3.0], [3.0, 2.0, 1.0, 0.0]])
    out = SeededSampler([11, 12])(torch.zeros(2, 1, dtype=torch.long), scores)
    for row, seed in enumerate([11, 12]):
        u = 1 - torch.rand(1, generator=torch.Generator().manual_seed(seed)).item()
        cdf = scores[row].softmax(-1).cumsum(-1).tolist()
        expected = next(i for i, c in enumerate(cdf) if c >= u * cdf[-1])
        assert out[row].tolist() == [0.0 if i == expected else -math.inf for i in range(4)]


def test_a_row_samples_the_same_text_alone_or_in_a_padded_batch(gpt2_tiny, tokenizer):
    prompts, seeds = ["I hate you because", "Hi", "The weather today is"], [3, 4, 5]
    batch = sample(gpt2_tiny, tokenizer, prompts, seeds, max_new_tokens=10)
    alone = [sample(gpt2_tiny, tokenizer, [p], [s], max_new_tokens=10)[0] for p, s in zip(prompts, seeds, strict=True)]
    assert batch == alone
    assert len({tuple(r) for r in batch}) == 3


def completion(mood: float, nll: float, n: int, text: str = "x") -> Completion:
    return Completion(text, tuple(range(n)), mood, nll, 0.0)


def test_summary_by_hand():
    unsteered = [completion(-0.5, 4.0, 2), completion(0.0, 2.0, 2), completion(0.3, 2.0, 4)]
    steered = [completion(0.5, 6.0, 2), completion(0.0, 6.0, 2), completion(0.1, 4.0, 4)]
    table = Comparison(["p"] * 3, [0, 1, 2], unsteered, steered, expect=1)
    s = table.summary()
    assert s.n == 3 and s.moved == 1  # a tie (0.0 -> 0.0) does not count as moved
    assert s.unsteered_sentiment == pytest.approx(-0.2 / 3) and s.steered_sentiment == pytest.approx(0.2)
    assert s.delta == pytest.approx(0.2 + 0.2 / 3)
    assert s.unsteered_perplexity == pytest.approx(math.exp(8 / 8))
    assert s.steered_perplexity == pytest.approx(math.exp(16 / 8)) and s.perplexity_ratio == pytest.approx(math.e)
    flipped = Comparison(["p"] * 3, [0, 1, 2], unsteered, steered, expect=-1).summary()
    assert flipped.moved == 1  # only row 2 went down
    with pytest.raises(ValueError, match="expect=0 must be 1"):
        Comparison(["p"], [0], unsteered[:1], steered[:1], expect=0)


def test_compare_scores_every_row_with_the_unsteered_model(gpt2_tiny, tokenizer):
    spec = SteeringSpec(2, "resid_pre", torch.randn(64, generator=torch.Generator().manual_seed(1)), 8.0)
    table = compare(gpt2_tiny, tokenizer, ["I hate you", "Good morning"], [spec], n=2, max_new_tokens=6)
    assert table.prompts == ["I hate you"] * 2 + ["Good morning"] * 2 and table.seeds == [0, 1, 0, 1]
    for prompt, column in ((p, c) for c in (table.unsteered, table.steered) for p in table.prompts[:1]):
        row = column[0]
        nll = completion_nll(gpt2_tiny, [encode(tokenizer, prompt, bos=True)], [list(row.ids)])[0][0]
        assert row.nll == pytest.approx(nll, abs=1e-5) and row.sentiment == sentiment([row.text])[0]

"""Scoring completions with measures nobody here wrote: sentiment, fluency, repetition.

    sentiment(["what a lovely day", "I hate this"])      # VADER compound, -1 ... 1 each
    repeated_ngram_share("a b c a b c")                 # 0.25: 1 of 4 word 3-grams repeats
    completion_nll(model, [prompt_ids], [new_ids])      # [(summed NLL in nats, n tokens)]

Sentiment is VADER's compound score (Hutto & Gilbert 2014; PyPI ``vaderSentiment``): a
rule-based lexicon judge, so it cannot be tuned to our vectors and gives the same score
on every machine. Score the completion alone, not prompt + completion: a prompt such as
"I hate you because" would otherwise pull both columns down by the same amount.

Fluency follows the ActivationAdditions paper: the perplexity of a steered completion
under the *unsteered* model. Steering that breaks the language shows up as text the
unsteered model finds surprising, and as repetition.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import torch

from .prompts import hf_positions, left_pad_ids

__all__ = ["completion_nll", "perplexity", "repeated_ngram_share", "sentiment"]


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(texts: Sequence[str]) -> list[float]:
    """VADER compound score of each text: -1 (most negative) ... +1 (most positive); 0 for no sentiment."""
    return [_vader().polarity_scores(text)["compound"] for text in texts]


def repeated_ngram_share(text: str, n: int = 3) -> float:
    """Share of the text's word n-grams (lower-cased, split on whitespace) that repeat an earlier one.

    0 when every n-gram is new, approaching 1 for a loop; 0 for text shorter than n words.
    """
    words = text.lower().split()
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def completion_nll(
    model: torch.nn.Module, prompts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]], batch_size: int = 16
) -> list[tuple[float, int]]:
    """(summed negative log-likelihood in nats, token count) of each completion given its prompt.

    Run the model *unsteered* to get the fluency measure. Rows are left-padded into batches;
    a completion with no tokens gives (0.0, 0).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"completion_nll: {len(prompts)} prompts but {len(completions)} completions")
    device = next(model.parameters()).device
    results: list[tuple[float, int]] = []
    for first in range(0, len(prompts), batch_size):
        chunk = zip(prompts[first : first + batch_size], completions[first : first + batch_size], strict=True)
        ids, mask = (t.to(device) for t in left_pad_ids([[*p, *c] for p, c in chunk], pad_id=0))  # [b, T]
        width = ids.shape[1]
        logits = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask)).logits.float()
        log_probs = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)  # [b, T-1]: token t+1
        for row, completion in enumerate(completions[first : first + batch_size]):
            n = len(completion)
            results.append((-log_probs[row, width - 1 - n :].sum().item() if n else 0.0, n))
    return results


def perplexity(nlls: Sequence[tuple[float, int]]) -> float:
    """exp(total NLL / total tokens) over (summed NLL, n tokens) pairs: the column's perplexity, token-weighted."""
    tokens = sum(n for _, n in nlls)
    return math.exp(sum(nll for nll, _ in nlls) / tokens) if tokens else float("nan")

"""What a steering spec did: sampled completions side by side, scored, and how big the push was.

    table = compare(model, tokenizer, "I hate you because", [spec], backend="pytorch_hooks", n=8)
    table                    # in a notebook: an HTML table with each completion's scores
    print(table)             # in a terminal: plain text, then the column means
    table.summary()          # mean sentiment per column, rows moved, perplexity, repetition

    ratios = steering_magnitudes(model, tokenizer, "I hate you because", [spec])
    plot_magnitudes(ratios, tokens).savefig("magnitudes.png")

Sampling follows the settings of the original ActivationAdditions comparisons
(temperature 1, frequency penalty 1, top_p 0.3), in TransformerLens's order:
temperature, then the frequency penalty, then top-p. Row i of both columns is drawn with
the same seed, so the only difference between them is the steering. Each row has its own
random generator, so a row samples the same text alone or inside a padded batch of others.

Every completion is scored by judges from judge.py: VADER sentiment of the completion
(prompt left out), its perplexity under the *unsteered* model, and its repeated 3-grams.
"""

from __future__ import annotations

import dataclasses
import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from . import backend as backend_module
from .judge import completion_nll, perplexity, repeated_ngram_share, sentiment
from .layout import dims
from .prompts import encode, left_pad
from .spec import SteeringPlan, SteeringSpec
from .vectors import activations

__all__ = [
    "Comparison",
    "Completion",
    "FrequencyPenalty",
    "SeededSampler",
    "Summary",
    "TopP",
    "compare",
    "plot_magnitudes",
    "sample",
    "score",
    "steering_magnitudes",
]


class FrequencyPenalty(LogitsProcessor):
    """Subtract ``penalty * count`` from each token's logit, where count is how often the
    token occurs in the sequence so far, prompt included (as TransformerLens samples).
    HF has a multiplicative repetition penalty, but no additive frequency penalty.

    ``prompt_mask`` [B, T0] (1 = real token) keeps left padding out of the counts, so a
    padded row is penalised exactly as it would be alone."""

    def __init__(self, penalty: float, prompt_mask: torch.Tensor | None = None) -> None:
        if not math.isfinite(penalty) or penalty < 0:
            raise ValueError(f"frequency_penalty={penalty!r} must be a finite number >= 0")
        self.penalty, self.prompt_mask = penalty, prompt_mask

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] so far, scores [B, vocab] for the next token."""
        weights = torch.ones_like(input_ids, dtype=scores.dtype)
        if self.prompt_mask is not None:
            weights[:, : self.prompt_mask.shape[1]] = self.prompt_mask.to(scores.dtype)
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, weights)
        return scores - self.penalty * counts


class TopP(LogitsProcessor):
    """Nucleus filtering, as HF's TopPLogitsWarper: keep the most probable tokens while the mass
    of those above them is below ``top_p`` (at least one), set the rest to -inf.

    HF sorts the whole vocabulary of every row at every step (27 ms for 16 rows x 49,152 on 2 CPU
    cores, more than SmolLM2's forward adds for those rows). The nucleus is a handful of tokens,
    so the ``k`` most probable are enough whenever they hold ``top_p`` of the mass: every token
    below them has at least that much above it. A row where they do not falls back to HF's sort.
    """

    def __init__(self, top_p: float, k: int = 256) -> None:
        self.top_p, self.k = top_p, k

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, vocab] -> [B, vocab], -inf outside each row's nucleus."""
        probs = scores.float().softmax(-1)
        top, index = probs.topk(min(self.k, probs.shape[-1]), dim=-1)  # [B, k], most probable first
        if bool((top.sum(-1) < self.top_p).any()):
            return TopPLogitsWarper(self.top_p)(input_ids, scores)
        keep = (top.cumsum(-1) - top) < self.top_p  # mass strictly above each token < top_p
        keep[:, 0] = True
        outside = torch.ones_like(scores, dtype=torch.bool).scatter_(1, index, ~keep)
        return scores.masked_fill(outside, -math.inf)


class SeededSampler(LogitsProcessor):
    """Draw each row's next token from softmax(scores) with that row's own generator, and
    leave every other token at -inf, so that generate's greedy step picks the drawn one.

    HF's sampler draws all rows from one global generator, so a row's text would depend
    on which rows share its batch. Inverse-CDF draws from per-row generators do not: row
    i of a steered and an unsteered batch uses the same uniform numbers (seed ``seeds[i]``).
    """

    def __init__(self, seeds: Sequence[int]) -> None:
        self.generators = [torch.Generator().manual_seed(seed) for seed in seeds]

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """scores [B, vocab] -> [B, vocab]: 0 at the drawn token, -inf elsewhere."""
        uniform = torch.cat([1 - torch.rand(1, generator=g) for g in self.generators])  # (0, 1]: never 0
        cdf = scores.float().softmax(-1).cumsum(-1)  # [B, vocab]
        target = (uniform.to(cdf.device) * cdf[:, -1]).unsqueeze(-1)
        drawn = torch.searchsorted(cdf, target).clamp(max=scores.shape[-1] - 1)  # [B, 1]
        return torch.full_like(scores, -math.inf).scatter_(1, drawn, 0.0)


@dataclass(frozen=True)
class Completion:
    """One sampled completion and its scores."""

    text: str  # the new text only, special tokens left out
    ids: tuple[int, ...]  # the new token ids, up to and including an end-of-sequence token
    sentiment: float  # VADER compound of ``text``: -1 ... 1
    nll: float  # summed negative log-likelihood of ``ids`` under the unsteered model, nats
    repetition: float  # share of word 3-grams that repeat an earlier one

    @property
    def perplexity(self) -> float:
        """Under the unsteered model."""
        return math.exp(self.nll / len(self.ids)) if self.ids else float("nan")


@dataclass(frozen=True)
class Summary:
    """Column means of a Comparison. ``moved``: rows whose steered sentiment is strictly
    beyond (in the expected direction) the unsteered row with the same prompt and seed."""

    n: int
    expect: int  # +1: steering should raise sentiment; -1: lower it
    unsteered_sentiment: float
    steered_sentiment: float
    moved: int
    unsteered_perplexity: float  # token-weighted over the column, under the unsteered model
    steered_perplexity: float
    unsteered_repetition: float
    steered_repetition: float

    @property
    def delta(self) -> float:
        return self.steered_sentiment - self.unsteered_sentiment

    @property
    def perplexity_ratio(self) -> float:
        return self.steered_perplexity / self.unsteered_perplexity

    def __str__(self) -> str:
        direction = "more positive" if self.expect > 0 else "more negative"
        return (
            f"mean sentiment (VADER): unsteered {self.unsteered_sentiment:+.2f}, steered {self.steered_sentiment:+.2f}"
            f" (Δ {self.delta:+.2f}); {self.moved}/{self.n} rows {direction} than their unsteered row\n"
            f"perplexity under the unsteered model: {self.unsteered_perplexity:.1f} → {self.steered_perplexity:.1f}"
            f" (×{self.perplexity_ratio:.2f}); repeated 3-grams {self.unsteered_repetition:.0%}"
            f" → {self.steered_repetition:.0%}"
        )


@dataclass(repr=False)
class Comparison:
    """Unsteered and steered completions; row i of both used prompt ``prompts[i]`` and seed ``seeds[i]``."""

    prompts: list[str]
    seeds: list[int]
    unsteered: list[Completion]
    steered: list[Completion]
    settings: dict[str, Any] = field(default_factory=dict)
    expect: int = 1

    def __post_init__(self) -> None:
        if self.expect not in (1, -1):
            raise ValueError(f"expect={self.expect!r} must be 1 (more positive) or -1 (more negative)")
        if not len(self.prompts) == len(self.seeds) == len(self.unsteered) == len(self.steered) > 0:
            raise ValueError("Comparison: prompts, seeds, unsteered and steered must be non-empty and equally long")

    def __repr__(self) -> str:  # short: str() and the HTML table show the rows
        return f"<Comparison of {len(self.seeds)} rows: {self.summary()}>".replace("\n", "; ")

    def summary(self) -> Summary:
        def mean(values: list[float]) -> float:
            return sum(values) / len(values)

        pairs = zip(self.unsteered, self.steered, strict=True)
        moved = sum((s.sentiment - u.sentiment) * self.expect > 0 for u, s in pairs)
        return Summary(
            n=len(self.seeds),
            expect=self.expect,
            unsteered_sentiment=mean([c.sentiment for c in self.unsteered]),
            steered_sentiment=mean([c.sentiment for c in self.steered]),
            moved=moved,
            unsteered_perplexity=perplexity([(c.nll, len(c.ids)) for c in self.unsteered]),
            steered_perplexity=perplexity([(c.nll, len(c.ids)) for c in self.steered]),
            unsteered_repetition=mean([c.repetition for c in self.unsteered]),
            steered_repetition=mean([c.repetition for c in self.steered]),
        )

    def _settings_line(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.settings.items())

    def __str__(self) -> str:
        width = 50
        rule = "-" * (2 * width + 3)
        lines = [self._settings_line(), rule, f"{'unsteered':<{width}} | steered"]
        for prompt, seed, left, right in zip(self.prompts, self.seeds, self.unsteered, self.steered, strict=True):
            lines.append(rule)
            heads = [f"seed {seed}: {c.sentiment:+.2f} sentiment, ppl {c.perplexity:.1f}" for c in (left, right)]
            left_lines = [heads[0], *textwrap.wrap(prompt + left.text, width)]
            right_lines = [heads[1], *textwrap.wrap(prompt + right.text, width)]
            for i in range(max(len(left_lines), len(right_lines))):
                a = left_lines[i] if i < len(left_lines) else ""
                b = right_lines[i] if i < len(right_lines) else ""
                lines.append(f"{a:<{width}} | {b}")
        return "\n".join([*lines, rule, str(self.summary())])

    def _repr_html_(self) -> str:
        def cell(prompt: str, c: Completion) -> str:
            return f"<td style='text-align:left'><b>{html.escape(prompt)}</b>{html.escape(c.text)}</td>"

        def scores(c: Completion) -> str:
            return f"<td>{c.sentiment:+.2f}</td><td>{c.perplexity:.1f}</td>"

        rows = "".join(
            f"<tr><td>{seed}</td>{cell(prompt, u)}{scores(u)}{cell(prompt, s)}{scores(s)}</tr>"
            for prompt, seed, u, s in zip(self.prompts, self.seeds, self.unsteered, self.steered, strict=True)
        )
        summary = html.escape(str(self.summary())).replace("\n", "<br>")
        text = "<th style='text-align:left'>{}</th>"  # over left-aligned text (Jupyter right-aligns headers)
        return (
            f"<table><caption>{html.escape(self._settings_line())}</caption>"
            f"<tr><th>seed</th>{text.format('unsteered')}<th>sentiment</th><th>ppl</th>"
            f"{text.format('steered')}<th>sentiment</th><th>ppl</th></tr>{rows}"
            f"<tr><td colspan='7' style='text-align:left'>{summary}</td></tr></table>"
        )


def _validate(n: int, temperature: float, top_p: float, frequency_penalty: float, max_new_tokens: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"compare: n={n!r} must be an int >= 1")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"compare: max_new_tokens={max_new_tokens!r} must be an int >= 1")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"compare: temperature={temperature!r} must be >= 0 (0 is greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"compare: top_p={top_p!r} must be in (0, 1]")
    FrequencyPenalty(frequency_penalty)  # validates


def _until_eos(new_ids: list[int], eos: set[int]) -> list[int]:
    """The tokens up to and including the first end-of-sequence token (generate pads after it)."""
    for i, token in enumerate(new_ids):
        if token in eos:
            return new_ids[: i + 1]
    return new_ids


def sample(
    model,
    tokenizer,
    prompts: Sequence[str],
    seeds: Sequence[int],
    temperature: float = 1.0,
    top_p: float = 0.3,
    frequency_penalty: float = 1.0,
    max_new_tokens: int = 40,
    bos: bool = True,
    batch_size: int = 64,
    is_bridge: bool = False,
) -> list[list[int]]:
    """New token ids of one sampled completion per (prompts[i], seeds[i]), steered by whatever
    ``steer`` block is active. HF models run left-padded batches; a TransformerLens bridge
    samples one row at a time with its own sampler (same settings and order, global seed)."""
    eos_ids = model.generation_config.eos_token_id if not is_bridge else tokenizer.eos_token_id
    eos = set(eos_ids if isinstance(eos_ids, list) else [eos_ids]) - {None}
    device = next(model.parameters()).device
    if is_bridge:
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            ids = torch.tensor([encode(tokenizer, prompt, bos)], device=device)
            torch.manual_seed(seed)
            tokens = model.generate(
                ids,
                max_new_tokens=max_new_tokens,
                do_sample=temperature > 0,
                temperature=temperature,
                top_p=top_p,
                freq_penalty=frequency_penalty,
                verbose=False,
            )
            out.append(_until_eos(tokens[0, ids.shape[1] :].tolist(), eos))
        return out
    out = []
    for first in range(0, len(prompts), batch_size):
        chunk, chunk_seeds = list(prompts[first : first + batch_size]), seeds[first : first + batch_size]
        ids, mask = (t.to(device) for t in left_pad(tokenizer, chunk, bos=bos))  # [b, T0]
        processors = []
        if temperature > 0:  # our own list fixes the order; generate's own warpers stay off
            processors = [TemperatureLogitsWarper(temperature), FrequencyPenalty(frequency_penalty, mask)]
            processors += [TopP(top_p)] if top_p < 1 else []
            processors += [SeededSampler(chunk_seeds)]
        tokens = model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,  # greedy on SeededSampler's one finite score = the drawn token
            logits_processor=LogitsProcessorList(processors),
            pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
        )
        out += [_until_eos(row.tolist(), eos) for row in tokens[:, ids.shape[1] :]]
    return out


def score(model, tokenizer, prompts: Sequence[str], new_ids: Sequence[Sequence[int]], bos: bool = True):
    """A Completion per row, judged; run it with the model *unsteered* (perplexity is the unsteered model's).

    ``model`` may be a TransformerLens bridge: its wrapped HF model is scored."""
    hf_model = getattr(model, "original_model", model)
    nlls = completion_nll(hf_model, [encode(tokenizer, p, bos) for p in prompts], new_ids)
    texts = [tokenizer.decode(ids, skip_special_tokens=True) for ids in new_ids]
    return [
        Completion(text, tuple(ids), mood, nll, repeated_ngram_share(text))
        for text, ids, mood, (nll, _) in zip(texts, new_ids, sentiment(texts), nlls, strict=True)
    ]


# Backends that steer some rows of a batch only (SteeringSpec.rows): compare samples both
# columns in one batch through them. Bias editing cannot (a bias is shared by every row); the
# TransformerLens bridge samples one row at a time.
ONE_BATCH = ("custom_wrapper", "pytorch_hooks", "baukit_tracedict", "nnsight_trace")


def _sample_both_columns(model, tokenizer, steer, specs, prompts, seeds, draw, bos, batch_size: int = 64):
    """(unsteered, steered) new ids: each chunk of prompts twice in one batch, the second copy steered."""
    for i, spec in enumerate(specs):
        if spec.rows is not None:
            raise ValueError(f"specs[{i}].rows={spec.rows}: compare steers whole columns; leave rows as None")
    unsteered, steered = [], []
    half = batch_size // 2
    for first in range(0, len(prompts), half):
        chunk, chunk_seeds = list(prompts[first : first + half]), list(seeds[first : first + half])
        flags = (False,) * len(chunk) + (True,) * len(chunk)
        with steer(model, [dataclasses.replace(spec, rows=flags) for spec in specs]):
            both = sample(model, tokenizer, chunk * 2, chunk_seeds * 2, **draw, bos=bos, batch_size=2 * len(chunk))
        unsteered += both[: len(chunk)]
        steered += both[len(chunk) :]
    return unsteered, steered


def compare(
    model,
    tokenizer,
    prompts: str | Sequence[str],
    specs: Sequence[SteeringSpec],
    backend: str = "pytorch_hooks",
    n: int = 5,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.3,
    frequency_penalty: float = 1.0,
    max_new_tokens: int = 40,
    bos: bool = True,
    expect: int = 1,
) -> Comparison:
    """Sample n unsteered and n steered completions of each prompt (seeds seed ... seed+n-1),
    steering through ``backend``, and score them.

    ``model`` is what the backend steers: the HF model, for transformer_lens_hooks the
    bridge, for nnsight_trace the nnsight model. temperature=0 is greedy decoding. ``expect``:
    the direction the steering should move sentiment (+1 or -1), for the count of rows that
    moved. Stops at EOS. Backends in ONE_BATCH sample both columns in one batch (per-row
    steering); the others sample them one after the other.
    """
    _validate(n, temperature, top_p, frequency_penalty, max_new_tokens)
    steer = backend_module(backend).steer
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    draw = dict(
        temperature=temperature, top_p=top_p, frequency_penalty=frequency_penalty, max_new_tokens=max_new_tokens
    )
    rows = [(prompt, seed + i) for prompt in prompts for i in range(n)]
    row_prompts, seeds = [p for p, _ in rows], [s for _, s in rows]
    if backend in ONE_BATCH:
        unsteered, steered = _sample_both_columns(model, tokenizer, steer, specs, row_prompts, seeds, draw, bos)
    else:
        is_bridge = backend == "transformer_lens_hooks"
        unsteered = sample(model, tokenizer, row_prompts, seeds, **draw, bos=bos, is_bridge=is_bridge)
        with steer(model, specs):
            steered = sample(model, tokenizer, row_prompts, seeds, **draw, bos=bos, is_bridge=is_bridge)
    return Comparison(
        row_prompts,
        seeds,
        score(model, tokenizer, row_prompts, unsteered, bos),
        score(model, tokenizer, row_prompts, steered, bos),
        dict(backend=backend, **draw),
        expect,
    )


def steering_magnitudes(
    model, tokenizer, prompt: str, specs: Sequence[SteeringSpec], bos: bool = True
) -> dict[tuple[int, str], torch.Tensor]:
    """For each steered (layer, site): |net addition| / |residual| at each prompt position, [T].

    The net addition is the sum of the specs at that site, computed by the spec's own
    arithmetic; the residual is the unsteered prompt's at the block input (the block output
    for resid_post), where the addition joins the stream.
    """
    plan = SteeringPlan(specs, *dims(model))
    ids = torch.tensor([encode(tokenizer, prompt, bos)], device=next(model.parameters()).device)
    plan.record_call((), {"input_ids": ids})
    ratios = {}
    for layer, site in plan.sites:
        residual = activations(model, ids, layer, "resid_post" if site == "resid_post" else "resid_pre")[0].float()
        addition = plan.steer(layer, site, torch.zeros_like(residual).unsqueeze(0))[0]  # [T, D]
        ratios[(layer, site)] = addition.norm(dim=-1) / residual.norm(dim=-1)
    return ratios


def plot_magnitudes(ratios: dict[tuple[int, str], torch.Tensor], tokens: Sequence[str]):
    """Bar chart of steering_magnitudes, one group of bars per prompt token, with a dashed line
    at 1 (an addition as large as the residual itself). Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tokens)), 3.5))
    width = 0.8 / len(ratios)
    for i, ((layer, site), ratio) in enumerate(ratios.items()):
        ax.bar([t + i * width for t in range(len(tokens))], ratio.cpu().tolist(), width, label=f"block {layer} {site}")
    # A ratio of 1: the addition is as large as the residual it joins; far above it, it replaces it.
    ax.axhline(1.0, color="black", linestyle="--", linewidth=1, label="as large as the residual itself")
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tokens))])
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("|addition| / |residual|")
    ax.set_title("Size of the steering addition at each position")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

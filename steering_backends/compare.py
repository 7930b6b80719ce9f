"""What a steering spec did: sampled completions side by side, and how big the push was.

    table = compare(model, tokenizer, "I hate you because", [spec], backend="pytorch_hooks", n=5)
    table                    # in a notebook: an HTML table, the prompt in bold
    print(table)             # in a terminal: plain text

    ratios = steering_magnitudes(model, tokenizer, "I hate you because", [spec])
    plot_magnitudes(ratios, tokens).savefig("magnitudes.png")

Sampling follows the settings of the original ActivationAdditions comparisons
(temperature 1, frequency penalty 1, top_p 0.3), in TransformerLens's order:
temperature, then the frequency penalty, then top-p. Row i of both columns is sampled
from the same seed, so the only difference between them is the steering.
"""

from __future__ import annotations

import html
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from . import backend as backend_module
from .layout import dims
from .prompts import encode
from .spec import SteeringPlan, SteeringSpec
from .vectors import activations

__all__ = ["Comparison", "FrequencyPenalty", "compare", "plot_magnitudes", "steering_magnitudes"]


class FrequencyPenalty(LogitsProcessor):
    """Subtract ``penalty * count`` from each token's logit, where count is how often the
    token occurs in the sequence so far, prompt included (as TransformerLens samples).
    HF has a multiplicative repetition penalty, but no additive frequency penalty."""

    def __init__(self, penalty: float) -> None:
        if not math.isfinite(penalty) or penalty < 0:
            raise ValueError(f"frequency_penalty={penalty!r} must be a finite number >= 0")
        self.penalty = penalty

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """input_ids [B, T] so far, scores [B, vocab] for the next token."""
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, torch.ones_like(input_ids, dtype=scores.dtype))
        return scores - self.penalty * counts


@dataclass
class Comparison:
    """n unsteered and n steered completions of one prompt; row i of both used seed ``seeds[i]``."""

    prompt: str
    unsteered: list[str]
    steered: list[str]
    seeds: list[int]
    settings: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        width = 50
        rule = "-" * (2 * width + 3)
        lines = [f"prompt: {self.prompt!r}", ", ".join(f"{k}={v}" for k, v in self.settings.items()), rule]
        lines.append(f"{'unsteered':<{width}} | steered")
        for left, right in zip(self.unsteered, self.steered, strict=True):
            lines.append(rule)
            left_lines = textwrap.wrap(self.prompt + left, width) or [""]
            right_lines = textwrap.wrap(self.prompt + right, width) or [""]
            for i in range(max(len(left_lines), len(right_lines))):
                a = left_lines[i] if i < len(left_lines) else ""
                b = right_lines[i] if i < len(right_lines) else ""
                lines.append(f"{a:<{width}} | {b}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        prompt = f"<b>{html.escape(self.prompt)}</b>"
        settings = html.escape(", ".join(f"{k}={v}" for k, v in self.settings.items()))
        rows = "".join(
            f"<tr><td>{seed}</td><td style='text-align:left'>{prompt}{html.escape(a)}</td>"
            f"<td style='text-align:left'>{prompt}{html.escape(b)}</td></tr>"
            for seed, a, b in zip(self.seeds, self.unsteered, self.steered, strict=True)
        )
        return (
            f"<table><caption>{settings}</caption>"
            f"<tr><th>seed</th><th>unsteered</th><th>steered</th></tr>{rows}</table>"
        )


def _sample(model, ids: torch.Tensor, seed: int, is_bridge: bool, settings: dict[str, Any]) -> torch.Tensor:
    """The new token ids [n_new] of one sampled completion."""
    temperature, top_p, penalty = settings["temperature"], settings["top_p"], settings["frequency_penalty"]
    greedy = temperature == 0
    torch.manual_seed(seed)
    if is_bridge:
        out = model.generate(
            ids,
            max_new_tokens=settings["max_new_tokens"],
            do_sample=not greedy,
            temperature=temperature,
            top_p=top_p,
            freq_penalty=penalty,
            verbose=False,
        )
    else:  # our own processor list fixes the order; generate's own temperature/top-p stay off
        processors = [] if greedy else [TemperatureLogitsWarper(temperature), FrequencyPenalty(penalty)]
        processors += [] if greedy or top_p == 1 else [TopPLogitsWarper(top_p)]
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=settings["max_new_tokens"],
            do_sample=not greedy,
            top_k=0,
            logits_processor=LogitsProcessorList(processors),
        )
    return out[0, ids.shape[1] :]


def compare(
    model,
    tokenizer,
    prompt: str,
    specs: Sequence[SteeringSpec],
    backend: str = "pytorch_hooks",
    n: int = 5,
    seed: int = 0,
    temperature: float = 1.0,
    top_p: float = 0.3,
    frequency_penalty: float = 1.0,
    max_new_tokens: int = 40,
    bos: bool = True,
) -> Comparison:
    """Sample n unsteered and n steered completions of ``prompt``, steering through ``backend``.

    ``model`` is what the backend steers: the HF model, or for transformer_lens_hooks the
    bridge (which then samples with TransformerLens's own sampler, same settings and order).
    temperature=0 is greedy decoding. Stops at EOS; special tokens are left out of the text.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"compare: n={n!r} must be an int >= 1")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"compare: max_new_tokens={max_new_tokens!r} must be an int >= 1")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"compare: temperature={temperature!r} must be >= 0 (0 is greedy)")
    if not 0 < top_p <= 1:
        raise ValueError(f"compare: top_p={top_p!r} must be in (0, 1]")
    FrequencyPenalty(frequency_penalty)  # validates
    steer = backend_module(backend).steer
    is_bridge = backend == "transformer_lens_hooks"
    device = next(model.parameters()).device
    ids = torch.tensor([encode(tokenizer, prompt, bos)], device=device)
    settings = dict(
        backend=backend,
        temperature=temperature,
        top_p=top_p,
        frequency_penalty=frequency_penalty,
        max_new_tokens=max_new_tokens,
    )
    seeds = [seed + i for i in range(n)]
    unsteered = [_sample(model, ids, s, is_bridge, settings) for s in seeds]
    with steer(model, specs):
        steered = [_sample(model, ids, s, is_bridge, settings) for s in seeds]

    def text(new_ids: torch.Tensor) -> str:
        return tokenizer.decode(new_ids, skip_special_tokens=True)

    return Comparison(prompt, [text(t) for t in unsteered], [text(t) for t in steered], seeds, settings)


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
    """Bar chart of steering_magnitudes, one group of bars per prompt token. Returns the Figure."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(tokens)), 3.5))
    width = 0.8 / len(ratios)
    for i, ((layer, site), ratio) in enumerate(ratios.items()):
        ax.bar([t + i * width for t in range(len(tokens))], ratio.cpu().tolist(), width, label=f"block {layer} {site}")
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tokens))])
    ax.set_xticklabels([repr(t)[1:-1] for t in tokens], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("|addition| / |residual|")
    ax.set_title("Size of the steering addition at each position")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig

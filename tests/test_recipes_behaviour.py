"""The dataset recipes on a real model: SmolLM2's sentiment direction from 64 sentence pairs.

Effect: the sentiment margin of tests/test_behaviour.py (next-token log P(positive words) -
log P(negative words) on 6 negative prompts), steered minus unsteered, through pytorch_hooks.
Coefficients are relative: |coeff * vector| = RELATIVE x the median token norm at that block
(scaled_to_residual), so that the mean-difference and the unit PCA vector get the same push.
Tables: results/recipes_smollm2-135m.md (in the README).
"""

from __future__ import annotations

import pytest
import torch
from helpers import write_result
from test_behaviour import NEGATIVE_PROMPTS, margins

from steering_backends import SteeringSpec, backend
from steering_backends.models import load
from steering_backends.parity import Runner
from steering_backends.vectors import (
    load_pairs,
    load_reference_texts,
    pair_differences,
    principal_direction,
    residual_norm,
    scaled_to_residual,
)

# Each sentence's activations averaged over its tokens; block 15 of 30, half a token's norm.
# From the sweep in benchmarks/sentiment_sweep.py (README): the PCA direction moves all 6
# prompts both ways at blocks 12-18; the mean difference pushes up hard but down weakly.
LAYER, RELATIVE, REDUCE = 15, 0.5, "mean"
TRANSFER_LAYERS = (6, 12, 18, 24)


@pytest.fixture(scope="module")
def smol_runner():
    model, tokenizer = load("smollm2-135m")
    return Runner("pytorch_hooks", lambda: model, backend("pytorch_hooks").steer), tokenizer


@pytest.fixture(scope="module")
def readings(smol_runner):
    """Per block: (mean difference [d_model], PCA direction, explained variance ratio, median token norm)."""
    runner, tokenizer = smol_runner
    pairs, texts = load_pairs("sentiment"), load_reference_texts()
    out = {}
    for layer in sorted({LAYER, *TRANSFER_LAYERS}):
        differences = pair_differences(runner.model, tokenizer, pairs, layer, reduce=REDUCE, progress=False)
        direction, ratio = principal_direction(differences)
        out[layer] = differences.mean(0), direction, ratio, residual_norm(runner.model, tokenizer, texts, layer)
    return out


def shift(runner, tokenizer, spec) -> torch.Tensor:
    """Per-prompt margin change, steered - unsteered. [6]"""
    return margins(runner, tokenizer, [spec]) - margins(runner, tokenizer, [])


def spec(vector, layer: int, coeff: float) -> SteeringSpec:
    return SteeringSpec(layer, "resid_pre", vector, coeff)


def test_mean_difference_and_pca_move_sentiment_both_ways(smol_runner, readings):
    runner, tokenizer = smol_runner
    mean, direction, ratio, norm = readings[LAYER]
    cosine = torch.nn.functional.cosine_similarity(mean, direction, dim=0).item()
    rows = [
        f"Sentiment direction from {len(load_pairs('sentiment'))} pairs (reduce={REDUCE!r}) at block {LAYER} "
        "resid_pre of SmolLM2-135M; "
        f"median token norm there {norm:.1f}; PCA explained variance ratio (first 3) "
        f"{', '.join(f'{r:.3f}' for r in ratio[:3].tolist())}; cosine(mean difference, PCA) {cosine:.3f}.",
        "",
        f"| vector | relative coeff | margin shift, mean over {len(NEGATIVE_PROMPTS)} prompts (nats) | prompts moved |",
        "|---|---|---|---|",
    ]
    results = []
    for name, vector in (("mean difference", mean), ("PCA", direction)):
        for relative in (RELATIVE, -RELATIVE):
            moved = shift(runner, tokenizer, scaled_to_residual(spec(vector, LAYER, 1.0), relative, norm))
            expected = int((moved * relative > 0).sum())
            rows.append(f"| {name} | {relative:+.1f} | {moved.mean():+.2f} | {expected}/{len(moved)} |")
            results.append((name, relative, moved, expected))
    write_result("recipes_smollm2-135m.md", "\n".join(rows))
    for name, relative, moved, expected in results:  # measured: |mean shift| >= 0.60, >= 5/6 prompts
        assert moved.mean() * relative > 0.25 and expected >= 5, (name, relative, moved)
    assert ratio[0] > ratio[1]


def test_relative_coefficients_across_blocks(smol_runner, readings):
    """Measured, not asserted either way: does a coefficient relative to each block's residual
    norm give more even effects across blocks than one absolute coefficient? The absolute
    coefficient is the mean over blocks of the relative one's, so both push as hard on average."""
    runner, tokenizer = smol_runner
    norms = {layer: readings[layer][3] for layer in TRANSFER_LAYERS}
    absolute = RELATIVE * sum(norms.values()) / len(norms)
    effects = {}
    for layer in TRANSFER_LAYERS:
        mean, norm = readings[layer][0], norms[layer]
        unit = mean / mean.norm()
        effects[layer] = (
            shift(runner, tokenizer, spec(unit, layer, absolute)).mean().item(),
            shift(runner, tokenizer, spec(unit, layer, RELATIVE * norm)).mean().item(),
        )
    spread = {
        kind: torch.tensor([e[i] for e in effects.values()]).std().item()
        / torch.tensor([e[i] for e in effects.values()]).mean().abs().item()
        for i, kind in enumerate(("absolute", "relative"))
    }
    rows = [
        f"Unit mean-difference direction at each block; absolute coeff {absolute:.1f} everywhere vs relative "
        f"coeff {RELATIVE} x the block's median token norm. Margin shift, mean over {len(NEGATIVE_PROMPTS)} prompts.",
        "",
        "| block | median token norm | absolute: coeff | shift (nats) | relative: coeff | shift (nats) |",
        "|---|---|---|---|---|---|",
    ]
    rows += [
        f"| {layer} | {norms[layer]:.1f} | {absolute:.1f} | {a:+.2f} | {RELATIVE * norms[layer]:.1f} | {r:+.2f} |"
        for layer, (a, r) in effects.items()
    ]
    rows += [
        "",
        f"Spread across blocks (std / |mean| of the shifts): absolute {spread['absolute']:.2f}, "
        f"relative {spread['relative']:.2f}.",
    ]
    write_result("coefficients_smollm2-135m.md", "\n".join(rows))
    # What the relative coefficient corrects for: the residual stream grows with depth.
    assert all(norms[a] < norms[b] for a, b in zip(TRANSFER_LAYERS, TRANSFER_LAYERS[1:], strict=False))

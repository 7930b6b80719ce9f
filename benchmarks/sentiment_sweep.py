"""Which dataset vector, where and how hard: the sentiment recipes on SmolLM2, swept.

    python -m benchmarks.sentiment_sweep        # ~2 min on 2 CPU cores

For blocks 9-21, both ways of reading a sentence (its last token, or the mean over its
tokens), and both directions (mean difference, first principal component) from the 64
sentiment pairs under steering_backends/data/: the shift of the sentiment margin of tests/test_behaviour.py
(6 negative prompts; next-token log P(positive words) - log P(negative words)) at relative
coefficients +-0.25, 0.5, 1 (|coeff * v| = that x the block's median token norm).
Writes benchmarks/results/sentiment_sweep.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

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

ROOT = Path(__file__).resolve().parent.parent
LAYERS, RELATIVES = (9, 12, 15, 18, 21), (0.25, 0.5, 1.0)


def main() -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_behaviour import NEGATIVE_PROMPTS, margins  # the measure the tests use

    torch.set_grad_enabled(False)
    model, tokenizer = load("smollm2-135m")
    runner = Runner("pytorch_hooks", lambda: model, backend("pytorch_hooks").steer)
    unsteered = margins(runner, tokenizer, [])
    pairs, texts = load_pairs("sentiment"), load_reference_texts()
    header = " | ".join(f"{sign}{r}" for r in RELATIVES for sign in "+-")
    lines = [
        "# Sentiment vectors on SmolLM2-135M, swept",
        "",
        f"Margin shift in nats, mean over {len(NEGATIVE_PROMPTS)} negative prompts, and (in brackets) prompts moved "
        "the expected way, per relative coefficient. cos: cosine between the mean difference and the PCA direction.",
        "",
        f"| block | reduce | vector | token norm | evr[0] | cos | {header} |",
        "|---|---|---|---|---|---|" + "---|" * 2 * len(RELATIVES),
    ]
    for layer in LAYERS:
        norm = residual_norm(model, tokenizer, texts, layer)
        for reduce in ("last", "mean"):
            differences = pair_differences(model, tokenizer, pairs, layer, reduce=reduce, progress=False)
            direction, ratio = principal_direction(differences)
            mean = differences.mean(0)
            cosine = torch.nn.functional.cosine_similarity(mean, direction, dim=0).item()
            for name, vector in (("mean difference", mean), ("PCA", direction)):
                cells = []
                for relative in RELATIVES:
                    for sign in (1, -1):
                        spec = scaled_to_residual(SteeringSpec(layer, "resid_pre", vector), sign * relative, norm)
                        moved = margins(runner, tokenizer, [spec]) - unsteered
                        cells.append(f"{moved.mean():+.2f} ({int((moved * sign > 0).sum())}/{len(moved)})")
                stats = f"{norm:.1f} | {ratio[0]:.3f} | {cosine:.2f}"
                lines.append(f"| {layer} | {reduce} | {name} | {stats} | {' | '.join(cells)} |")
                print(lines[-1], flush=True)
    out = ROOT / "benchmarks" / "results" / "sentiment_sweep.md"
    out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

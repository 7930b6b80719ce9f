"""How far backends that reorder float additions drift from the reference, relative to the logits.

    python -m benchmarks.rounding                      # 6 models x 10 vector seeds, ~10 min on 2 CPU cores
    python -m benchmarks.rounding --models smollm2-135m --seeds 3

TransformerLens and bias editing compute the same steered model as ``pytorch_hooks`` with
their float additions in another order, so their logits differ by rounding. Rounding grows
with the size of the numbers, so this measures, for every parity case and vector seed,
max |Δlogit| over real tokens divided by the logits' scale (max |logit| of the reference's
steered logits over real tokens). The deliberate mistakes the parity suite must catch
(coeff off by 1e-3, first position dropped) are measured on the same scale, so the table
shows the gap a relative tolerance has to sit in.

Writes benchmarks/results/rounding.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from steering_backends.layout import dims
from steering_backends.models import load
from steering_backends.parity import (
    REFERENCE,
    left_pad,
    logit_scale,
    make_runners,
    max_abs_diff,
    parity_cases,
    residual_rms,
    steered_logits,
    supports,
)
from steering_backends.spec import SteeringSpec

OUT = Path(__file__).resolve().parent / "results"
MODELS = ["tiny-gpt2-random", "tiny-llama-random", "tiny-mistral-random", "tiny-qwen2-random", "gpt2-random"]
MODELS += ["smollm2-135m"]
PROMPTS = ["I hate you because you are so", "Love is the answer, and", "The weather today"]
REORDERING = ("transformer_lens_hooks", "bias_editing")
MISTAKE_KEYS = ("coeff x 1.001", "first position dropped")


def mistakes(spec: SteeringSpec) -> dict[str, SteeringSpec]:
    return {
        "coeff x 1.001": SteeringSpec(spec.layer, spec.site, spec.vector, spec.coeff * 1.001, spec.start),
        "first position dropped": SteeringSpec(spec.layer, spec.site, spec.vector, spec.coeff, spec.start + 1),
    }


def measure(name: str, seeds: int) -> dict:
    """{backend or mistake: (largest relative gap, its case and seed, its absolute gap, logit scale)}."""
    model, tokenizer = load(name)
    runners, skipped = make_runners(model, tokenizer, names=(REFERENCE, *REORDERING))
    assert not skipped, skipped
    reference = next(r for r in runners if r.name == REFERENCE)
    ids, mask = left_pad(tokenizer, PROMPTS)
    scale = residual_rms(model, ids, mask) / 4
    worst: dict[str, tuple] = {}

    def record(key: str, gap: float, logits: torch.Tensor, where: str) -> None:
        relative = gap / logit_scale(logits, mask)
        if key not in worst or (relative < worst[key][0] if key in MISTAKE_KEYS else relative > worst[key][0]):
            worst[key] = (relative, where, gap, logit_scale(logits, mask))

    for seed in range(seeds):
        cases = parity_cases(*dims(model), seed=seed, scale=scale)
        refs = {label: steered_logits(reference, specs, ids, mask) for label, specs in cases.items()}
        for label in ("resid_pre mid", "attn_out mid"):  # mistakes: the smallest gap counts
            for mistake, spec in mistakes(cases[label][0]).items():
                gap = max_abs_diff(steered_logits(reference, [spec], ids, mask), refs[label], mask)
                record(mistake, gap, refs[label], f"{label}, seed {seed}")
        for runner in runners[1:]:
            for label, specs in cases.items():
                if supports(runner, specs):
                    gap = max_abs_diff(steered_logits(runner, specs, ids, mask), refs[label], mask)
                    record(runner.name, gap, refs[label], f"{label}, seed {seed}")
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    lines = [
        "# Rounding between backends, relative to the logits' scale",
        "",
        f"`python -m benchmarks.rounding --seeds {args.seeds}`: all 13 parity cases x {args.seeds} vector seeds"
        f" per model; torch {torch.__version__}, float32, CPU. Relative gap = max |Δlogit| over real tokens /"
        " max |logit| of the reference's steered logits. Backends: the largest gap; deliberate mistakes"
        " (on `resid_pre mid` and `attn_out mid`): the smallest.",
        "",
        "| model | " + " | ".join(REORDERING + MISTAKE_KEYS) + " |",
        "|---" * (len(REORDERING + MISTAKE_KEYS) + 1) + "|",
    ]
    details = []
    for name in args.models:
        start = time.perf_counter()
        worst = measure(name, args.seeds)
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
        lines.append(f"| {name} | " + " | ".join(f"{worst[k][0]:.1e}" for k in REORDERING + MISTAKE_KEYS) + " |")
        details += [
            f"- {name}, {k}: {rel:.2e} ({where}; |Δ| {gap:.2e}, scale {scale:.3g})"
            for k, (rel, where, gap, scale) in worst.items()
        ]
    text = "\n".join(lines + ["", "Where each extreme was found:", ""] + details) + "\n"
    OUT.mkdir(exist_ok=True)
    (OUT / "rounding.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

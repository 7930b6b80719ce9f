"""The ActivationAdditions paper's other x-vectors on SmolLM2, run through the `compare` command.

    python -m benchmarks.actadd_xvectors     # runs each command below, writes results/actadd_xvectors.md

Turner et al. steer GPT-2-XL (48 blocks) with "Intent to praise" - "Intent to hurt" at block 6,
coefficient 15, on "I want to kill you because", and with "Anger" - "Calm" at block 20,
coefficient 10. Here the blocks keep their relative depth in SmolLM2-135M-Instruct's 30 (6/48 -> 4,
20/48 -> 12), and the coefficient is swept up to the paper's: an x-vector is a difference of this
model's own activations, so the paper's number keeps its meaning as a multiple of it, and the
table adds its size relative to the block's median token norm.

Each setting is one `python -m steering_backends compare` command (32 seeds, sampled as the paper
did: temperature 1, frequency penalty 1, top_p 0.3, 40 new tokens); its printed summary is the
result (VADER compound, rows moved, perplexity under the unsteered model, repeated 3-grams). For
anger - calm the same comparison is drawn again through the Python API (same seeds, so the same
texts; the script checks that the compound means agree) to read VADER's negativity share, which
the command does not print.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import torch
from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

from steering_backends.compare import compare
from steering_backends.models import load
from steering_backends.vectors import load_reference_texts, residual_norm, x_vector

RESULTS = Path(__file__).resolve().parent / "results"
N = 32
VECTORS = {
    # name: (plus, minus, prompt, block, coeffs, expected direction of sentiment)
    "praise - hurt": ("Intent to praise", "Intent to hurt", "I want to kill you because", 4, (2.0, 5.0, 15.0), 1),
    "anger - calm": ("Anger", "Calm", "I think you're", 12, (2.0, 5.0, 10.0), -1),
}


def command(plus: str, minus: str, prompt: str, block: int, coeff: float) -> list[str]:
    return [
        "python", "-m", "steering_backends", "compare", "--plus", plus, "--minus", minus, "--layer", str(block),
        "--coeff", f"{coeff:g}", "--prompt", prompt, "-n", str(N),
    ]  # fmt: skip


def negativity(texts: list[str]) -> float:
    """Mean VADER ``neg`` share (0 ... 1) of the texts."""
    vader = SentimentIntensityAnalyzer()
    return sum(vader.polarity_scores(t)["neg"] for t in texts) / len(texts)


def main() -> None:
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    model, tokenizer = load("smollm2-135m")
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    lines = [
        "# The paper's other x-vectors on smollm2-135m",
        "",
        "SmolLM2-135M-Instruct from its Q4_1-quantized GGUF weights. Each row is one command (printed below), "
        f"{N} seeds of one prompt, sampled as the paper did (temperature 1, frequency penalty 1, top_p 0.3, 40 new "
        "tokens). The block keeps the paper's relative depth (GPT-2-XL 6/48 → 4, 20/48 → 12 of 30). relative: "
        "the largest row of coeff × x-vector over the block's median token norm. Sentiment is VADER's compound "
        "of the completion alone; moved: rows beyond their unsteered row (same seed) in the expected direction; "
        "neg: VADER's negativity share, mean over completions. ppl ×: perplexity of the steered completions "
        "under the unsteered model over the unsteered ones'. Made by `python -m benchmarks.actadd_xvectors`.",
        "",
        "| vector | prompt | block | coeff | relative | compound unsteered → steered (Δ) | moved "
        "| neg unsteered → steered | ppl × | rep |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    outputs = []
    for name, (plus, minus, prompt, block, coeffs, expect) in VECTORS.items():
        norm = residual_norm(model, tokenizer, load_reference_texts(), block)
        for coeff in coeffs:
            cmd = command(plus, minus, prompt, block, coeff)
            out = subprocess.run([sys.executable, *cmd[1:]], capture_output=True, text=True, env=env, check=True).stdout
            outputs.append((cmd, out))
            summary = re.search(
                r"unsteered ([+-][\d.]+), steered ([+-][\d.]+) \(Δ ([+-][\d.]+)\); (\d+)/(\d+) rows more positive.*\n"
                r"perplexity under the unsteered model: ([\d.]+) → ([\d.]+) \(×([\d.]+)\); "
                r"repeated 3-grams (\d+)% → (\d+)%",
                out,
            )
            u, st, delta, up, n, _, _, ppl, _, rep = summary.groups()
            moved = f"{up}/{n} more positive"  # the command counts rows moved up
            spec = x_vector(model, tokenizer, plus, minus, coeff, block, pad_token_id=space)
            relative = coeff * spec.vector.norm(dim=-1).max().item() / norm
            neg = "–"
            if expect < 0:
                table = compare(model, tokenizer, prompt, [spec], n=N)
                assert f"{table.summary().delta:+.2f}" == delta, "the API run must draw the command's texts"
                pairs = zip(table.unsteered, table.steered, strict=True)
                moved = f"{sum(s.sentiment < u.sentiment for u, s in pairs)}/{n} more negative"
                before, after = (negativity([c.text for c in column]) for column in (table.unsteered, table.steered))
                neg = f"{before:.3f} → {after:.3f}"
            lines.append(
                f"| {name} | {prompt} | {block} | {coeff:g} | {relative:.2f} | {u} → {st} ({delta}) | "
                f"{moved} | {neg} | {ppl} | {rep}% |"
            )
            print(lines[-1], flush=True)
    lines += ["", "## Commands and their output", ""]
    for cmd, out in outputs:
        lines += ["```", "$ OMP_NUM_THREADS=1 " + shlex.join(cmd), out.rstrip(), "```", ""]
    (RESULTS / "actadd_xvectors.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()

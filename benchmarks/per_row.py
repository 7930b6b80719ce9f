"""compare() with both columns in one batch (per-row steering) against two passes.

    python -m benchmarks.per_row                          # SmolLM2, n = 8, 40 new tokens
    python -m benchmarks.per_row --model tiny-llama-random --repeats 1

Samples the unsteered and the steered column of one prompt (n rows each, the original
ActivationAdditions settings) through pytorch_hooks, once as one batch of 2n rows whose second
half is steered (SteeringSpec.rows) and once as two batches of n, interleaved pair by pair;
reports the median time of each, the median per-pair speed-up, and whether both ways drew the
same tokens. Sampling is timed alone and as part of compare() (which also scores the completions,
the same work both ways). Writes benchmarks/results/per_row.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from steering_backends import SteeringSpec
from steering_backends import compare as compare_module
from steering_backends.layout import dims
from steering_backends.models import RANDOM_CONFIGS, gpt2_tokenizer, load, random_model, sentiment_spec
from steering_backends.pytorch_hooks import steer

OUT = Path(__file__).resolve().parent / "results"
PROMPT = "I hate you because"
DRAW = dict(temperature=1.0, top_p=0.3, frequency_penalty=1.0)


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    if args.model in RANDOM_CONFIGS:  # no measured sentiment setting: a random vector, as large as the residual
        model, tokenizer = random_model(args.model), gpt2_tokenizer()
        n_layers, d_model = dims(model)
        specs = [SteeringSpec(n_layers // 2, "resid_pre", 4 * torch.randn(d_model), 1.0)]
    else:
        model, tokenizer = load(args.model)
        specs = [sentiment_spec(model, tokenizer)]
    prompts, seeds = [PROMPT] * args.n, list(range(args.n))
    draw = dict(DRAW, max_new_tokens=args.new_tokens)

    def one_batch():
        return compare_module._sample_both_columns(model, tokenizer, steer, specs, prompts, seeds, draw, True)

    def two_passes():
        unsteered = compare_module.sample(model, tokenizer, prompts, seeds, **draw)
        with steer(model, specs):
            return unsteered, compare_module.sample(model, tokenizer, prompts, seeds, **draw)

    def whole(one: bool):
        def run():
            saved = compare_module.ONE_BATCH
            compare_module.ONE_BATCH = saved if one else ()
            try:
                return compare_module.compare(model, tokenizer, PROMPT, specs, "pytorch_hooks", n=args.n, **draw)
            finally:
                compare_module.ONE_BATCH = saved

        return run

    rows = []
    for what, (a_fn, b_fn) in {
        "sampling both columns": (two_passes, one_batch),
        "compare(), scoring included": (whole(False), whole(True)),
    }.items():
        a_fn(), b_fn()  # warm-up
        a, b, same = [], [], []
        for _ in range(args.repeats):
            ta, ra = timed(a_fn)
            tb, rb = timed(b_fn)
            a.append(ta), b.append(tb)
            if what.startswith("sampling"):
                same.append(ra == rb)
            else:
                same.append([c.ids for c in ra.unsteered + ra.steered] == [c.ids for c in rb.unsteered + rb.steered])
        ratio = statistics.median(x / y for x, y in zip(a, b, strict=True))
        rows.append((what, statistics.median(a), statistics.median(b), ratio, sum(same), len(same)))
        print(rows[-1], flush=True)

    lines = [
        f"# Per-row steering: compare() in one batch vs two passes ({args.model})",
        "",
        f'"{PROMPT}", n = {args.n} rows per column, {args.new_tokens} new tokens, the sentiment spec '
        "(`models.sentiment_spec`; a random vector on random models), pytorch_hooks. Median of "
        f"{args.repeats} interleaved pairs; speed-up = two passes / one batch, per pair.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}.",
        "",
        "| what | two passes s | one batch s | speed-up | same tokens |",
        "|---|---|---|---|---|",
    ]
    for what, a, b, ratio, same, total in rows:
        lines.append(f"| {what} | {a:.2f} | {b:.2f} | {ratio:.2f}× | {same}/{total} runs |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "per_row.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

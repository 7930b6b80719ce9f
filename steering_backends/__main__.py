"""python -m steering_backends: the Love - Hate vector through every available backend.

    python -m steering_backends                    # offline: GPT-2 small shape, random weights
    python -m steering_backends --model gpt2-xl    # the original setting, needs the model hub

Prints unsteered vs steered greedy completions per backend, then the parity table
(max |Δlogit| against pytorch_hooks on the prompt).
"""

from __future__ import annotations

import argparse
import time

import torch

from .layout import dims
from .models import MODEL_NAMES, RANDOM_CONFIGS, load
from .parity import (
    format_table,
    left_pad,
    make_runners,
    parity_cases,
    reference_run,
    residual_rms,
    runner_diffs,
)
from .spec import SITES, SteeringSpec
from .vectors import contrast_vector


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m steering_backends", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="gpt2-random", choices=MODEL_NAMES, help="default works offline")
    parser.add_argument("--prompt", default="I hate you because")
    parser.add_argument("--plus", default="Love")
    parser.add_argument("--minus", default="Hate")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--site", default="resid_pre", choices=SITES)
    parser.add_argument("--coeff", type=float, default=5.0)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--full-parity", action="store_true", help="also run the parity cases of the test suite")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_grad_enabled(False)  # inference only: no activations kept for backward
    started = time.perf_counter()
    model, tokenizer = load(args.model)
    print(f"model {args.model} loaded in {time.perf_counter() - started:.1f} s")
    if args.model in RANDOM_CONFIGS:
        print("  (random weights: completions are gibberish; the point is that every backend agrees)")

    vector = contrast_vector(model, tokenizer, args.plus, args.minus, args.layer, args.site)
    spec = SteeringSpec(args.layer, args.site, vector, args.coeff)
    print(
        f"vector: act({args.plus!r}) - act({args.minus!r}) at the last token, layer {args.layer} {args.site}, "
        f"|v| = {vector.norm():.2f}, coeff {args.coeff}\n"
    )

    ids, mask = left_pad(tokenizer, [args.prompt])
    cases = {f"{args.plus} - {args.minus}": [spec]}
    if args.full_parity:
        cases |= parity_cases(*dims(model), scale=residual_rms(model, ids, mask) / 4)
    # The bridge takes over the model; it comes last, so no second copy is needed.
    runners, skipped = make_runners(model, tokenizer, copy_for_bridge=False)
    refs, table = reference_run(runners, cases, ids, mask)
    print(f"{'unsteered':>24}: {tokenizer.decode(runners[0].generate(ids, mask, args.max_new_tokens)[0][0])!r}")
    for runner in runners:
        for label, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[label][runner.name] = diff
        with runner.steer(runner.model, [spec]):
            print(f"{runner.name:>24}: {tokenizer.decode(runner.generate(ids, mask, args.max_new_tokens)[0][0])!r}")
    for name, why in skipped.items():
        print(f"{name:>24}: skipped, {why}")
    print("\nmax |Δlogit| against pytorch_hooks on the prompt (effect: steered vs unsteered)\n")
    print(format_table(table))
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()

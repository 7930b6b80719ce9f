"""python -m steering_backends: the Love - Hate vector through every available backend.

    python -m steering_backends                         # offline: SmolLM2-135M, real weights
    python -m steering_backends --model gpt2-xl         # the original setting, needs the model hub
    python -m steering_backends --model gpt2-xl-random  # GPT-2-XL shape, random weights, offline
    python -m steering_backends compare --plus "Love" --minus "Hate" --prompt "I hate you because" \
        --layer 6 --coeff 5 --backend pytorch_hooks -n 5  # sampled completions side by side

The vector is act(BOS + plus) - act(BOS + minus) at the last token, as in the original
(which prepends <|endoftext|>, GPT-2's BOS); the prefix keeps the word off position 0.

Prints unsteered vs steered greedy completions per backend, then the parity table
(max |Δlogit| against pytorch_hooks on the prompt).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from . import BACKENDS, backend
from .compare import compare
from .layout import dims
from .models import DEFAULT_MODEL, LOVE_HATE, LOVE_HATE_X_VECTOR, MODEL_NAMES, RANDOM_CONFIGS, load
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
from .vectors import contrast_vector, x_vector


def _add_vector_args(parser: argparse.ArgumentParser, defaults: dict[str, tuple[int, float]]) -> None:
    """The model, prompt and Love - Hate vector options both commands share; ``defaults``:
    model_type -> (layer, coeff) used when --layer / --coeff are not given."""
    per_model = ", ".join(f"{kind} {layer}" for kind, (layer, _) in defaults.items())
    coeffs = ", ".join(f"{kind} {coeff:g}" for kind, (_, coeff) in defaults.items())
    parser.add_argument("--model", default=DEFAULT_MODEL, choices=MODEL_NAMES, help="default works offline")
    parser.add_argument("--prompt", default="I hate you because")
    parser.add_argument("--plus", default="Love")
    parser.add_argument("--minus", default="Hate")
    parser.add_argument("--layer", type=int, help=f"default per model type: {per_model} (gpt2: the original)")
    parser.add_argument("--site", default="resid_pre", choices=SITES)
    parser.add_argument("--coeff", type=float, help=f"default per model type: {coeffs}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m steering_backends", description=__doc__.splitlines()[0])
    _add_vector_args(parser, LOVE_HATE)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--full-parity", action="store_true", help="also run the parity cases of the test suite")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        compare_main(argv[1:])
        return
    args = parse_args(argv)
    torch.set_grad_enabled(False)  # inference only: no activations kept for backward
    started = time.perf_counter()
    model, tokenizer = load(args.model)
    print(f"model {args.model} loaded in {time.perf_counter() - started:.1f} s")
    if args.model in RANDOM_CONFIGS:
        print("  (random weights: completions are gibberish; the point is that every backend agrees)")

    default_layer, default_coeff = LOVE_HATE[model.config.model_type]
    layer = default_layer if args.layer is None else args.layer
    coeff = default_coeff if args.coeff is None else args.coeff
    bos = tokenizer.bos_token or ""
    vector = contrast_vector(model, tokenizer, args.plus, args.minus, layer, args.site, bos=bool(bos))
    spec = SteeringSpec(layer, args.site, vector, coeff)
    print(
        f"vector: act({bos + args.plus!r}) - act({bos + args.minus!r}) at the last token, layer {layer} "
        f"{args.site}, |v| = {vector.norm():.2f}, coeff {coeff}\n"
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


def parse_compare_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m steering_backends compare",
        description="Sampled completions, unsteered vs steered by an ActivationAddition x-vector, side by side.",
    )
    _add_vector_args(parser, LOVE_HATE_X_VECTOR)
    parser.add_argument("--backend", default="pytorch_hooks", choices=BACKENDS)
    parser.add_argument("-n", type=int, default=5, help="completions per column")
    parser.add_argument("--seed", type=int, default=0, help="row i uses seed + i in both columns")
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-p", type=float, default=0.3)
    parser.add_argument("--frequency-penalty", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=40)
    return parser.parse_args(argv)


def compare_main(argv: list[str]) -> None:
    args = parse_compare_args(argv)
    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    default_layer, default_coeff = LOVE_HATE_X_VECTOR[model.config.model_type]
    layer = default_layer if args.layer is None else args.layer
    coeff = default_coeff if args.coeff is None else args.coeff
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]  # the original pads with spaces
    spec = x_vector(model, tokenizer, args.plus, args.minus, coeff, layer, args.site, pad_token_id=space)
    target = model
    if args.backend == "transformer_lens_hooks":
        target = backend(args.backend).bridge_from_hf(model, tokenizer, copy_model=False)
    elif args.backend == "nnsight_trace":
        target = backend(args.backend).nnsight_from_hf(model, tokenizer, copy_model=False)
    print(f"{args.model}: x-vector {args.plus!r} - {args.minus!r}, layer {layer} {args.site}, coeff {coeff}")
    table = compare(
        target,
        tokenizer,
        args.prompt,
        [spec],
        backend=args.backend,
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        frequency_penalty=args.frequency_penalty,
        max_new_tokens=args.max_new_tokens,
    )
    print(table)


if __name__ == "__main__":
    main()

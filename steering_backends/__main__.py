"""python -m steering_backends: sentiment steering you can read, then every backend agreeing.

    python -m steering_backends                         # offline: SmolLM2-135M, real weights
    python -m steering_backends --model gpt2-xl         # the original setting, needs the model hub
    python -m steering_backends --model gpt2-xl-random  # GPT-2-XL shape, random weights, offline
    python -m steering_backends --model Qwen/Qwen2.5-0.5B --device cuda --dtype bfloat16  # any supported hub id
    python -m steering_backends --model path/to/folder --layer 2  # or a folder saved with save_pretrained
    python -m steering_backends compare --plus "Love" --minus "Hate" --prompt "I hate you because" \
        --layer 6 --coeff 5 --backend pytorch_hooks -n 5  # sampled completions side by side

By default the steering is the measured one (models.SENTIMENT: the recipe, block and
coefficient that benchmarks/behaviour_sweep.py chose on sampled text, scored by VADER);
for a model type without one, the original Love - Hate contrast vector. Giving --plus,
--minus, --layer or --coeff steers with act(BOS + plus) - act(BOS + minus) at the last
token instead, as in the original (which prepends <|endoftext|>, GPT-2's BOS).

Prints sampled completions, unsteered beside steered, with their sentiment and perplexity;
then greedy completions through every backend, and the parity table (max |Δlogit| against
pytorch_hooks on the prompt).

A user error (a bad option value, a spec the validation refuses, a model that cannot be
loaded, a backend that cannot be imported) is one line on stderr and exit status 2;
--debug shows the traceback instead.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from typing import Any, NoReturn

import torch

from . import BACKENDS, backend
from .compare import compare
from .layout import LAYOUTS, dims
from .models import (
    DEFAULT_MODEL,
    LOVE_HATE,
    LOVE_HATE_X_VECTOR,
    OFFLINE_MODELS,
    RANDOM_CONFIGS,
    SENTIMENT,
    load,
    sentiment_spec,
)
from .parity import (
    REFERENCE,
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

PROG = "python -m steering_backends"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UsageError(Exception):
    """A bad option value found after parsing (say, a layer the model does not have)."""


class _Parser(argparse.ArgumentParser):
    """argparse, with its usage errors in one line like ours (the usage itself is under --help)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _checked(convert: Callable[[str], Any], ok: Callable[[Any], bool], allowed: str) -> Callable[[str], Any]:
    """An argparse type: ``convert(text)``, refused unless ``ok(value)``, saying what is allowed."""

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not allowed; allowed: {allowed}")
        return value

    return parse


_TEXT = _checked(str, bool, "any non-empty text")
_FINITE = _checked(float, math.isfinite, "a finite number")
_COUNT = _checked(int, lambda n: n >= 1, "an integer >= 1")
_COUNT_OR_ZERO = _checked(int, lambda n: n >= 0, "an integer >= 0")
_NON_NEGATIVE = _checked(float, lambda x: math.isfinite(x) and x >= 0, "a finite number >= 0")
_PROBABILITY = _checked(float, lambda p: 0 < p <= 1, "a number in (0, 1]")


def _devices() -> list[str]:
    """The devices this machine has: cpu, then cuda and cuda:N per GPU, then mps on Apple silicon."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *(["cuda", *gpus] if gpus else []), *(["mps"] if torch.backends.mps.is_available() else [])]


_DEVICE = _checked(str, lambda name: name in _devices(), f"a device this machine has: {', '.join(_devices())}")


def _add_vector_args(parser: argparse.ArgumentParser, defaults: dict[str, tuple[int, float]]) -> None:
    """The model, device, prompt and Love - Hate vector options both commands share; ``defaults``:
    model_type -> (layer, coeff) used when --layer / --coeff are not given."""
    per_model = ", ".join(f"{kind} {layer}" for kind, (layer, _) in defaults.items())
    coeffs = ", ".join(f"{kind} {coeff:g}" for kind, (_, coeff) in defaults.items())
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        type=_TEXT,
        help=f"an offline model ({', '.join(OFFLINE_MODELS)}), or a hub id or saved folder of a "
        f"{'/'.join(sorted(LAYOUTS))} model; default {DEFAULT_MODEL} (offline)",
    )
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        type=_DEVICE,
        help="cpu, cuda, cuda:N or mps; default: cuda if available, else cpu",
    )
    parser.add_argument("--dtype", choices=DTYPES, help="default: float32 on cpu, bfloat16 on a GPU")
    parser.add_argument("--prompt", default="I hate you because", type=_TEXT)
    parser.add_argument("--plus", type=_TEXT, help="default: Love")
    parser.add_argument("--minus", type=_TEXT, help="default: Hate")
    parser.add_argument(
        "--layer", type=int, help=f"default per model type: {per_model} (gpt2: the original); others: the middle block"
    )
    parser.add_argument("--site", default="resid_pre", choices=SITES)
    parser.add_argument("--coeff", type=_FINITE, help=f"default per model type: {coeffs}; others: 1")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback")


def _load(args: argparse.Namespace) -> tuple[Any, Any, str]:
    """(model, tokenizer, dtype name) as the options ask; a model that cannot be loaded is a UsageError."""
    dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    try:
        model, tokenizer = load(args.model, DTYPES[dtype], args.device)
    except (ImportError, OSError, ValueError) as err:
        raise UsageError(f"argument --model: {err}") from err
    return model, tokenizer, dtype


def _layer_and_coeff(args: argparse.Namespace, model: Any, defaults: dict[str, tuple[int, float]]) -> tuple[int, float]:
    """--layer and --coeff, else the model type's defaults (a type without one: the middle block,
    coeff 1); a layer the model does not have is a UsageError."""
    n_layers, _ = dims(model)
    kind = model.config.model_type
    default_layer, default_coeff = defaults.get(kind, (n_layers // 2, 1.0))
    layer = default_layer if args.layer is None else args.layer
    if not -n_layers <= layer < n_layers:
        given = layer if args.layer is not None else f"{layer} (the {kind} default)"
        raise UsageError(
            f"argument --layer: {given} is out of range for {args.model} ({n_layers} blocks); "
            f"allowed: {-n_layers} to {n_layers - 1}"
        )
    return layer, default_coeff if args.coeff is None else args.coeff


def _check_importable(names: list[str]) -> None:
    """Import the backends the user chose before any work; one that cannot be imported is a UsageError."""

    def import_error(name: str) -> ImportError | None:
        try:
            backend(name)
        except ImportError as err:
            return err
        return None

    for name in names:
        if err := import_error(name):
            importable = [other for other in BACKENDS if import_error(other) is None]
            raise UsageError(
                f"argument --backend: {name} cannot be imported here ({err}); importable: {', '.join(importable)}"
            )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(prog=PROG, description=__doc__.splitlines()[0])
    _add_vector_args(parser, LOVE_HATE)
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        metavar="NAME",
        help=f"run only these, of {', '.join(BACKENDS)} ({REFERENCE}, the reference, always runs); "
        "default: every importable one",
    )
    parser.add_argument("--max-new-tokens", type=_COUNT, default=20, help="of the greedy completions")
    parser.add_argument(
        "--samples", type=_COUNT_OR_ZERO, default=3, help="sampled completions per column (60 tokens each); 0: none"
    )
    parser.add_argument("--full-parity", action="store_true", help="also run the parity cases of the test suite")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """The command line. A user error is one line on stderr and exit status 2 (with --debug: the traceback)."""
    argv = sys.argv[1:] if argv is None else argv
    is_compare = argv[:1] == ["compare"]
    try:
        if is_compare:
            compare_main(argv[1:])
        else:
            main_job(argv)
    except (UsageError, ValueError) as err:  # ValueError: what the spec and sampling validation refuse
        if "--debug" in argv:
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}{' compare' if is_compare else ''}: error: {message}", file=sys.stderr)
        raise SystemExit(2) from None


def main_job(argv: list[str]) -> None:
    args = parse_args(argv)
    _check_importable(args.backend or [])
    torch.set_grad_enabled(False)  # inference only: no activations kept for backward
    started = time.perf_counter()
    model, tokenizer, dtype = _load(args)
    print(f"model {args.model} loaded in {time.perf_counter() - started:.1f} s ({dtype} on {args.device})")
    if args.model in RANDOM_CONFIGS:
        print("  (random weights: completions are gibberish; the point is that every backend agrees)")

    spec, name, how = _main_spec(args, model, tokenizer)
    print(f"steering: {name}, {how}\n")
    if args.samples:
        print(f"Sampled completions, unsteered vs steered ({args.samples} seeds, scores by VADER):")
        print(compare(model, tokenizer, args.prompt, [spec], n=args.samples, max_new_tokens=60), "\n")

    ids, mask = (t.to(args.device) for t in left_pad(tokenizer, [args.prompt]))
    cases = {name: [spec]}
    if args.full_parity:
        cases |= parity_cases(*dims(model), scale=residual_rms(model, ids, mask) / 4)
    names = [name for name in BACKENDS if args.backend is None or name in (REFERENCE, *args.backend)]
    # The bridge takes over the model; it comes last, so no second copy is needed.
    runners, skipped = make_runners(model, tokenizer, copy_for_bridge=False, names=names)
    _progress(args.full_parity, f"{len(cases)} parity cases: {REFERENCE} (the reference)")
    refs, table = reference_run(runners, cases, ids, mask)
    print(f"Greedy completions, {args.max_new_tokens} tokens, through every backend:")
    print(f"{'unsteered':>24}: {tokenizer.decode(runners[0].generate(ids, mask, args.max_new_tokens)[0][0])!r}")
    for runner in runners:
        _progress(args.full_parity, f"{len(cases)} parity cases: {runner.name}")
        for label, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[label][runner.name] = diff
        with runner.steer(runner.model, [spec]):
            print(f"{runner.name:>24}: {tokenizer.decode(runner.generate(ids, mask, args.max_new_tokens)[0][0])!r}")
    for name, why in skipped.items():
        print(f"{name:>24}: skipped, {why}")
    print("\nmax |Δlogit| against pytorch_hooks on the prompt (effect: steered vs unsteered)\n")
    print(format_table(table))
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


def _main_spec(args: argparse.Namespace, model: Any, tokenizer: Any) -> tuple[SteeringSpec, str, str]:
    """(spec, its name, how it was made): the measured sentiment spec of this model type, or a
    Love - Hate contrast vector (the original) when there is none or the options ask for one."""
    kind, (n_layers, _) = model.config.model_type, dims(model)
    options = (args.plus, args.minus, args.layer, args.coeff)
    if kind in SENTIMENT and all(value is None for value in options) and args.site == "resid_pre":
        recipe, layer, relative = SENTIMENT[kind][1]
        if not -n_layers <= layer < n_layers:
            raise UsageError(
                f"argument --layer: the measured {kind} setting steers block {layer}, but {args.model} has "
                f"{n_layers} blocks; allowed: {-n_layers} to {n_layers - 1}"
            )
        spec = sentiment_spec(model, tokenizer, +1)
        how = f"block {layer} resid_pre, coeff {spec.coeff:.4g} = {relative:g} x the block's median token norm"
        return spec, recipe, f"{how} (the measured setting)"
    plus, minus = args.plus or "Love", args.minus or "Hate"
    layer, coeff = _layer_and_coeff(args, model, LOVE_HATE)
    bos = tokenizer.bos_token or ""
    vector = contrast_vector(model, tokenizer, plus, minus, layer, args.site, bos=bool(bos))
    how = f"block {layer} {args.site}, coeff {coeff:.4g}: act({bos + plus!r}) - act({bos + minus!r}) at the last token"
    return SteeringSpec(layer, args.site, vector, coeff), f"{plus} - {minus}", how


def _progress(show: bool, step: str) -> None:
    """One line on stderr per long step, so stdout stays the report."""
    if show:
        print(f"  ... {step}", file=sys.stderr, flush=True)


def parse_compare_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(
        prog=f"{PROG} compare",
        description="Sampled completions, unsteered vs steered by an ActivationAddition x-vector, side by side.",
    )
    _add_vector_args(parser, LOVE_HATE_X_VECTOR)
    parser.add_argument(
        "--backend", default="pytorch_hooks", choices=BACKENDS, metavar="NAME", help=f"one of {', '.join(BACKENDS)}"
    )
    parser.add_argument("-n", type=_COUNT, default=5, help="completions per column")
    parser.add_argument("--seed", type=int, default=0, help="row i uses seed + i in both columns")
    parser.add_argument("--temperature", type=_NON_NEGATIVE, default=1.0, help="0 is greedy")
    parser.add_argument("--top-p", type=_PROBABILITY, default=0.3)
    parser.add_argument("--frequency-penalty", type=_NON_NEGATIVE, default=1.0)
    parser.add_argument("--max-new-tokens", type=_COUNT, default=40)
    return parser.parse_args(argv)


def compare_main(argv: list[str]) -> None:
    args = parse_compare_args(argv)
    _check_importable([args.backend])
    torch.set_grad_enabled(False)
    model, tokenizer, _ = _load(args)
    layer, coeff = _layer_and_coeff(args, model, LOVE_HATE_X_VECTOR)
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]  # the original pads with spaces
    args.plus, args.minus = args.plus or "Love", args.minus or "Hate"
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

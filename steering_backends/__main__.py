"""python -m steering_backends: see steering change what a model writes, then every backend agree.

Two commands:
  python -m steering_backends [options]          the main job: sampled text steered warmer and
                                                  colder, then greedy text and parity through
                                                  every backend
  python -m steering_backends compare [options]  sampled completions, unsteered beside steered

Both steer by default with the measured setting of the model's type (settings.SENTIMENT,
chosen on sampled text and scored by VADER); --plus, --minus, --layer, --coeff or --site
ask for a Love - Hate contrast vector instead, as in ActivationAdditions.

A user error (a bad option value, a model that cannot be loaded, a backend that cannot be
imported, a spec the validation refuses) is one line on stderr and exit status 2; --debug
shows the traceback instead. Nothing heavy (torch, transformers) is imported before the
options are parsed, so --help answers at once.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NoReturn

from . import BACKENDS, backend
from .settings import (
    DEFAULT_MODEL,
    DEMO_PROMPT,
    LOVE_HATE,
    LOVE_HATE_X_VECTOR,
    OFFLINE_MODELS,
    RANDOM_CONFIGS,
    SENTIMENT,
    contrast_default,
    default_setting,
)

PROG = "python -m steering_backends"
DTYPES = ("float32", "bfloat16", "float16")
REFERENCE = "pytorch_hooks"  # parity.REFERENCE, named here so --help needs no torch

MAIN_EXAMPLES = f"""examples:
  # offline SmolLM2-135M: samples steered warmer and colder, then every backend
  {PROG}
  # seconds: random weights, parity only
  {PROG} --model tiny-gpt2-random --samples 0
  # the original ActivationAdditions setting (needs the model hub)
  {PROG} --model gpt2-xl --plus Love --minus Hate --layer 6 --coeff 5

the other command: {PROG} compare --help
"""
COMPARE_EXAMPLES = f"""examples:
  # the measured warmer setting, 5 samples per column
  {PROG} compare
  # the measured colder setting, on a prompt of your own
  {PROG} compare --colder --prompt "Our trip to the mountains"
  # the Love - Hate x-vector of ActivationAdditions instead, at its default block for the model type
  {PROG} compare --plus Love --minus Hate
"""


def _defaults_help(x_vector: bool) -> str:
    """The --layer/--coeff defaults that really apply, per model type."""
    measured = "; ".join(
        f"{kind}: warmer block {s[1][1]} ({s[1][2]:+g} x norm), colder block {s[-1][1]} ({s[-1][2]:+g} x norm)"
        for kind, s in SENTIMENT.items()
    )
    table = LOVE_HATE_X_VECTOR if x_vector else LOVE_HATE
    contrast = ", ".join(f"{kind} block {layer} coeff {coeff:g}" for kind, (layer, coeff) in table.items())
    return (
        f"defaults: the measured setting ({measured}, measured on SmolLM2-135M); with --plus/--minus, or on a "
        f"type without a measured setting, Love - Hate at {contrast} (other types: coeff 1); a model with "
        "fewer blocks: its middle block"
    )


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


def _add_shared_args(parser: argparse.ArgumentParser, x_vector: bool) -> None:
    """The model, device, prompt and steering options both commands share."""
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        type=_TEXT,
        help=f"an offline model ({', '.join(OFFLINE_MODELS)}), or a hub id or saved folder of a supported "
        f"model type; default {DEFAULT_MODEL} (offline, real weights)",
    )
    parser.add_argument("--device", help="cpu, cuda, cuda:N or mps; default: cuda if available, else cpu")
    parser.add_argument("--dtype", choices=DTYPES, help="default: float32 on cpu, bfloat16 on a GPU")
    parser.add_argument("--prompt", type=_TEXT, help=f"default: {DEMO_PROMPT!r}")
    vector = "the x-vector act(plus) - act(minus), position by position" if x_vector else "act(plus) - act(minus)"
    parser.add_argument("--plus", type=_TEXT, help=f"steer with {vector} instead of the measured setting; default Love")
    parser.add_argument("--minus", type=_TEXT, help="default: Hate")
    parser.add_argument(
        "--layer", type=int, help=f"a block index, negative counts from the end; {_defaults_help(x_vector)}"
    )
    parser.add_argument("--site", help="resid_pre (default), attn_out, mlp_out or resid_post")
    parser.add_argument("--coeff", type=_FINITE, help="the contrast vector's coefficient (see --layer for defaults)")
    parser.add_argument("--debug", action="store_true", help="on an error, show the traceback")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = _Parser(
        prog=PROG,
        description="The main job: samples steered warmer and colder beside unsteered ones, then greedy text and "
        "max |Δlogit| through every backend. The other command: compare (see examples).",
        epilog=MAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shared_args(parser, x_vector=False)
    parser.add_argument(
        "--backend",
        nargs="+",
        choices=BACKENDS,
        metavar="NAME",
        help=f"run only these, of {', '.join(BACKENDS)} ({REFERENCE}, the reference, always runs); "
        "default: every importable one",
    )
    parser.add_argument("--max-new-tokens", type=_COUNT, default=20, help="of the greedy completions; default 20")
    parser.add_argument(
        "--samples", type=_COUNT_OR_ZERO, default=3, help="sampled completions per column (60 tokens each); 0: none"
    )
    parser.add_argument("--full-parity", action="store_true", help="also run the parity cases of the test suite")
    return parser.parse_args(argv)


def parse_compare_args(argv: list[str]) -> argparse.Namespace:
    parser = _Parser(
        prog=f"{PROG} compare",
        description="Sampled completions, unsteered beside steered, each scored (VADER sentiment, perplexity "
        "under the unsteered model, repeated 3-grams), then the column means.",
        epilog=COMPARE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_shared_args(parser, x_vector=True)
    parser.add_argument("--colder", action="store_true", help="the measured colder setting instead of the warmer one")
    parser.add_argument(
        "--backend", default=REFERENCE, choices=BACKENDS, metavar="NAME", help=f"one of {', '.join(BACKENDS)}"
    )
    parser.add_argument("-n", type=_COUNT, default=5, help="completions per column; default 5")
    parser.add_argument("--seed", type=int, default=0, help="row i uses seed + i in both columns")
    parser.add_argument("--temperature", type=_NON_NEGATIVE, default=1.0, help="0 is greedy; default 1")
    parser.add_argument("--top-p", type=_PROBABILITY, default=0.3, help="default 0.3")
    parser.add_argument("--frequency-penalty", type=_NON_NEGATIVE, default=1.0, help="default 1")
    parser.add_argument("--max-new-tokens", type=_COUNT, default=40, help="default 40")
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


@dataclass(frozen=True)
class _Steering:
    """One steering the options ask for, fixed before any weights load."""

    label: str  # "warmer", "colder", or "steered" (a contrast vector)
    sign: int  # +1 / -1: the measured setting (settings.default_setting); 0: the contrast vector below
    layer: int
    coeff: float | None = None
    site: str = "resid_pre"
    plus: str = "Love"
    minus: str = "Hate"


def _steerings(args: argparse.Namespace, directions: tuple[int, ...], x_vector: bool) -> list[_Steering]:
    """What to steer with, checked against the model's config before its weights load: the measured
    setting in each of ``directions``, or the contrast vector when any of its options is given."""
    from .models import model_shape
    from .spec import SITES

    if args.site is not None and args.site not in SITES:
        raise UsageError(f"argument --site: {args.site!r} is not allowed; allowed: {', '.join(SITES)}")
    try:
        kind, n_layers = model_shape(args.model)
    except (ImportError, OSError, ValueError) as err:
        raise UsageError(f"argument --model: {err}") from err
    contrast = (args.plus, args.minus, args.layer, args.coeff, args.site)
    if all(value is None for value in contrast):
        labels = {1: "warmer", -1: "colder"}
        return [_Steering(labels[sign], sign, default_setting(kind, n_layers, sign).block) for sign in directions]
    layer, coeff = contrast_default(kind, n_layers, LOVE_HATE_X_VECTOR if x_vector else LOVE_HATE)
    layer = layer if args.layer is None else args.layer
    if not -n_layers <= layer < n_layers:
        raise UsageError(
            f"argument --layer: {layer} is out of range for {args.model} ({n_layers} blocks); "
            f"allowed: {-n_layers} to {n_layers - 1}"
        )
    coeff = coeff if args.coeff is None else args.coeff
    plus, minus, site = args.plus or "Love", args.minus or "Hate", args.site or "resid_pre"
    return [_Steering("steered", 0, layer, coeff, site, plus, minus)]


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


def _load(args: argparse.Namespace) -> tuple[Any, Any, str, str]:
    """(model, tokenizer, dtype name, device) as the options ask; a model that cannot be loaded is a UsageError."""
    import torch

    from .models import load

    devices = _devices(torch)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device not in devices:
        allowed = ", ".join(devices)
        raise UsageError(f"argument --device: {device!r} is not allowed; allowed: a device this machine has: {allowed}")
    dtype = args.dtype or ("float32" if device == "cpu" else "bfloat16")
    started = time.perf_counter()
    try:
        model, tokenizer = load(args.model, getattr(torch, dtype), device)
    except (ImportError, OSError, ValueError) as err:
        raise UsageError(f"argument --model: {err}") from err
    print(f"model {args.model} loaded in {time.perf_counter() - started:.1f} s ({dtype} on {device})")
    if args.model in RANDOM_CONFIGS:
        print("  (random weights: completions are gibberish; the point is that every backend agrees)")
    return model, tokenizer, dtype, device


def _devices(torch: Any) -> list[str]:
    """The devices this machine has: cpu, then cuda and cuda:N per GPU, then mps on Apple silicon."""
    gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *(["cuda", *gpus] if gpus else []), *(["mps"] if torch.backends.mps.is_available() else [])]


def _spec(steering: _Steering, model: Any, tokenizer: Any, x_vector: bool) -> tuple[Any, str]:
    """(SteeringSpec, one line saying how it was made) for a steering fixed by _steerings."""
    from .layout import dims
    from .models import sentiment_spec
    from .spec import SteeringSpec
    from .vectors import contrast_vector
    from .vectors import x_vector as make_x_vector

    if steering.sign:
        spec = sentiment_spec(model, tokenizer, steering.sign)
        setting = default_setting(model.config.model_type, dims(model)[0], steering.sign)
        scale = f" = {setting.relative:+g} x the block's median token norm" if setting.relative is not None else ""
        return spec, f"{setting.recipe}, block {spec.layer} resid_pre, coeff {spec.coeff:+.4g}{scale} ({setting.why})"
    what = f"block {steering.layer} {steering.site}, coeff {steering.coeff:g}"
    if x_vector:
        space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]  # the original pads with spaces
        plus, minus = steering.plus, steering.minus
        spec = make_x_vector(
            model, tokenizer, plus, minus, steering.coeff, steering.layer, steering.site, pad_token_id=space
        )
        return spec, f"x-vector {steering.plus!r} - {steering.minus!r}, {what}"
    bos = tokenizer.bos_token or ""
    vector = contrast_vector(
        model, tokenizer, steering.plus, steering.minus, steering.layer, steering.site, bos=bool(bos)
    )
    how = f"{what}: act({bos + steering.plus!r}) - act({bos + steering.minus!r}) at the last token"
    return SteeringSpec(steering.layer, steering.site, vector, steering.coeff), how


def main_job(argv: list[str]) -> None:
    args = parse_args(argv)
    _check_importable(args.backend or [])
    steerings = _steerings(args, (1, -1), x_vector=False)
    import torch

    from .compare import compare
    from .layout import dims
    from .parity import format_table, left_pad, make_runners, parity_cases, reference_run, residual_rms, runner_diffs

    torch.set_grad_enabled(False)  # inference only: no activations kept for backward
    started = time.perf_counter()
    model, tokenizer, _, device = _load(args)
    specs = {}
    for steering in steerings:
        specs[steering.label], how = _spec(steering, model, tokenizer, x_vector=False)
        print(f"{steering.label}: {how}")
    prompt = args.prompt or DEMO_PROMPT
    for steering in steerings if args.samples else []:
        print(f"\n{steering.label.capitalize()}: {args.samples} sampled completions of {prompt!r}, scored by VADER")
        expect = -1 if steering.sign < 0 else 1
        print(
            compare(model, tokenizer, prompt, [specs[steering.label]], n=args.samples, max_new_tokens=60, expect=expect)
        )

    label, spec = next(iter(specs.items()))
    ids, mask = (t.to(device) for t in left_pad(tokenizer, [prompt]))
    cases = {label: [spec]}
    if args.full_parity:
        cases |= parity_cases(*dims(model), scale=residual_rms(model, ids, mask) / 4)
    names = [name for name in BACKENDS if args.backend is None or name in (REFERENCE, *args.backend)]
    # The bridge takes over the model; it comes last, so no second copy is needed.
    runners, skipped = make_runners(model, tokenizer, copy_for_bridge=False, names=names)
    _progress(args.full_parity, f"{len(cases)} parity cases: {REFERENCE} (the reference)")
    refs, table = reference_run(runners, cases, ids, mask)
    print(f"\nGreedy completions ({label}), {args.max_new_tokens} tokens, through every backend:")
    print(f"{'unsteered':>24}: {tokenizer.decode(runners[0].generate(ids, mask, args.max_new_tokens)[0][0])!r}")
    for runner in runners:
        _progress(args.full_parity, f"{len(cases)} parity cases: {runner.name}")
        for case, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[case][runner.name] = diff
        try:
            with runner.steer(runner.model, [spec]):
                text = repr(tokenizer.decode(runner.generate(ids, mask, args.max_new_tokens)[0][0]))
        except ValueError as err:  # a backend that cannot steer this site of this model says why (n/a below)
            text = f"n/a: {err}"
        print(f"{runner.name:>24}: {text}")
    for name, why in skipped.items():
        print(f"{name:>24}: skipped, {why}")
    print(f"\nmax |Δlogit| against {REFERENCE} on the prompt (effect: steered vs unsteered)\n")
    print(format_table(table))
    print(f"\ndone in {time.perf_counter() - started:.1f} s")


def _progress(show: bool, step: str) -> None:
    """One line on stderr per long step, so stdout stays the report."""
    if show:
        print(f"  ... {step}", file=sys.stderr, flush=True)


def compare_main(argv: list[str]) -> None:
    args = parse_compare_args(argv)
    _check_importable([args.backend])
    if args.colder and any(value is not None for value in (args.plus, args.minus, args.layer, args.coeff, args.site)):
        raise UsageError(
            "argument --colder: it picks the measured colder setting; with a contrast vector, negate --coeff"
        )
    (steering,) = _steerings(args, (-1 if args.colder else 1,), x_vector=True)
    import torch

    from .compare import compare

    torch.set_grad_enabled(False)
    model, tokenizer, _, _ = _load(args)
    spec, how = _spec(steering, model, tokenizer, x_vector=True)
    target = model
    if args.backend == "transformer_lens_hooks":
        target = backend(args.backend).bridge_from_hf(model, tokenizer, copy_model=False)
    elif args.backend == "nnsight_trace":
        target = backend(args.backend).nnsight_from_hf(model, tokenizer, copy_model=False)
    print(f"{steering.label}: {how}")
    table = compare(
        target,
        tokenizer,
        args.prompt or DEMO_PROMPT,
        [spec],
        backend=args.backend,
        n=args.n,
        seed=args.seed,
        temperature=args.temperature,
        top_p=args.top_p,
        frequency_penalty=args.frequency_penalty,
        max_new_tokens=args.max_new_tokens,
        expect=-1 if steering.sign < 0 else 1,
    )
    print(table)


if __name__ == "__main__":
    main()

"""Steering a compiled model that decodes with a static cache: what it costs, and whether it recompiles.

    python -m benchmarks.compiled_static                     # SmolLM2, 32 new tokens, inductor
    python -m benchmarks.compiled_static --model tiny-llama-random --new-tokens 4 --repeats 1 --backend eager
    python -m benchmarks.compiled_static --device cuda

transformers' recipe for a fast decode: ``model.forward = torch.compile(model.forward)`` and
``generate(cache_implementation="static")``, so that every decoding step has the same shapes. Hook
guards are on (``torch._dynamo.config.skip_nnmodule_hook_guards = False``, which the hook backends
ask for: docs/where_it_holds.md), so dynamo compiles the steered graphs when a block is entered.
For each backend, from a fresh compile, this times greedy generation unsteered (A) and inside one
``steer`` block (B), counts the graphs compiled by B's calls after the first (0: no recompiling
per decoding step or per call), and the graphs compiled per block when each call enters a block
of its own. Eager generation is timed too, for the speed-up compiling brings.

Writes benchmarks/results/compiled_static.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.hook_work import device_name, wait_for
from benchmarks.overhead import SENTENCES, _one_spec, environment
from steering_backends import backend
from steering_backends.models import load

OUT = Path(__file__).resolve().parent / "results"
BACKENDS = ("pytorch_hooks", "custom_wrapper", "bias_editing")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--backend", default="inductor", help="torch.compile's backend")
    parser.add_argument("--steering", nargs="+", default=BACKENDS, choices=BACKENDS, help="steering backends")
    parser.add_argument("--device", default="cpu", help="where the model runs: cpu, cuda, ...")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    torch._dynamo.config.skip_nnmodule_hook_guards = False  # before compiling: hooks added later recompile
    model, tokenizer = load(args.model, device=args.device)
    spec = _one_spec(model, tokenizer)
    ids = tokenizer(SENTENCES[0], return_tensors="pt").input_ids.to(args.device)
    decode = dict(max_new_tokens=args.new_tokens, do_sample=False, eos_token_id=None, cache_implementation="static")

    def generate() -> torch.Tensor:
        return model.generate(ids, **decode)

    eager = {"unsteered": generate()}
    for name in args.steering:
        with backend(name).steer(model, [spec]):
            eager[name] = generate()
    eager_seconds = statistics.median(timed(generate)[0] for _ in range(args.repeats))

    rows = []
    for name in args.steering:
        rows.append(compiled_row(model, generate, backend(name).steer, spec, eager, name, args))
        print(rows[-1], flush=True)
    text = markdown(rows, eager_seconds, args, ids.shape[1], spec)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "compiled_static.md").write_text(text + "\n")
    print(text)


def compiled_row(model, generate, steer, spec, eager: dict, name: str, args: argparse.Namespace) -> dict:
    """One backend, from nothing compiled (one backend's recompiles must not use up the next one's limit):
    unsteered calls (A), then calls inside one steer block (B), then blocks entered one per call."""
    torch._dynamo.reset()
    model.__dict__.pop("forward", None)
    model.forward = torch.compile(model.forward, backend=args.backend, dynamic=False)
    unsteered_tokens = generate()
    with steer(model, [spec]):
        steered_tokens = generate()
        graphs = _graphs()
        steered = [timed(generate)[0] for _ in range(args.repeats)]
        in_block = _graphs() - graphs
    unsteered = [timed(generate)[0] for _ in range(args.repeats)]
    graphs = _graphs()
    for _ in range(args.repeats):
        with steer(model, [spec]):
            generate()
    return {
        "backend": name,
        "unsteered_s": statistics.median(unsteered),
        "steered_s": statistics.median(steered),
        "in_block": in_block,
        "new_blocks": _graphs() - graphs,
        "same_tokens": torch.equal(unsteered_tokens, eager["unsteered"]) and torch.equal(steered_tokens, eager[name]),
    }


def markdown(rows: list[dict], eager_seconds: float, args: argparse.Namespace, prompt_len: int, spec) -> str:
    lines = [
        f"# A compiled model with a static cache, steered: {args.model}",
        "",
        f"Machine: {environment()}; the model runs on {device_name(args.device)}.",
        f"`model.forward = torch.compile(model.forward, backend={args.backend!r}, dynamic=False)`, hook guards on;",
        f'greedy `generate(cache_implementation="static")`, batch 1, {prompt_len}-token prompt, {args.new_tokens} new '
        f"tokens; medians of {args.repeats} calls. Steered: one spec, {spec.site} of block {spec.layer}.",
        "",
        f"- Eager, unsteered: {eager_seconds:.3f} s per generation. Each backend starts from a fresh compile.",
        "- A: unsteered calls after the block; B: calls inside one block, after its first (which compiles the "
        "steered graphs). Recompiles in the block: graphs compiled by those B calls (0: none per decoding step, "
        f"none per call). New blocks: graphs compiled for {args.repeats} blocks entered afresh, one call each. "
        f"Dynamo compiles at most {torch._dynamo.config.recompile_limit} graphs per frame (its recompile limit); "
        "past it, a call whose guards match no compiled graph runs eagerly.",
        "",
        "| backend | A: unsteered s | B: steered, one block s | B / A | recompiles in the block | new blocks: graphs "
        "| tokens = eager's |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['backend']} | {r['unsteered_s']:.3f} | {r['steered_s']:.3f} "
            f"| {r['steered_s'] / r['unsteered_s']:.3f} | {r['in_block']} | {r['new_blocks']} "
            f"| {'yes' if r['same_tokens'] else 'no'} |"
        )
    return "\n".join(lines)


def timed(fn) -> tuple[float, object]:
    """(seconds, result) of fn(), the clock stopped once the device has finished its work."""
    started = time.perf_counter()
    result = fn()
    wait_for(result.device)
    return time.perf_counter() - started, result


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


if __name__ == "__main__":
    main()

"""What steering costs: steered vs unsteered greedy generation, per backend.

    python -m benchmarks.overhead                          # everything below, ~1 h on 2 CPU cores
    python -m benchmarks.overhead --models gpt2-random --batches 1 --prompt-lens 16 --repeats 5

Steering adds one vector per steered site per token, so its ideal cost is zero. For each
model, batch size and prompt length this times greedy generation with the KV cache
(64 new tokens, never stopping early) unsteered (A) and steered (B) through each
backend, interleaved A B A B ..., and reports the median of the per-pair ratios B / A.
For TransformerLens, A is the bridge unsteered; the bridge's own cost over plain HF is a
separate row. The same for nnsight: A is a generate through nnsight with no edit. It
also times a left-padded batch of 16 prompts against 16 sequential runs (and checks that
both give the same tokens), and the whole parity suite on the GPT-2-XL shape (~7 GB of RAM).

Where steering-vectors and repeng are installed (an environment with transformers 4; see
benchmarks/peers.py) they are timed the same way, in the same run, as rivals: the same
model, prompt, vector and generation. TransformerLens 4 needs transformers 5, so its bridge is
timed in the other environment's run.

Writes benchmarks/results/NAME.md (with the machine and library versions) and NAME.png;
NAME is "overhead" unless --name says otherwise.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from benchmarks.peers import PEERS, installed_peers, peer_steer
from steering_backends import BACKENDS, SteeringSpec, backend
from steering_backends.layout import dims
from steering_backends.models import load
from steering_backends.parity import Runner, left_pad, make_runners, residual_rms

OUT = Path(__file__).resolve().parent / "results"
TARGETS = {"bias_editing": 1.01}  # every other backend: 1.03
NOISE = "A/A control: unsteered vs unsteered"
# Rows that time a wrapper itself, unsteered, against plain HF (no target: not steering's cost).
WRAPPERS = {
    "transformer_lens_hooks": "TransformerLens bridge itself, unsteered, vs HF",
    "nnsight_trace": "nnsight model itself, unsteered, vs HF",
}
SENTENCES = [
    "I hate you because",
    "The weather today is",
    "Love is the answer, and",
    "My favourite thing about the city is the way",
    "She opened the door and",
    "In 1969, the first people to walk on the Moon",
    "The recipe calls for two eggs,",
    "Why do cats",
    "He never told anyone that the letter he found in the attic",
    "A good teacher",
    "The stock market fell sharply after",
    "Once upon a time, in a village by the sea, there lived",
    "To be honest,",
    "The best way to learn a language is",
    "After the storm, the streets were",
    "Our team won the match because",
]


def generate(runner, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy ids [B, T + n_new] with the KV cache; no early stop, nothing extra returned."""
    kwargs = {"stop_at_eos": False, "verbose": False} if runner.is_bridge else {"eos_token_id": None}
    return runner.model.generate(ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, **kwargs)


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def paired(run_a, run_b, repeats: int) -> tuple[float, float, float]:
    """Interleaved A B A B ...: (median A seconds, median B seconds, median of B/A per pair)."""
    run_a(), run_b()  # warm-up, not timed
    a, b = [], []
    for _ in range(repeats):
        a.append(timed(run_a))
        b.append(timed(run_b))
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b, strict=True))


def _one_spec(model, tokenizer) -> SteeringSpec:
    """One resid_pre addition at the middle block, as large as a typical token's residual."""
    n_layers, d_model = dims(model)
    device = next(model.parameters()).device
    scale = residual_rms(model, *(t.to(device) for t in left_pad(tokenizer, SENTENCES[:4]))) / 4
    vector = scale * torch.randn(d_model, generator=torch.Generator().manual_seed(0))
    return SteeringSpec(n_layers // 2, "resid_pre", vector, 4.0)


def steering_rows(
    name: str, batches: list[int], prompt_lens: list[int], n_new: int, repeats: int, backends: list[str] | None
) -> list[dict]:
    model, tokenizer = load(name)
    specs = [_one_spec(model, tokenizer)]
    runners, _ = make_runners(model, tokenizer)
    hf = next(r for r in runners if r.name not in WRAPPERS)  # unsteered HF: the A/A and wrapper-vs-HF rows
    # steering-vectors and repeng, where installed (they need transformers < 5), steer the same model.
    runners += [Runner(peer, lambda: model, functools.partial(peer_steer, peer)) for peer in installed_peers()]
    runners = [r for r in runners if backends is None or r.name in backends]
    runners.sort(key=lambda runner: runner.is_bridge)  # the bridge takes the model over: last
    rows = []
    for batch in batches:
        for length in prompt_lens:
            ids = torch.randint(0, len(tokenizer) - 1, (batch, length), generator=torch.Generator().manual_seed(length))
            size = {"model": name, "batch": batch, "prompt": length}
            rows += [size | row for row in _one_size(runners, hf, specs, ids, n_new, repeats)]
    return rows


def steered_vs_unsteered(runner: Runner, specs: list[SteeringSpec], ids, mask, n_new: int, repeats: int):
    """paired() of generation through ``runner`` unsteered (A) and steered by ``specs`` (B)."""

    def unsteered():
        return generate(runner, ids, mask, n_new)

    def steered():
        with runner.steer(runner.model, specs):
            return generate(runner, ids, mask, n_new)

    return paired(unsteered, steered, repeats)


def _one_size(
    runners: list[Runner], hf: Runner, specs: list[SteeringSpec], ids: torch.Tensor, n_new: int, repeats: int
):
    """Rows for one (batch, prompt length): each backend, steered vs its own unsteered model."""
    mask = torch.ones_like(ids)
    a, b, ratio = paired(lambda: generate(hf, ids, mask, n_new), lambda: generate(hf, ids, mask, n_new), repeats)
    yield {"what": NOISE, "unsteered_s": a, "steered_s": b, "ratio": ratio}  # the machine's noise floor
    print("A/A", f"{a:.3f} s -> {b:.3f} s: {ratio:.3f}", flush=True)
    for runner in runners:
        a, b, ratio = steered_vs_unsteered(runner, specs, ids, mask, n_new, repeats)
        yield {"what": runner.name, "unsteered_s": a, "steered_s": b, "ratio": ratio}
        print(runner.name, f"{a:.3f} s -> {b:.3f} s: {ratio:.3f}", flush=True)
        if runner.name in WRAPPERS:
            wrapper = functools.partial(generate, runner, ids, mask, n_new)  # unsteered, through the wrapper
            a, b, ratio = paired(functools.partial(generate, hf, ids, mask, n_new), wrapper, repeats)
            yield {"what": WRAPPERS[runner.name], "unsteered_s": a, "steered_s": b, "ratio": ratio}
            print(WRAPPERS[runner.name], f"{a:.3f} s -> {b:.3f} s: {ratio:.3f}", flush=True)


def padded_batch_row(name: str, n_new: int, repeats: int) -> dict:
    """16 prompts: one left-padded batch vs one by one, both steered through pytorch_hooks."""
    model, tokenizer = load(name)
    specs = [_one_spec(model, tokenizer)]
    hf = Runner("pytorch_hooks", lambda: model, backend("pytorch_hooks").steer)
    ids, mask = left_pad(tokenizer, SENTENCES)
    alone = [left_pad(tokenizer, [s]) for s in SENTENCES]

    def batched():
        with hf.steer(model, specs):
            return generate(hf, ids, mask, n_new)[:, -n_new:]

    def sequential():
        with hf.steer(model, specs):
            return torch.cat([generate(hf, i, m, n_new)[:, -n_new:] for i, m in alone])

    same_rows = int((batched() == sequential()).all(-1).sum())
    b, s, _ = paired(batched, sequential, repeats)
    return {"model": name, "batch_s": b, "sequential_s": s, "speedup": s / b, "same_rows": same_rows, "rows": 16}


def parity_suite_seconds() -> float:
    """Wall time of tests/parity_suite.run_suite on the GPT-2-XL shape, model build included."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from parity_suite import run_suite

    started = time.perf_counter()
    model, tokenizer = load("gpt2-xl-random")
    run_suite(model, tokenizer, *dims(model), copy_for_bridge=False)
    return time.perf_counter() - started


def environment() -> str:
    from importlib.metadata import version

    names = ("torch", "transformers", "transformer-lens", "nnsight", *PEERS)
    installed = [name for name in names if importlib.util.find_spec(name.replace("-", "_"))]
    versions = ", ".join(f"{name} {version(name)}" for name in installed)
    cpu = platform.processor() or platform.machine()
    return f"{os.cpu_count()} CPU cores ({cpu}), {torch.get_num_threads()} torch threads; {versions}"


def markdown(rows, batch_rows, xl_seconds: float | None, n_new: int, repeats: int, batch_repeats: int) -> str:
    lines = [
        "# Steering overhead",
        "",
        f"Machine: {environment()}.",
        f"Greedy generation with the KV cache, {n_new} new tokens; median of {repeats} interleaved pairs;",
        "ratio = steered / unsteered time, taken pair by pair. One `resid_pre` spec at the middle block.",
        "",
        "| model | batch | prompt | what | unsteered s | steered s | ratio | target |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        untargeted = r["what"] in WRAPPERS.values() or r["what"] == NOISE
        target = "" if untargeted or r["what"] in PEERS else f"≤ {TARGETS.get(r['what'], 1.03):.2f}"
        ok = "" if not target else (" ✓" if r["ratio"] <= TARGETS.get(r["what"], 1.03) else " ✗")
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['prompt']} | {r['what']} | {r['unsteered_s']:.3f} | "
            f"{r['steered_s']:.3f} | {r['ratio']:.3f} | {target}{ok} |"
        )
    lines += ["", "## Left-padded batch of 16 vs 16 sequential runs (steered, pytorch_hooks)", ""]
    lines += [f"Median of {batch_repeats} interleaved pairs; {n_new} new tokens per prompt.", ""]
    lines += ["| model | batch s | sequential s | speedup | same tokens | target |", "|---|---|---|---|---|---|"]
    for r in batch_rows:
        ok = "✓" if r["speedup"] >= 4 and r["same_rows"] == r["rows"] else "✗"
        lines.append(
            f"| {r['model']} | {r['batch_s']:.2f} | {r['sequential_s']:.2f} | {r['speedup']:.1f}× | "
            f"{r['same_rows']}/{r['rows']} rows | ≥ 4×, all rows {ok} |"
        )
    if xl_seconds is not None:
        verdict = "✓" if xl_seconds <= 300 else "✗"
        lines += ["", "## Parity suite on the GPT-2-XL shape", ""]
        lines += [
            f"`run_suite` on gpt2-xl-random, model build included: {xl_seconds:.0f} s (target ≤ 300 s {verdict}).",
        ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({(r["model"], r["batch"], r["prompt"]) for r in rows})
    names = [n for n in (*BACKENDS, *PEERS) if any(r["what"] == n for r in rows)]
    fig, ax = plt.subplots(figsize=(10, 4))
    width = 0.8 / max(len(names), 1)
    for i, name in enumerate(names):
        by_size = {(r["model"], r["batch"], r["prompt"]): r["ratio"] for r in rows if r["what"] == name}
        ratios = [by_size.get(key, 0) for key in labels]
        ax.bar([x + i * width for x in range(len(labels))], ratios, width, label=name)
    ax.axhline(1.03, color="black", linestyle="--", linewidth=1, label="target 1.03")
    ax.set_xticks([x + 0.4 - width / 2 for x in range(len(labels))])
    ax.set_xticklabels([f"{m}\nbatch {b}, prompt {p}" for m, b, p in labels], fontsize=8)
    ax.set_ylabel("steered / unsteered time")
    ax.set_ylim(0.9, max(1.1, max(r["ratio"] for r in rows if r["what"] in names) + 0.02))
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gpt2-random", "smollm2-135m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-lens", nargs="+", type=int, default=[16, 512])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--backends", nargs="+", choices=(*BACKENDS, *PEERS), help="default: every importable backend and peer"
    )
    parser.add_argument("--batch-repeats", type=int, default=3, help="pairs for the padded-batch comparison")
    parser.add_argument("--no-parity-xl", dest="parity_xl", action="store_false", help="skip timing the XL suite")
    parser.add_argument("--out", type=Path, default=OUT, help="folder for the table and the plot")
    parser.add_argument("--name", default="overhead", help="file names: NAME.md and NAME.png")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    rows, batch_rows, xl_seconds = [], [], None
    args.out.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every model, so a long run leaves what it has measured
        table = markdown(rows, batch_rows, xl_seconds, args.new_tokens, args.repeats, args.batch_repeats)
        (args.out / f"{args.name}.md").write_text(table)
        plot(rows, args.out / f"{args.name}.png")

    for name in args.models:
        rows += steering_rows(name, args.batches, args.prompt_lens, args.new_tokens, args.repeats, args.backends)
        batch_rows.append(padded_batch_row(name, args.new_tokens, args.batch_repeats))
        print(batch_rows[-1], flush=True)
        write()
    if args.parity_xl:
        xl_seconds = parity_suite_seconds()
        write()
    print((args.out / f"{args.name}.md").read_text())


if __name__ == "__main__":
    main()

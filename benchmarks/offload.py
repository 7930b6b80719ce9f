"""What steering costs on a model accelerate dispatched, blocks offloaded to disk.

    python -m benchmarks.offload                                  # SmolLM2, blocks 10-19 on disk, ~10 min
    python -m benchmarks.offload --model tiny-llama-random --new-tokens 4 --repeats 1

Loads the model with ``models.load(..., device_map=...)``: blocks 10-19 (or, on a smaller
model, the second half) on "disk", everything else on "cpu", as in issue 16. Then, as in
benchmarks/overhead.py, times greedy generation with the KV cache unsteered (A) and
steered (B) through each backend, interleaved A B A B ..., and reports the median of the
per-pair ratios B / A. One ``resid_pre`` spec at the middle block, which is on disk. Two
context rows: an A/A control (the machine's noise floor), and the dispatched model
unsteered against the same model undispatched (what offloading itself costs).

Writes benchmarks/results/offload.md with the machine, the library versions and the load
average before and after the run (the machine may be shared).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.overhead import _one_spec, environment, generate, paired, steered_vs_unsteered
from steering_backends.layout import dims, get_module, layout_of
from steering_backends.models import SMOLLM2, load
from steering_backends.parity import Runner, make_runners

OUT = Path(__file__).resolve().parent / "results"
NOISE = "A/A control: dispatched, unsteered vs unsteered"
DISPATCH = "dispatched vs undispatched, both unsteered"


def disk_map(model: torch.nn.Module) -> tuple[dict[str, str], list[int]]:
    """(device_map, blocks on disk): blocks 10-19 of 30 (a third), the rest and the embeddings on "cpu"."""
    layout, (n_layers, _) = layout_of(model), dims(model)
    disk = list(range(n_layers // 3, 2 * n_layers // 3))
    decoder = get_module(model, layout.decoder)
    others = [f"{layout.decoder}.{name}" for name, _ in decoder.named_children()]
    device_map = {name: "cpu" for name in [*others, "lm_head"] if name != layout.blocks}
    device_map |= {f"{layout.blocks}.{i}": "disk" if i in disk else "cpu" for i in range(n_layers)}
    return device_map, disk


def run(name: str, n_new: int, repeats: int, prompt_len: int, offload_folder: str) -> tuple[list[dict], dict]:
    plain, tokenizer = load(name)
    device_map, disk = disk_map(plain)
    model, _ = load(name, device_map=device_map, offload_folder=offload_folder)
    specs = [_one_spec(plain, tokenizer)]
    ids = torch.randint(0, len(tokenizer) - 1, (1, prompt_len), generator=torch.Generator().manual_seed(prompt_len))
    mask = torch.ones_like(ids)
    hf = Runner("hf", lambda: model, None)
    undispatched = Runner("hf", lambda: plain, None)
    rows = []

    def row(what: str, a: float, b: float, ratio: float) -> None:
        rows.append({"what": what, "unsteered_s": a, "steered_s": b, "ratio": ratio})
        print(f"{what}: {a:.3f} s -> {b:.3f} s: {ratio:.3f}", flush=True)

    row(
        DISPATCH,
        *paired(lambda: generate(undispatched, ids, mask, n_new), lambda: generate(hf, ids, mask, n_new), repeats),
    )
    row(NOISE, *paired(lambda: generate(hf, ids, mask, n_new), lambda: generate(hf, ids, mask, n_new), repeats))
    runners, skipped = make_runners(model, tokenizer, copy_for_bridge=False)  # no copies; the bridge runs last
    for runner in runners:
        row(runner.name, *steered_vs_unsteered(runner, specs, ids, mask, n_new, repeats))
    setup = {
        "model": name,
        "disk": f"blocks {disk[0]}-{disk[-1]} of {dims(plain)[0]}",
        "site": f"resid_pre of block {specs[0].layer} ({'on disk' if specs[0].layer in disk else 'on cpu'})",
        "skipped": skipped,
    }
    return rows, setup


def markdown(rows: list[dict], setup: dict, n_new: int, repeats: int, prompt_len: int) -> str:
    lines = [
        "# Steering a dispatched model: overhead",
        "",
        f"Machine: {environment()}; run {time.strftime('%Y-%m-%d %H:%M %Z')}.",
        f"Model {setup['model']}, {setup['disk']} on disk, the rest on cpu. Greedy generation with the KV",
        f"cache, batch 1, {prompt_len}-token prompt, {n_new} new tokens; median of {repeats} interleaved pairs;",
        f"ratio = B / A per pair. Steered: one spec at {setup['site']}.",
        "",
        "| what | A: unsteered s | B: steered s | ratio |",
        "|---|---|---|---|",
    ]
    for r in rows:
        cells = f"{r['unsteered_s']:.3f} | {r['steered_s']:.3f} | {r['ratio']:.3f}"
        lines.append(f"| {r['what']} | {cells} |")
    lines += ["", f"(In the {DISPATCH!r} row, A is the undispatched model and B the dispatched one.)"]
    lines += [f"- skipped: {name}: {why}" for name, why in setup["skipped"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=SMOLLM2)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as offload_folder:
        rows, setup = run(args.model, args.new_tokens, args.repeats, args.prompt_len, offload_folder)
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, setup, args.new_tokens, args.repeats, args.prompt_len)
    (args.out / "offload.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

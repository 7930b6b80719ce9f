"""How faithful is each lens? KL(final || lens) per block on held-out text, logit lens vs tuned lens.

    python -m benchmarks.tuned_lens              # the cached lens of SmolLM2 (trained first if there is none)
    python -m benchmarks.tuned_lens --retrain    # train it again first, to time the training

The held-out text is the part of the lens's corpus it was never trained on (lens_training.py).
The logit lens is an untrained TunedLens (exactly the logit lens). Also measured on as many
training tokens, to show overfitting as the gap between the two. Writes tuned_lens.md and
tuned_lens.png under benchmarks/results/ (or --out).
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch

from steering_backends.layout import dims
from steering_backends.lens import TunedLens, lens_kl
from steering_backends.lens_training import LensRecipe, batches, lens_folder, load_tuned_lens
from steering_backends.models import load

RESULTS = Path(__file__).resolve().parent / "results"


def _same_tokens(docs: list[list[int]], tokens: int) -> list[list[int]]:
    """The first documents of ``docs`` holding at least ``tokens`` tokens."""
    out = []
    while docs and sum(map(len, out)) < tokens:
        out.append(docs[len(out)])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--retrain", action="store_true", help="delete the cached lens and train it again")
    parser.add_argument("--documents", type=int, help="train on the first N documents of each source only (quick)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    torch.set_grad_enabled(False)
    model, tokenizer = load(args.model)
    if args.retrain:
        shutil.rmtree(lens_folder(model), ignore_errors=True)
    lens = load_tuned_lens(model, tokenizer, LensRecipe(documents=args.documents))
    manifest = json.loads((lens_folder(model) / "manifest.json").read_text())
    corpus = json.loads((lens_folder(model) / "corpus.json").read_text())
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    held_out = batches(corpus["held_out"], 512, pad_id)
    held_tokens = sum(map(len, corpus["held_out"]))
    seen = batches(_same_tokens(corpus["train"], held_tokens), 512, pad_id)
    logit = lens_kl(TunedLens(*dims(model)), model, held_out)
    tuned = lens_kl(lens, model, held_out)
    logit_train, tuned_train = lens_kl(TunedLens(*dims(model)), model, seen), lens_kl(lens, model, seen)

    n_layers = len(logit)
    half = n_layers // 2
    ratio = (logit[:half].mean() / tuned[:half].mean()).item()
    better = [layer for layer in range(n_layers - 1) if tuned[layer] < logit[layer]]
    trained = manifest["trained"]
    size = sum(p.numel() for p in lens.parameters())
    megabytes = (lens_folder(model) / "lens.safetensors").stat().st_size / 1e6
    lines = [
        f"# Logit lens vs tuned lens on {args.model}",
        "",
        f"KL(final || lens) in nats per block, mean over {held_tokens} held-out tokens (never trained on), "
        f"and over the first {sum(int(m.sum()) for _, m in seen)} tokens it was trained on (overfitting would "
        "show as a tuned lens much closer there than on held-out text, relative to the logit lens).",
        "",
        f"- Tuned lens lower than the logit lens at {len(better)} of the {n_layers - 1} blocks but the last "
        "(target: all); the last block is the model's own output (0 for both).",
        f"- Blocks 0-{half - 1} (the first half): logit lens {logit[:half].mean():.2f}, tuned lens "
        f"{tuned[:half].mean():.2f}, {ratio:.1f}x lower (target: >= 3x).",
        f"- Training: {trained['train_tokens']} tokens ({trained['steps']} steps), sampling the corpus "
        f"{trained['sampling_seconds']:.0f} s + training {trained['training_seconds']:.0f} s on "
        f"{trained['threads']} thread(s) ({trained['device']}).",
        f"- Lens size: {size:,} parameters ({n_layers - 1} blocks x (d_model^2 + d_model)), "
        f"{megabytes:.1f} MB in float32.",
        "",
        "| block | held out: logit lens | tuned lens | ratio | train: logit lens | tuned lens | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for layer in range(n_layers):
        cells = [f"{logit[layer]:.3f}", f"{tuned[layer]:.3f}", _quotient(logit[layer], tuned[layer])]
        cells += [f"{logit_train[layer]:.3f}", f"{tuned_train[layer]:.3f}"]
        cells += [_quotient(logit_train[layer], tuned_train[layer])]
        lines.append(f"| {layer} | {' | '.join(cells)} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tuned_lens.md").write_text("\n".join(lines) + "\n")
    _plot((logit, tuned), (logit_train, tuned_train), args.model).savefig(args.out / "tuned_lens.png", dpi=100)
    print("\n".join(lines))


def _quotient(a: torch.Tensor, b: torch.Tensor) -> str:
    return f"{a / b:.1f}" if b > 0 else "-"  # the last block: 0 / 0


def _plot(held_out: tuple[torch.Tensor, torch.Tensor], train: tuple[torch.Tensor, torch.Tensor], name: str):
    """KL per block: (logit, tuned) on held-out text, solid; on training text, dotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = range(len(held_out[0]) - 1)  # the last block's KL is 0 for both: off a log scale
    fig, ax = plt.subplots(figsize=(7, 4))
    for colour, lens, on_held_out, on_train in zip(("C0", "C1"), ("logit", "tuned"), held_out, train, strict=True):
        ax.plot(blocks, on_held_out[:-1], "o-", color=colour, label=f"{lens} lens, held out")
        ax.plot(blocks, on_train[:-1], ":", color=colour, label=f"{lens} lens, training text")
    ax.set_yscale("log")
    ax.set_xlabel("block")
    ax.set_ylabel("KL(final || lens), nats")
    ax.set_title(f"{name}: how far each block's lens is from the model's output")
    ax.legend()
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    main()

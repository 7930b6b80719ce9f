"""ActivationAdditions' topic experiment on SmolLM2: does the "weddings" x-vector make text talk about weddings?

    python -m benchmarks.actadd_topics            # sweep, held-out report, text perplexities (20-40 min, 1 core)
    python -m benchmarks.actadd_topics --report   # only rebuild the tables and plot from the saved rows

Turner et al. ("Steering Language Models With Activation Engineering") add the x-vector
act("I talk about weddings constantly") - act("I do not talk about weddings constantly"),
the shorter prompt right-padded with the space token, at block 20 of GPT-2-XL's 48 with
coefficient 4, and count wedding-related words in completions of unrelated prompts. Here the
same vector (steering_backends.vectors.x_vector) steers SmolLM2-135M-Instruct (30 blocks; the
Q4_1 GGUF weights, dequantized to float32), swept over blocks and coefficients. A second topic,
dogs, is built the same way.

For each (topic, block, coefficient) it samples SEEDS_SWEEP seeds of each sweep prompt with the
seed paper's settings (temperature 1, frequency penalty 1, top_p 0.3) and measures:
- the share of completions holding at least one topic word, and the mean count per completion
  (TOPICS below lists the words; whole words, case-insensitive);
- fluency, as elsewhere in this repository (steering_backends.judge): the perplexity of the
  steered completions under the unsteered model over the unsteered completions', and the share
  of repeated word 3-grams.
The setting with the highest topic rate among those with perplexity ratio <= 2 is chosen on the
sweep prompts only and reported once on the held-out prompts, beside the paper's own coefficient
(4) at the block of the same relative depth (20/48 of 30 = 12.5, so 12).

It also measures, as the paper does, the perplexity of short on-topic and unrelated texts under
the *steered* model (the x-vector added at the text's first positions): on-topic text should
become less surprising, unrelated text should move less.

Prompts and texts: steering_backends/data/topic_prompts.json. Rows go to
benchmarks/results/actadd_topics.jsonl as they finish (a stopped run resumes); actadd_topics.md
and actadd_topics.png are written from them.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from steering_backends import backend
from steering_backends.compare import Comparison, sample, score
from steering_backends.judge import completion_nll, perplexity
from steering_backends.models import load
from steering_backends.prompts import encode
from steering_backends.vectors import DATA, load_reference_texts, residual_norm, x_vector

RESULTS = Path(__file__).resolve().parent / "results"
ROWS = RESULTS / "actadd_topics.jsonl"
MODEL = "smollm2-135m"
TOPICS = {
    "weddings": dict(
        plus="I talk about weddings constantly",
        minus="I do not talk about weddings constantly",
        # The paper's list of wedding-related words.
        words=("wedding", "weddings", "wed", "marry", "married", "marriage", "bride", "groom", "honeymoon"),
    ),
    "dogs": dict(
        plus="I talk about dogs constantly",
        minus="I do not talk about dogs constantly",
        words=("dog", "dogs", "puppy", "puppies", "canine", "bark", "barks", "barking", "leash", "kennel"),
    ),
}
PAPER_BLOCK, PAPER_COEFF = 12, 4.0  # GPT-2-XL's block 20 of 48 at this model's depth (30 blocks), coeff 4
BLOCKS = (12, 6, 18, 24)  # the paper's relative depth first
# The second topic is swept at the paper's depth and the next block only, to keep the run short.
SWEEP_BLOCKS = {"weddings": BLOCKS, "dogs": (12, 18)}
COEFFS = (1.0, 2.0, 4.0, 8.0, 16.0)  # multiply the x-vector itself, as the paper's coefficient does
# A larger coefficient at a block is not run once the steered text is this much more surprising
# to the unsteered model (perplexity ratio): it only breaks the language further.
PRUNE_PERPLEXITY_RATIO = 4.0
MAX_PERPLEXITY_RATIO = 2.0  # the fluency guard for the chosen setting
SEEDS_SWEEP, SEEDS_HELD_OUT = 4, 8
SAMPLING = dict(temperature=1.0, top_p=0.3, frequency_penalty=1.0, max_new_tokens=40)


def topic_data() -> dict:
    return {k: v for k, v in json.loads((DATA / "topic_prompts.json").read_text()).items() if k != "_comment"}


def count_words(text: str, words: Sequence[str]) -> int:
    """How many of the text's words (runs of letters, lower-cased) are in ``words``.

    "The bride's wedding" holds 2 of ("bride", "wedding"); "Wednesday" is not "wed".
    """
    wanted = {w.lower() for w in words}
    return sum(word in wanted for word in re.findall(r"[a-z]+", text.lower()))


def topic_rates(texts: Sequence[str], words: Sequence[str]) -> tuple[float, float]:
    """(share of texts holding at least one of ``words``, mean count per text)."""
    counts = [count_words(text, words) for text in texts]
    return sum(c > 0 for c in counts) / len(counts), sum(counts) / len(counts)


def text_perplexity(model, tokenizer, texts: Sequence[str], specs=(), skip: int = 0, bos: bool = True) -> float:
    """Token-weighted perplexity of ``texts`` under the model, steered by ``specs`` when given.

    Each text's tokens after its first ``skip`` are scored, each given all the tokens before
    it (the BOS token, when ``bos``, is context only). Steering positions count from the BOS
    token, so an x-vector lands on the text's start, as the paper measured.
    """
    rows = [encode(tokenizer, text, False) for text in texts]
    if any(len(row) <= skip for row in rows):
        raise ValueError(f"text_perplexity: skip={skip} leaves a text with no tokens to score")
    starts = [encode(tokenizer, "", bos) + row[:skip] for row in rows]
    steering = backend("pytorch_hooks").steer(model, list(specs)) if specs else contextlib.nullcontext()
    with steering:
        return perplexity(completion_nll(model, starts, [row[skip:] for row in rows]))


def topic_spec(model, tokenizer, topic: str, block: int, coeff: float):
    """The topic's x-vector at ``block``, right-padded with the space token as in the paper."""
    space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]
    t = TOPICS[topic]
    return x_vector(model, tokenizer, t["plus"], t["minus"], coeff, block, pad_token_id=space)


class Sampler:
    """Samples and scores one prompt set: the unsteered column once, then any steered one."""

    def __init__(self, model, tokenizer, prompts: list[str], seeds: int) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.prompts = [p for p in prompts for _ in range(seeds)]
        self.seeds = [s for _ in prompts for s in range(seeds)]
        self.unsteered = self._column([])

    def _column(self, specs):
        with backend("pytorch_hooks").steer(self.model, specs):
            new_ids = sample(self.model, self.tokenizer, self.prompts, self.seeds, **SAMPLING)
        return score(self.model, self.tokenizer, self.prompts, new_ids)

    def compare(self, specs) -> Comparison:
        return Comparison(self.prompts, self.seeds, self.unsteered, self._column(specs), dict(SAMPLING))


def measure(comparison: Comparison, words: Sequence[str]) -> dict:
    s = comparison.summary()
    rate, count = topic_rates([c.text for c in comparison.steered], words)
    base_rate, base_count = topic_rates([c.text for c in comparison.unsteered], words)
    return dict(
        n=s.n,
        rate=rate,
        mean_count=count,
        unsteered_rate=base_rate,
        unsteered_mean_count=base_count,
        ppl_ratio=s.perplexity_ratio,
        repetition=s.steered_repetition,
        unsteered_repetition=s.unsteered_repetition,
    )


def relative_size(spec, norm: float) -> float:
    """The largest row of coeff * x-vector over the block's median token norm."""
    return abs(spec.coeff) * spec.vector.norm(dim=-1).max().item() / norm


def _append(row: dict) -> dict:
    with ROWS.open("a") as file:
        file.write(json.dumps(row) + "\n")
    return row


def load_rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines()] if ROWS.exists() else []


def sweep(model, tokenizer, norms: dict[int, float]) -> None:
    done = {(r["topic"], r["block"], r["coeff"]) for r in load_rows() if r["kind"] == "sweep"}
    sampler = Sampler(model, tokenizer, topic_data()["sweep"], SEEDS_SWEEP)
    for topic in TOPICS:
        for block in SWEEP_BLOCKS[topic]:
            for coeff in COEFFS:
                key = (topic, block, coeff)
                if key in done:
                    row = next(
                        r for r in load_rows() if r["kind"] == "sweep" and (r["topic"], r["block"], r["coeff"]) == key
                    )
                else:
                    started = time.perf_counter()
                    spec = topic_spec(model, tokenizer, topic, block, coeff)
                    row = dict(
                        kind="sweep", topic=topic, block=block, coeff=coeff, relative=relative_size(spec, norms[block])
                    )
                    row = _append(row | measure(sampler.compare([spec]), TOPICS[topic]["words"]))
                    print(
                        f"{topic:>8} block {block:>2} coeff {coeff:>4g} (x{row['relative']:.2f} norm): "
                        f"rate {row['rate']:.2f} (unsteered {row['unsteered_rate']:.2f}) count {row['mean_count']:.2f} "
                        f"ppl x{row['ppl_ratio']:.2f} rep {row['repetition']:.3f} "
                        f"({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
                if row["ppl_ratio"] > PRUNE_PERPLEXITY_RATIO:
                    break


def choose(rows: list[dict], topic: str) -> dict:
    """The sweep setting with the highest topic rate (then mean count) among fluent ones."""
    fluent = [
        r for r in rows if r["kind"] == "sweep" and r["topic"] == topic and r["ppl_ratio"] <= MAX_PERPLEXITY_RATIO
    ]
    return max(fluent, key=lambda r: (r["rate"], r["mean_count"], -r["ppl_ratio"]))


def held_out(model, tokenizer, rows: list[dict], norms: dict[int, float]) -> None:
    """Once: the chosen setting and the paper's own, on the held-out prompts."""
    if any(r["kind"] == "held_out" for r in rows):
        return
    sampler = Sampler(model, tokenizer, topic_data()["held_out"], SEEDS_HELD_OUT)
    for topic in TOPICS:
        chosen = choose(rows, topic)
        settings = [("chosen", chosen["block"], chosen["coeff"])]
        if (chosen["block"], chosen["coeff"]) != (PAPER_BLOCK, PAPER_COEFF):
            settings.append(("paper", PAPER_BLOCK, PAPER_COEFF))
        for label, block, coeff in settings:
            spec = topic_spec(model, tokenizer, topic, block, coeff)
            comparison = sampler.compare([spec])
            row = dict(kind="held_out", setting=label, topic=topic, block=block, coeff=coeff)
            row |= dict(relative=relative_size(spec, norms[block]), **measure(comparison, TOPICS[topic]["words"]))
            # seed 0 of each prompt, for the report
            row["examples"] = [
                dict(
                    prompt=comparison.prompts[i],
                    unsteered=comparison.unsteered[i].text,
                    steered=comparison.steered[i].text,
                )
                for i in range(0, row["n"], SEEDS_HELD_OUT)
            ]
            _append(row)
            print(
                f"held-out {topic} {label} block {block} coeff {coeff:g}: rate {row['rate']:.2f} "
                f"(unsteered {row['unsteered_rate']:.2f}) ppl x{row['ppl_ratio']:.2f}",
                flush=True,
            )


def texts(model, tokenizer, rows: list[dict]) -> None:
    """Perplexity of each text group under the model steered by each topic's vector, every block and coeff.

    Two scores: every token of the text ("steered"), and only the tokens past the x-vector's
    positions ("steered_after"), where the addition is not written over the text's own tokens.
    """
    if any(r["kind"] == "texts" for r in rows):
        return
    groups = topic_data()["texts"]
    base = {group: text_perplexity(model, tokenizer, groups[group]) for group in groups}
    for topic in TOPICS:
        skip = len(topic_spec(model, tokenizer, topic, BLOCKS[0], 1.0).vector) - 1  # text tokens under the vector
        base_after = {group: text_perplexity(model, tokenizer, groups[group], skip=skip) for group in groups}
        for block in BLOCKS:
            for coeff in COEFFS:
                spec = [topic_spec(model, tokenizer, topic, block, coeff)]
                steered = {group: text_perplexity(model, tokenizer, groups[group], spec) for group in groups}
                after = {group: text_perplexity(model, tokenizer, groups[group], spec, skip) for group in groups}
                row = dict(kind="texts", topic=topic, block=block, coeff=coeff, skip=skip, unsteered=base)
                _append(row | dict(steered=steered, unsteered_after=base_after, steered_after=after))


def write_report(rows: list[dict]) -> None:
    sweep_rows = [r for r in rows if r["kind"] == "sweep"]
    held = [r for r in rows if r["kind"] == "held_out"]
    text_rows = [r for r in rows if r["kind"] == "texts"]
    prompts = topic_data()
    lines = [
        f"# ActivationAdditions' topic experiment on {MODEL}",
        "",
        "SmolLM2-135M-Instruct from its Q4_1-quantized GGUF weights (dequantized to float32), 30 blocks. "
        'The x-vector act("I talk about X constantly") − act("I do not talk about X constantly"), the shorter '
        "prompt right-padded with the space token, is added at `resid_pre` of one block, from the prompt's first "
        "position (BOS). coeff multiplies the x-vector itself, as in the paper; relative is the largest row of "
        "coeff × x-vector over the block's median token norm. Completions: 40 new tokens, temperature 1, frequency "
        "penalty 1, top_p 0.3. rate: share of completions holding a topic word; count: topic words per completion. "
        "ppl ×: perplexity of the steered completions under the unsteered model over the unsteered completions'. "
        "rep: share of repeated word 3-grams. Made by `python -m benchmarks.actadd_topics`.",
        "",
        "Topic words (whole words, case-insensitive):",
        "",
    ]
    lines += [f"- {topic}: {', '.join(TOPICS[topic]['words'])}" for topic in TOPICS]
    for topic in TOPICS:
        picked = [r for r in held if r["topic"] == topic]
        if not picked:
            continue
        lines += [
            "",
            f"## {topic}: held-out prompts",
            "",
            f"{len(prompts['held_out'])} held-out prompts × {SEEDS_HELD_OUT} seeds, reported once. chosen: the highest "
            f"rate on the sweep prompts with ppl × ≤ {MAX_PERPLEXITY_RATIO:g}; paper: coeff {PAPER_COEFF:g} at block "
            f"{PAPER_BLOCK} (GPT-2-XL's 20/48 at this depth).",
            "",
            "| setting | block | coeff | relative | rate (unsteered) | rate ÷ unsteered | count (unsteered) | ppl × "
            "| rep (unsteered) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in picked:
            lines.append(
                f"| {r['setting']} | {r['block']} | {r['coeff']:g} | {r['relative']:.2f} | {r['rate']:.3f} "
                f"({r['unsteered_rate']:.3f}) | {_ratio(r['rate'], r['unsteered_rate'])} | {r['mean_count']:.3f} "
                f"({r['unsteered_mean_count']:.3f}) | {r['ppl_ratio']:.2f} | {r['repetition']:.3f} "
                f"({r['unsteered_repetition']:.3f}) |"
            )
    for topic in TOPICS:
        picked = sorted((r for r in sweep_rows if r["topic"] == topic), key=lambda r: (r["block"], r["coeff"]))
        if not picked:
            continue
        lines += [
            "",
            f"## {topic}: the sweep",
            "",
            f"{len(prompts['sweep'])} sweep prompts × {SEEDS_SWEEP} seeds. Unsteered: "
            f"rate {picked[0]['unsteered_rate']:.3f}, count {picked[0]['unsteered_mean_count']:.3f}, "
            f"rep {picked[0]['unsteered_repetition']:.3f}. A larger coeff "
            f"at a block is skipped once ppl × passes {PRUNE_PERPLEXITY_RATIO:g}.",
            "",
            "| block | coeff | relative | rate | count | ppl × | rep |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['block']} | {r['coeff']:g} | {r['relative']:.2f} | {r['rate']:.3f} | {r['mean_count']:.3f} | "
            f"{r['ppl_ratio']:.2f} | {r['repetition']:.3f} |"
            for r in picked
        ]
    if text_rows:
        groups = list(text_rows[0]["unsteered"])
        lines += [
            "",
            "## Perplexity of short texts under the steered model",
            "",
            ", ".join(f"{len(prompts['texts'][g])} {g}" for g in groups)
            + " texts (steering_backends/data/topic_prompts.json), each scored token by token after BOS with the "
            "x-vector added at its first positions: steered perplexity ÷ unsteered, over all tokens (all) and over "
            "the tokens past the x-vector's positions only (after: the first "
            f"{text_rows[0]['skip']} text tokens are context, not scored). Unsteered, all: "
            + ", ".join(f"{g} {text_rows[0]['unsteered'][g]:.1f}" for g in groups)
            + "; after: "
            + ", ".join(f"{g} {text_rows[0]['unsteered_after'][g]:.1f}" for g in groups)
            + ".",
            "",
            "| vector | block | coeff | " + " | ".join(f"{g} × all | {g} × after" for g in groups) + " |",
            "|---|---|---|" + "---|---|" * len(groups),
        ]
        for r in sorted(text_rows, key=lambda r: (list(TOPICS).index(r["topic"]), r["block"], r["coeff"])):
            ratios = " | ".join(
                f"{r['steered'][g] / r['unsteered'][g]:.2f} | {r['steered_after'][g] / r['unsteered_after'][g]:.2f}"
                for g in groups
            )
            lines.append(f"| {r['topic']} | {r['block']} | {r['coeff']:g} | {ratios} |")
    for r in held:
        lines += ["", f"## {r['topic']}, {r['setting']} setting: seed 0 of each held-out prompt", ""]
        for e in r["examples"]:
            lines += [
                f"- **{e['prompt']}**",
                f"  - unsteered: {e['unsteered'].strip()!r}",
                f"  - steered: {e['steered'].strip()!r}",
            ]
    (RESULTS / "actadd_topics.md").write_text("\n".join(lines) + "\n")


def _ratio(value: float, base: float) -> str:
    return f"{value / base:.1f}×" if base else ("∞ (unsteered 0)" if value else "–")


def plot(rows: list[dict]) -> None:
    """The paper's two views per topic: topic-word rate against block (one line per coeff),
    and the perplexity ratio of on-topic vs unrelated texts against coeff at the chosen block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(TOPICS), 3, figsize=(15, 4.2 * len(TOPICS)), squeeze=False)
    for (rate_ax, ppl_ax, text_ax), topic in zip(axes, TOPICS, strict=True):
        sweep_rows = [r for r in rows if r["kind"] == "sweep" and r["topic"] == topic]
        if not sweep_rows:
            continue
        for i, coeff in enumerate(COEFFS):
            picked = sorted((r for r in sweep_rows if r["coeff"] == coeff), key=lambda r: r["block"])
            colour = plt.cm.viridis(i / (len(COEFFS) - 1))
            rate_ax.plot(
                [r["block"] for r in picked], [r["rate"] for r in picked], "o-", color=colour, label=f"coeff {coeff:g}"
            )
            ppl_ax.plot(
                [r["block"] for r in picked],
                [r["ppl_ratio"] for r in picked],
                "o-",
                color=colour,
                label=f"coeff {coeff:g}",
            )
        rate_ax.axhline(sweep_rows[0]["unsteered_rate"], color="black", ls="--", lw=1, label="unsteered")
        for r in (r for r in rows if r["kind"] == "held_out" and r["topic"] == topic and r["setting"] == "chosen"):
            rate_ax.plot([r["block"]], [r["rate"]], "r*", ms=12, label=f"held-out, coeff {r['coeff']:g}")
            rate_ax.plot([r["block"]], [r["unsteered_rate"]], "rx", ms=8, label="held-out, unsteered")
        top = max(r["rate"] for r in rows if r.get("topic") == topic and "rate" in r)
        rate_ax.set(
            xlabel="block (of 30)",
            ylabel=f"share of completions with a {topic} word",
            ylim=(-0.01, 1.4 * top),
            title=f"{topic}: topic words, sweep prompts",
        )
        rate_ax.set_xticks(SWEEP_BLOCKS[topic])
        rate_ax.legend(fontsize=7)
        ppl_ax.axhline(MAX_PERPLEXITY_RATIO, color="grey", ls="--", lw=1, label="fluency guard")
        ppl_ax.set(
            xlabel="block (of 30)",
            ylabel="perplexity under unsteered model ÷ unsteered",
            yscale="log",
            title=f"{topic}: fluency of the same completions",
        )
        ppl_ax.set_xticks(SWEEP_BLOCKS[topic])
        ppl_ax.legend(fontsize=7)
        text_rows = [r for r in rows if r["kind"] == "texts" and r["topic"] == topic]
        block = (
            choose(rows, topic)["block"]
            if any(r["ppl_ratio"] <= MAX_PERPLEXITY_RATIO for r in sweep_rows)
            else PAPER_BLOCK
        )
        picked = sorted((r for r in text_rows if r["block"] == block), key=lambda r: r["coeff"])
        for group in picked[0]["unsteered"] if picked else ():
            style = "o-" if group == topic else ("s--" if group == "unrelated" else "^:")
            text_ax.plot(
                [0] + [r["coeff"] for r in picked],
                [1] + [r["steered_after"][group] / r["unsteered_after"][group] for r in picked],
                style,
                label=f"{group} texts",
            )
        text_ax.axhline(1, color="black", lw=0.5)
        text_ax.set(
            xlabel="coeff",
            ylabel="text perplexity past the vector, steered ÷ unsteered",
            xscale="symlog",
            yscale="log",
            title=f"{topic} vector at block {block}: perplexity of texts",
        )
        text_ax.legend(fontsize=7)
    fig.suptitle(f"ActivationAdditions topic steering on {MODEL} (Q4_1 GGUF weights)")
    fig.tight_layout()
    fig.savefig(RESULTS / "actadd_topics.png", dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--report", action="store_true", help="only rebuild the tables and plot from the saved rows")
    parser.add_argument("--texts", action="store_true", help="measure the text perplexities again, then rebuild")
    args = parser.parse_args()
    if args.texts:
        ROWS.write_text("".join(json.dumps(r) + "\n" for r in load_rows() if r["kind"] != "texts"))
    if not args.report:
        torch.set_num_threads(1)  # a shared machine: one core
        torch.set_grad_enabled(False)
        model, tokenizer = load(MODEL)
        norms = {block: residual_norm(model, tokenizer, load_reference_texts(), block) for block in BLOCKS}
        texts(model, tokenizer, load_rows())
        sweep(model, tokenizer, norms)
        held_out(model, tokenizer, load_rows(), norms)
    rows = load_rows()
    write_report(rows)
    plot(rows)


if __name__ == "__main__":
    main()

"""Throughput of steered serving: vLLM with vllm_worker beside HF generate with per-row steering.

    .venv-vllm/bin/python -m benchmarks.vllm_throughput            # SmolLM2, 16 requests, 32 new tokens
    .venv-vllm/bin/python -m benchmarks.vllm_throughput --repeats 1 --new-tokens 8

One batch of 16 different chat prompts, greedy, exactly --new-tokens each (EOS ignored), timed as
four batches: unsteered, then the mixed batch (8 unsteered, 4 warmer, 4 colder: the measured
sentiment setting, models.sentiment_spec, both signs); for vLLM also unsteered with the hooks
installed. HF: pytorch_hooks with SteeringSpec.rows, one left-padded generate call. Median of
--repeats interleaved runs (HF's, then vLLM's); throughput = generated tokens / wall time. Run it in the vLLM
environment (.ci/vllm --prepare). Writes benchmarks/results/vllm_throughput.md.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import time
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
TOPICS = [
    "the weather this weekend", "my new neighbour", "a trip to the sea", "the food at the new restaurant",
    "learning to play the piano", "a long train journey", "the football match last night", "our garden in spring",
    "a film I watched yesterday", "moving to a new city", "the first day at a new job", "a rainy afternoon",
    "my grandmother's cooking", "a visit to the museum", "the concert on Friday", "a walk in the mountains",
]  # fmt: skip
ROWS = [False] * 8 + [True] * 8  # the second half steered: 4 warmer, then 4 colder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    # One thread for both engines, as vLLM's CPU worker takes by default "for serving": on a shared
    # machine more threads than free cores spin-wait (HF generate took minutes instead of seconds).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

    import torch
    import vllm
    from vllm import LLM, SamplingParams

    from steering_backends import models, pytorch_hooks
    from steering_backends.prompts import left_pad
    from steering_backends.spec import SteeringSpec
    from steering_backends.vllm_worker import EXTENSION, steer, steered

    torch.set_grad_enabled(False)
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model, tokenizer = models.smollm2()
    prompts = [f"<|im_start|>user\nWrite three sentences about {t}.<|im_end|>\n<|im_start|>assistant\n" for t in TOPICS]
    warm, cold = models.sentiment_spec(model, tokenizer, +1), models.sentiment_spec(model, tokenizer, -1)
    per_request = [[]] * 8 + [[warm]] * 4 + [[cold]] * 4
    n_tokens = len(prompts) * args.new_tokens

    greedy = SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
    ids = [tokenizer(p).input_ids for p in prompts]

    def vllm_run(specs_per_request, install: bool):
        requests = [steered(llm, i, specs, greedy) for i, specs in zip(ids, specs_per_request, strict=True)]
        context = steer(llm) if install else contextlib.nullcontext()
        with context:
            outputs = llm.generate([p for p, _ in requests], [s for _, s in requests], use_tqdm=False)
        return [list(o.outputs[0].token_ids) for o in outputs]

    input_ids, mask = left_pad(tokenizer, prompts)
    # Per-row steering: each spec steers its own rows of the one batch.
    row_specs = [
        SteeringSpec(s.layer, s.site, s.vector, s.coeff, s.start, rows=[i in rows for i in range(len(prompts))])
        for s, rows in ((warm, range(8, 12)), (cold, range(12, 16)))
    ]

    def hf_run(steered_rows: bool):
        def generate():
            return model.generate(
                input_ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )[:, input_ids.shape[1] :].tolist()

        if not steered_rows:
            return generate()
        with pytorch_hooks.steer(model, row_specs):
            return generate()

    times: dict[str, list[float]] = {}
    tokens: dict[str, list[list[int]]] = {}

    def measure(runs: dict) -> None:
        """A warm-up of each, then --repeats rounds, the runs interleaved within each round."""
        for name, run in runs.items():
            tokens[name], times[name] = run(), []
        for _ in range(args.repeats):
            for name, run in runs.items():
                started = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - started)
            print({name: round(times[name][-1], 2) for name in runs}, flush=True)

    # HF first, then vLLM: vLLM's engine processes stay alive (and poll) while they exist.
    measure({"HF generate, unsteered": lambda: hf_run(False), "HF generate, mixed batch (rows)": lambda: hf_run(True)})
    llm = LLM(
        str(models.cache_dir() / models.SMOLLM2),
        worker_extension_cls=EXTENSION,
        enforce_eager=True,
        dtype="float32",
        max_model_len=512,
        max_num_seqs=len(prompts),
        seed=0,
    )
    measure(
        {
            "vLLM, unsteered": lambda: vllm_run([[]] * 16, install=False),
            "vLLM, unsteered, hooks installed": lambda: vllm_run([[]] * 16, install=True),
            "vLLM, mixed batch (8 of 16 steered)": lambda: vllm_run(per_request, install=True),
        }
    )

    rate = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    vllm_mixed, hf_mixed = tokens["vLLM, mixed batch (8 of 16 steered)"], tokens["HF generate, mixed batch (rows)"]
    same_unsteered = sum(a == b for a, b in zip(vllm_mixed[:8], tokens["vLLM, unsteered"][:8], strict=True))
    same_hf = sum(a == b for a, b in zip(vllm_mixed, hf_mixed, strict=True))
    lines = [
        "# Steered serving: vLLM (vllm_worker) beside HF generate with per-row steering (smollm2-135m)",
        "",
        f"16 chat prompts, greedy, {args.new_tokens} new tokens each (EOS ignored): {n_tokens} tokens per batch. "
        "Mixed batch: 8 unsteered, 4 warmer, 4 colder (the measured sentiment setting, block "
        f"{warm.layer} {warm.site}, coeff ±{abs(warm.coeff):.3g}). vLLM {vllm.__version__} (CPU build), "
        "float32, enforce_eager; HF: one left-padded generate, pytorch_hooks with SteeringSpec.rows. "
        f"Median of {args.repeats} interleaved runs; `python -m benchmarks.vllm_throughput` in .venv-vllm.",
        "",
        f"Machine: {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, torch {torch.__version__}.",
        "",
        "| run | median s | tokens/s | vs its unsteered |",
        "|---|---|---|---|",
    ]
    for name, t in times.items():
        base = rate["vLLM, unsteered" if name.startswith("vLLM") else "HF generate, unsteered"]
        lines.append(f"| {name} | {statistics.median(t):.2f} | {rate[name]:.0f} | {rate[name] / base:.2f}× |")
    mixed = "vLLM, mixed batch (8 of 16 steered)"
    lines += [
        "",
        f"Steered/unsteered throughput, vLLM: **{rate[mixed] / rate['vLLM, unsteered']:.2f}**; vLLM over HF "
        f"generate on the mixed batch: {rate[mixed] / rate['HF generate, mixed batch (rows)']:.2f}×.",
        "Greedy tokens: the 8 unsteered requests of vLLM's mixed batch equal their unsteered run in "
        f"{same_unsteered}/8; vLLM's mixed batch equals HF's row for row in {same_hf}/16 "
        f"({args.new_tokens} tokens each).",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "vllm_throughput.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    llm.llm_engine.engine_core.shutdown()


if __name__ == "__main__":  # vLLM starts its engine in a child process, which imports this module again
    main()

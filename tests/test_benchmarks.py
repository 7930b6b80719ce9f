"""The overhead and tuned-lens benchmarks run end to end (tiny sizes; no timing is asserted here:
speed targets are checked by running the benchmark itself, see benchmarks/results/)."""

from __future__ import annotations

import re

from benchmarks import compiled_static, hook_work, offload, per_row
from benchmarks.overhead import main
from benchmarks.tuned_lens import main as tuned_lens_main
from steering_backends.models import random_model
from steering_backends.parity import make_runners


def test_overhead_benchmark_writes_its_table_and_plot(tmp_path, tokenizer):
    main(
        ["--models", "tiny-gpt2-random", "--batches", "1", "--prompt-lens", "4", "--new-tokens", "2"]
        + ["--repeats", "1", "--batch-repeats", "1", "--no-parity-xl", "--out", str(tmp_path)]
    )
    table = (tmp_path / "overhead.md").read_text()
    for runner in make_runners(random_model("tiny-gpt2-random"), tokenizer)[0]:
        assert f"| tiny-gpt2-random | 1 | 4 | {runner.name} |" in table
    assert "TransformerLens bridge itself" in table and "nnsight model itself" in table
    assert "| tiny-gpt2-random |" in table.split("16 sequential runs")[1]  # the padded-batch row
    png = (tmp_path / "overhead.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_offload_benchmark_writes_its_table(tmp_path):
    offload.main(["--model", "tiny-llama-random", "--new-tokens", "2", "--repeats", "1", "--out", str(tmp_path)])
    table = (tmp_path / "offload.md").read_text()
    assert "blocks 1-1 of 4 on disk" in table
    for what in (offload.DISPATCH, offload.NOISE, "pytorch_hooks", "bias_editing", "transformer_lens_hooks"):
        assert f"| {what} |" in table


def test_tuned_lens_benchmark_writes_its_table_and_plot(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERING_BACKENDS_CACHE", str(tmp_path / "cache"))  # trains a lens of its own
    tuned_lens_main(["--model", "tiny-gpt2-random", "--documents", "2", "--out", str(tmp_path)])
    table = (tmp_path / "tuned_lens.md").read_text()
    assert re.search(r"lower than the logit lens at \d of the 3 blocks but the last", table)
    assert "Lens size: 12,480 parameters (3 blocks x (d_model^2 + d_model))" in table
    assert "| 2 | " in table and "| 3 | 0.000 | 0.000 | - | 0.000 | 0.000 | - |" in table
    png = (tmp_path / "tuned_lens.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


def test_hook_work_benchmark_writes_its_tables(tmp_path):
    args = ["--model", "tiny-llama-random", "--blocks", "1", "2", "--calls", "5", "--rounds", "1"]
    hook_work.main([*args, "--out", str(tmp_path)])
    times, ops = (tmp_path / "hook_work.md").read_text(), (tmp_path / "hook_ops.md").read_text()
    for n_blocks in (1, 2):
        for batch in (1, 8):
            for call in ("prefill, 16 tokens", "decoding step"):
                for name in ("pytorch_hooks", "custom_wrapper", "baukit_tracedict"):
                    assert f"| {n_blocks} | {batch} | {call} | {name} | " in times
                    row = re.search(
                        rf"^\| {n_blocks} \| {batch} \| {call} \| {name} \| (\d+) \| \d+ \| (\d+) \|$", ops, re.M
                    )
                    assert row, (n_blocks, batch, call, name)
                    # One addcmul per steered block (and one cast of the mask read by two); nothing read back.
                    assert row.groups() == (str(n_blocks + (n_blocks > 1)), "0"), row[0]


def test_hook_work_benchmark_counts_without_timing(tmp_path):
    hook_work.main(["--model", "tiny-llama-random", "--blocks", "1", "--ops-only", "--out", str(tmp_path)])
    assert not (tmp_path / "hook_work.md").exists()
    # One addcmul, and one view: the mask's last column, made in one operation (the indexing makes two).
    assert "| 1 | 8 | decoding step | pytorch_hooks | 1 | 1 | 0 |" in (tmp_path / "hook_ops.md").read_text()


def test_per_row_benchmark_writes_its_table(tmp_path):
    args = ["--model", "tiny-llama-random", "-n", "2", "--new-tokens", "3", "--repeats", "1"]
    per_row.main([*args, "--out", str(tmp_path)])
    table = (tmp_path / "per_row.md").read_text()
    for what in ("sampling both columns", "compare(), scoring included"):
        assert re.search(rf"\| {re.escape(what)} \| [\d.]+ \| [\d.]+ \| [\d.]+× \| 1/1 runs \|", table), table


def test_compiled_static_benchmark_writes_its_table(tmp_path, monkeypatch):
    """Dynamo's eager backend (no kernels to build), one hook backend and bias editing: each one's tokens are
    eager's; inside one block neither compiles again; bias editing compiles nothing for a new block either."""
    import torch

    # main() turns hook guards on for the process; the tests after this one see dynamo's setting as it was.
    monkeypatch.setattr(
        torch._dynamo.config, "skip_nnmodule_hook_guards", torch._dynamo.config.skip_nnmodule_hook_guards
    )
    steering = ["pytorch_hooks", "bias_editing"]
    args = ["--model", "tiny-llama-random", "--new-tokens", "3", "--repeats", "1", "--backend", "eager"]
    compiled_static.main([*args, "--steering", *steering, "--out", str(tmp_path)])
    table = (tmp_path / "compiled_static.md").read_text()
    for name in steering:
        new_blocks = "0" if name == "bias_editing" else r"\d+"
        assert re.search(rf"\| {name} \|( [\d.]+ \|){{3}} 0 \| {new_blocks} \| yes \|", table), table

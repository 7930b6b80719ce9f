"""The overhead benchmark runs end to end (tiny sizes; no timing is asserted here:
speed targets are checked by running the benchmark itself, see benchmarks/results/)."""

from __future__ import annotations

from benchmarks import offload
from benchmarks.overhead import main
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
    assert "blocks 1-1 of 4 on disk" in table and "Load average (1, 5, 15 min) before the run" in table
    for what in (offload.DISPATCH, offload.NOISE, "pytorch_hooks", "bias_editing", "transformer_lens_hooks"):
        assert f"| {what} |" in table

"""Shared by the tests: one prompt, seeded vectors, backend params, result tables.

(Not in conftest.py: notebooks/ has a conftest.py too, and ``from conftest import``
would find whichever of the two pytest imported first.)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers

from steering_backends import BACKENDS
from steering_backends.parity import Runner, unavailable

# Where result tables go: results/, or $STEERING_BACKENDS_RESULTS (the transformers 4 leg of CI
# writes its own, so it does not overwrite the first leg's tables).
RESULTS = Path(os.environ.get("STEERING_BACKENDS_RESULTS", Path(__file__).resolve().parent.parent / "results"))


# One pytest param per backend; one whose library is missing (baukit is not on PyPI; TransformerLens 4
# needs transformers 5) skips with the reason.
BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.skip(reason=f"{name} skipped: {why}")) if (why := unavailable(name)) else name
    for name in BACKENDS
]


def write_result(name: str, text: str) -> None:
    """Save a table under results/ so CI can print it after the run."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(text + "\n")


# nnsight 0.8.1 on transformers 4 decodes a left-padded batch with frozen positions, steered or
# not (tests/test_parity.py shows it): its padded cached decoding is left out of comparisons there.
TRANSFORMERS_4 = int(transformers.__version__.split(".")[0]) < 5

# The tiny models most tests run on (conftest.py's `tiny`): learned positions and a GPT-2 block; rotary
# positions and a Llama decoder.
TINY_MODELS = ["tiny-gpt2-random", "tiny-llama-random"]

IDS = torch.tensor([[40, 5465, 345, 780, 345, 389, 523]])  # "I hate you because you are so"
MASK = torch.ones_like(IDS)


def logits_with(runner: Runner, specs) -> torch.Tensor:
    with runner.steer(runner.model, specs):
        return runner.logits(IDS, MASK)


def vec(seed: int = 0) -> torch.Tensor:
    """A seeded [64] vector: d_model of the tiny models."""
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))

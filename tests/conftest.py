"""Shared fixtures: offline models only (no hub), float32, eval mode, no gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_backends import BACKENDS, backend
from steering_backends.models import gpt2_tokenizer, random_model
from steering_backends.parity import Runner

# Steering is inference here; a test that needs gradients turns them back on itself.
torch.set_grad_enabled(False)

RESULTS = Path(__file__).resolve().parent.parent / "results"


def _import_error(name: str) -> str | None:
    try:
        backend(name)
    except ImportError as err:
        return f"{name} skipped: cannot import it ({err})"
    return None


# One pytest param per backend; baukit (not on PyPI) skips with the reason when missing.
BACKEND_PARAMS = [
    pytest.param(name, marks=pytest.mark.skip(reason=error)) if (error := _import_error(name)) else name
    for name in BACKENDS
]


@pytest.fixture(scope="session")
def tokenizer():
    return gpt2_tokenizer()


TINY_MODELS = ["tiny-gpt2-random", "tiny-llama-random"]


@pytest.fixture(params=TINY_MODELS)
def tiny(request):
    """A fresh 4-layer, d_model 64 model with seeded random weights, GPT-2 and Llama
    architectures (per test: tests may break it)."""
    return random_model(request.param)


def write_result(name: str, text: str) -> None:
    """Save a table under results/ so CI can print it after the run."""
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(text + "\n")


IDS = torch.tensor([[40, 5465, 345, 780, 345, 389, 523]])  # "I hate you because you are so"
MASK = torch.ones_like(IDS)


@pytest.fixture(params=BACKEND_PARAMS)
def runner(request, tiny, tokenizer) -> Runner:
    """One backend on a fresh tiny model (for TransformerLens: a bridge around it)."""
    module = backend(request.param)
    target = module.bridge_from_hf(tiny, tokenizer) if request.param == "transformer_lens_hooks" else tiny
    runner = Runner(request.param, lambda: target, module.steer)
    runner.logits(IDS, MASK)  # a bridge registers hooks of its own on its first forward
    return runner


def logits_with(runner: Runner, specs) -> torch.Tensor:
    with runner.steer(runner.model, specs):
        return runner.logits(IDS, MASK)


def vec(seed: int = 0) -> torch.Tensor:
    """A seeded [64] vector: d_model of the tiny models."""
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))

"""Shared fixtures: offline models only (no hub), float32, eval mode, no gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from steering_backends import BACKENDS, backend
from steering_backends.models import gpt2_tokenizer, random_model

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

"""Shared fixtures: offline models only (no hub), float32, eval mode, no gradients."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import BACKEND_PARAMS, IDS, MASK, TINY_MODELS

from steering_backends import backend
from steering_backends.models import gpt2_tokenizer, random_model
from steering_backends.parity import Runner

# Steering is inference here; a test that needs gradients turns them back on itself.
torch.set_grad_enabled(False)


@pytest.fixture(scope="session")
def tokenizer():
    return gpt2_tokenizer()


@pytest.fixture(scope="session")
def _built() -> dict:
    """{name: the model as random_model built it}, built once per session and never handed out."""
    return {}


@pytest.fixture(params=TINY_MODELS)
def tiny(request, _built):
    """A fresh 4-layer, d_model 64 model with seeded random weights, GPT-2 and Llama
    architectures (per test: tests may break it). A deep copy of one built per session: the
    same weights, config and eval mode as random_model's, a few times faster than building it."""
    if request.param not in _built:
        _built[request.param] = random_model(request.param)
    return copy.deepcopy(_built[request.param])


@pytest.fixture(params=BACKEND_PARAMS)
def runner(request, tiny, tokenizer) -> Runner:
    """One backend on a fresh tiny model (for TransformerLens: a bridge around it; for nnsight:
    a TransformersModel around it)."""
    module = backend(request.param)
    target = tiny
    if request.param == "transformer_lens_hooks":
        target = module.bridge_from_hf(tiny, tokenizer)
    elif request.param == "nnsight_trace":
        target = module.nnsight_from_hf(tiny, tokenizer)
    runner = Runner(request.param, lambda: target, module.steer)
    runner.logits(IDS, MASK)  # a bridge registers hooks of its own on its first forward
    return runner

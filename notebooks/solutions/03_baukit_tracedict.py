"""Solution to notebook 03's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch
from baukit import Trace


def resid_pre_fast(model: torch.nn.Module, blocks: str, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """Block `layer`'s input over ids [batch, pos] (layer >= 1): the output of block layer - 1, read with a Trace
    that stops the forward right after it, so no later module runs. [batch, pos, d_model]"""
    with Trace(model, f"{blocks}.{layer - 1}", stop=True) as trace:  # raises StopForward; the with swallows it
        model(ids)
    return trace.output if torch.is_tensor(trace.output) else trace.output[0]  # transformers 4's GPT2Block: a tuple

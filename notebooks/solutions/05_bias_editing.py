"""Solution to notebook 05's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def add_to_attn_out(model: torch.nn.Module, layer: int, addition: torch.Tensor):
    """Inside the block, block `layer`'s attention output is + addition [d_model], through the bias of its output
    projection (Llama: self_attn.o_proj, given one for the duration; GPT-2: attn.c_proj, restored bitwise)."""
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    attention = blocks[layer].self_attn if hasattr(blocks[layer], "self_attn") else blocks[layer].attn
    proj = attention.o_proj if hasattr(attention, "o_proj") else attention.c_proj
    saved = None if proj.bias is None else proj.bias.detach().clone()
    with torch.no_grad():
        if saved is None:  # a bias-free Linear: a bias that is exactly the addition
            proj.bias = torch.nn.Parameter(addition.clone(), requires_grad=False)
        else:
            proj.bias += addition
    try:
        yield
    finally:
        with torch.no_grad():
            if saved is None:
                proj.register_parameter("bias", None)
            else:
                proj.bias.copy_(saved)

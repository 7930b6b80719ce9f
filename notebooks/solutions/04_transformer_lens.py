"""Solution to notebook 04's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch


def token_norms(bridge, text: str, layer: int, prepend_bos: bool) -> torch.Tensor:
    """|resid_pre| of block `layer` at each token of `text`: [tokens], BOS's row left out when it is there."""
    name = f"blocks.{layer}.hook_resid_pre"
    _, cache = bridge.run_with_cache(text, names_filter=name, prepend_bos=prepend_bos)
    norms = cache[name][0].norm(dim=-1)  # cache[name]: [batch, pos, d_model]
    return norms[1:] if prepend_bos else norms  # with BOS, position 0 is BOS: not a token of the text

"""Solution to notebook 10's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it). Public
names only: accelerate's hooks come along with the block they sit on, so the wrapper need not know of them."""

from __future__ import annotations

import contextlib

import torch


class AddToInput(torch.nn.Module):
    """Stands in for `block`: calls it with hidden + addition [d_model]; other attributes are the block's."""

    def __init__(self, block: torch.nn.Module, addition: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.addition = addition

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.block, name)

    def forward(self, hidden_states, *args, **kwargs):  # hidden_states: [batch, pos, d_model]
        addition = self.addition.to(hidden_states.device, hidden_states.dtype)  # the block's device, not ours
        return self.block(hidden_states + addition, *args, **kwargs)


@contextlib.contextmanager
def swapped_in(blocks: torch.nn.ModuleList, layer: int, addition: torch.Tensor):
    """Inside the block, blocks[layer] is an AddToInput around the original, which is back on exit, even on error."""
    original = blocks[layer]
    blocks[layer] = AddToInput(original, addition)
    try:
        yield
    finally:
        blocks[layer] = original

"""Solution to notebook 01's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch


class AddToOutput(torch.nn.Module):
    """Stands in for `block` and returns its output + addition [d_model]: steers resid_post, which is the next
    block's resid_pre. Answers every other attribute lookup as the block would (section 2's Wrapper)."""

    def __init__(self, block: torch.nn.Module, addition: torch.Tensor) -> None:
        super().__init__()
        self.block = block
        self.addition = addition

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)  # our own parameters, buffers and submodules (self.block)
        except AttributeError:
            return getattr(self.block, name)  # anything else: ask the block

    def forward(self, *args, **kwargs):
        output = self.block(*args, **kwargs)
        if isinstance(output, tuple):  # transformers 4's GPT2Block: (hidden [batch, pos, d_model], ...)
            return (output[0] + self.addition, *output[1:])
        return output + self.addition  # transformers 5: the tensor itself; a new one, the block's is intact

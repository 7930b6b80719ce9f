"""Turning text into the token ids and masks that steering sees.

    ids, mask = left_pad(tokenizer, ["I hate you because", "Hi"], bos=True)   # [B, T] each
    out = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))

Steering positions count from each row's first real token, so a BOS token, when there
is one, is position 0. Prepending it on purpose keeps the first word off position 0,
where trained models park an "attention sink" (SmolLM2's first token has ~100x the
residual norm of the others), which would otherwise swamp a contrast between words.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["encode", "hf_positions", "left_pad", "left_pad_ids"]


def encode(tokenizer: Any, text: str, bos: bool = False) -> list[int]:
    """Token ids of ``text``, with the tokenizer's BOS token prepended when ``bos``."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not bos:
        return ids
    if tokenizer.bos_token_id is None:
        raise ValueError("bos=True, but this tokenizer has no bos_token; pass bos=False")
    return [tokenizer.bos_token_id, *ids]


def left_pad(
    tokenizer: Any, prompts: list[str], pad_id: int | None = None, bos: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokenize and left-pad: (input_ids [B, T], attention_mask [B, T], 1 = real token).

    Padding uses ``pad_id``, else the tokenizer's EOS id; the mask hides it either way.
    """
    rows = [encode(tokenizer, p, bos) for p in prompts]
    return left_pad_ids(rows, tokenizer.eos_token_id if pad_id is None else pad_id)


def left_pad_ids(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id lists: (input_ids [B, T], attention_mask [B, T], 1 = real token)."""
    width = max(map(len, rows))
    ids = torch.tensor([[pad_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return ids, mask


def hf_positions(mask: torch.Tensor) -> torch.Tensor:
    """position_ids [B, T] that make a left-padded row compute what the prompt alone would."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)

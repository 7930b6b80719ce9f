"""Solution to notebook 06's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch


def x_vector_rows(model, tokenizer, positive: str, negative: str, layer: int, pad_token_id: int) -> torch.Tensor:
    """act(BOS + positive) - act(BOS + negative) at block `layer`'s input, position by position, the shorter
    prompt right-padded with pad_token_id (the model reads the padding too): [rows, d_model]."""
    rows = [
        [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
        for text in (positive, negative)
    ]
    width = max(map(len, rows))
    ids = torch.tensor([row + [pad_token_id] * (width - len(row)) for row in rows], device=model.device)
    kept = []

    def keep_input(module, args, kwargs):  # hidden states [2, rows, d_model]: first positional, or by keyword
        kept.append(args[0] if args else kwargs["hidden_states"])

    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
    handle = blocks[layer].register_forward_pre_hook(keep_input, with_kwargs=True)
    try:
        model(ids)  # no attention mask: padding on the right is read as tokens, as the original did
    finally:
        handle.remove()
    return kept[0][0] - kept[0][1]

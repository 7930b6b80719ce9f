"""Solution to notebook 07's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch


def last_token_differences(model, tokenizer, pairs: list[tuple[str, str]], layer: int) -> torch.Tensor:
    """Block `layer`'s input at the last token of BOS + positive, minus the same for negative: [n_pairs, d_model].
    Each sentence runs alone, so its last token is at position -1 (a left-padded batch would do too)."""
    kept = []

    def keep_last(module, args, kwargs):  # hidden states [1, pos, d_model]: first positional, or by keyword
        kept.append((args[0] if args else kwargs["hidden_states"])[0, -1])

    handle = model.model.layers[layer].register_forward_pre_hook(keep_last, with_kwargs=True)
    try:
        for positive, negative in pairs:
            for text in (positive, negative):
                ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
                model(torch.tensor([ids], device=model.device))
    finally:
        handle.remove()
    acts = torch.stack(kept).float()  # [2 * n_pairs, d_model]: positive, negative, positive, ...
    return acts[0::2] - acts[1::2]

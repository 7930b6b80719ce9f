"""Solution to notebook 09's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch


def steer_new_tokens(lm, block, prompt: torch.Tensor, addition: torch.Tensor, n_new: int) -> torch.Tensor:
    """Greedy lm.generate from prompt [1, T], n_new new tokens, with `addition` [d_model] added to the input of
    `block` (an envoy of lm) at every step but step 0, the prompt's: [1, T + n_new] ids."""
    greedy = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=lm.tokenizer.eos_token_id)
    with lm.generate(prompt, attention_mask=torch.ones_like(prompt), **greedy) as tracer:
        for _ in tracer.iter[1:n_new]:  # steps 1, 2, ...: one new token each; step 0 ran the prompt
            block.input = block.input + addition
        ids = tracer.result.save()
    return ids

"""Solutions to notebook 02's exercises (checked by exercises/checks.py; tests/test_exercises.py runs them)."""

from __future__ import annotations

import contextlib

import torch

from steering_backends.compare import Summary, compare


# 8.1 A model you load yourself
def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The decoder blocks of an HF causal LM: the ModuleList with one entry per hidden layer."""
    n_layers = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n_layers:
            return module  # the first such list in module order: the blocks come before anything nested in them
    raise ValueError(f"no ModuleList of {n_layers} modules in {type(model).__name__}")


@contextlib.contextmanager
def add_to_block_input(model: torch.nn.Module, layer: int, addition: torch.Tensor):
    """Inside the block, block `layer` (negative: from the end) is called with hidden + addition [d_model]."""

    def hook(module, args, kwargs):  # hidden states [batch, pos, d_model]: first positional, or by keyword
        if args:
            return (args[0] + addition, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + addition}

    handle = find_blocks(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


# 8.2 Choosing a block and a coefficient
def sweep(model, tokenizer, spec_for, layers, relatives, prompts, n=2, max_new_tokens=12) -> dict:
    """{(layer, relative): compare(...).summary()} over the grid, each steered by spec_for(layer, relative)."""
    summaries = {}
    for layer in layers:
        for relative in relatives:
            table = compare(model, tokenizer, prompts, [spec_for(layer, relative)], n=n, max_new_tokens=max_new_tokens)
            summaries[layer, relative] = table.summary()
    return summaries


def choose(summaries: dict[tuple[int, float], Summary], max_perplexity_ratio: float = 2.0) -> tuple[int, float]:
    """The setting whose sentiment moves furthest in the expected direction, among those whose perplexity is at
    most max_perplexity_ratio x the unsteered one."""
    fluent = {key: s for key, s in summaries.items() if s.perplexity_ratio <= max_perplexity_ratio}
    if not fluent:
        raise ValueError(f"no setting keeps the perplexity ratio within {max_perplexity_ratio}")
    return max(fluent, key=lambda key: fluent[key].expect * fluent[key].delta)


# 8.3 Positions under the KV cache
def tokens_per_call(model: torch.nn.Module, ids: torch.Tensor, n_new: int) -> list[int]:
    """Positions block 0 sees in each forward call of greedy generate(ids [1, T], n_new new tokens)."""
    seen = []

    def count(module, args, kwargs):
        seen.append((args[0] if args else kwargs["hidden_states"]).shape[1])

    handle = find_blocks(model)[0].register_forward_pre_hook(count, with_kwargs=True)
    try:
        settings = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        model.generate(ids, attention_mask=torch.ones_like(ids), **settings)
    finally:
        handle.remove()
    return seen

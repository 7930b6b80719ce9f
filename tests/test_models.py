"""The offline models: the real GPT-2 tokenizer and seeded random GPT-2s."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from steering_backends.models import cache_dir, load, random_gpt2


def test_tokenizer_is_gpt2s_and_loads_from_its_folder(tokenizer):
    # Published GPT-2 ids: "Hello world" -> [15496, 995]; <|endoftext|> is 50256.
    assert tokenizer("Hello world")["input_ids"] == [15496, 995]
    assert tokenizer.eos_token_id == 50256 and len(tokenizer) == 50257
    again = AutoTokenizer.from_pretrained(cache_dir() / "gpt2-tokenizer")
    text = " Love is the answer — naïve café 🙂"
    assert again(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert again.decode(again(text)["input_ids"]) == text


def test_random_models_are_seeded_and_leave_the_global_rng_alone():
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a, b = random_gpt2("tiny-gpt2-random"), random_gpt2("tiny-gpt2-random")
    assert torch.rand(1) == expected_next
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert not torch.equal(
        a.transformer.h[0].attn.c_attn.weight,
        random_gpt2("tiny-gpt2-random", seed=1).transformer.h[0].attn.c_attn.weight,
    )
    assert not a.training


def test_unknown_model_names_list_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: tiny-gpt2-random, gpt2-random, gpt2-xl-random, gpt2, gpt2-medium"):
        load("gpt2-xxl")

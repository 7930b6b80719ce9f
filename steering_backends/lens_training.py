"""A model's tuned lens, trained here once on text the model wrote itself, then cached.

    lens = load_tuned_lens(model, tokenizer)   # trained the first time (SmolLM2: minutes), then loaded
    corpus = json.loads((lens_folder(model) / "corpus.json").read_text())   # its text, both splits

Training text (LensRecipe): documents that start with BOS. The model's own sampled continuation
(temperature 1, no top-p: its own distribution) of every prompt in steering_backends/data/lens_prompts.json and
steering_backends/data/behaviour_prompts.json, and the sentences of contrast_pairs.jsonl and reference.txt there.
Held out, never trained on: the continuations of both files' "held_out" prompts and the reference
sentences. The targets are the model's own next-token distributions, so no labels are needed.

Cache: cache_dir()/<model name>.tuned-lens/ holds lens.safetensors, corpus.json (the token ids of
both splits) and manifest.json: the SHA-256 of those two files, of the model's weights and of the
data files, the recipe, and how long training took on how many tokens. The lens is used only when
every one of them matches; otherwise it is trained again, written aside and renamed into place.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .compare import sample
from .layout import dims
from .lens import TunedLens, fit_lens
from .models import cache_dir
from .prompts import encode
from .vectors import DATA, load_pairs, load_reference_texts

__all__ = ["DATA_FILES", "LensRecipe", "batches", "lens_corpus", "lens_folder", "load_tuned_lens"]

DATA_FILES = ("lens_prompts.json", "behaviour_prompts.json", "contrast_pairs.jsonl", "reference.txt")


FORMAT = 1  # bump when the training code changes what a recipe produces: old caches are then retrained

# A smaller default lens for the test suite (conftest.py sets it; read at import): the first this many
# documents of each source. Unset, the default recipe trains on all of them.
_DOCUMENTS = os.environ.get("STEERING_BACKENDS_LENS_DOCUMENTS")


@dataclass(frozen=True)
class LensRecipe:
    """How a lens is trained. Recorded in the manifest: a lens trained another way is not used."""

    new_tokens: int = 96  # sampled per prompt
    # the first this many of each source, per split; None: all (the test suite's default: a few)
    documents: int | None = int(_DOCUMENTS) if _DOCUMENTS else None
    batch_tokens: int = 128  # real tokens per training step
    lr: float = 0.1
    momentum: float = 0.9
    clip: float = 1.0  # per block
    seed: int = 0


def lens_corpus(model, tokenizer, recipe: LensRecipe = LensRecipe()) -> dict[str, list[list[int]]]:
    """{"train": [...], "held_out": [...]}: token id lists, each BOS + a prompt and its sampled
    continuation, or BOS + a sentence."""
    lens_prompts = json.loads((DATA / "lens_prompts.json").read_text())
    behaviour = json.loads((DATA / "behaviour_prompts.json").read_text())
    pairs = [
        pair for concept in ("sentiment", "formality") for pair in load_pairs(concept, DATA / "contrast_pairs.jsonl")
    ]
    first = slice(recipe.documents)
    prompts = {
        "train": lens_prompts["train"][first] + behaviour["sweep"][first],
        "held_out": lens_prompts["held_out"][first] + behaviour["held_out"][first],
    }
    sentences = {
        "train": [s for pair in pairs for s in pair][first],
        "held_out": load_reference_texts(DATA / "reference.txt")[first],
    }
    everything = prompts["train"] + prompts["held_out"]
    seeds = range(recipe.seed, recipe.seed + len(everything))  # one seed per prompt: any batch gives the same
    new = sample(
        model,
        tokenizer,
        everything,
        seeds,
        temperature=1.0,
        top_p=1.0,
        frequency_penalty=0.0,
        max_new_tokens=recipe.new_tokens,
    )
    written = [encode(tokenizer, p, bos=True) + ids for p, ids in zip(everything, new, strict=True)]
    n_train = len(prompts["train"])
    return {
        split: docs + [encode(tokenizer, s, bos=True) for s in sentences[split]]
        for split, docs in (("train", written[:n_train]), ("held_out", written[n_train:]))
    }


def batches(docs: list[list[int]], tokens: int, pad_id: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Documents in order, right-padded into (input_ids [B, T], attention_mask [B, T]) batches of at
    most ``tokens`` real tokens each (a longer document is a batch of its own)."""
    groups, group = [], []
    for doc in docs:
        if group and sum(map(len, group)) + len(doc) > tokens:
            groups.append(group)
            group = []
        group.append(doc)
    groups += [group] if group else []
    out = []
    for group in groups:
        width = max(map(len, group))
        ids = torch.tensor([doc + [pad_id] * (width - len(doc)) for doc in group])
        mask = torch.tensor([[1] * len(doc) + [0] * (width - len(doc)) for doc in group])
        out.append((ids, mask))
    return out


def lens_folder(model) -> Path:
    """Where the lens of ``model`` is cached: beside the converted models, by the model's name."""
    return cache_dir() / f"{Path(model.config.name_or_path).name or model.config.model_type}.tuned-lens"


def load_tuned_lens(model, tokenizer, recipe: LensRecipe = LensRecipe()) -> TunedLens:
    """The TunedLens of ``model`` (unsteered, as loaded), from the verified cache, else trained and cached."""
    folder, key = lens_folder(model), _key(model, tokenizer, recipe)
    if not _cache_is_valid(folder, key):
        _train(model, tokenizer, recipe, folder, key)
    from safetensors.torch import load_file

    lens = TunedLens(*dims(model))
    lens.load_state_dict(load_file(folder / "lens.safetensors"))
    return lens.to(next(model.parameters()).device)


def _sha256(path: Path) -> str:
    with path.open("rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


# The corpus is token ids, so a tokenizer that encodes text otherwise (an added start token,
# other special tokens) must not reuse a lens: the key holds how it encodes this probe.
TOKENIZER_PROBE = "<|im_start|>user\nHello, world! It's 12:30. Ünïcödé"


def _tokenizer_digest(tokenizer) -> str:
    behaviour = [tokenizer(TOKENIZER_PROBE).input_ids, tokenizer.eos_token_id, tokenizer.pad_token_id]
    return hashlib.sha256(json.dumps(behaviour).encode()).hexdigest()


def _key(model, tokenizer, recipe: LensRecipe) -> dict[str, object]:
    """What a cached lens must have been trained from: these weights, tokenizer, data files and recipe."""
    weights = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        weights.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}".encode())
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return {
        "format": FORMAT,
        "model": weights.hexdigest(),
        "tokenizer": _tokenizer_digest(tokenizer),
        "data": {name: _sha256(DATA / name) for name in DATA_FILES},
        "recipe": asdict(recipe),
    }


def _cache_is_valid(folder: Path, key: dict[str, object]) -> bool:
    """True only if the manifest exists, matches ``key`` and lists both files, each matching its checksum."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        return (
            all(manifest[k] == v for k, v in key.items())
            and manifest["sha256"].keys() == {"corpus.json", "lens.safetensors"}
            and all(_sha256(folder / name) == digest for name, digest in manifest["sha256"].items())
        )
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _train(model, tokenizer, recipe: LensRecipe, folder: Path, key: dict[str, object]) -> None:
    """Write the corpus, train the lens on its train split, cache both; aside, then renamed into place."""
    from safetensors.torch import save_file

    name = folder.name.removesuffix(".tuned-lens")
    print(f"{name}: no valid tuned lens in {folder}; training one, once", file=sys.stderr, flush=True)
    started = time.perf_counter()
    with torch.no_grad():
        corpus = lens_corpus(model, tokenizer, recipe)
    sampled = time.perf_counter()
    train = corpus["train"][:]
    random.Random(recipe.seed).shuffle(train)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    steps = [(ids.to(device), mask.to(device)) for ids, mask in batches(train, recipe.batch_tokens, pad_id)]
    lens = TunedLens(*dims(model)).to(device)
    losses = fit_lens(lens, model, steps, recipe.lr, recipe.momentum, recipe.clip)
    finished = time.perf_counter()

    partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    save_file({k: v.contiguous().cpu() for k, v in lens.state_dict().items()}, partial / "lens.safetensors")
    (partial / "corpus.json").write_text(json.dumps(corpus))
    trained = {
        "train_tokens": sum(map(len, corpus["train"])),
        "held_out_tokens": sum(map(len, corpus["held_out"])),
        "steps": len(steps),
        "sampling_seconds": round(sampled - started, 1),
        "training_seconds": round(finished - sampled, 1),
        "threads": torch.get_num_threads(),
        "device": str(device),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }
    checksums = {path.name: _sha256(path) for path in sorted(partial.iterdir())}
    manifest = {**key, "trained": trained, "sha256": checksums}
    (partial / "manifest.json").write_text(json.dumps(manifest, indent=1))
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)
    print(f"{name}: tuned lens trained in {finished - started:.0f} s, cached in {folder}", file=sys.stderr)

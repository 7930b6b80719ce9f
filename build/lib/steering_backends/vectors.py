"""Recipes: *which* vector to add. Each ends in a SteeringSpec that every backend takes.

    spec = contrast_pair(model, tokenizer, "Love", "Hate", layer=6, coeff=5)        # [d_model]
    spec = x_vector(model, tokenizer, "Love", "Hate", coeff=5, layer=6,             # [n, d_model]
                    pad_token_id=tokenizer(" ")["input_ids"][0])
    spec = mean_difference(model, tokenizer, load_pairs("sentiment"), layer=18)    # [d_model]
    fit = pca(model, tokenizer, load_pairs("sentiment"), layer=18)                  # fit.spec(coeff)
    spec = scaled_to_residual(spec, 4.0, residual_norm(model, tokenizer, load_reference_texts(), 18))

Contents:
    activations        a site's activations [B, T, d_model], read with a hook
    contrast_vector    act(plus) - act(minus) at one token
    contrast_pair      the same, as a spec, optionally unit length
    x_vector           ActivationAddition: act(prompt1) - act(prompt2) at every position
    pair_differences   act(positive) - act(negative) per contrast pair, batched
    mean_difference    their mean, as a spec
    principal_direction, pca, PCAFit   their first principal component (representation reading)
    residual_norm, scaled_to_residual  coefficients relative to the residual stream's size
    load_pairs, load_reference_texts   the sentence sets under steering_backends/data/
    RECIPES, sentiment_direction, relative_spec   the four recipes on one scale, as swept

BOS: every recipe prepends the tokenizer's BOS token by default (``bos=True``), as the
original ActivationAdditions did with ``<|endoftext|>``. It keeps the first word off
position 0, the "attention sink" of trained models. Steer prompts that start with BOS
too (``left_pad(..., bos=True)``) so that positions line up.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from .layout import dims, get_module, layout_of, site_module_name
from .prompts import encode, hf_positions, left_pad
from .spec import SITES, SteeringSpec

__all__ = [
    "DATA",
    "RECIPES",
    "PCAFit",
    "activations",
    "contrast_pair",
    "contrast_vector",
    "load_pairs",
    "load_reference_texts",
    "mean_difference",
    "pair_differences",
    "pca",
    "principal_direction",
    "relative_spec",
    "residual_norm",
    "scaled_to_residual",
    "sentiment_direction",
    "x_vector",
]

DATA = Path(__file__).resolve().parent / "data"
REDUCTIONS = ("last", "mean")


class _Captured(Exception):
    """Raised by the reading hook once it has the activations: later blocks need not run."""


def activations(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    layer: int,
    site: str = "resid_pre",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The activations [B, T, d_model] at (layer, site) of a HF model, read with a hook.

    With an attention mask, left-padded rows get the positions they would have alone.
    The forward pass stops at the site. A hook, not ``output_hidden_states``: HF GPT-2's
    last hidden state is taken after the final layer norm, so it is not block n-1's output.
    """
    if site not in SITES:
        raise ValueError(f"site={site!r} is unknown; allowed: {', '.join(SITES)}")
    n_layers, _ = dims(model)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range; allowed: [{-n_layers}, {n_layers - 1}]")
    module = get_module(model, site_module_name(layout_of(model), layer % n_layers, site))
    captured: list[torch.Tensor] = []

    def read_input(mod, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])
        raise _Captured

    def read_output(mod, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Captured

    if site == "resid_pre":
        handle = module.register_forward_pre_hook(read_input, with_kwargs=True)
    else:
        handle = module.register_forward_hook(read_output)
    positions = None if attention_mask is None else hf_positions(attention_mask)
    try:
        with torch.no_grad():
            model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions)
    except _Captured:
        pass
    finally:
        handle.remove()
    return captured[0]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _read_one(model, tokenizer, text: str, layer: int, site: str, bos: bool) -> torch.Tensor:
    """float32 activations [T, d_model] of one prompt run alone."""
    ids = torch.tensor([encode(tokenizer, text, bos)], device=_device(model))
    return activations(model, ids, layer, site)[0].float()


def contrast_vector(
    model, tokenizer, plus: str, minus: str, layer: int, site: str = "resid_pre", token: int = -1, bos: bool = True
) -> torch.Tensor:
    """act(plus) - act(minus) at token index ``token`` of each prompt (default: the last): [d_model], float32."""
    plus_acts, minus_acts = (_read_one(model, tokenizer, text, layer, site, bos) for text in (plus, minus))
    return plus_acts[token] - minus_acts[token]


def contrast_pair(
    model,
    tokenizer,
    plus: str,
    minus: str,
    layer: int,
    coeff: float = 1.0,
    site: str = "resid_pre",
    token: int = -1,
    normalize: bool = False,
    bos: bool = True,
) -> SteeringSpec:
    """Steer with act(plus) - act(minus) at one token, scaled to unit length when ``normalize``."""
    vector = contrast_vector(model, tokenizer, plus, minus, layer, site, token, bos)
    if normalize:
        vector = vector / vector.norm()
    return SteeringSpec(layer, site, vector, coeff)


def x_vector(
    model,
    tokenizer,
    prompt1: str,
    prompt2: str,
    coeff: float,
    layer: int,
    site: str = "resid_pre",
    pad: str | None = "tokens_right",
    pad_token_id: int | None = None,
    bos: bool = True,
) -> SteeringSpec:
    """ActivationAddition: add ``coeff * (act(prompt1) - act(prompt2))`` position by position.

    Returns a 2-D spec [n, d_model] applied from the steered prompt's first token (start=0).
    pad="tokens_right": the shorter prompt is right-padded with ``pad_token_id`` (else the
      tokenizer's pad token; the original used the space token) and the model reads the
      padding too, so both prompts give n rows of real activations.
    pad=None: each prompt is read alone and the shorter one adds nothing past its end, as
      two separate additions would.
    """
    if pad not in ("tokens_right", None):
        raise ValueError(f"x_vector: pad={pad!r} is unknown; allowed: 'tokens_right', None")
    rows = [encode(tokenizer, text, bos) for text in (prompt1, prompt2)]
    width = max(map(len, rows))
    if pad == "tokens_right":
        pad_id = tokenizer.pad_token_id if pad_token_id is None else pad_token_id
        if pad_id is None:
            raise ValueError(
                "x_vector: pad='tokens_right' needs pad_token_id (e.g. the space token's id), "
                "and this tokenizer has no pad token"
            )
        if isinstance(pad_id, bool) or not isinstance(pad_id, int) or not 0 <= pad_id < len(tokenizer):
            raise ValueError(f"x_vector: pad_token_id={pad_id!r} must be a token id in [0, {len(tokenizer) - 1}]")
        rows = [row + [pad_id] * (width - len(row)) for row in rows]
    device = _device(model)
    acts = []
    for row in rows:  # one at a time: each row is exactly what the prompt alone gives
        read = activations(model, torch.tensor([row], device=device), layer, site)[0].float()  # [len, D]
        acts.append(torch.cat([read, read.new_zeros(width - len(row), read.shape[-1])]))  # zero rows add nothing
    return SteeringSpec(layer, site, acts[0] - acts[1], coeff)


def _counted_tokens(mask: torch.Tensor, bos: bool) -> torch.Tensor:
    """[B, T] bool: the real tokens of a left-padded batch, without each row's BOS when ``bos``."""
    counted = mask.bool().clone()
    if bos:
        counted[torch.arange(len(mask)), mask.argmax(-1)] = False  # each row's first real token
    return counted


def _read_batched(
    model, tokenizer, texts: Sequence[str], layer: int, site: str, reduce: str, bos: bool, batch_size: int, desc: str
) -> torch.Tensor:
    """One float32 row [len(texts), d_model] per text: its last token, or the mean over its
    tokens (BOS left out: it is the same in every text and, as an attention sink, huge)."""
    from tqdm import tqdm

    device, rows = _device(model), []
    for first in tqdm(range(0, len(texts), batch_size), desc=desc, disable=desc is None):
        ids, mask = left_pad(tokenizer, list(texts[first : first + batch_size]), bos=bos)
        acts = activations(model, ids.to(device), layer, site, mask.to(device)).float()  # [b, T, D]
        if reduce == "last":  # left padding: every row's last real token is at -1
            rows.append(acts[:, -1])
            continue
        counted = _counted_tokens(mask, bos).to(device)
        summed = torch.where(counted.unsqueeze(-1), acts, 0.0).sum(1)  # where, not *: padding may hold inf
        rows.append(summed / counted.sum(-1, keepdim=True))
    return torch.cat(rows)


def pair_differences(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    layer: int,
    site: str = "resid_pre",
    reduce: str = "last",
    batch_size: int = 16,
    bos: bool = True,
    progress: bool = True,
) -> torch.Tensor:
    """act(positive) - act(negative) for each (positive, negative) pair: [n_pairs, d_model], float32.

    reduce="last" reads each sentence's last token; "mean" averages its tokens. Sentences are
    run in left-padded batches; each row equals what the sentence alone gives (up to float
    rounding, see tests/test_recipes.py).
    """
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce={reduce!r} is unknown; allowed: {', '.join(REDUCTIONS)}")
    if not pairs:
        raise ValueError("pairs is empty; give at least one (positive, negative) pair")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 1")
    sides = []
    for side, name in ((0, "positive"), (1, "negative")):
        desc = f"{name} activations, layer {layer} {site}" if progress else None
        texts = [pair[side] for pair in pairs]
        sides.append(_read_batched(model, tokenizer, texts, layer, site, reduce, bos, batch_size, desc))
    return sides[0] - sides[1]


def mean_difference(
    model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, coeff: float = 1.0, site: str = "resid_pre", **read
) -> SteeringSpec:
    """Steer with the mean over pairs of act(positive) - act(negative). ``read``: see pair_differences."""
    return SteeringSpec(layer, site, pair_differences(model, tokenizer, pairs, layer, site, **read).mean(0), coeff)


def principal_direction(differences: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First principal component of paired differences [n_pairs, d_model].

    Returns (direction [d_model], unit length, signed so that positive examples project
    higher on average; explained_variance_ratio_ [k], one entry per component, summing to 1).
    Every other difference is flipped (negative - positive) before centring, as RepE shuffles
    each pair's order: the shared direction then shows up as variance, not as a mean that
    centring would remove.
    """
    if differences.ndim != 2 or differences.shape[0] < 2:
        raise ValueError(f"differences must be [n_pairs >= 2, d_model], got shape {tuple(differences.shape)}")
    data = differences.double()
    signs = torch.ones(len(data), dtype=data.dtype, device=data.device)
    signs[1::2] = -1
    flipped = data * signs[:, None]
    _, singular, right = torch.linalg.svd(flipped - flipped.mean(0), full_matrices=False)
    direction = right[0]
    if (data @ direction).mean() < 0:
        direction = -direction
    variance = singular.pow(2)
    return direction.to(differences.dtype), (variance / variance.sum()).to(differences.dtype)


@dataclass(frozen=True, eq=False)
class PCAFit:
    """A representation-reading direction at (layer, site), with its explained variance."""

    direction: torch.Tensor  # [d_model], unit length; positive examples project higher
    explained_variance_ratio_: torch.Tensor  # [k]: share of the variance along each component
    layer: int
    site: str

    def spec(self, coeff: float = 1.0, scale_by_variance: bool = False) -> SteeringSpec:
        """Steer along the direction. ``scale_by_variance`` multiplies coeff by the first
        component's explained variance ratio, so a layer where the direction is clearer
        gets pushed harder (one proposal for coefficients that transfer between models)."""
        if scale_by_variance:
            coeff = coeff * float(self.explained_variance_ratio_[0])
        return SteeringSpec(self.layer, self.site, self.direction, coeff)


def pca(model, tokenizer, pairs: Sequence[tuple[str, str]], layer: int, site: str = "resid_pre", **read) -> PCAFit:
    """First principal component of the pairs' differences. ``read``: see pair_differences."""
    direction, ratio = principal_direction(pair_differences(model, tokenizer, pairs, layer, site, **read))
    return PCAFit(direction, ratio, layer, site)


def residual_norm(
    model, tokenizer, texts: Sequence[str], layer: int, site: str = "resid_pre", bos: bool = True, batch_size: int = 16
) -> float:
    """The typical size of the activations at (layer, site): the median over the texts' real
    tokens (BOS left out) of each token's L2 norm."""
    device, norms = _device(model), []
    for first in range(0, len(texts), batch_size):
        ids, mask = left_pad(tokenizer, list(texts[first : first + batch_size]), bos=bos)
        acts = activations(model, ids.to(device), layer, site, mask.to(device)).float()  # [b, T, D]
        counted = _counted_tokens(mask, bos).to(device)
        norms.append(acts[counted].norm(dim=-1))
    return torch.cat(norms).median().item()


def scaled_to_residual(spec: SteeringSpec, relative: float, norm: float) -> SteeringSpec:
    """The same direction, with ``|coeff * vector| = relative * norm``: a coefficient in units
    of the residual stream's typical size (``norm``, from residual_norm at the spec's site)."""
    if spec.per_position:
        raise ValueError("scaled_to_residual: spec.vector must be [d_model]; per-position vectors have no single norm")
    length = spec.vector.norm()
    if length == 0:
        raise ValueError("scaled_to_residual: spec.vector is all zeros, so it has no direction to scale")
    return SteeringSpec(spec.layer, spec.site, spec.vector / length, relative * norm, spec.start)


def load_pairs(concept: str = "sentiment", path: Path = DATA / "contrast_pairs.jsonl") -> list[tuple[str, str]]:
    """(positive, negative) sentence pairs of one concept from a JSON-lines file."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    concepts = sorted({r["concept"] for r in records})
    if concept not in concepts:
        raise ValueError(f"concept={concept!r} is not in {path.name}; allowed: {', '.join(concepts)}")
    return [(r["positive"], r["negative"]) for r in records if r["concept"] == concept]


def load_reference_texts(path: Path = DATA / "reference.txt") -> list[str]:
    """Neutral sentences for measuring the residual stream's typical size."""
    return [line for line in path.read_text().splitlines() if line.strip()]


RECIPES = ("contrast_pair", "x_vector", "mean_difference", "pca")


def sentiment_direction(model, tokenizer, recipe: str, layer: int, site: str = "resid_pre") -> torch.Tensor:
    """A positive-sentiment direction by one of RECIPES, scaled so its largest row has norm 1.

    contrast_pair: act("Love") - act("Hate") at the last token, [d_model].
    x_vector: the same prompts position by position, right-padded with the space token, [n, d_model].
    mean_difference / pca: from the sentiment pairs in steering_backends/data/, each sentence's token mean, [d_model].
    Give it a coefficient with relative_spec.
    """
    if recipe == "contrast_pair":
        vector = contrast_vector(model, tokenizer, "Love", "Hate", layer, site)
    elif recipe == "x_vector":
        space = tokenizer(" ", add_special_tokens=False)["input_ids"][0]  # the original pads with spaces
        vector = x_vector(model, tokenizer, "Love", "Hate", 1.0, layer, site, pad_token_id=space).vector
    elif recipe in ("mean_difference", "pca"):
        differences = pair_differences(model, tokenizer, load_pairs("sentiment"), layer, site, "mean", progress=False)
        vector = differences.mean(0) if recipe == "mean_difference" else principal_direction(differences)[0]
    else:
        raise ValueError(f"recipe={recipe!r} is unknown; allowed: {', '.join(RECIPES)}")
    return vector / vector.norm(dim=-1).max()


def relative_spec(
    direction: torch.Tensor, layer: int, relative: float, norm: float, site: str = "resid_pre"
) -> SteeringSpec:
    """Steer along ``direction`` (largest row of norm 1) with ``relative`` x the residual norm ``norm``
    (from residual_norm at that site): the largest addition is ``relative`` times a typical token."""
    return SteeringSpec(layer, site, direction, relative * norm)

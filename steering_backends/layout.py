"""Where blocks and sublayers live in each supported HF architecture.

One table, keyed by ``model.config.model_type``; every backend looks modules up
here instead of branching on the architecture itself.

    layout = layout_of(model)                    # ValueError lists supported types
    block = get_module(model, f"{layout.blocks}.{3}")
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib.metadata import version

import torch

__all__ = ["LAYOUTS", "Layout", "dims", "get_module", "layout_of", "site_module_name", "sublayer_scale"]


@dataclass(frozen=True)
class Layout:
    """Dotted module names, as ``model.named_modules()`` spells them, and the rules that differ.

    Sites mean one thing everywhere: resid_pre / resid_post are a block's input and output;
    attn_out / mlp_out are what that sublayer adds to the residual stream.
    """

    decoder: str  # called with input_ids, attention_mask, past_key_values
    blocks: str  # ModuleList of blocks
    attn: str  # relative to a block: the module whose output is attn_out (post-norm models: the norm)
    mlp: str  # relative to a block: the module whose output is mlp_out (post-norm models: the norm)
    # Linear/Conv1D whose output is attn_out / mlp_out, so that its bias can absorb a constant;
    # None where the site is another module's output (an RMSNorm, a sparse MoE block).
    attn_out_proj: str | None
    mlp_out_proj: str | None
    embed_out: str | None  # module whose output is block 0's input; None where the decoder scales it inline
    pos_embed: str | None  # learned position table, if the model has one
    final_norm: str  # norm between the last block and the unembedding
    n_layers_attr: str
    d_model_attr: str
    # Config attribute by which the block multiplies each sublayer's output before adding it to
    # the residual stream (Granite's residual_multiplier); None: it adds the output as it is.
    sublayer_scale_attr: str | None = None


LAYOUTS: dict[str, Layout] = {
    "gpt2": Layout(
        decoder="transformer",
        blocks="transformer.h",
        attn="attn",
        mlp="mlp",
        attn_out_proj="attn.c_proj",
        mlp_out_proj="mlp.c_proj",
        embed_out="transformer.drop",
        pos_embed="transformer.wpe",
        final_norm="transformer.ln_f",
        n_layers_attr="n_layer",
        d_model_attr="n_embd",
    ),
    # GPT-NeoX (Pythia). With use_parallel_residual both sublayers read the block's input:
    # x + attn(ln1(x)) + mlp(ln2(x)), so steering attn_out never reaches the same block's MLP.
    "gpt_neox": Layout(
        decoder="gpt_neox",
        blocks="gpt_neox.layers",
        attn="attention",
        mlp="mlp",
        attn_out_proj="attention.dense",
        mlp_out_proj="mlp.dense_4h_to_h",
        embed_out="gpt_neox.emb_dropout",
        pos_embed=None,
        final_norm="gpt_neox.final_layer_norm",
        n_layers_attr="num_hidden_layers",
        d_model_attr="hidden_size",
    ),
}
# Llama and the architectures that copied its module names (blocks in model.layers,
# self_attn / mlp, rotary positions so no position table, no bias on o_proj / down_proj).
_LLAMA_LIKE = Layout(
    decoder="model",
    blocks="model.layers",
    attn="self_attn",
    mlp="mlp",
    attn_out_proj="self_attn.o_proj",
    mlp_out_proj="mlp.down_proj",
    embed_out="model.embed_tokens",
    pos_embed=None,
    final_norm="model.norm",
    n_layers_attr="num_hidden_layers",
    d_model_attr="hidden_size",
)
# Post-norm sublayers (Gemma 2 and 3, OLMo 2): the block adds norm(sublayer(...)), so the norm's
# output is the site. Beware the names: in Llama, post_attention_layernorm is the norm *before* the MLP.
_POST_NORM = replace(
    _LLAMA_LIKE,
    attn="post_attention_layernorm",
    mlp="post_feedforward_layernorm",
    attn_out_proj=None,
    mlp_out_proj=None,
)
_TRANSFORMERS_5 = int(version("transformers").split(".")[0]) >= 5  # two renames below depend on it
LAYOUTS |= {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "phi3": _LLAMA_LIKE,  # fused qkv_proj and gate_up_proj; o_proj and down_proj end the sublayers
    # Gemma scales the embeddings by sqrt(d_model): inside embed_tokens in transformers 5, inline in
    # the decoder's forward in transformers 4, where no module's output is block 0's input.
    "gemma": replace(_LLAMA_LIKE, embed_out="model.embed_tokens" if _TRANSFORMERS_5 else None),
    "gemma2": replace(_POST_NORM, embed_out="model.embed_tokens" if _TRANSFORMERS_5 else None),
    "gemma3_text": _POST_NORM,
    "olmo2": _POST_NORM,
    # Granite: x + residual_multiplier * sublayer(...), embeddings times embedding_multiplier inline.
    "granite": replace(_LLAMA_LIKE, embed_out=None, sublayer_scale_attr="residual_multiplier"),
    # Mixtures of experts: mlp_out is the sparse block's output, a routing-weighted sum of experts
    # (Mixtral's block was named block_sparse_moe before transformers 5).
    "mixtral": replace(_LLAMA_LIKE, mlp="mlp" if _TRANSFORMERS_5 else "block_sparse_moe", mlp_out_proj=None),
    "qwen3_moe": replace(_LLAMA_LIKE, mlp_out_proj=None),
}


def layout_of(model: torch.nn.Module) -> Layout:
    """The layout of a HF causal LM, or ValueError naming the supported model types."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in LAYOUTS:
        raise ValueError(
            f"model type {model_type!r} ({type(model).__name__}) is not supported; "
            f"supported model types: {', '.join(sorted(LAYOUTS))}"
        )
    return LAYOUTS[model_type]


def dims(model: torch.nn.Module) -> tuple[int, int]:
    """(n_layers, d_model) of a supported HF model."""
    layout, config = layout_of(model), model.config
    return getattr(config, layout.n_layers_attr), getattr(config, layout.d_model_attr)


def sublayer_scale(model: torch.nn.Module) -> float:
    """What the block multiplies attn_out's and mlp_out's module output by before adding it to the stream."""
    attr = layout_of(model).sublayer_scale_attr
    return 1.0 if attr is None else float(getattr(model.config, attr))


def get_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule at a dotted name, or ValueError naming it."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}") from err


def modules_along(model: torch.nn.Module, names: Iterable[str]) -> list[torch.nn.Module]:
    """``model`` and every module on the way down to each dotted name, each once: what must not have
    been compiled without hook guards for a hook on those modules to run."""
    found = {"": model}
    for name in names:
        parts = name.split(".")
        for depth in range(1, len(parts) + 1):
            path = ".".join(parts[:depth])
            if path not in found:
                found[path] = get_module(model, path)
    return list(found.values())


def site_module_name(layout: Layout, layer: int, site: str) -> str:
    """Dotted name of the module whose input (resid_pre) or output (others) is the site."""
    block = f"{layout.blocks}.{layer}"
    return {
        "resid_pre": block,
        "resid_post": block,
        "attn_out": f"{block}.{layout.attn}",
        "mlp_out": f"{block}.{layout.mlp}",
    }[site]

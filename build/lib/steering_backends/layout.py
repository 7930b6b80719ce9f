"""Where blocks and sublayers live in each supported HF architecture.

One table, keyed by ``model.config.model_type``; every backend looks modules up
here instead of branching on the architecture itself.

    layout = layout_of(model)                    # ValueError lists supported types
    block = get_module(model, f"{layout.blocks}.{3}")
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LAYOUTS", "Layout", "dims", "get_module", "layout_of", "site_module_name"]


@dataclass(frozen=True)
class Layout:
    """Dotted module names, as ``model.named_modules()`` spells them."""

    decoder: str  # called with input_ids, attention_mask, past_key_values
    blocks: str  # ModuleList of blocks
    attn: str  # attention sublayer, relative to a block; its output is attn_out
    mlp: str  # MLP sublayer, relative to a block; its output is mlp_out
    attn_out_proj: str  # Linear/Conv1D whose bias ends the attention sublayer
    mlp_out_proj: str  # Linear/Conv1D whose bias ends the MLP sublayer
    embed_out: str  # module whose output is block 0's input
    pos_embed: str | None  # learned position table, if the model has one
    final_norm: str  # norm between the last block and the unembedding
    n_layers_attr: str
    d_model_attr: str


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
LAYOUTS |= {"llama": _LLAMA_LIKE, "mistral": _LLAMA_LIKE, "qwen2": _LLAMA_LIKE}


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


def get_module(model: torch.nn.Module, name: str) -> torch.nn.Module:
    """The submodule at a dotted name, or ValueError naming it."""
    try:
        return model.get_submodule(name)
    except AttributeError as err:
        raise ValueError(f"{type(model).__name__} has no submodule {name!r}") from err


def site_module_name(layout: Layout, layer: int, site: str) -> str:
    """Dotted name of the module whose input (resid_pre) or output (others) is the site."""
    block = f"{layout.blocks}.{layer}"
    return {
        "resid_pre": block,
        "resid_post": block,
        "attn_out": f"{block}.{layout.attn}",
        "mlp_out": f"{block}.{layout.mlp}",
    }[site]

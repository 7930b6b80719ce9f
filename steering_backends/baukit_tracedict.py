"""Steering with baukit's ``TraceDict(edit_output=...)``. Copy this file, spec.py and layout.py.

    with steer(model, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)]):
        logits = model(input_ids, attention_mask=mask).logits

baukit is not on PyPI; install it from GitHub pinned to a commit (see README).
TraceDict edits module *outputs* only, so:
    resid_post / attn_out / mlp_out   edit the output of the block / attention / MLP
    resid_pre of block L > 0          edits the output of block L - 1 (the same tensor)
    resid_pre of block 0              edits the output of the embedding module (or, where that is
                                      the token embedding, inputs_embeds when a call passes them)
baukit's hooks see no keyword arguments, and HF passes attention_mask and
past_key_values as keywords, so one plain PyTorch pre-hook on the decoder records
token positions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
from baukit import TraceDict

from .layout import Layout, dims, get_module, layout_of, modules_along, site_module_name, sublayer_scale
from .spec import SteeringPlan, SteeringSpec, refuse_unguarded_compile

__all__ = ["steer"]


def _traced_module(model: torch.nn.Module, layout: Layout, layer: int, site: str) -> str:
    """Name of the module whose output carries (layer, site)."""
    if site != "resid_pre":
        return site_module_name(layout, layer, site)
    if layer > 0:
        return site_module_name(layout, layer - 1, "resid_post")
    if layout.embed_out is None:
        raise ValueError(
            f"model type {model.config.model_type!r} scales the token embeddings inside the decoder's forward, so "
            "no module outputs block 0's input, and TraceDict edits module outputs only: (layer=0, "
            "site='resid_pre') is out of its reach; use a backend that edits a block's input (pytorch_hooks)"
        )
    return layout.embed_out


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a HF causal LM inside the block; every hook is removed on exit, even on error."""
    layout = layout_of(model)
    plan = SteeringPlan(specs, *dims(model), hooks=True, sublayer_scale=sublayer_scale(model))
    decoder = get_module(model, layout.decoder)
    # Module name -> the (layer, site)s its output carries. plan.sites is in forward order, so
    # resid_post of block L is added before resid_pre of block L + 1, as in every other backend.
    names = [_traced_module(model, layout, layer, site) for layer, site in plan.sites]
    # Compiled before the block, the model or any module around a hooked one would ignore our hooks.
    refuse_unguarded_compile(*modules_along(model, [layout.decoder, *names]))
    # TraceDict finds a module by the name model.named_modules() gives it, which is longer where the module
    # sits inside a wrapper (torch.compile's, or another backend's): looked up by identity. A bad name
    # fails here, before TraceDict hooks anything.
    listed = {id(module): name for name, module in model.named_modules()}
    edits: dict[str, list[tuple[int, str]]] = {}
    for name, (layer, site) in zip(names, plan.sites, strict=True):
        edits.setdefault(listed[id(get_module(model, name))], []).append((layer, site))

    # Where block 0's input is the token embedding's output (Llama), a call with inputs_embeds
    # never runs that module: resid_pre of block 0 is then steered on inputs_embeds itself.
    embeds_skip_it = (0, "resid_pre") in plan.by_site and get_module(
        model, layout.embed_out
    ) is model.get_input_embeddings()
    # ...and the caller may run that module to make inputs_embeds, outside any decoder call: left as it is there.
    embed_name = listed[id(get_module(model, layout.embed_out))] if embeds_skip_it else None

    def begin_call(m, args, kwargs):
        plan.begin_call(args, kwargs)
        if embeds_skip_it and kwargs.get("inputs_embeds") is not None:  # in place: end_call knows the call by its dict
            kwargs["inputs_embeds"] = plan.steer(0, "resid_pre", kwargs["inputs_embeds"])

    def edit_output(output, layer: str):
        if layer == embed_name and not plan.in_call():
            return output
        for block, site in edits[layer]:  # baukit calls the module name "layer"
            output = plan.steer_output(block, site, output)
        return output

    with contextlib.ExitStack() as stack:
        handle = decoder.register_forward_pre_hook(begin_call, with_kwargs=True)
        stack.callback(handle.remove)
        handle = decoder.register_forward_hook(
            lambda m, args, kwargs, output: plan.end_call(kwargs), with_kwargs=True, always_call=True
        )
        stack.callback(handle.remove)
        stack.enter_context(plan.recompute_in_call(model))  # gradient checkpointing replays under its call
        stack.enter_context(TraceDict(model, list(edits), retain_output=False, edit_output=edit_output))
        yield model

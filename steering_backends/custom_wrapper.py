"""Steering by wrapping modules in a small nn.Module. Copy this file, spec.py and layout.py.

    with steer(model, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)]):
        logits = model(input_ids, attention_mask=mask).logits

No hooks: the targeted modules are swapped for wrappers that edit their input or
output, and the originals are put back on exit, even on error. This mutates the
model's module tree for the duration of the block.

    decoder        wrapped to record the token positions of each call
    resid_pre      block wrapped; its hidden_states input is edited
    resid_post     block wrapped; its output is edited
    attn_out       attention sublayer wrapped; its output is edited
    mlp_out        MLP sublayer wrapped; its output is edited
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .layout import dims, get_module, layout_of, site_module_name, sublayer_scale
from .spec import SteeringPlan, SteeringSpec

__all__ = ["steer"]


class _Wrapper(torch.nn.Module):
    """Runs ``inner`` and answers every attribute the model asks of it, as ``inner`` would."""

    def __init__(self, inner: torch.nn.Module, plan: SteeringPlan) -> None:
        super().__init__()
        self.inner, self.plan = inner, plan

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)  # parameters, buffers, submodules (incl. inner)
        except AttributeError:
            return getattr(self.inner, name)  # e.g. a block's .attn, a decoder's .wte


class _DecoderWrapper(_Wrapper):
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        self.plan.begin_call(args, kwargs)  # this call's positions, in force until it returns or raises
        try:
            return self.inner(*args, **kwargs)
        finally:
            self.plan.end_call(kwargs)


class _SiteWrapper(_Wrapper):
    """Edits the input (resid_pre) and/or the output (any other site) of one module."""

    def __init__(self, inner: torch.nn.Module, plan: SteeringPlan, layer: int, sites: list[str]) -> None:
        super().__init__(inner, plan)
        self.layer = layer
        self.edit_input = "resid_pre" in sites
        self.output_site = next((site for site in sites if site != "resid_pre"), None)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.edit_input:
            if args:
                args = (self.plan.steer(self.layer, "resid_pre", args[0]), *args[1:])
            else:
                kwargs["hidden_states"] = self.plan.steer(self.layer, "resid_pre", kwargs["hidden_states"])
        output = self.inner(*args, **kwargs)
        if self.output_site is None:
            return output
        # A new tensor, not an in-place add: the original may be saved for backward or read elsewhere.
        return self.plan.steer_output(self.layer, self.output_site, output)


def _swap(model: torch.nn.Module, name: str, new: torch.nn.Module) -> torch.nn.Module:
    """Put ``new`` at the dotted ``name``; return what was there."""
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name)
    while isinstance(parent, _Wrapper):  # a wrapped block's attn lives on the block inside
        parent = parent.inner
    old = getattr(parent, child)
    setattr(parent, child, new)  # ModuleList accepts its index as a string name too
    return old


def _unwrap(model: torch.nn.Module, name: str, ours: _Wrapper) -> None:
    """Take ``ours`` out of the chain of wrappers at ``name``, wherever it is: a block entered
    later (nested) may have wrapped it, and may still be active when this block is left.

    Hooks put on ``ours`` while it was in the model (by a hook backend's block entered inside this
    one, or by the caller) would leave the model with it: RuntimeError, once ``ours`` is out."""
    outer = _swap(model, name, ours.inner)  # what is at name now
    if outer is not ours:
        _swap(model, name, outer)  # ours is deeper: put the chain back and unlink ours from it
        while outer.inner is not ours:
            outer = outer.inner
        outer.inner = ours.inner
    if ours._forward_pre_hooks or ours._forward_hooks or ours._backward_pre_hooks or ours._backward_hooks:
        raise RuntimeError(
            f"custom_wrapper's steer block was left while hooks sat on the wrapper it had put at {name!r} (a "
            "hook backend's steer block entered inside it and still active, or a hook registered inside it); "
            "they have left the model with the wrapper. Leave steer blocks in the reverse order of entering "
            "them, and remove hooks added inside a block before leaving it"
        )


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a HF causal LM inside the block; the original modules are back on exit."""
    layout = layout_of(model)
    plan = SteeringPlan(specs, *dims(model), sublayer_scale=sublayer_scale(model))
    sites_by_module: dict[str, tuple[int, list[str]]] = {}
    for layer, site in plan.sites:
        name = site_module_name(layout, layer, site)
        get_module(model, name)  # resolve every name before swapping anything
        sites_by_module.setdefault(name, (layer, []))[1].append(site)
    get_module(model, layout.decoder)

    with contextlib.ExitStack() as stack:
        stack.enter_context(plan.recompute_in_call(model))  # gradient checkpointing replays under its call
        # Sites first, decoder last: the decoder's children are swapped while it is still itself.
        for name, (layer, sites) in sites_by_module.items():
            wrapper = _SiteWrapper(get_module(model, name), plan, layer, sites)
            _swap(model, name, wrapper)
            stack.callback(_unwrap, model, name, wrapper)
        wrapper = _DecoderWrapper(get_module(model, layout.decoder), plan)
        _swap(model, layout.decoder, wrapper)
        stack.callback(_unwrap, model, layout.decoder, wrapper)
        yield model

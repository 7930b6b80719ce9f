"""Steering with raw PyTorch forward hooks. Copy this file, spec.py and layout.py.

    with steer(model, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)]):
        logits = model(input_ids, attention_mask=mask).logits
        tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)

Hooks used:
    decoder        forward pre-hook (with kwargs): the call's token positions, in force until
                   a forward hook (always_call=True: also when the call raised) ends the call
    resid_pre      forward pre-hook on the block: edits its hidden_states input
    resid_post     forward hook on the block: edits its output
    attn_out       forward hook on the attention sublayer: edits its output
    mlp_out        forward hook on the MLP sublayer: edits its output
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from .layout import dims, get_module, layout_of, modules_along, site_module_name, sublayer_scale
from .spec import SteeringPlan, SteeringSpec, refuse_unguarded_compile

__all__ = ["steer"]


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a HF causal LM inside the block; every hook is removed on exit, even on error."""
    layout = layout_of(model)
    plan = SteeringPlan(specs, *dims(model), hooks=True, sublayer_scale=sublayer_scale(model))
    decoder = get_module(model, layout.decoder)
    names = [site_module_name(layout, layer, site) for layer, site in plan.sites]
    # Compiled before the block, the model or any module around a hooked one would ignore our hooks.
    refuse_unguarded_compile(*modules_along(model, [layout.decoder, *names]))
    targets = [(get_module(model, name), layer, site) for name, (layer, site) in zip(names, plan.sites, strict=True)]

    with contextlib.ExitStack() as stack:
        # Registration happens inside the ExitStack: a failure halfway still removes the first hooks.
        handle = decoder.register_forward_pre_hook(
            lambda m, args, kwargs: plan.begin_call(args, kwargs), with_kwargs=True
        )
        stack.callback(handle.remove)
        handle = decoder.register_forward_hook(
            lambda m, args, kwargs, output: plan.end_call(kwargs), with_kwargs=True, always_call=True
        )
        stack.callback(handle.remove)
        stack.enter_context(plan.recompute_in_call(model))  # gradient checkpointing replays under its call
        for module, layer, site in targets:
            if site == "resid_pre":
                handle = module.register_forward_pre_hook(_input_editor(plan, layer), with_kwargs=True)
            else:
                handle = module.register_forward_hook(_output_editor(plan, layer, site))
            stack.callback(handle.remove)
        yield model


def _input_editor(plan: SteeringPlan, layer: int):
    def hook(module, args, kwargs):
        # Blocks get hidden_states positionally in HF today; accept the keyword form too.
        if args:
            return (plan.steer(layer, "resid_pre", args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": plan.steer(layer, "resid_pre", kwargs["hidden_states"])}

    return hook


def _output_editor(plan: SteeringPlan, layer: int, site: str):
    def hook(module, args, output):
        # A new tensor, not an in-place add: the original may be saved for backward or read elsewhere.
        return plan.steer_output(layer, site, output)

    return hook

"""Steering with TransformerLens 4 hook points on a ``TransformerBridge``. Copy this file, spec.py and layout.py.

    bridge = bridge_from_hf(hf_model, tokenizer)      # no hub call
    with steer(bridge, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)]):
        logits = bridge(input_ids, attention_mask=mask)

Our site names are TransformerLens's own: (layer, site) -> ``blocks.{layer}.hook_{site}``, and
so are their meanings: hook_attn_out and hook_mlp_out carry what the sublayer adds to the stream
(after Gemma 2's post-norms, after Granite's residual multiplier), so specs apply as they are.
TransformerLens hook functions see only the activation, not the attention mask, so
one plain PyTorch pre-hook on the wrapped HF decoder records token positions.

Gotchas:
    * The bridge takes over the HF model it wraps: its blocks are replaced by bridge
      components. ``bridge_from_hf`` therefore works on a deep copy unless told not to.
    * ``bridge("some text")`` prepends BOS by default; HF's GPT-2 tokenizer does not.
      Pass token ids, tokenized once, to compare with other backends.
    * A tokenizer built in memory (never saved) has no ``name_or_path``, from which
      TransformerLens reloads it to turn on ``add_bos_token`` (``KeyError: 'name_or_path'``);
      ``bridge_from_hf`` turns it on in a copy instead.

Why not ``bridge.hooks(fwd_hooks=...)``? It would work: in TransformerLens 4.3 it removes
only the handles it added, even on error. We add ours with ``HookPoint.add_hook`` so that
one ExitStack owns every handle, including the decoder's pre-hook, which is a plain
PyTorch hook, not a hook point.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .layout import get_module, layout_of
from .spec import SteeringPlan, SteeringSpec, refuse_unguarded_compile

__all__ = ["bridge_from_hf", "steer"]


def bridge_from_hf(model: torch.nn.Module, tokenizer: Any, copy_model: bool = True) -> Any:
    """A TransformerBridge around an already loaded HF causal LM, with no hub call.

    With ``copy_model=False`` the bridge takes over ``model`` itself (saves memory;
    ``model`` must not be used on its own afterwards).

    A model dispatched by accelerate (device_map) works if its input embeddings are not
    offloaded: the bridge puts inputs on the embeddings' device, and an offloaded one is on
    the meta device (ValueError here). TransformerLens itself refuses a map that mixes a GPU
    with "cpu" or "disk".
    """
    from transformer_lens.model_bridge import TransformerBridge

    embeddings = next(model.get_input_embeddings().parameters())
    if embeddings.device.type == "meta":
        raise ValueError(
            "the input embeddings are offloaded (on the meta device); the TransformerBridge puts every input "
            "on the embeddings' device, so keep the embedding module on a device in the device_map"
        )

    if tokenizer.bos_token is not None and not tokenizer.init_kwargs.get("name_or_path"):
        # Built in memory: TransformerLens would reload it from name_or_path with
        # add_bos_token=True. Turn that on in a copy, which it then keeps as it is.
        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.add_bos_token = True
        tokenizer.init_kwargs.update(name_or_path="", add_bos_token=True)
    model = copy.deepcopy(model) if copy_model else model
    return TransformerBridge.boot_transformers(
        model.config.name_or_path or type(model).__name__, hf_model=model, tokenizer=tokenizer, dtype=model.dtype
    )


@contextlib.contextmanager
def steer(bridge: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a TransformerBridge inside the block; our hooks are removed on exit, even on error."""
    plan = SteeringPlan(specs, bridge.cfg.n_layers, bridge.cfg.d_model)
    decoder = get_module(bridge.original_model, layout_of(bridge.original_model).decoder)
    refuse_unguarded_compile(bridge, decoder)  # a bridge compiled before the block would ignore our hooks
    hook_points = [(bridge.hook_dict[f"blocks.{layer}.hook_{site}"], layer, site) for layer, site in plan.sites]

    with contextlib.ExitStack() as stack:
        handle = decoder.register_forward_pre_hook(
            lambda m, args, kwargs: plan.begin_call(args, kwargs), with_kwargs=True
        )
        stack.callback(handle.remove)
        handle = decoder.register_forward_hook(
            lambda m, args, kwargs, output: plan.end_call(kwargs), with_kwargs=True, always_call=True
        )
        stack.callback(handle.remove)
        stack.enter_context(plan.recompute_in_call(bridge))  # gradient checkpointing replays under its call
        for hook_point, layer, site in hook_points:
            # activation: [batch, pos, d_model]. A new tensor, not an in-place add:
            # the original may be saved for backward or read elsewhere.
            lens_handle = hook_point.add_hook(
                lambda activation, hook, layer=layer, site=site: plan.steer(layer, site, activation)
            )
            stack.callback(_remove, hook_point, lens_handle)
        yield bridge


def _remove(hook_point: Any, lens_handle: Any) -> None:
    # Filtered, not list.remove: a bridge.reset_hooks() inside the block may have removed it already.
    hook_point.fwd_hooks[:] = [handle for handle in hook_point.fwd_hooks if handle is not lens_handle]
    lens_handle.hook.remove()

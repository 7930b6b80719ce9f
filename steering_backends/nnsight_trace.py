"""Steering with an nnsight persistent edit. Copy this file, spec.py and layout.py.

    lm = nnsight_from_hf(hf_model, tokenizer)          # a TransformersModel around it, no hub call
    with steer(lm, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)]):
        tokens = lm.generate(input_ids, attention_mask=mask, max_new_tokens=20)
        logits = lm.trace(input_ids, attention_mask=mask, trace=False).logits   # one forward
        with lm.trace(input_ids, attention_mask=mask):                          # or your own trace
            hidden = lm.transformer.h[7].output.save()                          # sees the steered stream

Where each site is, as nnsight envoys (GPT-2 names; Llama: model.layers[L], .self_attn):
    decoder      lm.transformer.inputs          (args, kwargs): attention_mask, past_key_values
    resid_pre    lm.transformer.h[L].input      hidden_states, the block's first input
    attn_out     lm.transformer.h[L].attn.output   a tuple (hidden, attention weights)
    mlp_out      lm.transformer.h[L].mlp.output
    resid_post   lm.transformer.h[L].output     a tensor in transformers 5, a tuple in 4

Design:
    * steer() takes an nnsight model (TransformersModel; the deprecated LanguageModel is one),
      not the HF model: nnsight intervenes only in runs that go through it. Under the block,
      lm.generate(...), lm.trace(..., trace=False) and every `with lm.trace(...)` /
      `with lm.generate(...)` are steered. Calling the HF model, or lm(...) outside a trace,
      bypasses nnsight and is NOT steered.
    * The steering is one persistent edit (lm.edit(inplace=True)): nnsight replays it on every
      later run. It is removed on exit, even when the body raised. clear_edits() would drop every
      edit, an outer steer block's too, so only ours is taken out of lm._edits.
    * An edit runs once per run by default; generate calls the decoder once per new token, so the
      edit loops over `tracer.iter[:]`, one step per decoder call. Such an open loop ends when the
      run makes no further call: nnsight throws OutOfOrderError into it (and would warn). That end
      is expected, so it is caught.
    * Positions: at each decoder call the edit reads the decoder's own inputs, whose attention_mask
      covers the KV cache, and hands them to SteeringPlan.record_call. Left padding, `start`,
      [n, d_model] vectors and cached decoding then follow from spec.py, as in every backend.
    * What nnsight cannot express: steering a call that bypasses it (an edit lives on the envoy,
      not in the module; see the first point); an edit that runs at every call of an unknown
      number of calls without a loop whose end is an error; and a traced body that starts with
      `try:` (nnsight intercepts the body at its first line), hence the statement above it below.
    * Not for threads or gradient checkpointing: nnsight runs are not thread-safe (run them one at
      a time, e.g. under a lock), and a checkpointed block is recomputed during backward, outside
      the run (refused when the block is entered).

Gotchas:
    * Wrapping instruments every module for good (an nnsight controller in each module's
      __dict__, inert outside nnsight runs) and sets the tokenizer's pad token and left padding;
      nnsight_from_hf therefore works on copies unless told not to.
    * Importing nnsight patches torch.Tensor.backward and gives every object a .save() method.
    * nnsight reads the edit's source code, so this file must be shipped as .py, not only .pyc.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from nnsight import Envoy
from nnsight.intervention.interleaver import OutOfOrderError

from .layout import dims, get_module, layout_of, site_module_name, sublayer_scale
from .spec import SteeringPlan, SteeringSpec

__all__ = ["nnsight_from_hf", "steer"]


def nnsight_from_hf(model: torch.nn.Module, tokenizer: Any, copy_model: bool = True) -> Envoy:
    """An nnsight TransformersModel around an already loaded HF causal LM, with no hub call.

    With ``copy_model=False`` the HF model itself is instrumented (saves memory); the tokenizer
    is always copied, since nnsight changes its padding.

    A model dispatched by accelerate (device_map) works if its first parameter (the
    embeddings) is not offloaded and its device map does not start with "disk": nnsight moves
    every input to the first parameter's device, and transformers' pipeline, which nnsight
    builds on, takes the model's device from the map's first entry. Otherwise ValueError.
    """
    from nnsight import TransformersModel

    name, param = next(iter(model.named_parameters()))
    if param.device.type == "meta":
        raise ValueError(
            f"{name} is offloaded (on the meta device); nnsight moves every input to the device of the "
            "model's first parameter, so keep the module that holds it on a device in the device_map"
        )
    first = next(iter((getattr(model, "hf_device_map", None) or {}).items()), None)
    if first is not None and first[1] == "disk":
        raise ValueError(
            f"model.hf_device_map starts with {first[0]!r}: 'disk'; transformers' pipeline, which nnsight builds "
            "on, takes the model's device from the first entry; reorder it so that a device comes first"
        )
    model = copy.deepcopy(model) if copy_model else model
    return TransformersModel(model, task="text-generation", tokenizer=copy.deepcopy(tokenizer))


@contextlib.contextmanager
def steer(lm: Envoy, specs: Iterable[SteeringSpec]) -> Iterator[Envoy]:
    """Steer an nnsight model's runs inside the block; our edit is removed on exit, even on error."""
    if not isinstance(lm, Envoy):
        raise TypeError(
            f"steer() takes an nnsight model, got {type(lm).__name__}; wrap a HF model with nnsight_from_hf()"
        )
    hf = lm._module
    layout = layout_of(hf)
    plan = SteeringPlan(specs, *dims(hf), sublayer_scale=sublayer_scale(hf))
    if hf.training and getattr(hf, "is_gradient_checkpointing", False):
        raise ValueError(
            "gradient checkpointing is on in train() mode: its recompute runs during backward, outside nnsight's "
            "run, so it would not be steered (torch then fails with a CheckpointError); disable it with "
            "gradient_checkpointing_disable(), or steer with pytorch_hooks"
        )
    for name in [layout.decoder] + [site_module_name(layout, layer, site) for layer, site in plan.sites]:
        get_module(hf, name)  # resolve every name before the edit exists
    decoder = lm.get(layout.decoder)
    # (envoy, layer, site) in forward order: nnsight serves locations only in the order the model runs.
    targets = [(lm.get(site_module_name(layout, layer, site)), layer, site) for layer, site in plan.sites]

    with contextlib.ExitStack() as stack:
        n_edits = len(lm._edits)
        with lm.edit(inplace=True) as tracer:
            steps = tracer.iter[:]  # a statement before the `try`: nnsight refuses a body that starts with one
            try:
                for _ in steps:  # one step per decoder call: a forward is one, generate one per token
                    plan.record_call(*decoder.inputs)  # [B, T] positions from the mask over cache + new tokens
                    for envoy, layer, site in targets:
                        # Assign new tensors rather than editing .output[:] in place: the original
                        # may be saved for backward or read elsewhere.
                        if site == "resid_pre":
                            envoy.input = plan.steer(layer, site, envoy.input)  # [B, T, D]
                        else:
                            envoy.output = plan.steer_output(layer, site, envoy.output)  # tuple or [B, T, D]
            except OutOfOrderError:
                pass  # the loop asked for a decoder call the run did not make: how an open loop ends
        for edit in lm._edits[n_edits:]:
            stack.callback(_remove_edit, lm, edit)
        yield lm


def _remove_edit(lm: Envoy, edit: Any) -> None:
    lm._edits = [other for other in lm._edits if other is not edit]

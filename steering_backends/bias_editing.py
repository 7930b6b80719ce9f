"""Steering with no hooks at all: fold the vector into biases. Copy this file, spec.py and layout.py.

    with steer(model, [SteeringSpec(layer=6, site="resid_post", vector=v, coeff=5.0)]):
        tokens = model.generate(input_ids, max_new_tokens=20)   # no per-token overhead

A constant added to a sublayer's output is a constant added to its last bias:
    attn_out of block L       -> bias of the attention output projection
    mlp_out / resid_post of L -> bias of the MLP output projection (it ends the block)
    resid_pre of block L > 0  -> same as resid_post of block L - 1
    resid_pre of block 0      -> every row of the position-embedding table
Only position-independent specs fit (1-D vector, start=0). Padding tokens are
steered too, which does not matter: attention never reads them.
Parameters are edited in place and restored bitwise on exit, even on error.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch

from .layout import Layout, dims, get_module, layout_of
from .spec import SteeringPlan, SteeringSpec

__all__ = ["steer"]


def _target(layout: Layout, layer: int, site: str) -> str:
    """Dotted name of the parameter that absorbs a constant added at (layer, site)."""
    if site == "resid_pre":
        if layer == 0:
            if layout.pos_embed is None:
                raise ValueError("site='resid_pre' at layer 0 needs a learned position table, which this model lacks")
            return f"{layout.pos_embed}.weight"
        layer, site = layer - 1, "resid_post"
    proj = layout.attn_out_proj if site == "attn_out" else layout.mlp_out_proj
    return f"{layout.blocks}.{layer}.{proj}.bias"


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a HF causal LM inside the block by editing biases; restored bitwise on exit."""
    layout = layout_of(model)
    plan = SteeringPlan(specs, *dims(model))
    for i, spec in enumerate(plan.specs):
        if spec.per_position or spec.start != 0:
            raise ValueError(
                f"specs[{i}] is position-dependent (vector shape {tuple(spec.vector.shape)}, start={spec.start}); "
                "bias editing supports only a [d_model] vector with start=0; use a hook backend"
            )
    additions: dict[str, torch.Tensor] = {}
    for (layer, site), site_specs in plan.by_site.items():
        name = _target(layout, layer, site)
        for spec in site_specs:
            additions[name] = additions.get(name, 0) + spec.coeff * spec.vector
    params = {name: _get_parameter(model, name) for name in additions}

    saved = {name: param.detach().clone() for name, param in params.items()}
    try:
        with torch.no_grad():
            for name, param in params.items():
                param.add_(additions[name].to(dtype=param.dtype, device=param.device))  # broadcasts over rows
        yield model
    finally:
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(saved[name])


def _get_parameter(model: torch.nn.Module, name: str) -> torch.nn.Parameter:
    module_name, _, param_name = name.rpartition(".")
    param = getattr(get_module(model, module_name), param_name, None)
    if not isinstance(param, torch.nn.Parameter):
        raise ValueError(f"{name!r} is not a parameter of this model; bias editing needs it to absorb the vector")
    return param

"""Steering with no hooks at all: fold the vector into biases. Copy this file, spec.py and layout.py.

    with steer(model, [SteeringSpec(layer=6, site="resid_post", vector=v, coeff=5.0)]):
        tokens = model.generate(input_ids, max_new_tokens=20)   # no per-token overhead

A constant added to a sublayer's output is a constant added to its last bias:
    attn_out of block L       -> bias of the attention output projection
    mlp_out / resid_post of L -> bias of the MLP output projection (it ends the block)
    resid_pre of block L > 0  -> same as resid_post of block L - 1
    resid_pre of block 0      -> every row of the position-embedding table (refused on rotary
                                 models, which have none)
Only position-independent additions fit (op="add", 1-D vector, start=0). Padding tokens are
steered too, which does not matter: attention never reads them.
Existing parameters are edited in place and restored bitwise on exit, even on error.
A projection with no bias (Llama's o_proj and down_proj) gets one for the duration,
removed on exit, so the state_dict has the same keys and bits afterwards.
The vector is copied in without autograd: no gradient reaches it (use a hook backend).
Refused in train() mode when the model has dropout, which would drop and rescale the edited bias.

Models dispatched by accelerate (``from_pretrained(..., device_map=...)``): a module offloaded
to CPU or disk keeps its parameters on the meta device, and accelerate's hook on it
(``module._hf_hook``) reads them from its ``weights_map`` at every call. There the edit goes
into that map instead: for the duration of the block the hook reads from a ChainMap of
{name: edited value} over its own map, which is put back on exit. Nothing is written to
the offloaded files. A parameter on meta that no accelerate hook loads is refused.
"""

from __future__ import annotations

import contextlib
from collections import ChainMap
from collections.abc import Iterable, Iterator
from typing import Any

import torch

from .layout import Layout, dims, get_module, layout_of, sublayer_scale
from .spec import SteeringPlan, SteeringSpec

__all__ = ["steer"]


def _target(model: torch.nn.Module, layout: Layout, layer: int, site: str) -> str:
    """Dotted name of the parameter that absorbs a constant added at (layer, site)."""
    where = f"model type {model.config.model_type!r}, layer={layer}, site={site!r}"
    if site == "resid_pre":
        if layer == 0:
            if layout.pos_embed is None:
                raise ValueError(
                    f"{where}: needs a learned position table, which this model lacks (rotary positions); "
                    "use a hook backend"
                )
            return f"{layout.pos_embed}.weight"
        layer, site = layer - 1, "resid_post"
    proj = layout.attn_out_proj if site == "attn_out" else layout.mlp_out_proj
    if proj is None:  # resid_post ends with mlp_out
        module = f"{layout.blocks}.{layer}.{layout.attn if site == 'attn_out' else layout.mlp}"
        raise ValueError(
            f"{where}: what the {'attention' if site == 'attn_out' else 'MLP'} sublayer adds to the stream is the "
            f"output of {module} ({type(get_module(model, module)).__name__}), not of a projection whose bias "
            "could absorb a constant; use a hook backend"
        )
    return f"{layout.blocks}.{layer}.{proj}.bias"


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Steer a HF causal LM inside the block by editing biases; restored bitwise on exit."""
    layout = layout_of(model)
    plan = SteeringPlan(specs, *dims(model), sublayer_scale=sublayer_scale(model))
    for i, spec in enumerate(plan.specs):
        if spec.op != "add":
            raise ValueError(
                f"specs[{i}].op={spec.op!r}: a bias can only add; allowed: 'add'. To remove a direction without "
                "hooks use weight_orthogonalisation (op='ablate'), otherwise a hook backend"
            )
        if spec.per_position or spec.start != 0:
            raise ValueError(
                f"specs[{i}] is position-dependent (vector shape {tuple(spec.vector.shape)}, start={spec.start}); "
                "bias editing supports only a [d_model] vector with start=0; use a hook backend"
            )
        if spec.rows is not None:
            raise ValueError(
                f"specs[{i}].rows={spec.rows}: a bias is shared by every row of the batch, so bias editing "
                "cannot steer some rows only; use a hook backend"
            )
    if model.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(
            "the model is in train() mode with dropout: dropout after an edited bias would drop and rescale the "
            "vector, which the hook backends add after it; call model.eval(), or steer with a hook backend"
        )
    additions: dict[str, torch.Tensor] = {}
    for (layer, site), site_specs in plan.by_site.items():
        name = _target(model, layout, layer, site)
        # resid_post (and resid_pre of the next block) lands on the MLP's last bias, which reaches the stream
        # times the block's sublayer scale, as the MLP's output does (the plan has divided mlp_out's already).
        scale = sublayer_scale(model) if site in ("resid_pre", "resid_post") and name.endswith(".bias") else 1.0
        for spec in site_specs:  # summed in at least float32, so a bf16 vector is not rounded again
            vector = spec.vector.detach().to(torch.promote_types(spec.vector.dtype, torch.float32))
            additions[name] = additions.get(name, 0) + spec.coeff / scale * vector
    targets = {name: _owner(model, name) for name in additions}
    offloaded = {name: _offload_hook(model, name) for name, (module, _) in targets.items() if _on_meta(module)}

    with contextlib.ExitStack() as stack:
        for name, (module, param_name) in targets.items():
            addition = additions[name]
            param = getattr(module, param_name)
            if name in offloaded:  # accelerate loads it at each call: edit what it loads
                hook, key = offloaded[name]
                if param is None:
                    _add_bias(stack, module, param_name, module.weight.new_empty(module.out_features))  # on meta
                    value = addition.to(module.weight.dtype)
                else:
                    original = hook.weights_map[key]
                    value = original + addition.to(dtype=original.dtype, device=original.device)
                stack.callback(setattr, hook, "weights_map", hook.weights_map)
                hook.weights_map = ChainMap({key: value}, hook.weights_map)
            else:  # the sum of every active block's addition, so blocks can be left in any order
                _edit(stack, module, param_name, addition.detach())
        yield model


# (id(module), parameter name) -> (its value before any steer block, or None for an absent bias;
# [(block token, addition)] of the blocks active on it, in the order they were entered).
_ACTIVE: dict[tuple[int, str], tuple[torch.Tensor | None, list[tuple[object, torch.Tensor]]]] = {}


def _edit(stack: contextlib.ExitStack, module: torch.nn.Module, name: str, addition: torch.Tensor) -> None:
    param = getattr(module, name)
    original, edits = _ACTIVE.setdefault((id(module), name), (None if param is None else param.detach().clone(), []))
    token = object()
    edits.append((token, addition))
    _rewrite(module, name, original, edits)
    stack.callback(_undo, module, name, token)


def _undo(module: torch.nn.Module, name: str, token: object) -> None:
    """Take one block's addition out, whatever blocks entered after it are still active."""
    original, edits = _ACTIVE[(id(module), name)]
    edits[:] = [edit for edit in edits if edit[0] is not token]
    if not edits:
        del _ACTIVE[(id(module), name)]
    _rewrite(module, name, original, edits)


def _rewrite(module: torch.nn.Module, name: str, original: torch.Tensor | None, edits: list) -> None:
    """original + each active addition in order (bitwise the original when none is left); an absent
    bias is given one while an addition is active, and removed after."""
    if original is None and not edits:
        module.register_parameter(name, None)
        return
    like = module.weight if original is None else original
    value = original
    for _, addition in edits:
        addition = addition.to(dtype=like.dtype, device=like.device)
        value = addition if value is None else value + addition  # broadcasts over a position table
    param = getattr(module, name)
    if param is None:
        # A copy: value may be an addition itself, which a later block's rewrite must not write into.
        module.register_parameter(name, torch.nn.Parameter(value.clone(), requires_grad=False))
    else:
        _assign(param, value)


def _add_bias(stack: contextlib.ExitStack, module: torch.nn.Module, name: str, value: torch.Tensor) -> None:
    module.register_parameter(name, torch.nn.Parameter(value, requires_grad=False))
    stack.callback(module.register_parameter, name, None)


def _assign(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():  # a leaf that requires grad cannot be written in place otherwise
        param.copy_(value)


def _on_meta(module: torch.nn.Module) -> bool:
    return any(t.device.type == "meta" for t in module.parameters(recurse=False))


def _offload_hook(model: torch.nn.Module, name: str) -> tuple[Any, str]:
    """(accelerate hook that loads parameter ``name`` at each call, its key in the hook's weights_map).

    The hook sits on the parameter's module, or on an ancestor that places its submodules.
    """
    parts = name.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        hook = getattr(model.get_submodule(".".join(parts[:depth])), "_hf_hook", None)
        for one in getattr(hook, "hooks", [hook]):  # a SequentialHook holds several
            owns = depth == len(parts) - 1 or getattr(one, "place_submodules", False)
            if getattr(one, "offload", False) and getattr(one, "weights_map", None) is not None and owns:
                return one, ".".join(parts[depth:])
    raise ValueError(
        f"{name!r} is on the meta device and no accelerate hook loads it, so there is nothing to edit; "
        "bias editing needs the weights materialised or offloaded by accelerate; use a hook backend"
    )


def _owner(model: torch.nn.Module, name: str) -> tuple[torch.nn.Module, str]:
    """(module, parameter name) for a dotted parameter name; the bias may be None (absent)."""
    module_name, _, param_name = name.rpartition(".")
    module = get_module(model, module_name)
    param = getattr(module, param_name, None)
    absent_bias = param is None and param_name == "bias" and isinstance(module, torch.nn.Linear)
    if not (isinstance(param, torch.nn.Parameter) or absent_bias):
        raise ValueError(f"{name!r} is not a parameter of this model; bias editing needs it to absorb the vector")
    return module, param_name

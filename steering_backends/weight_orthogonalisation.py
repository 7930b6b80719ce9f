"""Directional ablation with no hooks: orthogonalise the weights. Copy this file, spec.py and layout.py.

    from steering_backends.spec import ablate_everywhere
    with steer(model, ablate_everywhere(direction, n_layers=model.config.num_hidden_layers)):
        tokens = model.generate(input_ids, max_new_tokens=20)   # no per-token overhead

Removing u = v / norm(v) from what a linear map writes is
itself linear, so op="ablate" folds into the weight that writes, as an addition folds into a
bias (bias_editing.py). With P = I - u u^T:
    attn_out of block L    -> attention output projection: W <- P W, bias b <- P b
    mlp_out of block L     -> MLP output projection, likewise
    resid_pre of block 0   -> every row of the token embedding (and of GPT-2's position table)
Only op="ablate" with coeff 1, a [d_model] direction, start 0 and every row fits; other sites
mix several writes (resid_pre of block L > 0, resid_post), which no one weight holds.

Tied unembedding (GPT-2, SmolLM2): lm_head shares the token embedding's matrix, so
orthogonalising it would also remove u from the logits' read-out, which hook ablation never
touches. For the duration lm_head gets its own copy of the original matrix; the tie is back on exit.
Parameters are edited in place (float32 at least) and restored bitwise on exit, even on error.
Nested blocks may be left in any order: each parameter keeps its value from before any block, and
every exit rewrites it with the directions of the blocks still active. Refused in train() mode
with dropout (it rescales coordinates after the weight and so brings u back), and on
parameters offloaded by accelerate (meta device: nothing to edit; use a hook backend).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch

from .layout import dims, get_module, layout_of
from .spec import SteeringPlan, SteeringSpec

__all__ = ["steer"]

ALLOWED = "attn_out or mlp_out of any block, or resid_pre of block 0 (the embeddings)"


def _check(i: int, spec: SteeringSpec, layer: int) -> None:
    """ValueError naming the field if ``spec`` is not a full, position-independent ablation at a write."""
    where = f"specs[{i}]"
    if spec.op != "ablate":
        raise ValueError(
            f"{where}.op={spec.op!r}: weight orthogonalisation only removes a direction; allowed: 'ablate' "
            "(to add, use bias_editing or a hook backend)"
        )
    if spec.coeff != 1:
        raise ValueError(f"{where}.coeff={spec.coeff!r}: allowed: 1 (the whole component); use a hook backend")
    if spec.start != 0 or spec.rows is not None:
        raise ValueError(
            f"{where} has start={spec.start}, rows={spec.rows}: a weight serves every position and row; "
            "allowed: start=0, rows=None; use a hook backend"
        )
    if spec.site not in ("attn_out", "mlp_out") and (spec.site, layer) != ("resid_pre", 0):
        raise ValueError(
            f"{where} (layer={spec.layer}, site={spec.site!r}) is not where one weight writes into the stream; "
            f"allowed: {ALLOWED}; use a hook backend"
        )


def _writers(model: torch.nn.Module, layer: int, site: str) -> list[tuple[torch.nn.Module, str, int]]:
    """(module, parameter name, dim of d_model) of each parameter that writes (layer, site)."""
    layout = layout_of(model)
    if site == "resid_pre":
        tables = [model.get_input_embeddings()]
        tables += [] if layout.pos_embed is None else [get_module(model, layout.pos_embed)]
        return [(table, "weight", -1) for table in tables]  # [rows, d_model]
    proj_name = layout.attn_out_proj if site == "attn_out" else layout.mlp_out_proj
    if proj_name is None:
        module = f"{layout.blocks}.{layer}.{layout.attn if site == 'attn_out' else layout.mlp}"
        raise ValueError(
            f"model type {model.config.model_type!r}, layer={layer}, site={site!r}: what the sublayer adds to the "
            f"stream is the output of {module} ({type(get_module(model, module)).__name__}), not of one weight "
            "to orthogonalise; use a hook backend"
        )
    proj = get_module(model, f"{layout.blocks}.{layer}.{proj_name}")
    out_dim = 0 if isinstance(proj, torch.nn.Linear) else -1  # Linear: [out, in]; GPT-2's Conv1D: [in, out]
    return [(proj, "weight", out_dim)] + ([] if proj.bias is None else [(proj, "bias", -1)])


def _orthogonalised(value: torch.Tensor, unit: torch.Tensor, dim: int) -> torch.Tensor:
    """``value`` with the component along ``unit`` [d_model] removed along ``dim``, in float32 at least."""
    wide = value.to(torch.promote_types(value.dtype, torch.float32))
    unit = unit.to(wide)
    moved = wide.movedim(dim, -1)  # [..., d_model]
    return (moved - (moved @ unit).unsqueeze(-1) * unit).movedim(-1, dim).to(value.dtype)


@contextlib.contextmanager
def steer(model: torch.nn.Module, specs: Iterable[SteeringSpec]) -> Iterator[torch.nn.Module]:
    """Ablate directions by orthogonalising weights inside the block; restored bitwise on exit."""
    n_layers, d_model = dims(model)
    plan = SteeringPlan(specs, n_layers, d_model)
    for i, spec in enumerate(plan.specs):
        _check(i, spec, spec.layer % n_layers)
    if model.training and any(isinstance(m, torch.nn.Dropout) and m.p > 0 for m in model.modules()):
        raise ValueError(
            "the model is in train() mode with dropout: dropout after an orthogonalised weight rescales each "
            "coordinate and brings the direction back; call model.eval(), or steer with a hook backend"
        )
    # Every edited parameter once, with the units to remove from it in the order the specs give them.
    edits: dict[int, tuple[torch.nn.Module, str, int, list[torch.Tensor]]] = {}
    for (layer, site), site_specs in plan.by_site.items():
        for module, name, dim in _writers(model, layer, site):
            param = getattr(module, name)
            if param.device.type == "meta":
                raise ValueError(f"{type(module).__name__}.{name} is offloaded (meta device); use a hook backend")
            if param.shape[dim] != d_model:
                raise ValueError(f"{type(module).__name__}.{name} has shape {tuple(param.shape)}, no d_model axis")
            units = edits.setdefault(id(param), (module, name, dim, []))[3]
            units += [spec.operand(torch.float32, param.device) for spec in site_specs]
    embedding, unembedding = model.get_input_embeddings(), model.get_output_embeddings()
    tied = unembedding is not None and unembedding.weight is embedding.weight and id(embedding.weight) in edits

    tied = tied or unembedding is not None and id(unembedding) in _UNTIED and id(embedding.weight) in edits

    with contextlib.ExitStack() as stack:
        if tied:  # lm_head reads the logits with the original matrix, as under hook ablation
            _untie(stack, unembedding, embedding.weight)
        for module, name, dim, units in edits.values():
            _edit(stack, getattr(module, name), dim, units)
        yield model


# id(param) -> (its value before any steer block, [(block token, units)] of the blocks active on it, in
# the order they were entered); id(lm_head) -> (the embedding matrix it shares, how many blocks keep it apart).
_ACTIVE: dict[int, tuple[torch.Tensor, list[tuple[object, list[torch.Tensor]]]]] = {}
_UNTIED: dict[int, tuple[torch.nn.Parameter, int]] = {}


def _edit(stack: contextlib.ExitStack, param: torch.nn.Parameter, dim: int, units: list[torch.Tensor]) -> None:
    original, blocks = _ACTIVE.setdefault(id(param), (param.detach().clone(), []))
    token = object()
    blocks.append((token, units))
    _rewrite(param, dim, original, blocks)
    stack.callback(_undo, param, dim, token)


def _undo(param: torch.nn.Parameter, dim: int, token: object) -> None:
    """Take one block's directions out, whatever blocks entered after it are still active."""
    original, blocks = _ACTIVE[id(param)]
    blocks[:] = [block for block in blocks if block[0] is not token]
    if not blocks:
        del _ACTIVE[id(param)]
    _rewrite(param, dim, original, blocks)


def _rewrite(param: torch.nn.Parameter, dim: int, original: torch.Tensor, blocks: list) -> None:
    """original with each active block's units removed, in order (bitwise the original when none is left)."""
    value = original
    for _, units in blocks:
        for unit in units:  # two directions at one site are removed one after the other
            value = _orthogonalised(value, unit, dim)
    _assign(param, value)


def _untie(stack: contextlib.ExitStack, unembedding: torch.nn.Module, shared: torch.nn.Parameter) -> None:
    """lm_head gets its own copy of the matrix it shares, until the last block that edits the matrix is left."""
    if id(unembedding) not in _UNTIED:  # the first such block: the matrix is not edited yet
        _UNTIED[id(unembedding)] = (shared, 0)
        unembedding.weight = torch.nn.Parameter(shared.detach().clone(), requires_grad=shared.requires_grad)
    shared, count = _UNTIED[id(unembedding)]
    _UNTIED[id(unembedding)] = (shared, count + 1)

    def retie() -> None:
        shared, count = _UNTIED.pop(id(unembedding))
        if count > 1:
            _UNTIED[id(unembedding)] = (shared, count - 1)
        else:
            unembedding.weight = shared

    stack.callback(retie)


def _assign(param: torch.nn.Parameter, value: torch.Tensor) -> None:
    with torch.no_grad():  # a leaf that requires grad cannot be written in place otherwise
        param.copy_(value)

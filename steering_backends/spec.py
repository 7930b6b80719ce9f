"""The steering spec: where, what, how much and at which positions.

Every backend in this package implements exactly the arithmetic written here;
a backend only decides *where* to intercept the model. Copy this file together
with one backend file.

    spec = SteeringSpec(layer=6, site="resid_pre", vector=love - hate, coeff=5.0)
    plan = SteeringPlan([spec], n_layers=48, d_model=1600)   # validates
    # at the decoder's input:     plan.begin_call(args, kwargs)
    # at a site's activation:     hidden = plan.steer(layer, site, hidden)
    # at the decoder's output:    plan.end_call(kwargs)        (also when it raised)

Contents:
    SITES          the four intercept points, in the order a block computes them
    OPS            what a spec does at its site: add, ablate or cap
    SteeringSpec   one operation at one site (frozen dataclass, validated on construction)
    SteeringPlan   validated specs for one model; each decoder call's positions in a ContextVar
    token_positions  padding- and cache-aware position of every token in a call
    ablate_everywhere  the specs that remove a direction wherever a weight writes into the stream
"""

from __future__ import annotations

import contextlib
import functools
import gc
import math
import sys
import weakref
from collections.abc import Iterable, Iterator, Sequence
from contextvars import ContextVar, Token
from dataclasses import dataclass, replace
from typing import Any

import torch

__all__ = [
    "OPS",
    "SITES",
    "SteeringPlan",
    "SteeringSpec",
    "ablate_everywhere",
    "refuse_unguarded_compile",
    "token_positions",
]

# TransformerLens's vocabulary: blocks.{layer}.hook_{site}.
SITES = ("resid_pre", "attn_out", "mlp_out", "resid_post")
# h: an activation [d_model]; v: the spec's vector; u = v / |v|; c: coeff.
OPS = ("add", "ablate", "cap")  # h + c v;  h - c (h.u) u;  h - relu(h.u - c) u


@dataclass(frozen=True, eq=False)  # eq=False: tensors have no truth value
class SteeringSpec:
    """Add ``coeff * vector`` to the activations at one site of one block, or remove a direction.

    layer:  block index; negative counts from the end (-1 is the last block).
    site:   "resid_pre" (block input), "resid_post" (block output),
            "attn_out" / "mlp_out" (sublayer output, before it joins the stream).
    vector: [d_model] one direction, added at every position >= start; or
            [n, d_model] per-position activations, row i added at position start + i only.
    coeff:  scale.
    start:  first steered position; positions count from each row's first real token.
    rows:   None (every row of the batch), or one bool per row of the batch given to the model
            (True: steered), so one batch can mix steered and unsteered rows, or vectors.
            generate(num_return_sequences=k) and num_beams=k repeat each row k times in a
            row; row r's copies keep row r's flag.
    op:     "add"    h + coeff * vector;
            "ablate" h - coeff * (h.u) u, u = vector / |vector|: coeff 1 removes the component along u,
                     0.5 halves it;
            "cap"    h - relu(h.u - coeff) u: the component along u is at most coeff (coeff may be
                     +inf, which changes nothing).
            ablate and cap take one nonzero [d_model] direction.
    Several specs at one site apply in the order given, each to the result of the one before
    (additions alone commute; an ablation after an addition removes part of what was added).
    """

    layer: int
    site: str
    vector: torch.Tensor
    coeff: float = 1.0
    start: int = 0
    rows: Sequence[bool] | None = None
    op: str = "add"

    def __post_init__(self) -> None:
        if not isinstance(self.layer, int) or isinstance(self.layer, bool):
            raise TypeError(f"SteeringSpec.layer must be an int, got {self.layer!r}")
        if self.site not in SITES:
            raise ValueError(f"SteeringSpec.site={self.site!r} is unknown; allowed: {', '.join(SITES)}")
        v = self.vector
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"SteeringSpec.vector must be a torch.Tensor, got {type(v).__name__}")
        if not v.is_floating_point():
            raise TypeError(f"SteeringSpec.vector must be floating point, got dtype {v.dtype}")
        if v.ndim not in (1, 2) or v.numel() == 0:
            raise ValueError(
                f"SteeringSpec.vector must be [d_model] or [n, d_model] and non-empty, got shape {tuple(v.shape)}"
            )
        if not bool(torch.isfinite(v).all()):
            bad = (~torch.isfinite(v)).nonzero()[0].tolist()
            raise ValueError(
                f"SteeringSpec.vector[{', '.join(map(str, bad))}] is {v[tuple(bad)].item()}; "
                "only finite values are allowed (no NaN or inf)"
            )
        if self.op not in OPS:
            raise ValueError(f"SteeringSpec.op={self.op!r} is unknown; allowed: {', '.join(OPS)}")
        if self.op != "add" and v.ndim != 1:
            raise ValueError(
                f"SteeringSpec.vector has shape {tuple(v.shape)}; op={self.op!r} takes one [d_model] direction"
            )
        if self.op != "add" and not bool(v.any()):
            raise ValueError(f"SteeringSpec.vector is all zeros; op={self.op!r} needs a direction (a nonzero vector)")
        infinite_cap = self.op == "cap" and self.coeff == math.inf
        if isinstance(self.coeff, bool) or not isinstance(self.coeff, (int, float)):
            raise ValueError(f"SteeringSpec.coeff={self.coeff!r} must be a finite real number")
        if not (math.isfinite(self.coeff) or infinite_cap):
            raise ValueError(
                f"SteeringSpec.coeff={self.coeff!r} must be a finite real number (op='cap' also takes +inf)"
            )
        if not isinstance(self.start, int) or isinstance(self.start, bool) or self.start < 0:
            raise ValueError(f"SteeringSpec.start={self.start!r} must be an int >= 0")
        if self.rows is not None:
            rows = self.rows.tolist() if isinstance(self.rows, torch.Tensor) else self.rows
            if not isinstance(rows, Sequence) or not rows or not all(isinstance(r, bool) for r in rows):
                raise ValueError(
                    f"SteeringSpec.rows={self.rows!r} must be None or a non-empty sequence of bools, one per "
                    "batch row (True: steered); row indices are not accepted"
                )
            object.__setattr__(self, "rows", tuple(rows))  # frozen: an immutable copy of the caller's flags

    @property
    def per_position(self) -> bool:
        """True for an [n, d_model] ActivationAddition-style vector."""
        return self.vector.ndim == 2

    def addition(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """coeff * vector, [d_model] or [n, d_model], in the activations' dtype and on their device.

        Scaled in the wider of the two dtypes (an fp32 vector keeps its precision when steering a
        bf16 model; a bf16 vector is not rounded again by coeff), then cast once. In a model
        dispatched over several devices each block's activations live where that block runs.
        """
        wide = torch.promote_types(self.vector.dtype, dtype)
        return (self.coeff * self.vector.to(wide)).to(dtype=dtype, device=device)

    def operand(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """What apply() combines with the activations: the addition for "add", else the unit
        direction u [d_model], normalised in at least float32 (scaled by max |v| first, so the
        norm of a tiny or huge vector neither underflows nor overflows), then cast once."""
        if self.op == "add":
            return self.addition(dtype, device)
        v = self.vector.to(torch.promote_types(self.vector.dtype, torch.float32))
        v = v / v.abs().max()
        return (v / torch.linalg.vector_norm(v)).to(dtype=dtype, device=device)

    def removed(self, hidden: torch.Tensor, unit: torch.Tensor) -> torch.Tensor:
        """[B, T, D]: what "ablate" or "cap" takes away from hidden [B, T, D], given u [D]."""
        along = (hidden @ unit).unsqueeze(-1)  # [B, T, 1]: h.u
        amount = self.coeff * along if self.op == "ablate" else torch.relu(along - self.coeff)
        return amount * unit

    def row_mask(self, batch: int, device: torch.device | str | None = None) -> torch.Tensor | None:
        """[batch, 1, 1] True at the batch rows this spec steers; None when it steers them all.

        ``batch`` is len(rows), or k * len(rows) when generate() repeats each row k times.
        """
        if self.rows is None:
            return None
        if batch % len(self.rows):
            raise ValueError(
                f"SteeringSpec.rows has {len(self.rows)} flags, but the model was called with {batch} rows; "
                f"allowed: {len(self.rows)} rows, or a multiple when generate() repeats each row "
                "(num_return_sequences, num_beams)"
            )
        flags = torch.tensor(self.rows, device=device).repeat_interleave(batch // len(self.rows))
        return flags[:, None, None]

    def apply(
        self,
        hidden: torch.Tensor,
        positions: torch.Tensor,
        addition: torch.Tensor | None = None,
        row_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Return hidden with this spec's op applied where it steers.  hidden: [B, T, D], positions: [B, T].

        ``addition`` and ``row_mask``: ``self.operand(hidden.dtype, hidden.device)`` and
        ``self.row_mask(B, hidden.device)``, when the caller has them already.
        """
        if addition is None:
            addition = self.operand(hidden.dtype, hidden.device)
        if row_mask is None:
            row_mask = self.row_mask(hidden.shape[0], hidden.device)
        positions = positions.to(hidden.device)  # read at the decoder's input; a no-op when already there
        if not self.per_position:
            steered = (positions >= self.start).unsqueeze(-1)  # [B, T, 1]; padding has position -1
        else:
            row = positions - self.start  # [B, T]: which row of the vector lands here
            steered = ((row >= 0) & (row < addition.shape[0])).unsqueeze(-1)
            addition = addition[row.clamp(0, addition.shape[0] - 1)]  # [B, T, D]
        if row_mask is not None:
            steered = steered & row_mask
        if self.op != "add":
            return hidden - self.removed(hidden, addition) * steered  # takes exactly 0 where not steered
        return hidden + addition * steered  # adds exactly 0 where not steered


def token_positions(
    n_new: int,
    batch: int,
    attention_mask: torch.Tensor | None = None,
    n_past: int = 0,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Position of each of the ``n_new`` tokens of a call, counted from its row's first real token.

    attention_mask: [B, n_past + n_new] (1 = real token), as HF passes it, covering the
    KV cache too, so positions stay right across decoding steps. Padding gets -1.
    Without a mask every token is real and positions continue after ``n_past``.
    Returns [B, n_new] int64.
    """
    if attention_mask is None:
        return (torch.arange(n_new, device=device) + n_past).expand(batch, n_new)
    real = attention_mask[:, -n_new:].bool()
    counted = attention_mask.long().cumsum(-1)[:, -n_new:] - 1
    return torch.where(real, counted, -1)


def _read_call(args: tuple, kwargs: dict[str, Any]) -> _Call:
    """What steering needs of a HF decoder call (GPT2Model, LlamaModel...): its shape and the tokens' padding."""
    if len(args) > 1:
        raise TypeError("steering needs the decoder's attention_mask and past_key_values as keyword arguments")
    ids = args[0] if args else kwargs.get("input_ids")
    tokens = ids if ids is not None else kwargs.get("inputs_embeds")
    if tokens is None:
        raise ValueError("the decoder call has neither input_ids nor inputs_embeds")
    batch, n_new = tokens.shape[0], tokens.shape[1]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, dict):  # one 4-D mask per attention type (Gemma 2 and 3 with a static cache)
        mask = mask.get("full_attention", next(iter(mask.values()), None))
    if mask is not None:
        if mask.ndim == 4 and mask.shape[2] == n_new:  # [B, 1, T, keys], a static cache's: see _Call
            return _Call(n_new, batch, mask, -1, tokens.device, kwargs.get("position_ids"))
        if mask.ndim != 2:
            raise ValueError(
                f"steering needs a 2-D attention_mask [batch, seq] or a 4-D one [batch, 1, {n_new}, keys]; "
                f"got shape {tuple(mask.shape)}"
            )
        return _Call(n_new, batch, mask, mask.shape[1] - n_new, tokens.device)
    cache = kwargs.get("past_key_values")
    # A static cache counts its tokens in a tensor: read only where a number is needed (see _new_call).
    n_past = cache.get_seq_length() if cache is not None and hasattr(cache, "get_seq_length") else 0
    return _Call(n_new, batch, None, n_past, tokens.device)


UNGUARDED_COMPILE = (
    "torch.compile does not notice module hooks added or removed after it compiled a model, so the compiled "
    "model would run {what}. Fix: set torch._dynamo.config.skip_nnmodule_hook_guards = False before compiling "
    "(entering and leaving a steer block then recompiles), or steer with custom_wrapper or bias_editing"
)


def _compiling_without_hook_guards() -> bool:
    return "torch._dynamo" in sys.modules and sys.modules["torch._dynamo"].config.skip_nnmodule_hook_guards


# Every module torch.compile has wrapped (as the submodule "_orig_mod" of an OptimizedModule):
# noted when the wrapper registers it, so that the check below costs nothing per steer block.
_compile_wrapped: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
_looked_for_earlier_wrappers: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _note_compile_wrapper(parent: torch.nn.Module, name: str, submodule: Any) -> None:
    if name == "_orig_mod" and isinstance(submodule, torch.nn.Module):
        _compile_wrapped.add(submodule)


torch.nn.modules.module.register_module_module_registration_hook(_note_compile_wrapper)


def refuse_unguarded_compile(*modules: torch.nn.Module) -> None:
    """RuntimeError if one of ``modules`` was compiled while dynamo ignores hooks: the compiled code would
    never run the hooks a steer block adds. Compiled means ``torch.compile(module)``, ``module.compile()``,
    a compiled ``forward`` set on the instance, or the call transformers' ``generate`` compiles for
    decoding with a static cache (on accelerators, by default)."""
    if not _compiling_without_hook_guards():
        return
    unseen = [m for m in modules if m not in _looked_for_earlier_wrappers]
    if unseen:  # wrapped before this file was imported: one scan of the collector's objects, once per module
        ids = {id(m) for m in unseen}
        for referrer in gc.get_referrers(*unseen):
            if isinstance(referrer, dict) and id(referrer.get("_orig_mod")) in ids:
                _compile_wrapped.add(referrer["_orig_mod"])
        _looked_for_earlier_wrappers.update(unseen)
    for module in modules:
        compiled = (
            module in _compile_wrapped  # torch.compile(module)
            or "_orig_mod" in module._modules  # that wrapper itself, put in the model in the module's place
            or getattr(module, "_compiled_call_impl", None) is not None  # module.compile()
            or hasattr(module.__dict__.get("forward"), "_torchdynamo_orig_callable")  # forward = torch.compile(forward)
            or module.__dict__.get("_compiled_call") is not None  # transformers' generate, static cache on a GPU
        )
        if compiled:
            raise RuntimeError(UNGUARDED_COMPILE.format(what=f"{type(module).__name__} unsteered"))


def _last_columns(mask: torch.Tensor, n: int) -> torch.Tensor:
    """mask [B, keys] -> mask[:, -n:, None] [B, n, 1]: the same view, made by one operation where
    the indexing makes two (on a CPU, one to two microseconds less at every decoding step)."""
    if torch.compiler.is_compiling():  # dynamo breaks the graph at storage_offset(); in a graph the two are one
        return mask[:, -n:, None]
    rows, columns = mask.stride()
    offset = mask.storage_offset() + (mask.shape[1] - n) * columns
    return mask.as_strided((mask.shape[0], n, 1), (rows, columns, 1), offset)


class _Call:
    """What one decoder call needs at its sites: token positions and real-token mask.

    Made at the decoder's input and owned by that call alone (see SteeringPlan.record_call);
    positions and the real-token mask are computed on first use, once per call.
    """

    __slots__ = ("n_new", "batch", "mask", "n_past", "device", "position_ids", "_positions", "_real", "_real_for")

    def __init__(
        self,
        n_new: int,
        batch: int,
        mask: torch.Tensor | None,
        n_past: int | torch.Tensor,
        device: torch.device,
        position_ids: torch.Tensor | None = None,
    ) -> None:
        self.n_new, self.batch, self.mask, self.n_past, self.device = n_new, batch, mask, n_past, device
        self.position_ids = position_ids  # read only with a 4-D mask
        self._positions: torch.Tensor | None = None
        self._real: torch.Tensor | None = None  # real_as's mask, for the last site that asked:
        self._real_for: tuple[torch.dtype, torch.device] | None = None  # its activations' dtype and device

    @property
    def positions(self) -> torch.Tensor:
        """[B, T] position of each token of the call (padding: -1)."""
        if self._positions is None:
            mask = self.mask
            if mask is not None and mask.ndim == 4:
                # A static cache's mask says which keys each token attends (bool True, or 0.0 in a float
                # mask). With left padding a padding token attends nothing, and a real one every real token
                # up to itself, or, under a sliding window, the last `window` of them. So the count gives the
                # position only without a window; generate's position_ids give it either way.
                attended = (mask if mask.dtype == torch.bool else mask == 0)[:, 0].sum(-1)  # [B, T]
                given = self.position_ids
                if given is not None and given.shape == (self.batch, self.n_new):
                    self._positions = torch.where(attended > 0, given, -1)
                else:
                    self._positions = attended - 1
            else:
                self._positions = token_positions(self.n_new, self.batch, mask, self.n_past, self.device)
        return self._positions

    def real_as(self, dtype: torch.dtype, device: torch.device, cast: bool) -> torch.Tensor | None:
        """[B, T, 1] 1 at real tokens, 0 at padding, on the activations' ``device``; None when the call
        has no mask: every token is real. In the activations' ``dtype`` when ``cast`` (or the mask is
        bool, which torch.addcmul does not take, or floating point), else in the mask's integer dtype,
        which addcmul casts as it reads. Made once per call, and again only for a site in another dtype
        or on another device than the last site that asked.

        No host sync to ask whether all are real: that would stall an accelerator and break a
        torch.compile graph at every call."""
        if self._real_for == (dtype, device):
            return self._real
        mask = self.mask
        if mask is None:
            return None
        if mask.ndim == 4:
            real = (self.positions >= 0)[..., None]
        elif mask.shape[1] == self.n_new:  # a prefill: the mask is the call's own
            real = mask.unsqueeze(-1)
        else:  # the mask covers the cache too: its last n_new columns
            real = _last_columns(mask, self.n_new)
        if cast or real.dtype == torch.bool or real.is_floating_point():
            # dtype= by keyword: Tensor.to parses a positional argument as a device first (0.6 µs more per cast).
            real = real.to(dtype=dtype)
        if real.device != device:  # a model dispatched over several devices
            real = real.to(device)
        self._real, self._real_for = real, (dtype, device)
        return real


class SteeringPlan:
    """Validated specs for one model; immutable once built. Per-call state lives apart from it.

    Raises ValueError naming the spec and the allowed values before anything touches
    the model. ``sites`` restricts the sites a backend can intercept. ``sublayer_scale``: what the
    block multiplies attn_out's and mlp_out's module output by before adding it to the stream
    (layout.sublayer_scale; Granite's residual_multiplier), for backends that steer that output.

    A decoder call's positions and masks belong to that call: ``record_call`` / ``begin_call``
    put them in a ``contextvars.ContextVar`` of this plan, which ``steer`` reads. Each thread
    (and each asyncio task) has its own context, so concurrent calls never see each other's;
    ``end_call`` restores the value from before the call, so a nested call does not leak into
    its caller. A site that runs with no call of its own in force (a block called directly, a
    gradient-checkpoint recompute that ``recompute_in_call`` did not bind) raises RuntimeError
    rather than read another call's positions.
    """

    def __init__(
        self,
        specs: Iterable[SteeringSpec],
        n_layers: int,
        d_model: int,
        sites: Sequence[str] = SITES,
        hooks: bool = False,
        sublayer_scale: float = 1.0,
    ) -> None:
        specs = list(specs)
        self.hooks = hooks  # steered through module hooks: torch.compile must guard on them
        if not (math.isfinite(sublayer_scale) and sublayer_scale > 0):
            raise ValueError(f"sublayer_scale={sublayer_scale!r} must be a finite number > 0")
        self.by_site: dict[tuple[int, str], list[SteeringSpec]] = {}
        applied = []  # the specs as steer() applies them
        for i, spec in enumerate(specs):
            if not isinstance(spec, SteeringSpec):
                raise TypeError(f"specs[{i}] must be a SteeringSpec, got {type(spec).__name__}")
            if not -n_layers <= spec.layer < n_layers:
                raise ValueError(
                    f"specs[{i}].layer={spec.layer} is out of range; this model has {n_layers} blocks, "
                    f"so layer must be in [{-n_layers}, {n_layers - 1}]"
                )
            if spec.site not in sites:
                raise ValueError(f"specs[{i}].site={spec.site!r} is not supported here; allowed: {', '.join(sites)}")
            if spec.vector.shape[-1] != d_model:
                raise ValueError(
                    f"specs[{i}].vector has width {spec.vector.shape[-1]}, but this model's d_model is {d_model}"
                )
            if spec.site in ("attn_out", "mlp_out") and spec.op != "ablate":
                # Specs speak of the stream; the module's output reaches it times sublayer_scale.
                # An ablation is the same at any scale; an addition and a cap's bound are divided by it.
                spec = replace(spec, coeff=spec.coeff / sublayer_scale) if sublayer_scale != 1 else spec
            applied.append(spec)
            self.by_site.setdefault((spec.layer % n_layers, spec.site), []).append(spec)
        self.specs = specs
        self._needs_length_check = any(spec.per_position for spec in specs)
        self._row_specs = [(i, spec) for i, spec in enumerate(applied) if spec.rows is not None]
        # Additions of one [d_model] vector from position 0 to every row: what they need of a call is
        # which tokens are real, not their positions.
        self._at_every_token = {
            id(spec)
            for spec in applied
            if spec.op == "add" and not spec.per_position and spec.start == 0 and spec.rows is None
        }
        # Those add with one torch.addcmul over the call's real-token mask. Read by more than one, the mask is
        # cast to the activations' dtype once: addcmul with an integer mask casts it at every read (on a CPU
        # about 1.3 µs each, against 2.3 µs for one cast).
        self._cast_mask = len(self._at_every_token) > 1
        # coeff * vector (ablate, cap: the unit direction) per (spec, dtype, device), made on first
        # use: once per steer block, not once per forward (the same for every call, so shared). A
        # vector that requires grad is scaled afresh each time, so each forward has its own graph to it.
        self._additions: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}
        # Each rows spec's [B, 1, 1] flags per (spec, batch size, device), made on first use: built from
        # host data at every call they would be a copy to the device, and a wait for it, every forward.
        self._row_masks: dict[tuple[int, int, torch.device], torch.Tensor] = {}
        # The call in force in this context: (_Call, the autograd graph task it may run in, or
        # None for any). One ContextVar per plan, so nested steer blocks keep their own.
        self._current: ContextVar[tuple[_Call, int | None] | None] = ContextVar(f"steering_{id(self)}", default=None)
        self._tokens: dict[int, Token] = {}  # id(call kwargs) -> how end_call restores the context
        self._traced: tuple[_Call, int | None] | None = None  # the call being traced by torch.compile

    @property
    def sites(self) -> list[tuple[int, str]]:
        """(layer >= 0, site) pairs to intercept, in block then site order."""
        return sorted(self.by_site, key=lambda key: (key[0], SITES.index(key[1])))

    def _new_call(self, args: tuple, kwargs: dict[str, Any]) -> _Call:
        call = _read_call(args, kwargs)
        if self._needs_length_check and call.n_past == 0:  # in this order: a static cache's n_past is a tensor
            self._check_prompt_length(call.n_new if call.mask is None else call.mask.sum(-1))
        for i, spec in self._row_specs:  # checked here, before any block runs
            try:
                self._row_mask(spec, call.batch, call.device)
            except ValueError as err:
                raise ValueError(f"specs[{i}]: {err}") from None
        return call

    def record_call(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """Read a decoder call and make it the one in force in this context until the next
        (check prompt length for [n, d_model] vectors, and rows)."""
        self._set(self._new_call(args, kwargs))

    def begin_call(self, args: tuple, kwargs: dict[str, Any]) -> None:
        """At a decoder's input: like record_call, until end_call(kwargs) of the same call."""
        call = self._new_call(args, kwargs)  # validates first: a refused call sets nothing
        token = self._set(call)
        if token is not None:
            self._tokens[id(kwargs)] = token  # the dict is alive, so its id is this call's, until end_call

    def end_call(self, kwargs: dict[str, Any]) -> None:
        """At the decoder's output, or its error (a forward hook with always_call=True): the
        context is again what it was before begin_call. A no-op if begin_call refused the call."""
        if torch.compiler.is_compiling():
            self._traced = None
            return
        token = self._tokens.pop(id(kwargs), None)
        if token is not None:
            self._current.reset(token)

    def _set(self, call: _Call) -> Token | None:
        if torch.compiler.is_compiling():  # dynamo traces no ContextVar.set; the graph itself is per call
            if self.hooks and _compiling_without_hook_guards():
                raise RuntimeError(UNGUARDED_COMPILE.format(what="steered after the block too"))
            self._traced = (call, None)
            return None
        return self._current.set((call, torch._C._current_graph_task_id()))

    def in_call(self) -> bool:
        """Whether a decoder call of the steered model is in force here, as steer() would find it."""
        return self._current.get() is not None or (torch.compiler.is_compiling() and self._traced is not None)

    def _call(self) -> _Call:
        """The call in force here, or RuntimeError: never another call's."""
        current = self._current.get()
        if current is None and torch.compiler.is_compiling():
            current = self._traced
        if current is None:
            raise RuntimeError(
                "a steered site ran outside a decoder call of the steered model (a block called directly, or a "
                "recompute of gradient checkpointing other than transformers'); steering cannot know its token "
                "positions there. Call the model (or its decoder), or use transformers' gradient_checkpointing_enable"
            )
        call, task = current
        if task is not None and task != torch._C._current_graph_task_id():
            raise RuntimeError(
                "a steered site ran inside a backward pass while another decoder call was in force (a recompute "
                "of gradient checkpointing other than transformers'); steering refuses to use that call's positions"
            )
        return call

    @contextlib.contextmanager
    def recompute_in_call(self, model: torch.nn.Module) -> Iterator[None]:
        """For the duration: transformers' gradient checkpointing re-runs a block's forward during
        backward under the call that ran it first (every module's ``_gradient_checkpointing_func``,
        set by ``gradient_checkpointing_enable``, is wrapped, and put back on exit)."""
        wrapped = []
        for module in model.modules():
            checkpoint = module.__dict__.get("_gradient_checkpointing_func")
            if checkpoint is not None:
                module._gradient_checkpointing_func = self._bound(checkpoint)
                wrapped.append((module, checkpoint, module._gradient_checkpointing_func))
        try:
            yield
        finally:
            for module, checkpoint, ours in wrapped:
                if module.__dict__.get("_gradient_checkpointing_func") is ours:  # not replaced inside the block
                    module._gradient_checkpointing_func = checkpoint

    def _bound(self, checkpoint: Any) -> Any:
        def checkpoint_in_call(function: Any, *args: Any, **kwargs: Any) -> Any:
            call = self._current.get()
            if call is None:  # not steered here: nothing to bind
                return checkpoint(function, *args, **kwargs)
            return checkpoint(functools.partial(self._run_in, (call[0], None), function), *args, **kwargs)

        return checkpoint_in_call

    def _run_in(self, call: tuple[_Call, None], function: Any, *args: Any, **kwargs: Any) -> Any:
        token = self._current.set(call)  # task None: also valid in the backward pass that recomputes
        try:
            return function(*args, **kwargs)
        finally:
            self._current.reset(token)

    def _check_prompt_length(self, n_real: int | torch.Tensor) -> None:
        shortest = int(n_real.min()) if isinstance(n_real, torch.Tensor) else n_real
        for i, spec in enumerate(self.specs):
            needed = spec.start + spec.vector.shape[0]
            if spec.per_position and shortest < needed:
                raise ValueError(
                    f"specs[{i}] adds {spec.vector.shape[0]} rows from position {spec.start}, so every prompt needs "
                    f"at least {needed} tokens; the shortest prompt here has {shortest} "
                    "(with a chunked prefill, the first chunk is checked: make it at least that long)"
                )

    def _operand(self, spec: SteeringSpec, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        # A vector that requires grad needs its own graph each forward. A traced call computes it inside the
        # compiled graph: filling the cache there would change what the next call's guards see, and recompile.
        if spec.vector.requires_grad or torch.compiler.is_compiling():
            return spec.operand(dtype, device)
        key = (id(spec), dtype, device)  # plan.specs keeps every spec, so ids stay unique
        operand = self._additions.get(key)
        if operand is None:
            operand = self._additions[key] = spec.operand(dtype, device)
        return operand

    def _row_mask(self, spec: SteeringSpec, batch: int, device: torch.device) -> torch.Tensor | None:
        if torch.compiler.is_compiling():  # as in _operand: the traced graph makes its own
            return spec.row_mask(batch, device)
        key = (id(spec), batch, device)
        rows = self._row_masks.get(key)
        if rows is None:
            rows = self._row_masks[key] = spec.row_mask(batch, device)
        return rows

    def steer(self, layer: int, site: str, hidden: torch.Tensor) -> torch.Tensor:
        """hidden [B, T, D] with every spec at (layer, site) applied, in the order given."""
        call = self._call()
        dtype, device = hidden.dtype, hidden.device  # read once per site: .device makes a new object per read
        for spec in self.by_site.get((layer, site), ()):
            addition = self._operand(spec, dtype, device)
            if id(spec) not in self._at_every_token:
                rows = None if spec.rows is None else self._row_mask(spec, hidden.shape[0], device)
                hidden = spec.apply(hidden, call.positions, addition, rows)
            elif (real := call.real_as(dtype, device, cast=self._cast_mask)) is None:  # no mask: every token is real
                hidden = hidden + addition
            else:  # from position 0: exactly the real tokens, as apply() would, in one kernel
                hidden = torch.addcmul(hidden, real, addition)
        return hidden

    def steer_output(self, layer: int, site: str, output: Any) -> Any:
        """Like steer(), for a module output that is a tensor (transformers 5 blocks) or a
        tuple whose first element is the hidden state (attention, transformers 4 blocks)."""
        if isinstance(output, tuple):
            return (self.steer(layer, site, output[0]), *output[1:])
        return self.steer(layer, site, output)


def ablate_everywhere(direction: torch.Tensor, n_layers: int) -> list[SteeringSpec]:
    """Specs that remove ``direction`` [d_model] wherever a weight writes into the residual stream:
    resid_pre of block 0 (the embeddings), then attn_out and mlp_out of every block."""
    specs = [SteeringSpec(0, "resid_pre", direction, op="ablate")]
    for layer in range(n_layers):
        specs += [
            SteeringSpec(layer, "attn_out", direction, op="ablate"),
            SteeringSpec(layer, "mlp_out", direction, op="ablate"),
        ]
    return specs

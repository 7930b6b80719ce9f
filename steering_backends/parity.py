"""Run every backend on the same token ids and compare: logits, greedy tokens, padded batches.

    runners, skipped = make_runners(model, tokenizer)
    refs, table = reference_run(runners, cases, ids, mask)     # fills the "effect" column
    for runner in runners:                                      # one at a time, bridge last
        for case, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[case][runner.name] = diff
    print(format_table(table))

The reference is ``pytorch_hooks``. Logits are compared on real (non-padding)
tokens only: what a model writes at a padding position is never read.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import BACKENDS, backend
from .layout import dims, layout_of
from .prompts import hf_positions, left_pad
from .spec import SteeringSpec, ablate_everywhere

__all__ = [
    "REFERENCE",
    "RELATIVE_ROUNDING",
    "RELATIVE_TOLERANCES",
    "Runner",
    "format_table",
    "greedy",
    "hf_positions",
    "left_pad",
    "logit_scale",
    "make_runners",
    "max_abs_diff",
    "operator_cases",
    "parity_cases",
    "reference_run",
    "residual_rms",
    "runner_diffs",
    "steered_logits",
    "stream_directions",
    "supports",
    "tolerance",
    "unavailable",
]

REFERENCE = "pytorch_hooks"

# Max |Δlogit| allowed against the reference, relative to the scale of the logits compared:
# tolerance(backend, reference logits) = RELATIVE_TOLERANCES[backend] * max |logit| of the
# reference over real tokens. Rounding grows with the size of the numbers, and trained
# weights make logits ~10x larger than random ones (SmolLM2-135M ~30, random GPT-2 small ~3).
# The hook backends run the same ops on the same tensors, so they must be bitwise equal; so
# does nnsight's edit, which hands the same tensors to the same SteeringPlan.steer. The other
# two reorder float additions: TransformerLens recomputes attention its own way, and bias
# editing computes x@W + (b + v) instead of (x@W + b) + v. benchmarks/rounding.py measured,
# over the 13 parity cases x 10 vector seeds (float32, CPU), largest relative gaps of
# 4.8e-7 (tiny models), 1.3e-6 (GPT-2 small shape) and 1.5e-5 (SmolLM2, bias editing), and
# smallest relative gaps of deliberate mistakes of 3.8e-4 (coeff x 1.001, tiny Llama).
# 1e-4 sits between them: 6.6x above the largest rounding, 3.8x below the smallest mistake.
RELATIVE_TOLERANCES = {
    "custom_wrapper": 0.0,
    "pytorch_hooks": 0.0,
    "baukit_tracedict": 0.0,
    "transformer_lens_hooks": 1e-4,
    "bias_editing": 1e-4,
    "nnsight_trace": 0.0,
    # Hooks remove u from each sublayer's output, the weights make outputs without it: rounding
    # differs. Measured against pytorch_hooks ablating everywhere (float32, CPU, 5 directions on the
    # small models, parity's on the GPT-2-XL shape): largest relative gaps 4.4e-7 (tiny GPT-2, tiny
    # Llama), 1.4e-6 (GPT-2 small shape), 2.3e-6 (GPT-2-XL shape) and 7.0e-6 (SmolLM2); the mistake of
    # ablating with coeff 0.99 instead of 1: at least 1.8e-3. 1e-4: 14x above, 18x below.
    "weight_orthogonalisation": 1e-4,
}
# One backend, two matmul shapes: cached decoding vs one forward over the whole sequence, a
# padded row vs the prompt alone. Largest relative gaps measured by the parity suite
# (float32, CPU): tiny models 4.4e-7, GPT-2 small shape 8.4e-7, GPT-2-XL shape 8.7e-7,
# SmolLM2 2.7e-6. 1e-4, as above, leaves 37x headroom.
RELATIVE_ROUNDING = 1e-4


def tolerance(relative: float, reference: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Max |Δlogit| allowed against ``reference`` [B, T, V] (or [B, N, V] step logits):
    ``relative`` times its max |logit| over real tokens (every token when mask is None)."""
    return relative * logit_scale(reference, torch.ones(reference.shape[:2]) if mask is None else mask)


# Backends whose library is imported only when they are used (transformer_lens_hooks imports it
# inside bridge_from_hf), so importing the backend module proves nothing: the library is looked up too.
LIBRARIES = {"baukit_tracedict": "baukit", "transformer_lens_hooks": "transformer_lens", "nnsight_trace": "nnsight"}


def unavailable(name: str) -> str | None:
    """Why backend ``name`` cannot run in this environment, or None when it can."""
    import transformers

    try:
        backend(name)
    except ImportError as err:
        return f"cannot import it: {err}"
    library = LIBRARIES.get(name)
    if library is None or importlib.util.find_spec(library) is not None:
        return None
    why = f"its library {library} is not installed"
    if library == "transformer_lens" and int(transformers.__version__.split(".")[0]) < 5:
        why += f" (TransformerLens 4 needs transformers >= 5.9; this environment has {transformers.__version__})"
    return why


@dataclass
class Runner:
    """One backend bound to the model object it steers (a HF model, a bridge, or an nnsight model).

    ``build`` makes that object on first use, so a bridge that takes over the HF
    model is only built once the other backends are done with it.
    """

    name: str
    build: Callable[[], torch.nn.Module]
    steer: Callable

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        return self.build()

    @property
    def is_bridge(self) -> bool:
        return self.name == "transformer_lens_hooks"

    @property
    def is_nnsight(self) -> bool:
        return self.name == "nnsight_trace"

    def logits(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """[B, T, vocab] float32 logits of one forward pass."""
        if self.is_bridge:  # the bridge derives padding-aware positions from the mask itself
            return self.model(ids, attention_mask=mask).float()
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask))
        if self.is_nnsight:  # nnsight steers only runs that go through it: one forward, no `with` block
            return self.model.trace(**inputs, trace=False).logits.float()
        return self.model(**inputs).logits.float()

    def generate(self, ids: torch.Tensor, mask: torch.Tensor, n_new: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Greedy decoding with the KV cache, never stopping early: (token ids [B, T + n_new],
        float32 logits of each step [B, n_new, vocab])."""
        if self.is_bridge:
            kwargs = dict(stop_at_eos=False, verbose=False)
        else:  # eos_token_id=None: no stop at EOS and, unlike min_new_tokens, no EOS suppression
            kwargs = dict(eos_token_id=None, return_dict_in_generate=True)
        out = self.model.generate(
            ids, attention_mask=mask, max_new_tokens=n_new, do_sample=False, output_logits=True, **kwargs
        )
        return out.sequences, torch.stack(out.logits, 1).float()


def make_runners(
    model: torch.nn.Module, tokenizer: Any, copy_for_bridge: bool = True, names: Sequence[str] = BACKENDS
) -> tuple[list[Runner], dict[str, str]]:
    """A Runner per importable backend in ``names``, the bridge last, and {backend: why it was skipped}.

    The TransformerLens bridge takes over the model it wraps; with ``copy_for_bridge=False``
    it takes over ``model`` itself (no second copy in memory), so use its runner last. The
    same flag lets nnsight instrument ``model`` itself instead of a copy (inert outside its runs).
    """
    runners, skipped = [], {}
    for name in names:
        if why := unavailable(name):
            skipped[name] = why
            continue
        module = backend(name)
        if name == "transformer_lens_hooks":
            build = functools.partial(module.bridge_from_hf, model, tokenizer, copy_model=copy_for_bridge)
            runners.append(Runner(name, build, module.steer))
        elif name == "nnsight_trace":
            build = functools.partial(module.nnsight_from_hf, model, tokenizer, copy_model=copy_for_bridge)
            runners.append(Runner(name, build, module.steer))
        else:  # steers the HF model itself
            runners.append(Runner(name, lambda: model, module.steer))
    runners.sort(key=lambda runner: runner.is_bridge)
    return runners, skipped


def residual_rms(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> float:
    """A typical residual-stream coordinate size, as a scale for test vectors: the median over
    real tokens and blocks of each token's RMS. The median, because trained models keep a
    few "attention sink" tokens (SmolLM2's first token) at ~100x the norm of the rest.
    (``hidden_states[L]`` is block L's input; the last entry, taken after the final norm, is left out.)
    """
    out = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
    block_inputs = torch.stack(out.hidden_states[:-1])[:, mask.bool()].float()  # [n_layers, n_real, d_model]
    return block_inputs.pow(2).mean(-1).sqrt().median().item()


def parity_cases(n_layers: int, d_model: int, seed: int = 0, scale: float = 1.0) -> dict[str, list[SteeringSpec]]:
    """Named spec lists covering every site, 1-D/2-D vectors, start > 0, several specs,
    layer 0 / middle / last / negative. Vectors are seeded N(0, scale^2) draws; with
    ``scale = residual_rms(...) / 4`` and coeff 4 an addition is as large as the stream."""
    gen = torch.Generator().manual_seed(seed)

    def vec(*shape: int) -> torch.Tensor:
        return scale * torch.randn(*shape, d_model, generator=gen)

    mid, last = n_layers // 2, n_layers - 1
    return {
        "resid_pre L0": [SteeringSpec(0, "resid_pre", vec(), 4.0)],
        "resid_pre mid": [SteeringSpec(mid, "resid_pre", vec(), 4.0)],
        "attn_out mid": [SteeringSpec(mid, "attn_out", vec(), 4.0)],
        "mlp_out mid": [SteeringSpec(mid, "mlp_out", vec(), 4.0)],
        "resid_post last": [SteeringSpec(last, "resid_post", vec(), 4.0)],
        "resid_pre L=-1": [SteeringSpec(-1, "resid_pre", vec(), -3.0)],
        "1-D start=2": [SteeringSpec(mid, "resid_pre", vec(), 4.0, start=2)],
        "2-D 3 rows": [SteeringSpec(mid, "resid_pre", vec(3), 4.0)],
        "2-D start=1 L0": [SteeringSpec(0, "resid_post", vec(2), 4.0, start=1)],
        "two sites": [SteeringSpec(0, "attn_out", vec(), 2.0), SteeringSpec(last, "mlp_out", vec(), -2.0)],
        "two on one site": [SteeringSpec(mid, "mlp_out", vec(), 3.0), SteeringSpec(mid, "mlp_out", vec(), -1.5)],
        "resid_pre + attn_out, one block": [
            SteeringSpec(mid, "resid_pre", vec(), 2.0),
            SteeringSpec(mid, "attn_out", vec(), 2.0),
        ],
        "post L + pre L+1": [
            SteeringSpec(mid - 1, "resid_post", vec(), 2.0),
            SteeringSpec(mid, "resid_pre", vec(), 2.0),
        ],
    }


def stream_directions(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> Callable[[int], torch.Tensor]:
    """direction(seed) -> [d_model]: the mean residual stream (over real tokens and block inputs)
    plus seeded noise of the same size per coordinate. Ablating a random direction of a trained
    model removes almost nothing; the stream has a sizeable component along this one."""
    out = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
    mean = torch.stack(out.hidden_states[:-1])[:, mask.bool()].float().mean((0, 1)).cpu()  # [d_model]

    def direction(seed: int) -> torch.Tensor:
        noise = torch.randn(mean.shape[0], generator=torch.Generator().manual_seed(seed))
        return mean + mean.norm() / mean.shape[0] ** 0.5 * noise

    return direction


def operator_cases(n_layers: int, direction: Callable[[int], torch.Tensor]) -> dict[str, list[SteeringSpec]]:
    """Named spec lists for op="ablate" and op="cap": partial ablation, capping, start and rows, an
    operator and an addition in both orders on one site, and ablation everywhere (the case weight
    orthogonalisation takes). ``direction``: see stream_directions."""
    mid, last = n_layers // 2, n_layers - 1
    return {
        "ablate resid_pre mid": [SteeringSpec(mid, "resid_pre", direction(0), op="ablate")],
        "ablate 0.5 resid_post L0": [SteeringSpec(0, "resid_post", direction(1), 0.5, op="ablate")],
        "cap resid_post mid at 0": [SteeringSpec(mid, "resid_post", direction(2), 0.0, op="cap")],
        "ablate resid_post last, start=2, rows": [
            SteeringSpec(last, "resid_post", direction(3), op="ablate", start=2, rows=(True, False, True))
        ],
        "ablate then add, one site": [
            SteeringSpec(mid, "attn_out", direction(4), op="ablate"),
            SteeringSpec(mid, "attn_out", direction(4), 2.0),
        ],
        "add then cap, resid_pre L0": [
            SteeringSpec(0, "resid_pre", direction(5), 2.0),
            SteeringSpec(0, "resid_pre", direction(5), 0.0, op="cap", start=1),
        ],
        "ablate everywhere": ablate_everywhere(direction(6), n_layers),
    }


def supports(runner: Runner, specs: list[SteeringSpec]) -> bool:
    """Whether ``runner`` takes ``specs`` on its model, decided from the specs and the layout alone
    (so a case it cannot take skips it without building anything). Bias editing takes
    position-independent additions on every row, where a projection's bias (or a position table)
    ends the site; weight orthogonalisation whole ablations where one projection (or the
    embeddings) writes; baukit every spec but resid_pre of block 0 where no module outputs it;
    the other backends every spec."""
    if runner.name not in ("bias_editing", "weight_orthogonalisation", "baukit_tracedict"):
        return True
    layout, (n_layers, _) = layout_of(runner.model), dims(runner.model)

    def first_block(spec: SteeringSpec) -> bool:
        return spec.site == "resid_pre" and spec.layer % n_layers == 0

    def projection(spec: SteeringSpec) -> str | None:  # the projection whose output ends the site
        return layout.attn_out_proj if spec.site == "attn_out" else layout.mlp_out_proj

    if runner.name == "baukit_tracedict":
        return layout.embed_out is not None or not any(first_block(s) for s in specs)
    if runner.name == "weight_orthogonalisation":
        return all(
            s.op == "ablate"
            and s.coeff == 1
            and s.start == 0
            and s.rows is None
            and (first_block(s) or s.site in ("attn_out", "mlp_out") and projection(s) is not None)
            for s in specs
        )
    return all(
        s.op == "add"
        and not s.per_position
        and s.start == 0
        and s.rows is None
        and (layout.pos_embed is not None if first_block(s) else projection(s) is not None)
        for s in specs
    )


def steered_logits(runner: Runner, specs: list[SteeringSpec], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with runner.steer(runner.model, specs):
        return runner.logits(ids, mask)


def logit_scale(logits: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |logit| over real tokens; logits: [B, T, V], mask: [B, T]."""
    return logits[mask.bool()].abs().max().item()


def max_abs_diff(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """Max |a - b| over real tokens; a, b: [B, T, V], mask: [B, T]."""
    real = mask.bool()
    return (a[real] - b[real]).abs().max().item()


def reference_run(
    runners: list[Runner], cases: dict[str, list[SteeringSpec]], ids: torch.Tensor, mask: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, float | None]]]:
    """Through the reference backend: ({case: steered logits}, a parity table whose
    "effect" column, max |steered - unsteered|, is filled in; it must be > 0)."""
    reference = next(r for r in runners if r.name == REFERENCE)
    unsteered = reference.logits(ids, mask)
    refs = {label: steered_logits(reference, specs, ids, mask) for label, specs in cases.items()}
    return refs, {label: {"effect": max_abs_diff(ref, unsteered, mask)} for label, ref in refs.items()}


def runner_diffs(
    runner: Runner,
    cases: dict[str, list[SteeringSpec]],
    refs: dict[str, torch.Tensor],
    ids: torch.Tensor,
    mask: torch.Tensor,
) -> dict[str, float | None]:
    """{case: max |Δlogit| of this runner vs the reference, or None where unsupported}."""
    return {
        label: max_abs_diff(steered_logits(runner, specs, ids, mask), refs[label], mask)
        if supports(runner, specs)
        else None
        for label, specs in cases.items()
    }


def format_table(table: dict[str, dict[str, float | None]]) -> str:
    """Markdown: spec case x backend -> max |Δlogit| (n/a where the backend cannot do the case)."""
    columns = list(next(iter(table.values())))
    lines = ["| case | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in table.items():
        cells = ["n/a" if row[c] is None else f"{row[c]:.1e}" if row[c] else "0" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def greedy(
    logits_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], ids: torch.Tensor, mask: torch.Tensor, n_new: int
) -> torch.Tensor:
    """Greedy decoding with no KV cache: the whole sequence is re-run for every new token."""
    for _ in range(n_new):
        next_id = logits_fn(ids, mask)[:, -1].argmax(-1, keepdim=True)
        ids, mask = torch.cat([ids, next_id], 1), torch.cat([mask, torch.ones_like(next_id)], 1)
    return ids

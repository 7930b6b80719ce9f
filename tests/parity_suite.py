"""One parity run over every backend, shared by the small-model and GPT-2-XL-shape tests.

Everything is computed once per model, runner by runner with the TransformerLens
bridge last (it may take over the model), and the tests then assert on the results.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from steering_backends import ABLATION_BACKENDS, BACKENDS
from steering_backends.parity import (
    REFERENCE,
    Runner,
    format_table,
    greedy,
    left_pad,
    logit_scale,
    make_runners,
    max_abs_diff,
    operator_cases,
    parity_cases,
    reference_run,
    residual_rms,
    runner_diffs,
    steered_logits,
    stream_directions,
    supports,
)
from steering_backends.spec import SteeringSpec

PROMPTS = ["I hate you because you are so", "Love is the answer, and", "The weather today"]
N_NEW = 20


@dataclass
class ParityResults:
    n_layers: int
    d_model: int
    scale: float  # std of the vectors' entries: residual RMS / 4, so coeff 4 matches the stream
    table: dict
    skipped: dict
    tokens: dict = field(default_factory=dict)  # backend -> greedy ids with the KV cache
    tokens_no_cache: dict = field(default_factory=dict)  # backend -> the reference's no-cache ids it must match
    scales: dict = field(default_factory=dict)  # case -> max |logit| of the reference's steered logits
    step_gap: dict = field(default_factory=dict)  # backend -> max |Δ| cached step logits vs no-cache
    step_scale: dict = field(default_factory=dict)  # backend -> max |logit| of the no-cache step logits
    steps: dict = field(default_factory=dict)  # backend -> cached step logits [B, N_NEW, vocab]
    steps_no_cache: dict = field(default_factory=dict)  # backend -> the no-cache step logits they must match
    batch_gap: dict = field(default_factory=dict)  # backend -> max |Δ| padded row vs alone
    batch_scale: dict = field(default_factory=dict)  # backend -> max |logit| of the prompts run alone
    perturbed: dict = field(default_factory=dict)  # deliberate error -> max |Δ| vs reference (resid_pre mid)
    tolerances: dict = field(default_factory=dict)  # backend -> max |Δlogit| allowed vs reference, / scale
    rounding_tol: float = 0.0  # the same for cached/no-cache and batched/alone runs, / scale
    model_type: str = ""


def generation_specs(
    n_layers: int, d_model: int, scale: float, direction: Callable[[int], torch.Tensor]
) -> dict[str, list[SteeringSpec]]:
    """Specs for greedy decoding, by kind; each runner decodes under the first kind it supports.
    Position-dependent specs (start=2, 2-D rows that must not touch generated tokens, an ablation
    from position 2) make a wrong position during decoding show; bias editing gets position-independent
    additions, and weight orthogonalisation ablation everywhere."""
    cases, ops = parity_cases(n_layers, d_model, seed=1, scale=scale), operator_cases(n_layers, direction)
    return {
        "positions": cases["1-D start=2"]
        + cases["2-D start=1 L0"]
        + [replace(ops["ablate resid_pre mid"][0], start=2)],
        "everywhere": cases["two sites"],
        "ablation": ops["ablate everywhere"],
    }


def batch_specs(
    runner: Runner, n_layers: int, d_model: int, scale: float, ablation: list[SteeringSpec]
) -> list[SteeringSpec]:
    cases = parity_cases(n_layers, d_model, seed=2, scale=scale)
    for specs in (cases["2-D 3 rows"] + cases["attn_out mid"], cases["two sites"], ablation):
        if supports(runner, specs):
            return specs
    raise AssertionError(f"{runner.name} supports no batch case")


def perturbations(specs: list[SteeringSpec], n_layers: int) -> dict[str, list[SteeringSpec]]:
    """The smallest mistakes a backend could make, which the comparison must catch."""
    (spec,) = specs
    return {
        "coeff off by 1e-3 (relative)": [
            SteeringSpec(spec.layer, spec.site, spec.vector, spec.coeff * 1.001, spec.start)
        ],
        "layer shifted by one": [
            SteeringSpec((spec.layer + 1) % n_layers, spec.site, spec.vector, spec.coeff, spec.start)
        ],
        "first position dropped": [SteeringSpec(spec.layer, spec.site, spec.vector, spec.coeff, spec.start + 1)],
    }


def greedy_no_cache(
    runner: Runner, ids: torch.Tensor, mask: torch.Tensor, n_new: int = N_NEW
) -> tuple[torch.Tensor, torch.Tensor]:
    """(greedy ids decoded with no cache [B, T + n_new], the logits that chose each new token
    [B, n_new, vocab], from one no-cache forward over the whole sequence)."""
    tokens = greedy(runner.logits, ids, mask, n_new)
    full_mask = torch.cat([mask, torch.ones(len(ids), n_new, dtype=mask.dtype)], 1)
    return tokens, runner.logits(tokens, full_mask)[:, ids.shape[1] - 1 : -1]


def first_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[int, int] | None:
    """(row, step) of the earliest step where two [B, N] id tensors differ, or None."""
    diff = (a != b).nonzero()
    return None if len(diff) == 0 else tuple(diff[diff[:, 1].argmin()].tolist())


def assert_same_greedy(
    tokens: torch.Tensor, steps: torch.Tensor, ref_tokens: torch.Tensor, ref_steps: torch.Tensor, tol: float, label: str
) -> None:
    """Generated ids [B, N] and step logits [B, N, vocab] match the reference's. In low
    precision two logits can tie within rounding; an id may then differ, but only where the
    reference's top two logits are closer than ``tol``, and only later steps go unchecked."""
    where = first_difference(tokens, ref_tokens)
    n_equal = tokens.shape[1] if where is None else where[1]
    if where is not None:
        top2 = ref_steps[where[0], where[1]].topk(2).values
        assert top2[0] - top2[1] <= tol, f"{label}: greedy ids differ at (row, step) {where} with no tie"
    gap = (steps[:, :n_equal] - ref_steps[:, :n_equal]).abs().max().item() if n_equal else 0.0
    assert gap <= tol, f"{label}: step logits are {gap:.2e} from no-cache decoding"


def run_suite(
    model,
    tokenizer,
    n_layers: int,
    d_model: int,
    copy_for_bridge: bool = True,
    only: tuple[str, ...] | None = None,
    n_new: int = N_NEW,
    padded_batch: bool = True,
) -> ParityResults:
    """``only``: these parity cases (by name), else all; ``n_new``: greedy tokens; ``padded_batch``: whether
    to run each prompt alone against its padded batch row (ParityResults.batch_gap stays empty if not)."""
    runners, skipped = make_runners(
        model, tokenizer, copy_for_bridge=copy_for_bridge, names=BACKENDS + ABLATION_BACKENDS
    )
    ids, mask = left_pad(tokenizer, PROMPTS)
    scale = residual_rms(model, ids, mask) / 4
    direction = stream_directions(model, ids, mask)
    cases = parity_cases(n_layers, d_model, scale=scale) | operator_cases(n_layers, direction)
    if only is not None:
        cases = {label: cases[label] for label in only}
    refs, table = reference_run(runners, cases, ids, mask)
    results = ParityResults(n_layers, d_model, scale, table, skipped, model_type=model.config.model_type)
    results.scales = {label: logit_scale(ref, mask) for label, ref in refs.items()}
    reference = next(r for r in runners if r.name == REFERENCE)

    gen_specs = generation_specs(n_layers, d_model, scale, direction)
    no_cache = {}  # kind -> the reference's no-cache (ids, step logits), computed when a runner first needs it

    base = cases["resid_pre mid"]
    for label, specs in perturbations(base, n_layers).items():
        results.perturbed[label] = max_abs_diff(
            steered_logits(reference, specs, ids, mask), refs["resid_pre mid"], mask
        )

    for runner in runners:  # runner by runner, bridge last: it may take over the model
        for label, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[label][runner.name] = diff
        kind = next((kind for kind, specs in gen_specs.items() if supports(runner, specs)), None)
        if kind is None:  # bias editing and weight orthogonalisation on post-norm sublayers: nothing to decode
            continue
        if kind not in no_cache:
            with reference.steer(reference.model, gen_specs[kind]):
                no_cache[kind] = greedy_no_cache(reference, ids, mask, n_new)
        with runner.steer(runner.model, gen_specs[kind]):
            results.tokens[runner.name], steps = runner.generate(ids, mask, n_new)
        results.tokens_no_cache[runner.name], no_cache_steps = no_cache[kind]
        results.step_gap[runner.name] = (steps - no_cache_steps).abs().max().item()
        results.step_scale[runner.name] = no_cache_steps.abs().max().item()
        results.steps[runner.name], results.steps_no_cache[runner.name] = steps, no_cache_steps
        if not padded_batch:
            continue
        specs = batch_specs(runner, n_layers, d_model, scale, gen_specs["ablation"])
        with runner.steer(runner.model, specs):
            batch = runner.logits(ids, mask)
            gaps, scales = [], []
            for row, prompt in enumerate(PROMPTS):
                alone_ids, alone_mask = left_pad(tokenizer, [prompt])
                alone = runner.logits(alone_ids, alone_mask)[0]
                gaps.append((batch[row, mask[row].bool()] - alone).abs().max().item())
                scales.append(alone.abs().max().item())
            results.batch_gap[runner.name], results.batch_scale[runner.name] = max(gaps), max(scales)
    return results


def report(results: ParityResults, title: str) -> str:
    """Markdown: the parity table, then every other gap, absolute and relative to its logits' scale."""
    scales = results.scales.values()
    lines = [f"## {title}", "", "max |Δlogit| against pytorch_hooks (effect: steered vs unsteered);"]
    lines += [f"vector entries ~ N(0, {results.scale:.3g}^2), a quarter of the residual RMS", ""]
    lines += [format_table(results.table), ""]
    lines += [f"- skipped: {name}: {why}" for name, why in results.skipped.items()]
    lines += [f"- logit scale (max |logit| of the reference's steered logits): {min(scales):.3g}–{max(scales):.3g}"]
    for name, gap in results.step_gap.items():
        relative = gap / results.step_scale[name]
        lines.append(f"- greedy step logits with cache vs no cache, {name}: {gap:.1e} (relative {relative:.1e})")
    for name, gap in results.batch_gap.items():
        lines.append(f"- padded batch row vs alone, {name}: {gap:.1e} (relative {gap / results.batch_scale[name]:.1e})")
    for label, gap in results.perturbed.items():
        lines.append(f"- deliberate error '{label}': {gap:.1e} (relative {gap / results.scales['resid_pre mid']:.1e})")
    return "\n".join(lines)

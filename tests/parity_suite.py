"""One parity run over every backend, shared by the small-model and GPT-2-XL-shape tests.

Everything is computed once per model, runner by runner with the TransformerLens
bridge last (it may take over the model), and the tests then assert on the results.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from steering_backends.parity import (
    REFERENCE,
    Runner,
    format_table,
    greedy,
    left_pad,
    make_runners,
    max_abs_diff,
    parity_cases,
    reference_run,
    residual_rms,
    runner_diffs,
    steered_logits,
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
    tokens_no_cache: torch.Tensor | None = None  # reference backend, no cache
    step_logits_gap: float = 0.0  # reference: cached step logits vs one no-cache forward
    batch_gap: dict = field(default_factory=dict)  # backend -> max |Δ| padded row vs alone
    perturbed: dict = field(default_factory=dict)  # deliberate error -> max |Δ| vs reference


def generation_specs(results: ParityResults) -> list[SteeringSpec]:
    """Position-dependent specs, so a wrong position during decoding changes the tokens."""
    cases = parity_cases(results.n_layers, results.d_model, seed=1, scale=results.scale)
    return cases["1-D start=2"] + cases["2-D start=1 L0"]


def batch_specs(runner: Runner, results: ParityResults) -> list[SteeringSpec]:
    cases = parity_cases(results.n_layers, results.d_model, seed=2, scale=results.scale)
    specs = cases["2-D 3 rows"] + cases["attn_out mid"]
    return specs if supports(runner, specs) else cases["two sites"]


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


def run_suite(model, tokenizer, n_layers: int, d_model: int, copy_for_bridge: bool = True) -> ParityResults:
    runners, skipped = make_runners(model, tokenizer, copy_for_bridge=copy_for_bridge)
    ids, mask = left_pad(tokenizer, PROMPTS)
    scale = residual_rms(model, ids, mask) / 4
    cases = parity_cases(n_layers, d_model, scale=scale)
    refs, table = reference_run(runners, cases, ids, mask)
    results = ParityResults(n_layers, d_model, scale, table, skipped)
    reference = next(r for r in runners if r.name == REFERENCE)

    gen_specs = generation_specs(results)
    with reference.steer(reference.model, gen_specs):
        results.tokens_no_cache = greedy(reference.logits, ids, mask, N_NEW)
        out = reference.model.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=N_NEW,
            min_new_tokens=N_NEW,
            do_sample=False,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
        full_mask = torch.cat([mask, torch.ones(len(PROMPTS), N_NEW, dtype=mask.dtype)], 1)
        no_cache = reference.logits(out.sequences, full_mask)[:, ids.shape[1] - 1 : -1]
        results.step_logits_gap = (torch.stack(out.logits, 1) - no_cache).abs().max().item()

    base = cases["resid_pre mid"]
    for label, specs in perturbations(base, n_layers).items():
        results.perturbed[label] = max_abs_diff(
            steered_logits(reference, specs, ids, mask), refs["resid_pre mid"], mask
        )

    for runner in runners:  # runner by runner, bridge last: it may take over the model
        for label, diff in runner_diffs(runner, cases, refs, ids, mask).items():
            table[label][runner.name] = diff
        if supports(runner, gen_specs):
            with runner.steer(runner.model, gen_specs):
                results.tokens[runner.name] = runner.generate(ids, mask, N_NEW)
        specs = batch_specs(runner, results)
        with runner.steer(runner.model, specs):
            batch = runner.logits(ids, mask)
            gaps = []
            for row, prompt in enumerate(PROMPTS):
                alone_ids, alone_mask = left_pad(tokenizer, [prompt])
                alone = runner.logits(alone_ids, alone_mask)[0]
                gaps.append((batch[row, mask[row].bool()] - alone).abs().max().item())
            results.batch_gap[runner.name] = max(gaps)
    return results


def report(results: ParityResults, title: str) -> str:
    lines = [f"## {title}", "", "max |Δlogit| against pytorch_hooks (effect: steered vs unsteered);"]
    lines += [f"vector entries ~ N(0, {results.scale:.3g}^2), a quarter of the residual RMS", ""]
    lines += [format_table(results.table), ""]
    lines += [f"- skipped: {name}: {why}" for name, why in results.skipped.items()]
    lines += [f"- cached vs no-cache step logits (reference): {results.step_logits_gap:.1e}"]
    lines += [f"- padded batch row vs alone, {name}: {gap:.1e}" for name, gap in results.batch_gap.items()]
    lines += [f"- deliberate error '{label}': {gap:.1e}" for label, gap in results.perturbed.items()]
    return "\n".join(lines)

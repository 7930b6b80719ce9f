"""Parity of every backend on small random GPT-2s: logits, greedy tokens, padded batches.

Tolerances are in steering_backends.parity.TOLERANCES (logits) and below, each with
the measurement behind it. The GPT-2-XL shape runs the same suite in test_parity_xl.py.
"""

from __future__ import annotations

import pytest
import torch
from conftest import write_result
from parity_suite import report, run_suite

from steering_backends.models import RANDOM_CONFIGS, random_gpt2
from steering_backends.parity import TOLERANCES

# Cached decoding vs one no-cache forward, and a padded row vs the prompt alone, run
# different matmul shapes, which round differently. Measured maxima (float32, CPU) on the
# tiny / GPT-2 small / GPT-2-XL shapes: step logits 3.0e-7 / 3.0e-6 / 8.2e-6, batch rows
# 4.2e-7 / 4.2e-6 / 9.8e-6. 1e-4 leaves ~10x headroom over the largest.
ROUNDING_TOL = 1e-4


@pytest.fixture(scope="module", params=["tiny-gpt2-random", "gpt2-random"])
def results(request, tokenizer):
    n_layers, d_model, _ = RANDOM_CONFIGS[request.param]
    results = run_suite(random_gpt2(request.param), tokenizer, n_layers, d_model)
    write_result(f"parity_{request.param}.md", report(results, request.param))
    return results


def check_logit_parity(results) -> None:
    for label, row in results.table.items():
        assert row["effect"] > 0.1, f"{label}: steering must change the logits, or the comparison proves nothing"
        for name, diff in row.items():
            if name != "effect" and diff is not None:
                assert diff <= TOLERANCES[name], f"{label}: {name} is {diff:.2e} from the reference"
    assert all(
        row["bias_editing"] is None for label, row in results.table.items() if "2-D" in label or "start" in label
    )


def check_generation(results) -> None:
    assert results.tokens, "no backend generated"
    assert results.step_logits_gap <= ROUNDING_TOL
    for name, tokens in results.tokens.items():
        assert torch.equal(tokens, results.tokens_no_cache), f"{name}: cached greedy tokens differ from no-cache greedy"


def check_batch(results) -> None:
    for name, gap in results.batch_gap.items():
        assert gap <= ROUNDING_TOL, f"{name}: a padded row is {gap:.2e} from the prompt run alone"


def check_mistakes_are_caught(results) -> None:
    """Each deliberate mistake must fail the logit comparison, even at the loosest tolerance."""
    assert len(results.perturbed) == 3
    for label, gap in results.perturbed.items():
        assert gap > max(TOLERANCES.values()), f"'{label}' would pass unnoticed ({gap:.2e})"


def test_logits_agree_across_backends(results):
    check_logit_parity(results)


def test_greedy_generation_with_cache_matches_no_cache(results):
    check_generation(results)


def test_padded_batch_rows_match_prompts_run_alone(results):
    check_batch(results)


def test_the_comparison_catches_small_mistakes(results):
    check_mistakes_are_caught(results)

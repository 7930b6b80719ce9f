"""The parity suite on the full GPT-2-XL shape: 48 blocks, d_model 1600, 25 heads, 1.56 B
parameters, seeded random weights (~30 s to build, ~6.7 GB in float32).

To fit one copy in memory, the TransformerLens bridge takes over this model once the
other backends are done with it (copy_for_bridge=False).
"""

from __future__ import annotations

import pytest
from conftest import write_result
from parity_suite import report, run_suite
from test_parity import check_batch, check_generation, check_logit_parity, check_mistakes_are_caught

from steering_backends.models import RANDOM_CONFIGS, random_gpt2

N_PARAMS_GPT2_XL = 1_557_611_200  # published size of GPT-2-XL: 1.56 B


@pytest.fixture(scope="module")
def results(tokenizer):
    model = random_gpt2("gpt2-xl-random")
    assert sum(p.numel() for p in model.parameters()) == N_PARAMS_GPT2_XL
    n_layers, d_model, _ = RANDOM_CONFIGS["gpt2-xl-random"]
    results = run_suite(model, tokenizer, n_layers, d_model, copy_for_bridge=False)
    write_result("parity_gpt2-xl-random.md", report(results, "gpt2-xl-random (GPT-2-XL shape, random weights)"))
    return results


def test_logits_agree_across_backends(results):
    check_logit_parity(results)


def test_greedy_generation_with_cache_matches_no_cache(results):
    check_generation(results)


def test_padded_batch_rows_match_prompts_run_alone(results):
    check_batch(results)


def test_the_comparison_catches_small_mistakes(results):
    check_mistakes_are_caught(results)

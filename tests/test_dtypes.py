"""float32 vectors steering bfloat16 and float16 models: the parity suite per dtype.

The hook backends (nnsight's edit included) still run the same ops on the same tensors,
so they stay bitwise equal. TransformerLens and bias editing round differently, now at the
low precision's resolution. Tolerances are relative to the logits' scale (max |logit| of
the reference, 0.71-0.93 on these models). Measured maxima on the tiny GPT-2 / Llama (CPU), over
all of the suite's cases (the run below keeps DTYPE_CASES), absolute: bfloat16 5.9e-3 / 7.8e-3,
float16 7.3e-4 / 7.3e-4 against the reference, so at most 1.1e-2 (bfloat16) and 1.0e-3 (float16)
relative; cached vs no-cache step logits at most
7.0e-3 / 9.0e-4 relative. The tolerances, 4e-2 and 5e-3, leave ~4x headroom there. In bfloat16
the tiny Gemma 2 gave 0 everywhere (TransformerLens included); the tiny Qwen3-MoE 1.8e-2 absolute
(TransformerLens, 2.5e-2 relative: 1.6x headroom, the least of any model here) and 1.2e-2 relative
between cached and no-cache steps, its expert routing rounding in bfloat16. bfloat16
keeps 8 bits of mantissa, so a near-tie between the top two logits can flip a greedy id
between cached and no-cache decoding (it did on the tiny Llama): an id may differ only
where the top two logits are within the tolerance (parity_suite.assert_same_greedy).
"""

from __future__ import annotations

import pytest
import torch
from helpers import write_result
from parity_suite import assert_same_greedy, report, run_suite

from steering_backends.layout import dims
from steering_backends.models import load

DTYPE_TOL = {torch.bfloat16: 4e-2, torch.float16: 5e-3}  # relative to the logits' scale
HOOK_BACKENDS = ("custom_wrapper", "pytorch_hooks", "baukit_tracedict", "nnsight_trace")
# Newer rules in bfloat16: Gemma 2's post-norms and embeddings scaled by sqrt(d_model), Qwen3-MoE's routing.
ARCHITECTURES = ("tiny-gemma2-random", "tiny-qwen3-moe-random")
# On every model: one case per site, an [n, d_model] vector and ablation everywhere. The suite's other
# cases differ from these in positions and layers, which no dtype changes.
DTYPE_CASES = ("resid_pre L0", "resid_pre mid", "attn_out mid", "mlp_out mid", "2-D start=1 L0", "ablate everywhere")


@pytest.fixture(
    scope="module",
    params=[
        (name, dtype) for name in ("tiny-gpt2-random", "tiny-llama-random") for dtype in (torch.bfloat16, torch.float16)
    ]
    + [(name, torch.bfloat16) for name in ARCHITECTURES],
    ids=lambda p: f"{p[0]}-{str(p[1]).removeprefix('torch.')}",
)
def results(request):
    name, dtype = request.param
    model, tokenizer = load(name, dtype=dtype)
    results = run_suite(model, tokenizer, *dims(model), only=DTYPE_CASES)
    names = {name for row in results.table.values() for name in row} - {"effect"}
    results.tolerances = {backend: 0.0 if backend in HOOK_BACKENDS else DTYPE_TOL[dtype] for backend in names}
    results.rounding_tol = DTYPE_TOL[dtype]
    write_result(f"parity_{name}-{str(dtype).removeprefix('torch.')}.md", report(results, f"{name} in {dtype}"))
    return results


def test_float32_vectors_steer_low_precision_models_with_parity(results):
    for label, row in results.table.items():
        assert row["effect"] > 0.1, f"{label}: steering must change the logits"
        for name, diff in row.items():
            if name != "effect" and diff is not None:
                allowed = results.tolerances[name] * results.scales[label]
                assert diff <= allowed, f"{label}: {name} is {diff:.2e} from the reference (allowed {allowed:.1e})"


def test_greedy_generation_with_cache_matches_no_cache_up_to_ties(results):
    for name, tokens in results.tokens.items():
        n_new = results.steps[name].shape[1]
        new, ref_new = tokens[:, -n_new:], results.tokens_no_cache[name][:, -n_new:]
        tol = (results.tolerances[name] + results.rounding_tol) * results.step_scale[name]
        assert_same_greedy(new, results.steps[name], ref_new, results.steps_no_cache[name], tol, name)


def test_padded_batch_rows_match_prompts_run_alone(results):
    for name, gap in results.batch_gap.items():
        allowed = results.rounding_tol * results.batch_scale[name]
        assert gap <= allowed, f"{name}: a padded row is {gap:.2e} from the prompt run alone (allowed {allowed:.1e})"

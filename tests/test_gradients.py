"""Hook backends let gradients reach the steering vector, so vectors can be optimised.

On tiny GPT-2 and Llama models in float64, the autograd gradient of a scalar of the
logits with respect to the vector must match central finite differences along random
directions, for a 1-D and a 2-D (per-position) vector.
Bias editing copies the vector into a parameter under no_grad, so it is excluded.
"""

from __future__ import annotations

import pytest
import torch
from helpers import BACKEND_PARAMS, IDS, MASK

from steering_backends import SteeringSpec, backend
from steering_backends.models import gpt2_tokenizer, random_model
from steering_backends.parity import Runner

# (finite-difference step, allowed relative error) per tiny model, in float64. GPT-2 runs
# in float64 throughout: measured relative error 1.3e-9 at step 1e-6. LlamaRMSNorm casts
# to float32 inside, whatever the model's dtype, so float32 rounding limits the estimate:
# measured 1.6e-4 at step 1e-2 (2.4e-4 at 1e-3, 7.6e-3 at 1e-4).
FINITE_DIFFERENCE = {"tiny-gpt2-random": (1e-6, 1e-7), "tiny-llama-random": (1e-2, 1e-3)}


@pytest.fixture(params=[p for p in BACKEND_PARAMS if getattr(p, "values", (p,))[0] != "bias_editing"])
def runner(request, tiny_name) -> Runner:
    model = random_model(tiny_name, dtype=torch.float64).requires_grad_(False)
    module = backend(request.param)
    target = model
    if request.param == "transformer_lens_hooks":
        target = module.bridge_from_hf(model, gpt2_tokenizer())
    elif request.param == "nnsight_trace":
        target = module.nnsight_from_hf(model, gpt2_tokenizer())
    return Runner(request.param, lambda: target, module.steer)


@pytest.fixture(params=["tiny-gpt2-random", "tiny-llama-random"])
def tiny_name(request) -> str:
    return request.param


def objective(runner: Runner, specs: list[SteeringSpec], weights: torch.Tensor) -> torch.Tensor:
    """A fixed random linear function of the float64 logits (Runner.logits casts to float32)."""
    with runner.steer(runner.model, specs):
        if runner.is_bridge:
            out = runner.model(IDS, attention_mask=MASK)
        elif runner.is_nnsight:  # nnsight steers its own runs only
            out = runner.model.trace(IDS, attention_mask=MASK, trace=False).logits
        else:
            out = runner.model(IDS, attention_mask=MASK).logits
    return (out * weights).sum()


@pytest.mark.parametrize("shape", [(64,), (3, 64)], ids=["1-D", "2-D"])
def test_vector_grad_matches_finite_differences(runner, tiny_name, shape):
    eps, rel_tol = FINITE_DIFFERENCE[tiny_name]
    gen = torch.Generator().manual_seed(0)
    vector = torch.randn(*shape, generator=gen, dtype=torch.float64)
    weights = torch.randn(1, IDS.shape[1], 50257, generator=gen, dtype=torch.float64)

    def specs(v: torch.Tensor) -> list[SteeringSpec]:
        return [
            SteeringSpec(1, "resid_pre", v, 2.0, start=1),
            SteeringSpec(2, "mlp_out", v.sum(0) if v.ndim == 2 else v, -1.0),
        ]

    with torch.enable_grad():
        leaf = vector.clone().requires_grad_()
        objective(runner, specs(leaf), weights).backward()
    assert leaf.grad is not None and leaf.grad.abs().max() > 0
    for _ in range(3):
        direction = torch.randn(*shape, generator=gen, dtype=torch.float64)
        plus = objective(runner, specs(vector + eps * direction), weights)
        minus = objective(runner, specs(vector - eps * direction), weights)
        numeric = (plus - minus) / (2 * eps)
        analytic = (leaf.grad * direction).sum()
        assert abs(numeric - analytic) <= rel_tol * abs(analytic), (numeric.item(), analytic.item())

"""Activation steering, one shared spec, implemented several ways (one file each).

from steering_backends import SteeringSpec, backend
with backend("pytorch_hooks").steer(model, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5)]):
    model.generate(...)
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .spec import SITES, SteeringPlan, SteeringSpec

__all__ = ["BACKENDS", "SITES", "SteeringPlan", "SteeringSpec", "backend"]

# Module names of the backends; each has steer(model, specs). transformer_lens_hooks takes a bridge,
# nnsight_trace an nnsight model.
BACKENDS = (
    "custom_wrapper",
    "pytorch_hooks",
    "baukit_tracedict",
    "transformer_lens_hooks",
    "bias_editing",
    "nnsight_trace",
)


def backend(name: str) -> ModuleType:
    """Import one backend module by name (lazily: baukit and TransformerLens are optional)."""
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; allowed: {', '.join(BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")

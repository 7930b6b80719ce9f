"""Activation steering, one shared spec, implemented several ways (one file each).

from steering_backends import SteeringSpec, backend
with backend("pytorch_hooks").steer(model, [SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5)]):
    model.generate(...)
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .spec import SITES, SteeringPlan, SteeringSpec

__all__ = ["ABLATION_BACKENDS", "BACKENDS", "SITES", "SteeringPlan", "SteeringSpec", "backend"]

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
# Backends for one op only, so not in BACKENDS, whose every backend takes every addition; the same steer(model, specs).
ABLATION_BACKENDS = ("weight_orthogonalisation",)  # op="ablate" at the weights that write into the stream
_FROM_SPEC = ("SITES", "SteeringPlan", "SteeringSpec")


def backend(name: str) -> ModuleType:
    """Import one backend module by name (lazily: baukit and TransformerLens are optional)."""
    if name not in BACKENDS + ABLATION_BACKENDS:
        raise ValueError(f"backend {name!r} is unknown; allowed: {', '.join(BACKENDS + ABLATION_BACKENDS)}")
    return importlib.import_module(f"{__name__}.{name}")


def __getattr__(name: str) -> Any:
    # The spec's names load torch, so they are imported when first asked for: the command line's
    # --help and option checks run before any of it.
    if name in _FROM_SPEC:
        return getattr(importlib.import_module(f"{__name__}.spec"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

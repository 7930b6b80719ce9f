"""Solution to notebook 08's exercise (checked by exercises/checks.py; tests/test_exercises.py runs it)."""

from __future__ import annotations

import torch

from steering_backends import SteeringSpec
from steering_backends.lens import TunedLens, tuned_lens


def first_changed_row(model, lens: TunedLens, ids: torch.Tensor, spec: SteeringSpec, backend: str) -> int | None:
    """The first block whose tuned-lens loss row [T - 1] differs from the unsteered one when `spec` steers through
    `backend`; None when no row changes."""
    before = tuned_lens(model, lens, ids)
    after = tuned_lens(model, lens, ids, [spec], backend=backend)
    changed = (after.loss != before.loss).any(-1)  # [n_layers]
    if not changed.any():  # argmax of all False would say row 0
        return None
    return int(changed.int().argmax())  # the first True

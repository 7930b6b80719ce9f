"""What 'the model is exactly as before' means, as a value that can be compared."""

from __future__ import annotations

import torch


def snapshot(model: torch.nn.Module) -> dict:
    """Module objects in place, every parameter/buffer bit, and every hook dict's size
    (for an nnsight model, also every envoy's stored edits)."""
    return {
        "modules": [(name, id(module)) for name, module in model.named_modules()],
        "state": {name: tensor.clone() for name, tensor in model.state_dict(keep_vars=False).items()},
        "hooks": [
            (
                name,
                len(m._forward_hooks),
                len(m._forward_pre_hooks),
                len(m._backward_hooks),
                len(getattr(m, "fwd_hooks", ())),
                len(getattr(m, "_edits", ())),
            )
            for name, m in model.named_modules()
        ],
    }


def assert_unchanged(before: dict, model: torch.nn.Module) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"], "a module was swapped and not put back"
    assert after["hooks"] == before["hooks"], "a hook (or an nnsight edit) was left behind"
    assert after["state"].keys() == before["state"].keys(), "a parameter or buffer was added or removed"
    for name, tensor in before["state"].items():
        assert torch.equal(after["state"][name], tensor), f"{name} is not bitwise restored"

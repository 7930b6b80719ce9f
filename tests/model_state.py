"""What 'the model is exactly as before' means, as a value that can be compared."""

from __future__ import annotations

import torch


def snapshot(model: torch.nn.Module) -> dict:
    """Module objects in place, every parameter/buffer bit (for one accelerate offloaded to
    the meta device: that it is still there, same shape and dtype), every hook dict's size
    (for an nnsight model, also every envoy's stored edits), and accelerate's own hooks: the
    same hook objects, reading the same weights maps, behind the same patched forwards."""
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
        "accelerate": [
            (
                name,
                id(m._hf_hook),
                [id(getattr(h, "weights_map", None)) for h in getattr(m._hf_hook, "hooks", [m._hf_hook])],
                id(m.__dict__.get("forward")),
            )
            for name, m in model.named_modules()
            if hasattr(m, "_hf_hook")
        ],
    }


def assert_unchanged(before: dict, model: torch.nn.Module) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"], "a module was swapped and not put back"
    assert after["hooks"] == before["hooks"], "a hook (or an nnsight edit) was left behind"
    assert after["accelerate"] == before["accelerate"], "accelerate's hooks or weights maps were changed"
    assert after["state"].keys() == before["state"].keys(), "a parameter or buffer was added or removed"
    for name, tensor in before["state"].items():
        now = after["state"][name]
        assert now.device == tensor.device, f"{name} moved from {tensor.device} to {now.device}"
        if tensor.device.type == "meta":  # offloaded: no values here, accelerate loads them at each call
            assert (now.shape, now.dtype) == (tensor.shape, tensor.dtype), f"{name} changed shape or dtype"
        else:
            assert torch.equal(now, tensor), f"{name} is not bitwise restored"

"""Reading activations and building steering vectors from them.

v = contrast_vector(model, tokenizer, "Love", "Hate", layer=6)   # [d_model]
spec = SteeringSpec(layer=6, site="resid_pre", vector=v, coeff=5.0)
"""

from __future__ import annotations

import torch

from .layout import dims, get_module, layout_of, site_module_name
from .spec import SITES

__all__ = ["activations", "contrast_vector"]


def activations(model: torch.nn.Module, input_ids: torch.Tensor, layer: int, site: str = "resid_pre") -> torch.Tensor:
    """The activations [B, T, d_model] at (layer, site) of a HF model, read with a hook.

    A hook, not ``output_hidden_states``: in HF GPT-2 the last hidden state is taken
    after the final layer norm, so it is not block n-1's output.
    """
    if site not in SITES:
        raise ValueError(f"site={site!r} is unknown; allowed: {', '.join(SITES)}")
    n_layers, _ = dims(model)
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range; allowed: [{-n_layers}, {n_layers - 1}]")
    module = get_module(model, site_module_name(layout_of(model), layer % n_layers, site))
    captured: list[torch.Tensor] = []

    def read_input(mod, args, kwargs):
        captured.append(args[0] if args else kwargs["hidden_states"])

    def read_output(mod, args, output):
        captured.append(output[0] if isinstance(output, tuple) else output)

    if site == "resid_pre":
        handle = module.register_forward_pre_hook(read_input, with_kwargs=True)
    else:
        handle = module.register_forward_hook(read_output)
    try:
        with torch.no_grad():
            model(input_ids=input_ids)
    finally:
        handle.remove()
    return captured[0]


def contrast_vector(model, tokenizer, plus: str, minus: str, layer: int, site: str = "resid_pre") -> torch.Tensor:
    """act(plus) - act(minus) at each prompt's last token: [d_model], in float32."""
    device = next(model.parameters()).device
    ids = [torch.tensor([tokenizer(text)["input_ids"]], device=device) for text in (plus, minus)]
    last = [activations(model, prompt_ids, layer, site)[0, -1] for prompt_ids in ids]
    return (last[0] - last[1]).float()

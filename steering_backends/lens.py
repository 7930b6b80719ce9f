"""Logit lens: what each block's output would predict if the model stopped there.

    unsteered = logit_lens(model, ids)
    steered = logit_lens(model, ids, [spec], backend="pytorch_hooks")
    plot_lens(unsteered, steered, tokens, metric="loss").savefig("lens.png")

Block L's output goes through the model's own final norm and unembedding. The last
block's row is the model's logits. Row L reads block L's output as HF records it: a hook
backend steering resid_pre of block L + 1 (the same point of the stream) adds after that
record, so the change shows from row L + 1; bias editing adds inside block L, so row L
already shows it. A *tuned* lens (a trained affine map per block
before the unembedding) reads earlier blocks more faithfully, but trained lenses are
published on the model hub, which this repository cannot reach, and none is known for
SmolLM2; so only the logit lens is here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import backend as backend_module
from .layout import dims, get_module, layout_of
from .spec import SteeringSpec

__all__ = ["LensResult", "logit_lens", "plot_lens"]

METRICS = {"loss": "next-token loss (nats)", "top_prob": "top-token probability"}


@dataclass(frozen=True, eq=False)
class LensResult:
    """Per block (row) and prompt position (column), for one prompt."""

    loss: torch.Tensor  # [n_layers, T - 1]: -log p(actual next token); the last position has none
    top_prob: torch.Tensor  # [n_layers, T]: probability of the most likely next token
    top_token: torch.Tensor  # [n_layers, T]: that token's id


def logit_lens(
    model, input_ids: torch.Tensor, specs: Sequence[SteeringSpec] = (), backend: str = "pytorch_hooks"
) -> LensResult:
    """The logit lens of one prompt, input_ids [1, T], steered by ``specs`` through ``backend``.

    Works on HF models, so with every backend that steers one (all but transformer_lens_hooks and
    nnsight_trace, which steer a bridge / an nnsight model's own runs).
    """
    others = {"transformer_lens_hooks": "a bridge", "nnsight_trace": "an nnsight model's own runs"}
    if backend in others:
        raise ValueError(f"logit_lens reads a HF model; backend={backend!r} steers {others[backend]} instead")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], one prompt; got shape {tuple(input_ids.shape)}")
    layout, (n_layers, _) = layout_of(model), dims(model)
    final_norm, unembed = get_module(model, layout.final_norm), model.get_output_embeddings()
    with torch.no_grad(), backend_module(backend).steer(model, specs):
        out = model(input_ids=input_ids, output_hidden_states=True)
        # hidden_states[L + 1] is block L's output; the last entry has the final norm applied
        # already, so the last block's row is the logits themselves.
        rows = [unembed(final_norm(out.hidden_states[layer + 1])) for layer in range(n_layers - 1)]
    logprobs = torch.cat([*rows, out.logits]).float().log_softmax(-1)  # [n_layers, T, vocab]
    following = input_ids[0, 1:].expand(n_layers, -1)  # [n_layers, T - 1]
    loss = -logprobs[:, :-1].gather(-1, following.unsqueeze(-1)).squeeze(-1)
    top_logprob, top_token = logprobs.max(-1)
    return LensResult(loss=loss, top_prob=top_logprob.exp(), top_token=top_token)


def plot_lens(unsteered: LensResult, steered: LensResult, tokens: Sequence[str], metric: str = "loss"):
    """Heatmaps block x position: unsteered, steered, and steered - unsteered. Returns the Figure.

    ``tokens``: the prompt's tokens as text, for the x axis. For "loss", column t is the
    loss of predicting token t + 1, so the axis is labelled with the token being predicted.

    Colour scales: loss on a log scale (early blocks of a trained model sit far above the
    few nats of the last ones, which a linear scale paints one colour); probability on
    0 ... 1; the difference on a diverging scale centred at 0, bounded by the 98th
    percentile of the nonzero changes so that one extreme cell does not wash out the rest
    (cells beyond it take the end colours, marked by the colour bar's arrows).
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm, Normalize

    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is unknown; allowed: {', '.join(METRICS)}")
    before, after = getattr(unsteered, metric).cpu().numpy(), getattr(steered, metric).cpu().numpy()
    labels = [repr(t)[1:-1] for t in (tokens[1:] if metric == "loss" else tokens)]
    if before.shape[1] != len(labels):
        raise ValueError(f"tokens has {len(tokens)} entries, but the lens covers {unsteered.top_prob.shape[1]}")
    if metric == "loss":  # losses are >= 0; below 0.05 nats the prediction is as good as certain
        low = max(0.05, float(min(before.min(), after.min())))
        scale = LogNorm(vmin=low, vmax=max(float(max(before.max(), after.max())), 2 * low), clip=True)
    else:
        scale = Normalize(vmin=0.0, vmax=1.0)
    change = after - before
    moved = np.abs(change[change != 0])
    bound = float(np.percentile(moved, 98)) if moved.size else 1.0
    fig, axes = plt.subplots(1, 3, figsize=(max(12.0, 1.3 * len(labels)), 0.12 * len(before) + 3.0))
    panels = [
        (before, "unsteered", "viridis", scale, "neither"),
        (after, "steered", "viridis", scale, "neither"),
        (change, "steered - unsteered", "RdBu_r", Normalize(vmin=-bound, vmax=bound), "both"),
    ]
    for ax, (data, title, cmap, norm, extend) in zip(axes, panels, strict=True):
        image = ax.imshow(data, aspect="auto", origin="lower", cmap=cmap, norm=norm)
        ax.set_title(title)
        ax.set_xticks(range(len(labels)))
        ax.set_xticklabels(labels, rotation=60, ha="right", fontsize=7)
        ax.set_xlabel("predicting" if metric == "loss" else "position")
        fig.colorbar(image, ax=ax, fraction=0.046, extend=extend)
    axes[0].set_ylabel("block")
    fig.suptitle(f"Logit lens: {METRICS[metric]}")
    fig.tight_layout()
    return fig

"""Lenses: what each block's output would predict if the model stopped there.

    unsteered = logit_lens(model, ids)
    steered = logit_lens(model, ids, [spec], backend="pytorch_hooks")
    plot_lens(unsteered, steered, tokens, metric="loss").savefig("lens.png")

    lens = load_tuned_lens(model, tokenizer)          # lens_training.py: trained here once, cached
    steered = tuned_lens(model, lens, ids, [spec])    # the same grids, read through the tuned lens

Contents:
    LensResult   per block x position: next-token loss, top-token probability and id
    logit_lens   block L's output through the model's own final norm and unembedding
    TunedLens    per block a trained affine translator before that norm and unembedding
    fit_lens     its training loop: KL(final || lens) at every position, SGD with Nesterov momentum
    lens_kl      that KL per block on given text, for measuring a lens
    tuned_lens   the grids of logit_lens, read through a TunedLens
    plot_lens    heatmaps of either, unsteered / steered / difference

The last block's row is the model's logits, for both lenses. Row L reads block L's output as
HF records it: a hook backend steering resid_pre of block L + 1 (the same point of the stream)
adds after that record, so the change shows from row L + 1; bias editing adds inside block L,
so row L already shows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import backend as backend_module
from .layout import dims, get_module, layout_of
from .spec import SteeringSpec

__all__ = ["LensResult", "TunedLens", "fit_lens", "lens_kl", "logit_lens", "plot_lens", "tuned_lens"]

METRICS = {"loss": "next-token loss (nats)", "top_prob": "top-token probability"}


@dataclass(frozen=True, eq=False)
class LensResult:
    """Per block (row) and prompt position (column), for one prompt."""

    loss: torch.Tensor  # [n_layers, T - 1]: -log p(actual next token); the last position has none
    top_prob: torch.Tensor  # [n_layers, T]: probability of the most likely next token
    top_token: torch.Tensor  # [n_layers, T]: that token's id
    lens: str = "logit lens"  # which lens read it


def _decode(model, hidden: torch.Tensor) -> torch.Tensor:
    """[..., d_model] -> logits [..., vocab], through the model's own final norm and unembedding."""
    return model.get_output_embeddings()(get_module(model, layout_of(model).final_norm)(hidden))


class TunedLens(torch.nn.Module):
    """Per block but the last, a translator h -> h + A h + b before the model's final norm and unembedding.

        lens = TunedLens(n_layers, d_model)        # A = b = 0: exactly the logit lens
        fit_lens(lens, model, batches)             # trained to match the model's final distribution
        logits = lens.logits(model, 5, hidden)     # block 5's output [..., d_model] -> [..., vocab]

    Only the translators are parameters; the norm and unembedding stay the model's, frozen. The
    last block needs no translator: its output through the final norm is the model's prediction.
    b is held in units of ``scale``, the block's typical token norm (b = scale * bias), so that one
    learning rate moves A, which multiplies h, and b by comparable amounts.
    """

    def __init__(self, n_layers: int, d_model: int) -> None:
        super().__init__()
        self.weight = torch.nn.ParameterList(torch.zeros(d_model, d_model) for _ in range(n_layers - 1))  # A
        self.bias = torch.nn.ParameterList(torch.zeros(d_model) for _ in range(n_layers - 1))  # b / scale
        self.register_buffer("scale", torch.ones(n_layers - 1))  # [n_layers - 1]

    def translate(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s output [..., d_model] (0 <= layer < n_layers - 1), translated: [..., d_model]."""
        return hidden + hidden @ self.weight[layer].T + self.scale[layer] * self.bias[layer]

    def logits(self, model, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """Block ``layer``'s output [..., d_model] -> logits [..., vocab]."""
        return _decode(model, self.translate(layer, hidden))


def _targets(model, input_ids: torch.Tensor, attention_mask: torch.Tensor):
    """At the N real tokens: the model's final next-token probabilities p [N, vocab], sum p log p
    [N], and the outputs [N, d_model] of every block but the last."""
    real = attention_mask.bool()
    with torch.no_grad():
        out = model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
    final = out.logits[real].float().log_softmax(-1)
    # hidden_states[L + 1] is block L's output; the last block's is already normed: it is in the logits
    return final.exp(), (final.exp() * final).sum(-1), [h[real] for h in out.hidden_states[1:-1]]


def _kl(probs: torch.Tensor, neg_entropy: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(final || lens) [N] = cross-entropy(final, lens) - entropy(final), from _targets and lens
    logits [N, vocab]. (The entropy does not depend on the lens; one fused cross-entropy is ~20%
    faster to train through than KL spelled out with log_softmax.)"""
    return torch.nn.functional.cross_entropy(logits.float(), probs, reduction="none") + neg_entropy


def fit_lens(
    lens: TunedLens,
    model,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    lr: float = 0.1,
    momentum: float = 0.9,
    clip: float = 1.0,
    progress: bool = True,
) -> list[float]:
    """Train ``lens`` in place, one step per (input_ids [B, T], attention_mask [B, T]) batch.

    The loss is KL(the model's final next-token distribution || the lens's) at every real token,
    averaged over tokens and summed over blocks. SGD with Nesterov momentum, the learning rate
    decayed linearly to 0 over the steps, each block's gradient clipped to norm ``clip`` on its
    own (one shared norm lets the early blocks' large losses shrink the late blocks' steps).
    Before the first step ``scale`` becomes each block's median token norm on the first batch
    (b itself is kept). Returns each step's loss, mean over blocks, before its update.
    """
    from tqdm import tqdm

    first = _targets(model, *batches[0])[2]
    with torch.no_grad():
        new_scale = torch.stack([h.norm(dim=-1).median() for h in first])
        for bias, old, new in zip(lens.bias, lens.scale, new_scale, strict=True):
            bias.mul_(old / new)
        lens.scale.copy_(new_scale)
    params = [*lens.weight, *lens.bias]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=True)
    decay = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / len(batches))
    losses = []
    bar = tqdm(batches, desc="training the tuned lens", unit="batch", disable=not progress)
    for input_ids, attention_mask in bar:
        probs, neg_entropy, hidden = _targets(model, input_ids, attention_mask)
        optimizer.zero_grad()
        total = 0.0
        with torch.enable_grad():
            for layer, h in enumerate(hidden):  # one block at a time: its [N, vocab] logits go before the next
                loss = _kl(probs, neg_entropy, lens.logits(model, layer, h)).mean()
                loss.backward(inputs=[lens.weight[layer], lens.bias[layer]])  # none for the frozen model
                total += loss.item()
        for weight, bias in zip(lens.weight, lens.bias, strict=True):
            torch.nn.utils.clip_grad_norm_([weight, bias], clip)
        optimizer.step()
        decay.step()
        losses.append(total / len(hidden))
        bar.set_postfix(kl=f"{losses[-1]:.2f}")
    return losses


def lens_kl(lens: TunedLens, model, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """KL(final || lens) [n_layers] per block, averaged over the real tokens of ``batches``.

    The last entry is 0: the last block's lens is the model itself. An untrained TunedLens
    measures the logit lens.
    """
    total, count = torch.zeros(len(lens.weight) + 1), 0
    with torch.no_grad():
        for input_ids, attention_mask in batches:
            probs, neg_entropy, hidden = _targets(model, input_ids, attention_mask)
            for layer, h in enumerate(hidden):
                total[layer] += _kl(probs, neg_entropy, lens.logits(model, layer, h)).sum().item()
            count += len(probs)
    return total / count


def _grids(model, input_ids: torch.Tensor, specs, backend: str, lens: TunedLens | None) -> LensResult:
    name = "logit lens" if lens is None else "tuned lens"
    others = {"transformer_lens_hooks": "a bridge", "nnsight_trace": "an nnsight model's own runs"}
    if backend in others:
        raise ValueError(f"the {name} reads a HF model; backend={backend!r} steers {others[backend]} instead")
    if input_ids.ndim != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"input_ids must be [1, T], one prompt; got shape {tuple(input_ids.shape)}")
    n_layers = dims(model)[0]
    with torch.no_grad(), backend_module(backend).steer(model, specs):
        out = model(input_ids=input_ids, output_hidden_states=True)
        # hidden_states[L + 1] is block L's output; the last entry has the final norm applied
        # already, so the last block's row is the logits themselves.
        hidden = out.hidden_states[1:-1]
        rows = [_decode(model, h) if lens is None else lens.logits(model, layer, h) for layer, h in enumerate(hidden)]
    logprobs = torch.cat([*rows, out.logits]).float().log_softmax(-1)  # [n_layers, T, vocab]
    following = input_ids[0, 1:].expand(n_layers, -1)  # [n_layers, T - 1]
    loss = -logprobs[:, :-1].gather(-1, following.unsqueeze(-1)).squeeze(-1)
    top_logprob, top_token = logprobs.max(-1)
    return LensResult(loss=loss, top_prob=top_logprob.exp(), top_token=top_token, lens=name)


def logit_lens(
    model, input_ids: torch.Tensor, specs: Sequence[SteeringSpec] = (), backend: str = "pytorch_hooks"
) -> LensResult:
    """The logit lens of one prompt, input_ids [1, T], steered by ``specs`` through ``backend``.

    Works on HF models, so with every backend that steers one (all but transformer_lens_hooks and
    nnsight_trace, which steer a bridge / an nnsight model's own runs).
    """
    return _grids(model, input_ids, specs, backend, None)


def tuned_lens(
    model,
    lens: TunedLens,
    input_ids: torch.Tensor,
    specs: Sequence[SteeringSpec] = (),
    backend: str = "pytorch_hooks",
) -> LensResult:
    """logit_lens's grids, read through a TunedLens of this model (lens_training.load_tuned_lens)."""
    if len(lens.weight) != dims(model)[0] - 1:
        raise ValueError(f"the lens has {len(lens.weight) + 1} blocks, but this model has {dims(model)[0]}")
    return _grids(model, input_ids, specs, backend, lens)


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
    if unsteered.lens != steered.lens:
        raise ValueError(f"unsteered was read by the {unsteered.lens}, steered by the {steered.lens}; use one lens")
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
    fig.suptitle(f"{unsteered.lens.capitalize()}: {METRICS[metric]}")
    fig.tight_layout()
    return fig

"""Views of what a spec did: sampled comparisons, the magnitude diagnostic, the logit lens,
their plots, and the `compare` command."""

from __future__ import annotations

import io

import matplotlib
import pytest
import torch

from steering_backends import SteeringSpec, backend
from steering_backends.__main__ import main
from steering_backends.compare import FrequencyPenalty, compare, plot_magnitudes, steering_magnitudes
from steering_backends.lens import logit_lens, plot_lens
from steering_backends.models import random_model
from steering_backends.prompts import encode
from steering_backends.vectors import activations, x_vector

matplotlib.use("Agg")

PROMPT = "I hate you <3 because"  # "<" checks the HTML escaping


@pytest.fixture(scope="module")
def gpt2_tiny():
    return random_model("tiny-gpt2-random")


def spec_at(layer: int = 2, coeff: float = 8.0, start: int = 0) -> SteeringSpec:
    return SteeringSpec(layer, "resid_pre", torch.randn(64, generator=torch.Generator().manual_seed(1)), coeff, start)


def png_size(fig) -> tuple[int, int]:
    """(width, height) in pixels of the figure saved as PNG, read from the PNG header."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=50)
    data = buffer.getvalue()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_frequency_penalty_by_hand():
    scores = torch.zeros(2, 5)
    out = FrequencyPenalty(0.5)(torch.tensor([[1, 1, 3], [4, 0, 4]]), scores)
    assert torch.equal(out, torch.tensor([[0, -1.0, 0, -0.5, 0], [-0.5, 0, 0, 0, -1.0]]))
    with pytest.raises(ValueError, match="frequency_penalty=-1 must be a finite number >= 0"):
        FrequencyPenalty(-1)


def test_rows_share_their_seed_so_only_the_steering_differs(gpt2_tiny, tokenizer):
    same = compare(gpt2_tiny, tokenizer, PROMPT, [spec_at(coeff=0.0)], n=3, max_new_tokens=12)
    assert same.steered == same.unsteered and same.seeds == [0, 1, 2]
    assert len({c.text for c in same.unsteered}) == 3, "different seeds give different samples"
    steered = compare(gpt2_tiny, tokenizer, PROMPT, [spec_at()], n=3, max_new_tokens=12)
    assert steered.unsteered == same.unsteered and steered.steered != steered.unsteered


@pytest.mark.parametrize("name", ["custom_wrapper", "bias_editing", "transformer_lens_hooks", "nnsight_trace"])
def test_compare_through_other_backends(gpt2_tiny, tokenizer, name):
    target = gpt2_tiny
    if name == "transformer_lens_hooks":  # TransformerLens samples with its own sampler
        target = backend(name).bridge_from_hf(gpt2_tiny, tokenizer)
    elif name == "nnsight_trace":  # samples through nnsight's generate
        target = backend(name).nnsight_from_hf(gpt2_tiny, tokenizer)
    table = compare(target, tokenizer, PROMPT, [spec_at()], backend=name, n=2, max_new_tokens=8)
    assert table.settings["backend"] == name and table.steered != table.unsteered
    if name == "nnsight_trace":  # nnsight prepares generate's inputs itself; the samples must not change
        reference = compare(gpt2_tiny, tokenizer, PROMPT, [spec_at()], n=2, max_new_tokens=8)
        assert (table.unsteered, table.steered) == (reference.unsteered, reference.steered)


def test_greedy_comparison_matches_greedy_decoding(gpt2_tiny, tokenizer):
    table = compare(gpt2_tiny, tokenizer, PROMPT, [spec_at()], n=2, temperature=0, max_new_tokens=6)
    ids = torch.tensor([encode(tokenizer, PROMPT, bos=True)])
    with backend("pytorch_hooks").steer(gpt2_tiny, [spec_at()]):
        greedy = gpt2_tiny.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False)
    expected = tokenizer.decode(greedy[0, ids.shape[1] :], skip_special_tokens=True)
    assert [c.text for c in table.steered] == [expected] * 2


def test_comparison_as_html_and_plain_text(gpt2_tiny, tokenizer):
    table = compare(gpt2_tiny, tokenizer, PROMPT, [spec_at()], n=2, max_new_tokens=5)
    page = table._repr_html_()
    assert page.count("<b>I hate you &lt;3 because</b>") == 4 and "unsteered</th><th>sentiment</th>" in page
    assert f"<td>{table.steered[1].sentiment:+.2f}</td><td>{table.steered[1].perplexity:.1f}</td>" in page
    text = str(table)
    assert text.count("I hate you <3 because") == 4 and "unsteered" in text and "| steered" in text
    assert "top_p=0.3" in text and "frequency_penalty=1.0" in text
    assert text.endswith(str(table.summary())) and "mean sentiment (VADER): unsteered" in text


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("n", 0, "n=0 must be an int >= 1"),
        ("temperature", -1.0, "temperature=-1.0 must be >= 0"),
        ("top_p", 0.0, r"top_p=0.0 must be in \(0, 1\]"),
        ("frequency_penalty", -0.5, "frequency_penalty=-0.5 must be a finite number >= 0"),
        ("max_new_tokens", 0, "max_new_tokens=0 must be an int >= 1"),
        ("backend", "hooks", "backend 'hooks' is unknown; allowed: custom_wrapper"),
    ],
)
def test_compare_refuses_bad_settings(gpt2_tiny, tokenizer, field, value, message):
    with pytest.raises(ValueError, match=message):
        compare(gpt2_tiny, tokenizer, PROMPT, [spec_at()], **{field: value})


def test_magnitudes_by_hand(gpt2_tiny, tokenizer):
    ids = torch.tensor([encode(tokenizer, PROMPT, bos=True)])
    one = spec_at(start=2)
    ratios = steering_magnitudes(gpt2_tiny, tokenizer, PROMPT, [one, spec_at(coeff=-2.0, start=2)])
    residual = activations(gpt2_tiny, ids, 2)[0].norm(dim=-1)
    by_hand = torch.where(torch.arange(ids.shape[1]) >= 2, (6 * one.vector).norm() / residual, 0.0)
    assert list(ratios) == [(2, "resid_pre")]
    torch.testing.assert_close(ratios[(2, "resid_pre")], by_hand, rtol=1e-6, atol=0)

    xv = x_vector(gpt2_tiny, tokenizer, "Love", "Hate", 5, 1, pad_token_id=220)
    ratio = steering_magnitudes(gpt2_tiny, tokenizer, PROMPT, [xv])[(1, "resid_pre")]
    # rows: BOS - BOS = 0, "Love" - "H", " " - "ate"; nothing after the x-vector's 3 rows
    assert ratio[0] == 0 and torch.all(ratio[1:3] > 0) and torch.all(ratio[3:] == 0)


def test_magnitude_plot_renders(gpt2_tiny, tokenizer):
    tokens = [tokenizer.decode(i) for i in encode(tokenizer, PROMPT, bos=True)]
    ratios = steering_magnitudes(gpt2_tiny, tokenizer, PROMPT, [spec_at(), spec_at(layer=3)])
    assert png_size(plot_magnitudes(ratios, tokens)) == (300, 175)  # 6 x 3.5 inches at 50 dpi


def test_logit_lens_by_hand(gpt2_tiny, tokenizer):
    ids = torch.tensor([encode(tokenizer, PROMPT, bos=True)])
    lens = logit_lens(gpt2_tiny, ids)
    n_tokens = ids.shape[1]
    assert lens.loss.shape == (4, n_tokens - 1) and lens.top_prob.shape == (4, n_tokens)
    final = gpt2_tiny(input_ids=ids).logits[0].log_softmax(-1)
    assert torch.equal(lens.top_prob[-1], final.max(-1).values.exp())
    block1 = gpt2_tiny.lm_head(gpt2_tiny.transformer.ln_f(activations(gpt2_tiny, ids, 1, "resid_post")))[0]
    loss = -block1.log_softmax(-1)[:-1].gather(-1, ids[0, 1:, None]).squeeze(-1)
    torch.testing.assert_close(lens.loss[1], loss, rtol=0, atol=1e-5)


def test_steering_changes_the_lens_from_the_steered_block_on(gpt2_tiny, tokenizer):
    """resid_pre of block 2 is the same point of the stream as block 1's output. Hook backends
    add after HF has recorded block 1's output, so rows 0-1 stay unsteered; bias editing adds
    inside block 1's MLP bias, so row 1 already shows it. From block 2 on, all agree."""
    ids = torch.tensor([encode(tokenizer, PROMPT, bos=True)])
    before = logit_lens(gpt2_tiny, ids)
    after = {
        name: logit_lens(gpt2_tiny, ids, [spec_at(layer=2)], backend=name)
        for name in ("pytorch_hooks", "custom_wrapper", "bias_editing")
    }
    for name, lens in after.items():
        first_changed = 1 if name == "bias_editing" else 2
        assert torch.equal(before.loss[:first_changed], lens.loss[:first_changed]), name
        assert (before.loss[first_changed:] - lens.loss[first_changed:]).abs().amax(-1).min() > 1e-3, name
        torch.testing.assert_close(lens.loss[2:], after["pytorch_hooks"].loss[2:], rtol=0, atol=1e-4)


def test_lens_refuses_a_bridge_an_nnsight_model_and_a_batch(gpt2_tiny, tokenizer):
    with pytest.raises(ValueError, match="steers a bridge instead"):
        logit_lens(gpt2_tiny, torch.tensor([[1, 2]]), backend="transformer_lens_hooks")
    with pytest.raises(ValueError, match="steers an nnsight model's own runs instead"):
        logit_lens(gpt2_tiny, torch.tensor([[1, 2]]), backend="nnsight_trace")
    with pytest.raises(ValueError, match=r"must be \[1, T\]"):
        logit_lens(gpt2_tiny, torch.tensor([[1, 2], [3, 4]]))


@pytest.mark.parametrize("metric", ["loss", "top_prob"])
def test_lens_heatmaps_render(gpt2_tiny, tokenizer, metric):
    ids = torch.tensor([encode(tokenizer, PROMPT, bos=True)])
    tokens = [tokenizer.decode(i) for i in ids[0]]
    fig = plot_lens(logit_lens(gpt2_tiny, ids), logit_lens(gpt2_tiny, ids, [spec_at()]), tokens, metric)
    assert len(fig.axes) == 6  # three heatmaps, three colour bars
    assert png_size(fig) == (600, 174)  # 12 x (3 + 0.12 per block) inches at 50 dpi
    with pytest.raises(ValueError, match="metric='kl' is unknown; allowed: loss, top_prob"):
        plot_lens(logit_lens(gpt2_tiny, ids), logit_lens(gpt2_tiny, ids), tokens, "kl")


def test_compare_command(capsys):
    main(["compare", "--model", "tiny-gpt2-random", "--layer", "2", "--coeff", "8", "-n", "2", "--max-new-tokens", "5"])
    out = capsys.readouterr().out
    assert "steered: x-vector 'Love' - 'Hate', block 2 resid_pre, coeff 8" in out
    assert out.count("Last week my sister told me that") == 4 and "| steered" in out and "mean sentiment (VADER)" in out


def test_top_p_keeps_exactly_what_hfs_sorting_warper_keeps():
    """compare's TopP looks only at the 256 most probable tokens (falling back to HF's full sort
    when they hold less than top_p): the same tokens survive as with TopPLogitsWarper, on peaked and
    flat distributions over a real vocabulary size (the flat ones take the fallback)."""
    from transformers import TopPLogitsWarper

    from steering_backends.compare import TopP

    generator = torch.Generator().manual_seed(0)
    for scale in (0.3, 1.0, 3.0, 10.0):
        scores = scale * torch.randn(4, 49152, generator=generator)
        for top_p in (0.05, 0.3, 0.9):
            want = TopPLogitsWarper(top_p)(None, scores.clone())
            got = TopP(top_p)(None, scores.clone())
            assert torch.equal(got.isinf(), want.isinf()) and torch.equal(got[~got.isinf()], want[~want.isinf()])

"""Reading activations at a site, and the contrast vector built from them."""

from __future__ import annotations

import pytest
import torch

from steering_backends.vectors import activations, contrast_vector

IDS = torch.tensor([[40, 5465, 345, 780]])


def test_resid_pre_and_resid_post_match_hf_hidden_states(tiny):
    hidden = tiny(input_ids=IDS, output_hidden_states=True).hidden_states  # [embeddings, block 0 out, ...]
    for layer in range(4):
        assert torch.equal(activations(tiny, IDS, layer, "resid_pre"), hidden[layer])
    for layer in range(3):  # HF's last entry is after the final layer norm, not block 3's output
        assert torch.equal(activations(tiny, IDS, layer, "resid_post"), hidden[layer + 1])


def test_sublayer_outputs_add_up_to_the_block(tiny):
    pre, post = activations(tiny, IDS, 2, "resid_pre"), activations(tiny, IDS, 2, "resid_post")
    attn, mlp = activations(tiny, IDS, 2, "attn_out"), activations(tiny, IDS, 2, "mlp_out")
    torch.testing.assert_close(pre + attn + mlp, post, rtol=0, atol=1e-6)


def test_contrast_vector_is_the_last_token_difference(tiny, tokenizer):
    v = contrast_vector(tiny, tokenizer, "Love", "Hate", layer=2, bos=False)
    love, hate = (activations(tiny, torch.tensor([tokenizer(w)["input_ids"]]), 2)[0, -1] for w in ("Love", "Hate"))
    assert torch.equal(v, love - hate) and v.shape == (64,) and v.norm() > 0


def test_activations_refuse_a_bad_site_or_layer(tiny):
    with pytest.raises(ValueError, match="allowed: resid_pre"):
        activations(tiny, IDS, 0, "hook_resid_pre")
    with pytest.raises(ValueError, match=r"\[-4, 3\]"):
        activations(tiny, IDS, 4)

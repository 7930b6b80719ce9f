"""The refusal-direction benchmark's measures, checked by hand or against another code path, and its stored results.

No run of SmolLM2 here: benchmarks/refusal_direction.py makes the results; these tests check the
phrase matcher, the KL, the selection rule, the reading of the residual stream at the last token
(against a hook reading each prompt alone), and that the committed page is the one the committed
JSON gives.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from benchmarks.refusal_direction import (
    OUT,
    PHRASES,
    RESULTS,
    chat_prompts,
    choose,
    difference_of_means,
    is_refusal,
    kl_divergence,
    last_token_resid,
    median_token_norms,
    refusal_rate,
    report,
    requests,
)
from steering_backends.models import random_model
from steering_backends.prompts import encode
from steering_backends.vectors import activations


def test_is_refusal_matches_the_phrases_case_insensitively():
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert is_refusal("i cannot do this")
    assert is_refusal("Sure. Actually, as an ai language model, no.")
    assert is_refusal("I\u2019m unable to do that")  # a curly apostrophe counts as a straight one
    assert not is_refusal("Sure! To bake sourdough bread, start with a starter.")
    assert not is_refusal("The sorry state of the kitchen")  # "sorry" alone is not a phrase
    assert not is_refusal("")
    assert is_refusal("no way", phrases=("No way",))


def test_refusal_rate_is_the_share_of_refusals():
    texts = ["I cannot do that", "Sure, here it is", "I apologize, but no", "Here is a recipe"]
    assert refusal_rate(texts) == 0.5
    assert refusal_rate(["Sure"]) == 0.0


def test_kl_divergence_by_hand():
    p = torch.tensor([[0.5, 0.5], [0.25, 0.75]]).log()
    q = torch.tensor([[0.25, 0.75], [0.25, 0.75]]).log()
    # 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75); identical rows give 0.
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert kl_divergence(p, q).tolist() == pytest.approx([expected, 0.0], abs=1e-7)


def test_choose_takes_the_highest_rate_among_fluent_settings():
    rows = [
        dict(block=6, relative=1.0, rate=0.25, ppl_ratio=1.2),
        dict(block=9, relative=4.0, rate=0.9, ppl_ratio=3.0),  # the highest rate, but not fluent
        dict(block=9, relative=2.0, rate=0.5, ppl_ratio=1.9),
        dict(block=12, relative=1.0, rate=0.5, ppl_ratio=1.5),  # same rate, smaller coefficient: preferred
    ]
    assert (choose(rows)["block"], choose(rows)["relative"]) == (12, 1.0)


def test_chat_prompts_use_the_template_when_there_is_one(tokenizer):
    assert chat_prompts(tokenizer, ["Explain how to bake bread"]) == ["Explain how to bake bread"]  # GPT-2: none
    templated = copy.deepcopy(tokenizer)
    templated.chat_template = (
        "{% for m in messages %}[{{ m['role'] }}: {{ m['content'] }}]{% endfor %}"
        "{% if add_generation_prompt %}[assistant:{% endif %}"
    )
    assert chat_prompts(templated, ["Hi"]) == ["[user: Hi][assistant:"]


@pytest.fixture(scope="module")
def llama():
    return random_model("tiny-llama-random")


PROMPTS = ["Explain how to bake sourdough bread", "Tell me a joke", "Write a short poem about the sea in spring"]


def _alone(model, tokenizer, text: str, layer: int) -> torch.Tensor:
    """resid_pre of ``layer`` for the prompt run alone (no padding), read with a hook: [T, d_model]."""
    return activations(model, torch.tensor([encode(tokenizer, text)]), layer)[0]


def test_last_token_resid_is_each_prompts_own_last_token(llama, tokenizer):
    # Left-padded batches through hidden_states, against each prompt alone through a hook.
    got = last_token_resid(llama, tokenizer, PROMPTS, batch_size=2)  # two batches, the first padded
    n_layers = llama.config.num_hidden_layers
    assert got.shape == (len(PROMPTS), n_layers, llama.config.hidden_size)
    for i, text in enumerate(PROMPTS):
        for layer in range(n_layers):
            torch.testing.assert_close(got[i, layer], _alone(llama, tokenizer, text, layer)[-1], atol=1e-5, rtol=1e-5)


def test_difference_of_means_at_the_last_token(llama, tokenizer):
    harmful, harmless = PROMPTS[:2], PROMPTS[2:]
    layer = 2
    expected = torch.stack([_alone(llama, tokenizer, t, layer)[-1] for t in harmful]).mean(0) - torch.stack(
        [_alone(llama, tokenizer, t, layer)[-1] for t in harmless]
    ).mean(0)
    got = difference_of_means(llama, tokenizer, harmful, harmless)
    torch.testing.assert_close(got[layer], expected, atol=1e-5, rtol=1e-5)
    assert got[layer].norm() > 0


def test_median_token_norms_leave_out_each_prompts_first_token(llama, tokenizer):
    layer = 1
    norms = torch.cat([_alone(llama, tokenizer, t, layer)[1:].norm(dim=-1) for t in PROMPTS])
    got = median_token_norms(llama, tokenizer, PROMPTS)
    assert got[layer].item() == pytest.approx(norms.median().item(), rel=1e-5)


def test_request_sets_are_disjoint_and_sized():
    data = requests()
    sizes = {split: {kind: len(v) for kind, v in sets.items()} for split, sets in data.items()}
    assert sizes == {"read": {"harmful": 32, "harmless": 32}, "held_out": {"harmful": 16, "harmless": 16}}
    every = [t for sets in data.values() for v in sets.values() for t in v]
    assert len(set(every)) == len(every)


def test_the_committed_page_is_the_committed_json():
    result = json.loads(OUT.read_text())
    assert (RESULTS / "refusal_direction.md").read_text() == report(result)
    assert result["phrases"] == list(PHRASES)
    # Text is kept for harmless requests only.
    assert {e["request"] for e in result["examples"]} <= set(requests()["held_out"]["harmless"])
    assert (RESULTS / "refusal_direction.png").read_bytes().startswith(b"\x89PNG")

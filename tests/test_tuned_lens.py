"""The tuned lens: untrained it is the logit lens; a few steps of training beat the logit lens on
held-out text; the last block is the model; the cache is verified; steering changes only the
blocks from the steered one on; and SmolLM2's real lens trains (or loads) within budget."""

from __future__ import annotations

import copy
import json
import shutil

import matplotlib
import pytest
import torch
from tokenizers import processors

import steering_backends.lens_training as lens_training
from steering_backends import BACKENDS, SteeringSpec
from steering_backends.layout import dims
from steering_backends.lens import TunedLens, fit_lens, lens_kl, logit_lens, plot_lens, tuned_lens
from steering_backends.lens_training import LensRecipe, batches, lens_corpus, lens_folder, load_tuned_lens
from steering_backends.models import load, random_model
from steering_backends.prompts import encode

matplotlib.use("Agg")

PROMPT = "I hate you because you're a wonderful person"
SMALL = LensRecipe(new_tokens=8, documents=4, lr=1.0)  # seconds on a tiny model
PAD = 50256  # GPT-2's <|endoftext|>: the tiny models' tokenizer has no pad token


def ids_of(tokenizer) -> torch.Tensor:
    return torch.tensor([encode(tokenizer, PROMPT, bos=True)])


def random_lens(model, seed: int = 0) -> TunedLens:
    """A lens with nonzero translators, so that each row differs from the logit lens's."""
    lens = TunedLens(*dims(model))
    generator = torch.Generator().manual_seed(seed)
    for weight, bias in zip(lens.weight, lens.bias, strict=True):
        weight.data = 0.05 * torch.randn(weight.shape, generator=generator)
        bias.data = 0.05 * torch.randn(bias.shape, generator=generator)
    return lens


def test_an_untrained_lens_is_exactly_the_logit_lens(tiny, tokenizer):
    ids = ids_of(tokenizer)
    logit, tuned = logit_lens(tiny, ids), tuned_lens(tiny, TunedLens(*dims(tiny)), ids)
    assert torch.equal(logit.loss, tuned.loss) and torch.equal(logit.top_prob, tuned.top_prob)
    assert torch.equal(logit.top_token, tuned.top_token)
    assert (logit.lens, tuned.lens) == ("logit lens", "tuned lens")


def test_the_last_block_is_the_models_own_output_and_the_others_are_translated(tiny, tokenizer):
    ids = ids_of(tokenizer)
    logit, tuned = logit_lens(tiny, ids), tuned_lens(tiny, random_lens(tiny), ids)
    final = tiny(input_ids=ids).logits[0].log_softmax(-1)
    assert torch.equal(tuned.top_prob[-1], final.max(-1).values.exp())
    assert torch.equal(tuned.loss[-1], logit.loss[-1])
    assert (tuned.loss[:-1] - logit.loss[:-1]).abs().amax(-1).min() > 1e-3  # every other row moved


def test_lens_kl_by_hand(tiny, tokenizer):
    ids = ids_of(tokenizer)
    lens = random_lens(tiny)
    kl = lens_kl(lens, tiny, [(ids, torch.ones_like(ids))])
    out = tiny(input_ids=ids, output_hidden_states=True)
    final = out.logits[0].log_softmax(-1)
    by_hand = torch.nn.functional.kl_div(
        lens.logits(tiny, 1, out.hidden_states[2][0]).log_softmax(-1), final, log_target=True, reduction="batchmean"
    )
    # lens_kl takes cross-entropy - entropy, two numbers near log(vocab) = 10.8 nats whose float32
    # rounding (~1e-6 each) does not cancel: measured |difference| up to 3.6e-7 nats on both models
    torch.testing.assert_close(kl[1], by_hand, rtol=0, atol=1e-6)
    assert kl[-1] == 0 and kl.shape == (dims(tiny)[0],)


def test_fit_lens_rescales_b_without_changing_it(tiny, tokenizer):
    lens = random_lens(tiny)
    before = [scale * bias for scale, bias in zip(lens.scale, lens.bias, strict=True)]
    ids = ids_of(tokenizer)
    fit_lens(lens, tiny, [(ids, torch.ones_like(ids))], lr=0.0, progress=False)
    hidden = tiny(input_ids=ids, output_hidden_states=True).hidden_states
    expected = torch.stack([h[0].norm(dim=-1).median() for h in hidden[1:-1]])
    assert torch.equal(lens.scale, expected) and not torch.equal(expected, torch.ones_like(expected))
    for b, scale, bias in zip(before, lens.scale, lens.bias, strict=True):
        torch.testing.assert_close(scale * bias, b, rtol=1e-6, atol=0)


def test_a_few_steps_lower_held_out_kl_below_the_logit_lens(tiny, tokenizer):
    """Measured held-out KL after / before: tiny GPT-2 0.90, 0.91, 0.90 and tiny Llama 0.69, 0.64,
    0.57 (blocks 0-2), from 0.0035-0.011 nats: random models' distributions are nearly flat, so
    the KLs are small, but they fall at every block."""
    corpus = lens_corpus(tiny, tokenizer, LensRecipe(new_tokens=16, documents=8))
    held_out = batches(corpus["held_out"], 128, PAD)
    before = lens_kl(TunedLens(*dims(tiny)), tiny, held_out)
    lens = TunedLens(*dims(tiny))
    losses = fit_lens(lens, tiny, batches(corpus["train"], 32, PAD), lr=1.0, progress=False)
    after = lens_kl(lens, tiny, held_out)
    assert len(losses) >= 10 and before[-1] == after[-1] == 0
    assert torch.all(after[:-1] < 0.95 * before[:-1]), (after / before).tolist()


def test_the_corpus_holds_out_its_own_prompts(tokenizer):
    model = random_model("tiny-gpt2-random")
    corpus = lens_corpus(model, tokenizer, LensRecipe(new_tokens=4, documents=2))
    prompts = json.loads((lens_training.DATA / "lens_prompts.json").read_text())
    for split, other in (("train", "held_out"), ("held_out", "train")):
        first = encode(tokenizer, prompts[split][0], bos=True)
        assert any(doc[: len(first)] == first for doc in corpus[split])
        assert not any(doc[: len(first)] == first for doc in corpus[other])
    assert all(doc[0] == tokenizer.bos_token_id for docs in corpus.values() for doc in docs)
    # 2 lens prompts + 2 behaviour prompts + 2 sentences per split; 4 new tokens at most
    assert [len(corpus[split]) for split in ("train", "held_out")] == [6, 6]


@pytest.fixture
def lens_cache(tmp_path, monkeypatch):
    """An empty cache folder, and a count of how often a lens was trained."""
    monkeypatch.setenv("STEERING_BACKENDS_CACHE", str(tmp_path))
    trainings = []
    monkeypatch.setattr(lens_training, "fit_lens", lambda *args: trainings.append(1) or fit_lens(*args, progress=False))
    return trainings


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def same_lens(a: TunedLens, b: TunedLens) -> bool:
    one, other = a.state_dict(), b.state_dict()
    return one.keys() == other.keys() and all(torch.equal(one[k], other[k]) for k in one)


def test_a_cached_lens_is_loaded_without_training(lens_cache, tokenizer):
    model = random_model("tiny-llama-random")
    first = load_tuned_lens(model, tokenizer, SMALL)
    folder = lens_folder(model)
    assert lens_cache == [1] and folder.name == "tiny-llama-random.tuned-lens"
    assert sorted(p.name for p in folder.iterdir()) == ["corpus.json", "lens.safetensors", "manifest.json"]
    assert same_lens(load_tuned_lens(model, tokenizer, SMALL), first) and lens_cache == [1]
    assert not same_lens(first, TunedLens(*dims(model)))  # it was trained


@pytest.mark.parametrize(
    "damage",
    [
        lambda folder, data: flip_a_byte(folder / "lens.safetensors"),
        lambda folder, data: flip_a_byte(folder / "corpus.json"),
        lambda folder, data: (folder / "manifest.json").unlink(),  # training stopped before the manifest
        lambda folder, data: (folder / "manifest.json").write_text("{not json"),
        lambda folder, data: (folder / "manifest.json").write_text(  # a manifest that vouches for no file
            json.dumps({**json.loads((folder / "manifest.json").read_text()), "sha256": {}})
        ),
        lambda folder, data: (data / "lens_prompts.json").write_text(
            (data / "lens_prompts.json").read_text().replace("Once upon a time", "Long ago")
        ),
    ],
    ids=[
        "flipped byte in the lens",
        "flipped byte in the corpus",
        "no manifest",
        "bad manifest",
        "no checksums",
        "data changed",
    ],
)
def test_a_damaged_or_stale_cache_is_trained_again(lens_cache, tokenizer, tmp_path, monkeypatch, damage):
    data = tmp_path / "data"
    shutil.copytree(lens_training.DATA, data)
    monkeypatch.setattr(lens_training, "DATA", data)
    model = random_model("tiny-llama-random")
    load_tuned_lens(model, tokenizer, SMALL)
    damage(lens_folder(model), data)
    load_tuned_lens(model, tokenizer, SMALL)
    assert lens_cache == [1, 1]
    load_tuned_lens(model, tokenizer, SMALL)  # and the new cache is valid
    assert lens_cache == [1, 1]


def test_another_model_or_recipe_is_trained_again(lens_cache, tokenizer):
    model, other = random_model("tiny-llama-random"), random_model("tiny-llama-random", seed=1)
    load_tuned_lens(model, tokenizer, SMALL)
    manifest = json.loads((lens_folder(model) / "manifest.json").read_text())
    load_tuned_lens(other, tokenizer, SMALL)  # same name, other weights
    assert lens_cache == [1, 1]
    assert json.loads((lens_folder(model) / "manifest.json").read_text())["model"] != manifest["model"]
    load_tuned_lens(other, tokenizer, LensRecipe(new_tokens=8, documents=4, lr=0.5))
    assert lens_cache == [1, 1, 1]


def test_a_tokenizer_that_encodes_otherwise_trains_again(lens_cache, tokenizer):
    """The corpus is token ids: a tokenizer that prepends a token (as transformers 4 once built
    SmolLM2's) must not reuse the lens trained with one that does not."""
    model = random_model("tiny-llama-random")
    load_tuned_lens(model, tokenizer, SMALL)
    load_tuned_lens(model, tokenizer, SMALL)  # same tokenizer: loaded
    assert lens_cache == [1]
    prepending = copy.deepcopy(tokenizer)
    prepending._tokenizer.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", tokenizer.eos_token_id)]
    )
    assert prepending("Hi").input_ids == [tokenizer.eos_token_id, *tokenizer("Hi").input_ids]
    load_tuned_lens(model, prepending, SMALL)
    assert lens_cache == [1, 1]


HF_BACKENDS = [name for name in BACKENDS if name not in ("transformer_lens_hooks", "nnsight_trace")]


@pytest.mark.parametrize("name", HF_BACKENDS)
def test_steering_changes_the_tuned_lens_from_the_steered_block_on(tokenizer, name):
    """As for the logit lens (test_views.py): resid_pre of block 2 adds after HF recorded block 1's
    output, except bias editing, which adds inside block 1. Rows agree with pytorch_hooks' from
    block 2 on within 1e-5: measured 9.5e-7 for bias editing, 0 for the hook backends."""
    if name == "baukit_tracedict":
        pytest.importorskip("baukit", reason="baukit skipped: it is not installed (not on PyPI)")
    model = random_model("tiny-gpt2-random")
    lens, ids = random_lens(model), ids_of(tokenizer)
    spec = SteeringSpec(2, "resid_pre", torch.randn(64, generator=torch.Generator().manual_seed(1)), 8.0)
    before = tuned_lens(model, lens, ids)
    after = tuned_lens(model, lens, ids, [spec], backend=name)
    reference = tuned_lens(model, lens, ids, [spec])
    first_changed = 1 if name == "bias_editing" else 2
    assert torch.equal(before.loss[:first_changed], after.loss[:first_changed])
    assert (before.loss[first_changed:] - after.loss[first_changed:]).abs().amax(-1).min() > 1e-3
    torch.testing.assert_close(after.loss[2:], reference.loss[2:], rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", ["transformer_lens_hooks", "nnsight_trace"])
def test_the_tuned_lens_refuses_a_bridge_and_an_nnsight_model_and_a_foreign_lens(tokenizer, name):
    model = random_model("tiny-gpt2-random")
    with pytest.raises(ValueError, match="the tuned lens reads a HF model"):
        tuned_lens(model, TunedLens(*dims(model)), ids_of(tokenizer), backend=name)
    with pytest.raises(ValueError, match="the lens has 31 blocks, but this model has 4"):
        tuned_lens(model, TunedLens(31, 64), ids_of(tokenizer))


def test_plot_lens_draws_either_lens_but_not_both_at_once(tokenizer):
    model = random_model("tiny-gpt2-random")
    ids = ids_of(tokenizer)
    tokens = [tokenizer.decode(i) for i in ids[0]]
    tuned = tuned_lens(model, random_lens(model), ids)
    fig = plot_lens(tuned, tuned, tokens)
    assert fig._suptitle.get_text() == "Tuned lens: next-token loss (nats)"
    with pytest.raises(ValueError, match="unsteered was read by the logit lens, steered by the tuned lens"):
        plot_lens(logit_lens(model, ids), tuned, tokens)


def test_smollm2s_lens_trains_or_loads_and_beats_the_logit_lens():
    """On a fresh machine this trains the lens, afterwards it loads it. The suite trains the test
    size (conftest.py: the first 20 documents of each source, 27 steps, against 100 for the full
    lens, whose 10-minute budget benchmarks/tuned_lens.py checks: 198 s on 2 idle cores). Then, on
    the first 3 held-out documents (~300 tokens; the benchmark measures all of them), the tuned
    lens is closer to the model's output than the logit lens at every block but the last, and at
    least 3x closer on average over the first half. Measured: the test-size lens 15.7 against
    4.5 nats (3.5x; every block at least 1.46x closer), the full lens 16.0 against 3.6 (4.4x)."""
    model, tokenizer = load("smollm2-135m")
    folder = lens_folder(model)
    lens = load_tuned_lens(model, tokenizer)
    assert lens_training._cache_is_valid(folder, lens_training._key(model, tokenizer, LensRecipe()))
    held_out = json.loads((folder / "corpus.json").read_text())["held_out"][:3]
    steps = batches(held_out, 512, tokenizer.pad_token_id)
    logit, tuned = lens_kl(TunedLens(*dims(model)), model, steps), lens_kl(lens, model, steps)
    assert torch.all(tuned[:-1] < logit[:-1]), (logit, tuned)
    half = len(logit) // 2
    assert logit[:half].mean() >= 3 * tuned[:half].mean(), (logit, tuned)

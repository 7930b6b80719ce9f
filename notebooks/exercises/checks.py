"""Checks for the notebooks' exercises. Each takes the reader's function(s) and raises AssertionError (or the
function's own error) when it is wrong; it builds its own small models, so it runs the same in a notebook and in CI.

    from exercises import checks
    checks.run(checks.check_find_blocks, find_blocks)   # in a notebook's check cell

EXERCISES maps each notebook to its (check, names of the functions it takes), for tests/test_exercises.py.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import tempfile
from collections.abc import Callable

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from steering_backends import SteeringSpec
from steering_backends.compare import Summary, compare
from steering_backends.models import load
from steering_backends.vectors import (
    load_pairs,
    load_reference_texts,
    pair_differences,
    residual_norm,
    x_vector,
)

__all__ = [
    "EXERCISES",
    "check_add_to_attn_out",
    "check_add_to_block_input",
    "check_add_to_output",
    "check_cap",
    "check_choose",
    "check_find_blocks",
    "check_first_changed_row",
    "check_last_token_differences",
    "check_resid_pre_fast",
    "check_steer_new_tokens",
    "check_swapped_in",
    "check_sweep",
    "check_token_norms",
    "check_tokens_per_call",
    "check_x_vector_rows",
    "run",
]


def run(check: Callable[..., None], *functions: Callable) -> None:
    """Run one check on the reader's functions and say whether it passed. A stub that is not written yet says so
    instead of failing the notebook; a wrong answer raises as it would anywhere."""
    try:
        check(*functions)
    except NotImplementedError as err:
        print(f"not written yet ({err}): fill in the stub above, then run this cell again")
        return
    print(f"{check.__name__}: passed")


# ---------------------------------------------------------------------------------------------
# Models the checks build: seeded random weights, no downloads


def _config(model_type: str):
    sizes = {
        "gpt_neox": dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, intermediate_size=64),
        "opt": dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4, ffn_dim=64, word_embed_proj_dim=32),
    }[model_type]
    return AutoConfig.for_model(model_type, vocab_size=1000, max_position_embeddings=64, **sizes)


def _from_config(model_type: str) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_config(_config(model_type)).eval()


@functools.cache
def _built(arch: str) -> torch.nn.Module:
    if arch in ("gpt2", "llama"):
        return load(f"tiny-{arch}-random")[0]
    return _from_config(arch)


# where each layout keeps its blocks
BLOCKS = {"gpt2": "transformer.h", "llama": "model.layers", "gpt_neox": "gpt_neox.layers"}
BLOCKS["opt"] = "model.decoder.layers"


def _models():
    """(architecture, a fresh random model, the dotted name of its blocks), for four layouts of HF causal LMs;
    each built when it is reached, so that a stub fails before the others are built."""
    for arch, name in BLOCKS.items():
        yield arch, copy.deepcopy(_built(arch)), name


def _ids(model: torch.nn.Module) -> torch.Tensor:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return torch.randint(0, min(model.config.vocab_size, 1000), (2, 7))


def _hooks(model: torch.nn.Module) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in model.modules())


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.state_dict().items()}


def _logits_with_input_added(
    model: torch.nn.Module, block: torch.nn.Module, addition: torch.Tensor, ids: torch.Tensor
) -> torch.Tensor:
    """The reference: logits with ``addition`` added to ``block``'s hidden-states input by a pre-hook."""

    def add(module, args, kwargs):
        if args:
            return (args[0] + addition, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + addition}

    handle = block.register_forward_pre_hook(add, with_kwargs=True)
    try:
        return model(ids).logits
    finally:
        handle.remove()


def _same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


# ---------------------------------------------------------------------------------------------
# 01: a wrapper on the output


class _TupleBlock(torch.nn.Module):
    """A block as transformers 4's GPT2Block returns: (hidden [batch, pos, d_model], extra)."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states * 2, "extra"


@torch.no_grad()  # steering is inference here
def check_add_to_output(AddToOutput: type) -> None:
    """AddToOutput(block, addition) in place of block L - 1 gives bitwise the logits of a pre-hook adding to block
    L's input, for four layouts and each L; it answers the block's attributes (its first submodule), and on a block that
    returns a tuple it adds to the hidden states and passes the rest on."""
    hidden = torch.ones(1, 3, 4)
    try:
        output = AddToOutput(_TupleBlock(), torch.arange(4.0))(hidden)
    except NotImplementedError:
        raise
    except Exception as err:  # e.g. TypeError: a tuple + a tensor
        raise AssertionError(f"on a block that returns a tuple: {type(err).__name__}: {err}") from err
    assert isinstance(output, tuple), f"a block that returns a tuple: a tuple back, not a {type(output).__name__}"
    assert torch.equal(output[0], hidden * 2 + torch.arange(4.0)), "the addition goes to the tuple's first item"
    assert output[1:] == ("extra",), f"the rest of the tuple passes on as it was, not {output[1:]}"
    for arch, model, name in _models():
        blocks, d_model = model.get_submodule(name), model.config.hidden_size
        ids = _ids(model)
        unsteered = model(ids).logits
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            addition = torch.randn(d_model)
        for layer in range(1, len(blocks)):
            original = blocks[layer - 1]
            blocks[layer - 1] = AddToOutput(original, addition)
            try:
                steered = model(ids).logits
            finally:
                blocks[layer - 1] = original
            expected = _logits_with_input_added(model, blocks[layer], addition, ids)
            assert not torch.equal(steered, unsteered), f"{arch}, block {layer - 1}: the logits did not change"
            assert torch.equal(steered, expected), (
                f"{arch}: block {layer - 1}'s output + addition is not block {layer}'s input + addition "
                f"(max |diff| {(steered - expected).abs().max():.2e})"
            )
        wrapper, child = AddToOutput(blocks[0], addition), next(name for name, _ in blocks[0].named_children())
        assert getattr(wrapper, child, None) is blocks[0].get_submodule(child), (
            f"{arch}: wrapper.{child} is not the block's {child}: the wrapper must answer for the block"
        )


# ---------------------------------------------------------------------------------------------
# 02: a model you load yourself


@torch.no_grad()  # steering is inference here
def check_find_blocks(find_blocks: Callable[[torch.nn.Module], torch.nn.ModuleList]) -> None:
    """find_blocks(model) is the list of decoder blocks, for GPT-2, Llama, GPT-NeoX and OPT layouts."""
    for arch, model, name in _models():
        blocks = find_blocks(model)
        assert blocks is model.get_submodule(name), f"{arch}: expected model.{name}, got a {type(blocks).__name__}"


@torch.no_grad()  # steering is inference here
def check_add_to_block_input(add_to_block_input: Callable) -> None:
    """Inside `with add_to_block_input(model, layer, addition):` block `layer` reads its input + addition: the
    logits are bitwise those of a reference pre-hook, for each layout and for a negative layer; afterwards the
    model is as it was, with no hooks, also when the body raised."""
    for arch, model, name in _models():
        blocks, d_model = model.get_submodule(name), model.config.hidden_size
        ids, hooks, state = _ids(model), _hooks(model), _state(model)
        unsteered = model(ids).logits
        for layer in (1, -1):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(2)
                addition = torch.randn(d_model)
            with add_to_block_input(model, layer, addition):
                steered = model(ids).logits
            expected = _logits_with_input_added(model, blocks[layer], addition, ids)
            assert not torch.equal(steered, unsteered), f"{arch}, layer {layer}: the logits did not change"
            assert torch.equal(steered, expected), (
                f"{arch}, layer {layer}: not the logits of block {layer}'s input + addition "
                f"(max |diff| {(steered - expected).abs().max():.2e})"
            )
        with contextlib.suppress(KeyError), add_to_block_input(model, 1, addition):
            raise KeyError("raised inside the with block")
        assert _hooks(model) == hooks, f"{arch}: hooks left on the model"
        assert _same_state(model, state), f"{arch}: the weights changed"
        assert torch.equal(model(ids).logits, unsteered), f"{arch}: not unsteered after the with block"


@torch.no_grad()  # steering is inference here
def check_tokens_per_call(tokens_per_call: Callable) -> None:
    """tokens_per_call(model, ids, n_new): how many positions each forward call of greedy `generate` shows block
    0, for prompts of two lengths; no hook is left behind."""
    model = copy.deepcopy(_built("llama"))
    hooks = _hooks(model)
    for length, n_new in ((5, 4), (3, 6)):
        ids = torch.arange(10, 10 + length).unsqueeze(0)
        seen = tokens_per_call(model, ids, n_new)
        assert list(seen) == [length] + [1] * (n_new - 1), f"prompt of {length}, {n_new} new tokens: got {seen}"
    assert _hooks(model) == hooks, "a hook was left on the model"


# ---------------------------------------------------------------------------------------------
# 02: choosing a block and a coefficient


@functools.cache
def _smollm2():
    transformers.utils.logging.disable_progress_bar()  # as the notebooks do: no loading bar in their outputs
    model, tokenizer = load("smollm2-135m")
    return model.eval(), tokenizer


@functools.cache
def _direction(layer: int) -> tuple[torch.Tensor, float]:
    """A warm − cold unit direction from 8 contrast pairs, and the median token norm at that block."""
    model, tokenizer = _smollm2()
    diffs = pair_differences(model, tokenizer, load_pairs("sentiment")[:8], layer, reduce="mean", progress=False)
    return diffs.mean(0) / diffs.mean(0).norm(), residual_norm(model, tokenizer, load_reference_texts()[:8], layer)


def _spec_for(layer: int, relative: float) -> SteeringSpec:
    direction, norm = _direction(layer)
    return SteeringSpec(layer, "resid_pre", direction, relative * norm)


SWEEP = dict(layers=[9, 21], relatives=[0.25, 1.0], prompts=["I hate you because"], n=2, max_new_tokens=12)


@torch.no_grad()  # steering is inference here
def check_sweep(sweep: Callable) -> None:
    """sweep(...) returns {(layer, relative): Summary} over the whole grid, each setting's its own: the grid's two
    diagonal settings are recomputed with compare (all four would double the check's time for little more)."""
    assert sweep(None, None, _spec_for, [], [], []) == {}, "an empty grid: an empty dict"
    model, tokenizer = _smollm2()
    got = sweep(model, tokenizer, _spec_for, **SWEEP)
    grid = [(layer, relative) for layer in SWEEP["layers"] for relative in SWEEP["relatives"]]
    assert isinstance(got, dict), f"a dict, not a {type(got).__name__}"
    assert sorted(got) == sorted(grid), f"keys {sorted(got)}, not the grid {grid}"
    assert all(isinstance(summary, Summary) for summary in got.values()), "each value is a compare(...).summary()"
    assert len({summary.steered_sentiment for summary in got.values()}) > 1, "every setting scored the same"
    draw = dict(n=SWEEP["n"], max_new_tokens=SWEEP["max_new_tokens"])
    for layer, relative in zip(SWEEP["layers"], SWEEP["relatives"], strict=True):
        expected = compare(model, tokenizer, SWEEP["prompts"], [_spec_for(layer, relative)], **draw).summary()
        assert got[layer, relative] == expected, f"({layer}, {relative}): {got[layer, relative]} != {expected}"
    print("block  relative  sentiment shift  perplexity x")
    for (layer, relative), summary in got.items():
        print(f"{layer:5}  {relative:8}  {summary.delta:+15.2f}  {summary.perplexity_ratio:12.2f}")


def _summary(delta: float, ratio: float, expect: int = 1) -> Summary:
    return Summary(4, expect, 0.1, 0.1 + delta, 0, 10.0, 10.0 * ratio, 0.0, 0.0)


def check_choose(choose: Callable) -> None:
    """choose(summaries, max_perplexity_ratio) picks the setting that moves sentiment furthest in the expected
    direction among those whose perplexity ratio is within the bound (by default 2, which lets in a setting at
    x1.7, as the measured colder one scored in its sweep), and raises ValueError when none is."""
    warmer = {(9, 0.25): _summary(0.2, 1.1), (9, 1.0): _summary(0.9, 3.0), (21, 0.25): _summary(0.5, 1.4)}
    warmer[21, 1.0] = _summary(-0.3, 1.0)
    warmer[24, 0.35] = _summary(0.7, 1.7)
    assert choose(warmer, 1.5) == (21, 0.25), "the largest shift within the perplexity bound"
    assert choose(warmer) == (24, 0.35), "the default bound is 2: a setting at x1.7 qualifies"
    assert choose(warmer, 4.0) == (9, 1.0), "a looser bound lets the strongest setting in"
    assert choose(warmer, 1.2) == (9, 0.25), "a tighter bound keeps only the mildest"
    colder = {key: _summary(-s.delta, s.perplexity_ratio, expect=-1) for key, s in warmer.items()}
    assert choose(colder, 1.5) == (21, 0.25), "expect=-1: the largest shift downwards"
    try:
        choose(warmer, 0.5)
    except ValueError:
        pass
    else:
        raise AssertionError("no setting is within the bound: choose must raise ValueError")


# ---------------------------------------------------------------------------------------------
# 03: reading a block's input without running the rest


@torch.no_grad()  # steering is inference here
def check_resid_pre_fast(resid_pre_fast: Callable) -> None:
    """resid_pre_fast(model, blocks, ids, layer) is block `layer`'s input, [batch, pos, d_model], bitwise what a
    pre-hook records, for four layouts, block 1 and the last; no module after block `layer` runs (not the later
    blocks, not the unembedding), and no hook is left."""
    for arch, model, name in _models():
        blocks, ids, hooks = model.get_submodule(name), _ids(model), _hooks(model)
        for layer in (1, len(blocks) - 1):
            recorded, ran = [], []
            handle = blocks[layer].register_forward_pre_hook(
                lambda module, args, kwargs, kept=recorded: kept.append(args[0] if args else kwargs["hidden_states"]),
                with_kwargs=True,
            )
            try:
                model(ids)
            finally:
                handle.remove()
            later = [*blocks[layer + 1 :], model.get_output_embeddings()]
            handles = [
                m.register_forward_pre_hook(lambda module, args, ran=ran: ran.append(type(module).__name__))
                for m in later
            ]
            try:
                got = resid_pre_fast(model, name, ids, layer)
            finally:
                for handle in handles:
                    handle.remove()
            assert torch.is_tensor(got), f"{arch}, block {layer}: a tensor, not a {type(got).__name__}"
            assert torch.equal(got, recorded[0]), f"{arch}, block {layer}: not the block's input"
            assert not ran, f"{arch}, block {layer}: {ran} ran after the block; stop the forward once you have it"
        assert _hooks(model) == hooks, f"{arch}: a hook was left on the model"


# ---------------------------------------------------------------------------------------------
# 04: BOS and the first token


@functools.cache
def _bridge():
    """A TransformerBridge around the tiny random GPT-2, as notebook 04 wraps SmolLM2 (its tokenizer has BOS)."""
    from steering_backends.transformer_lens_hooks import bridge_from_hf

    return bridge_from_hf(*load("tiny-gpt2-random"))


@torch.no_grad()  # steering is inference here
def check_token_norms(token_norms: Callable) -> None:
    """token_norms(bridge, text, layer, prepend_bos): the norm of block `layer`'s input at each token of `text`,
    [tokens], BOS's row left out when there is one, so that both settings give one norm per token of the text;
    bitwise the norms a hook on blocks.{layer}.hook_resid_pre records."""
    bridge, text = _bridge(), "I hate you because"
    for layer in (1, 3):
        for prepend_bos in (True, False):
            got = token_norms(bridge, text, layer, prepend_bos)
            seen = []
            hook = (f"blocks.{layer}.hook_resid_pre", lambda resid, hook, seen=seen: seen.append(resid.norm(dim=-1)[0]))
            bridge.run_with_hooks(text, fwd_hooks=[hook], prepend_bos=prepend_bos)
            expected = seen[0][1:] if prepend_bos else seen[0]
            where = f"block {layer}, prepend_bos={prepend_bos}"
            assert torch.is_tensor(got), f"{where}: a tensor of norms, not a {type(got).__name__}"
            assert got.shape == expected.shape, f"{where}: shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
            assert torch.equal(got, expected), f"{where}: not the norms of block {layer}'s input at each token"


# ---------------------------------------------------------------------------------------------
# 05: a bias for attn_out


@torch.no_grad()  # steering is inference here
def check_add_to_attn_out(add_to_attn_out: Callable) -> None:
    """Inside `with add_to_attn_out(model, layer, addition):` block `layer`'s attention output + addition, by a
    bias of its output projection: bitwise the logits of bias_editing.steer at attn_out, on GPT-2 (which has the
    bias) and Llama (which has none); afterwards the same parameters, bias or no bias, also when the body raised."""
    from steering_backends.bias_editing import steer

    for arch in ("gpt2", "llama"):
        model = copy.deepcopy(_built(arch))
        ids, params = _ids(model), [name for name, _ in model.named_parameters()]
        state, unsteered = _state(model), model(ids).logits
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(2)
            addition = torch.randn(model.config.hidden_size)
        with add_to_attn_out(model, 2, addition):
            steered = model(ids).logits
        with steer(model, [SteeringSpec(2, "attn_out", addition)]):
            expected = model(ids).logits
        assert not torch.equal(steered, unsteered), f"{arch}: the logits did not change"
        assert torch.equal(steered, expected), f"{arch}: not bias_editing's attn_out logits"
        with contextlib.suppress(KeyError), add_to_attn_out(model, 2, addition):
            raise KeyError("raised inside the with block")
        assert [name for name, _ in model.named_parameters()] == params, f"{arch}: a bias was added or removed"
        assert _same_state(model, state), f"{arch}: the weights are not bitwise as they were"
        assert torch.equal(model(ids).logits, unsteered), f"{arch}: not unsteered after the with block"


# ---------------------------------------------------------------------------------------------
# 06: an x-vector's rows


@torch.no_grad()  # steering is inference here
def check_x_vector_rows(x_vector_rows: Callable) -> None:
    """x_vector_rows(model, tokenizer, positive, negative, layer, pad_token_id): act(BOS + positive) - act(BOS +
    negative) at block `layer`'s input, the shorter right-padded: the library's x_vector with coeff 1 (within the
    rounding of a batch), on a
    tiny random GPT-2 and Llama with GPT-2's tokenizer, for words of one token, of two ("Hate": H + ate) and
    prompts that share a prefix."""
    for arch in ("gpt2", "llama"):
        model, tokenizer = _built(arch), load(f"tiny-{arch}-random")[1]
        space, hooks = tokenizer(" ", add_special_tokens=False)["input_ids"][0], _hooks(model)
        for positive, negative in (("Love", "Hate"), (" love", " hate"), ("Intent to praise", "Intent to hurt")):
            got = x_vector_rows(model, tokenizer, positive, negative, 2, space)
            expected = x_vector(model, tokenizer, positive, negative, 1.0, 2, pad_token_id=space).vector
            where = f"{arch}, {positive!r} - {negative!r}"
            assert torch.is_tensor(got), f"{where}: a tensor, not a {type(got).__name__}"
            assert got.shape == expected.shape, (
                f"{where}: {tuple(got.shape)}, not {tuple(expected.shape)}: one row per token of the longer "
                "prompt, BOS included"
            )
            gap = (got.float() - expected).abs().max() / expected.abs().max()  # a batch of two rounds otherwise
            assert gap < 1e-4, f"{where}: not act(positive) - act(negative), row by row (gap {gap:.1e})"
        assert _hooks(model) == hooks, f"{arch}: a hook was left on the model"


# ---------------------------------------------------------------------------------------------
# 07: reading at the last token

PAIRS = [  # sentences of different lengths, so that a padded batch has padding to get wrong
    ("I love this.", "I hate this."),
    ("What a wonderful and generous friend you are", "What a cruel friend"),
    ("Thank you", "No thanks, I would rather not hear from you again"),
]


@torch.no_grad()  # steering is inference here
def check_last_token_differences(last_token_differences: Callable) -> None:
    """last_token_differences(model, tokenizer, pairs, layer): block `layer`'s input at the last token of BOS +
    positive minus the same for negative, [n_pairs, d_model]; the library's pair_differences(..., reduce="last")
    within float rounding of batching, on a tiny random Llama, for pairs of unequal lengths and two blocks."""
    model, tokenizer = _built("llama"), load("tiny-llama-random")[1]
    hooks = _hooks(model)
    for layer in (1, 3):
        got = last_token_differences(model, tokenizer, PAIRS, layer)
        expected = pair_differences(model, tokenizer, PAIRS, layer, reduce="last", progress=False)
        assert torch.is_tensor(got), f"block {layer}: a tensor, not a {type(got).__name__}"
        assert got.shape == expected.shape, f"block {layer}: shape {tuple(got.shape)}, not {tuple(expected.shape)}"
        gap = (got.float() - expected).abs().max() / expected.abs().max()
        assert gap < 1e-4, f"block {layer}: not each sentence's last token at block {layer}'s input (gap {gap:.1e})"
    assert _hooks(model) == hooks, "a hook was left on the model"


# ---------------------------------------------------------------------------------------------
# 08: which lens row shows the steering


@torch.no_grad()  # steering is inference here
def check_first_changed_row(first_changed_row: Callable) -> None:
    """first_changed_row(model, lens, ids, spec, backend): the first block whose tuned-lens loss row changes, on a
    tiny random Llama: block L for a resid_pre hook at L, block L - 1 for bias editing (which adds inside block
    L - 1), L for resid_post of L either way; None for a spec that changes nothing (coeff 0)."""
    from steering_backends.lens import TunedLens

    model = copy.deepcopy(_built("llama"))
    n_layers, d_model = model.config.num_hidden_layers, model.config.hidden_size
    lens = TunedLens(n_layers, d_model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        for p in lens.parameters():  # a lens that is not just the logit lens
            p.normal_(0, 0.02)
        vector = torch.randn(d_model)
    ids = _ids(model)[:1]
    cases = [
        (SteeringSpec(2, "resid_pre", vector, 0.0), "pytorch_hooks", None),
        (SteeringSpec(2, "resid_pre", vector), "pytorch_hooks", 2),
        (SteeringSpec(2, "resid_pre", vector), "bias_editing", 1),
        (SteeringSpec(1, "resid_post", vector), "bias_editing", 1),
    ]
    for spec, backend, expected in cases:
        got = first_changed_row(model, lens, ids, spec, backend)
        assert got == expected, f"{spec.site} of block {spec.layer} through {backend}: row {got}, expected {expected}"


# ---------------------------------------------------------------------------------------------
# 09: steer only the generated tokens


@functools.cache
def _nnsight_lm():
    """The tiny random Llama wrapped by nnsight, as notebook 09 wraps SmolLM2 (an edit lasts one run: reusable)."""
    from steering_backends.nnsight_trace import nnsight_from_hf

    return nnsight_from_hf(*load("tiny-llama-random"))


@torch.no_grad()  # steering is inference here
def check_steer_new_tokens(steer_new_tokens: Callable) -> None:
    """steer_new_tokens(lm, block, prompt, addition, n_new) generates greedily through nnsight with the addition
    at block's input from the first generated token on: the ids of the library's steer with start=T, which differ
    both from the unsteered ids and from those steered at every position (so the check can fail)."""
    from steering_backends.nnsight_trace import steer

    lm = _nnsight_lm()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(2)
        addition = 4 * torch.randn(lm.config.hidden_size)  # large enough to change the tiny model's greedy tokens
    prompt, n_new, layer = torch.tensor([[1, 10, 11, 12, 13]]), 6, 2
    got = steer_new_tokens(lm, lm.model.layers[layer], prompt, addition, n_new)

    def generate(*specs: SteeringSpec) -> torch.Tensor:
        settings = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        with steer(lm, specs):
            return lm.generate(prompt, attention_mask=torch.ones_like(prompt), **settings)

    expected = generate(SteeringSpec(layer, "resid_pre", addition, start=prompt.shape[1]))
    everywhere, unsteered = generate(SteeringSpec(layer, "resid_pre", addition)), generate()
    assert not torch.equal(expected, everywhere) and not torch.equal(expected, unsteered), "the check's own setup"
    assert torch.is_tensor(got), f"the generated ids, [1, T + n_new]: not a {type(got).__name__}"
    assert got.shape == expected.shape, f"shape {tuple(got.shape)}: expected {tuple(expected.shape)}"
    assert torch.equal(got, expected), (
        f"not the ids of steering from position {prompt.shape[1]} on: got {got[0, prompt.shape[1] :].tolist()}, "
        f"expected {expected[0, prompt.shape[1] :].tolist()} (steered everywhere: "
        f"{everywhere[0, prompt.shape[1] :].tolist()}; unsteered: {unsteered[0, prompt.shape[1] :].tolist()})"
    )


# ---------------------------------------------------------------------------------------------
# 10: a wrapper around a block on disk


def _logits_or_fail(model: torch.nn.Module, ids: torch.Tensor, when: str) -> torch.Tensor:
    try:
        return model(ids).logits
    except NotImplementedError:
        raise
    except Exception as err:  # e.g. accelerate's hooks removed: a weight left on meta with nothing to load it
        raise AssertionError(f"the model no longer runs {when}: {type(err).__name__}: {err}") from err


@torch.no_grad()  # steering is inference here
def check_swapped_in(swapped_in: Callable) -> None:
    """Inside `with swapped_in(blocks, layer, addition):` a tiny Llama whose blocks 1 and 3 accelerate reads from
    disk gives bitwise the logits of the whole model with a pre-hook adding to block `layer`'s input, its
    offloaded weights still on meta (accelerate's hooks came along with the block); afterwards, also when the body
    raised, the same modules and the whole model's unsteered logits. Public attributes only, as the solution."""
    from steering_backends.pytorch_hooks import steer

    plain = _built("llama")
    on_disk, others = {1, 3}, [f"model.{name}" for name, _ in plain.model.named_children() if name != "layers"]
    device_map = {name: "cpu" for name in [*others, "lm_head"]}
    device_map |= {f"model.layers.{i}": "disk" if i in on_disk else "cpu" for i in range(len(plain.model.layers))}
    ids, addition = _ids(plain), 4 * torch.randn(plain.config.hidden_size, generator=torch.Generator().manual_seed(2))
    logging.getLogger("accelerate.big_modeling").setLevel(logging.ERROR)  # its notice that weights are on meta
    with tempfile.TemporaryDirectory() as folder:
        model = load("tiny-llama-random", device_map=device_map, offload_folder=folder)[0]
        modules = [(name, type(m).__name__) for name, m in model.named_modules()]
        on_meta, unsteered = sum(p.is_meta for p in model.parameters()), plain(ids).logits
        for layer in sorted(on_disk) + [2]:
            with swapped_in(model.model.layers, layer, addition):
                steered = _logits_or_fail(model, ids, f"with block {layer} swapped")
                meta_inside = sum(p.is_meta for p in model.parameters())
            with steer(plain, [SteeringSpec(layer, "resid_pre", addition)]):
                expected = plain(ids).logits
            where = f"block {layer} ({'disk' if layer in on_disk else 'cpu'})"
            assert not torch.equal(steered, unsteered), f"{where}: the logits did not change"
            assert torch.equal(steered, expected), (
                f"{where}: not the whole model's logits with block {layer}'s input + addition"
            )
            assert meta_inside == on_meta, f"{where}: {meta_inside} parameters on meta inside, not {on_meta}"
        with contextlib.suppress(KeyError), swapped_in(model.model.layers, 1, addition):
            raise KeyError("raised inside the with block")
        assert [(name, type(m).__name__) for name, m in model.named_modules()] == modules, "the modules changed"
        assert sum(p.is_meta for p in model.parameters()) == on_meta, "the offloaded weights are no longer on meta"
        after = _logits_or_fail(model, ids, "after the with block")
        assert torch.equal(after, unsteered), "not the whole model's unsteered logits after the block"


# ---------------------------------------------------------------------------------------------
# 11: capping a direction


def check_cap(cap: Callable) -> None:
    """cap(h, u, c) limits each token's projection on the unit vector u to at most c: the tokens at or below c are
    bitwise unchanged, the others end at c; capping twice is capping once; and it gives SteeringSpec(op="cap")'s
    numbers, for a positive, a zero and a negative cap."""
    generator = torch.Generator().manual_seed(3)
    h = 4 * torch.randn(12, 16, generator=generator)  # [tokens, d_model]
    u = torch.randn(16, generator=generator)
    u = u / u.norm()
    for c in (1.5, 0.0, -2.0):
        got = cap(h, u, c)
        below = h @ u <= c
        assert 0 < int(below.sum()) < len(h), "the check's own setup: some tokens on each side of the cap"
        assert got.shape == h.shape, f"c={c}: shape {tuple(got.shape)}, not {tuple(h.shape)}"
        assert torch.equal(got[below], h[below]), f"c={c}: a token already at or below the cap was changed"
        assert torch.allclose(got[~below] @ u, torch.full_like(got[~below] @ u, c), atol=1e-5), (
            f"c={c}: the tokens above the cap do not end at it: {(got[~below] @ u).tolist()}"
        )
        assert torch.allclose(cap(got, u, c), got, atol=1e-5), f"c={c}: capping twice is not capping once"
        spec = SteeringSpec(0, "resid_pre", u, c, op="cap")
        expected = spec.apply(h[None], torch.arange(len(h))[None])[0]  # one row of len(h) tokens
        assert torch.allclose(got, expected, atol=1e-5), f"c={c}: not SteeringSpec(op='cap')'s numbers"


EXERCISES: dict[str, list[tuple[Callable, tuple[str, ...]]]] = {
    "01_custom_wrapper": [(check_add_to_output, ("AddToOutput",))],
    "02_pytorch_hooks": [
        (check_find_blocks, ("find_blocks",)),
        (check_add_to_block_input, ("add_to_block_input",)),
        (check_sweep, ("sweep",)),
        (check_choose, ("choose",)),
        (check_tokens_per_call, ("tokens_per_call",)),
    ],
    "03_baukit_tracedict": [(check_resid_pre_fast, ("resid_pre_fast",))],
    "04_transformer_lens": [(check_token_norms, ("token_norms",))],
    "05_bias_editing": [(check_add_to_attn_out, ("add_to_attn_out",))],
    "06_activation_additions": [(check_x_vector_rows, ("x_vector_rows",))],
    "07_representation_engineering": [(check_last_token_differences, ("last_token_differences",))],
    "08_lens": [(check_first_changed_row, ("first_changed_row",))],
    "09_nnsight": [(check_steer_new_tokens, ("steer_new_tokens",))],
    "10_offload": [(check_swapped_in, ("swapped_in",))],
    "11_ablation": [(check_cap, ("cap",))],
}

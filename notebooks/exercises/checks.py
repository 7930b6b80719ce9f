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
from collections.abc import Callable

import torch
import transformers
from transformers import AutoConfig, AutoModelForCausalLM

from steering_backends import SteeringSpec
from steering_backends.compare import Summary, compare
from steering_backends.models import load
from steering_backends.vectors import load_pairs, load_reference_texts, pair_differences, residual_norm

__all__ = [
    "EXERCISES",
    "check_add_to_attn_out",
    "check_add_to_block_input",
    "check_choose",
    "check_find_blocks",
    "check_sweep",
    "check_tokens_per_call",
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


def _same_state(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)


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

            def reference(module, args, kwargs, addition=addition):
                if args:
                    return (args[0] + addition, *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": kwargs["hidden_states"] + addition}

            handle = blocks[layer].register_forward_pre_hook(reference, with_kwargs=True)
            try:
                expected = model(ids).logits
            finally:
                handle.remove()
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


EXERCISES: dict[str, list[tuple[Callable, tuple[str, ...]]]] = {
    "02_pytorch_hooks": [
        (check_find_blocks, ("find_blocks",)),
        (check_add_to_block_input, ("add_to_block_input",)),
        (check_sweep, ("sweep",)),
        (check_choose, ("choose",)),
        (check_tokens_per_call, ("tokens_per_call",)),
    ],
    "05_bias_editing": [(check_add_to_attn_out, ("add_to_attn_out",))],
}

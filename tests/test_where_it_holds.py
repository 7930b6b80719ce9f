"""Steering where real code runs: threads, gradient checkpointing, torch.compile, static caches,
blocks left out of order, inputs_embeds, output_hidden_states (docs/where_it_holds.md).

Each test runs every backend it applies to on the tiny random models; a backend that cannot
hold somewhere is shown refusing with a clear error, never silently wrong.
"""

from __future__ import annotations

import contextlib
import re
import sys
import threading
from pathlib import Path

import pytest
import torch
from helpers import BACKEND_PARAMS, IDS, TRANSFORMERS_4, vec
from model_state import assert_unchanged, snapshot
from torch.utils._python_dispatch import TorchDispatchMode

from steering_backends import SteeringSpec, backend
from steering_backends.models import random_model
from steering_backends.parity import unavailable
from steering_backends.prompts import hf_positions, left_pad_ids

TINY = ["tiny-gpt2-random", "tiny-llama-random"]
HF_HOOKS = ["custom_wrapper", "pytorch_hooks", "baukit_tracedict"]  # steer the HF model with hooks/wrappers
HF_BACKENDS = [*HF_HOOKS, "bias_editing"]  # steer the HF model itself
WEIGHTS = "weight_orthogonalisation"  # ablation only: edits the weights that write into the stream


def params(names):
    every = [*BACKEND_PARAMS, WEIGHTS]
    return [p for p in every if (p.values[0] if hasattr(p, "values") else p) in names]


@pytest.fixture(scope="session", params=TINY)
def model(request):
    """One tiny model per architecture for the whole module: every test leaves it as it was."""
    return random_model(request.param)


def position_dependent() -> list[SteeringSpec]:
    """start > 0, an [n, d_model] vector, a row-free mix of sites: a wrong position shows."""
    return [
        SteeringSpec(1, "resid_pre", 4 * vec(1), start=2),
        SteeringSpec(2, "attn_out", 4 * torch.stack([vec(2), vec(3)]), start=1),
        SteeringSpec(3, "resid_post", 4 * vec(4)),
    ]


def position_free() -> list[SteeringSpec]:
    """What bias editing can express: [d_model] vectors from position 0."""
    return [SteeringSpec(1, "resid_pre", 4 * vec(1)), SteeringSpec(2, "attn_out", 4 * vec(2))]


def ablations() -> list[SteeringSpec]:
    """What weight orthogonalisation can express: whole ablations where one weight writes, the embeddings
    (tied to lm_head on GPT-2) among them."""
    return [SteeringSpec(0, "resid_pre", vec(15), op="ablate"), SteeringSpec(2, "attn_out", vec(16), op="ablate")]


def specs_for(name: str) -> list[SteeringSpec]:
    return {"bias_editing": position_free, WEIGHTS: ablations}.get(name, position_dependent)()


def batch(rows: list[int], width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded random token ids: one row per length in ``rows``."""
    gen = torch.Generator().manual_seed(seed)
    return left_pad_ids([torch.randint(5, 200, (n,), generator=gen).tolist() for n in rows], 0)


def hf_logits(model, ids, mask, **kwargs) -> torch.Tensor:
    return model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), **kwargs).logits


# --- threads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params([*HF_BACKENDS, WEIGHTS]))
def test_concurrent_calls_in_one_block_each_get_their_own_positions(model, name):
    """Two threads call one model inside one steer block, batches of 2 and 3 rows with different
    padding; each of their 12 outputs equals the single-thread reference bitwise, with no error.
    The interpreter switches threads every microsecond, so the calls interleave."""
    inputs = [batch([6, 4], 6, seed=0), batch([3, 7, 5], 7, seed=1)]
    specs = specs_for(name)
    steer = backend(name).steer
    with steer(model, specs):
        want = [hf_logits(model, ids, mask) for ids, mask in inputs]
    got, errors, start = [[], []], [], threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(12):
                got[i].append(hf_logits(model, *inputs[i]))
        except Exception as err:  # noqa: BLE001 - reported below, with the thread it came from
            errors.append((i, err))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with steer(model, specs):
            threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    for i in range(2):
        assert len(got[i]) == 12 and all(torch.equal(out, want[i]) for out in got[i])
    with torch.no_grad():
        assert not torch.equal(hf_logits(model, *inputs[0]), want[0])  # the check can fail: steering shows


# --- gradient checkpointing ----------------------------------------------------------------------


def vector_gradient(steer, model, checkpointed, logits, checkpointing: bool, accumulate: bool) -> torch.Tensor:
    """d(loss)/d(vector) over two batches of equal shape and different padding, backpropagated after
    each batch or once over their sum. ``checkpointed`` is the HF model whose checkpointing is turned
    on; every run starts from one seed (checkpointing replays the RNG state it saw)."""
    vector = (4 * vec(5)).requires_grad_()
    specs = [SteeringSpec(1, "attn_out", vector, start=2), SteeringSpec(2, "mlp_out", vector, start=1)]
    batches = [batch([6, 3], 6, seed=2), batch([4, 6], 6, seed=3)]
    model.train()
    if checkpointing:
        checkpointed.gradient_checkpointing_enable()
    try:
        with torch.random.fork_rng(devices=[]), torch.enable_grad(), steer(model, specs):
            torch.manual_seed(0)
            losses = [logits(model, ids, mask).pow(2).mean() for ids, mask in batches]
            if accumulate:
                sum(losses).backward()
            else:
                for loss in losses:
                    loss.backward()
    finally:
        if checkpointing:
            checkpointed.gradient_checkpointing_disable()
        model.eval()
    return vector.grad


def gradient(model, name, checkpointing: bool, accumulate: bool) -> torch.Tensor:
    return vector_gradient(backend(name).steer, model, model, hf_logits, checkpointing, accumulate)


@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_gradient_is_the_same_with_and_without_checkpointing(model, name):
    """A recompute in backward steers with its own call's positions: the vector's gradient is the
    same with and without checkpointing, per batch or accumulated. (Dropout is off, so the four
    runs compute the same function; the sums differ only in float order: measured gap <= 4e-7
    relative on the tiny models, 1e-5 allowed.)"""
    dropout = [(m, m.p) for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    for m, _ in dropout:
        m.p = 0.0
    try:
        reference = gradient(model, name, checkpointing=False, accumulate=False)
        assert reference.norm() > 0
        for checkpointing, accumulate in ((False, True), (True, False), (True, True)):
            got = gradient(model, name, checkpointing, accumulate)
            gap = (got - reference).abs().max() / reference.abs().max()
            assert gap <= 1e-5, f"checkpointing={checkpointing}, accumulate={accumulate}: relative gap {gap:.2e}"
    finally:
        for m, p in dropout:
            m.p = p


@pytest.mark.parametrize("name", params(["pytorch_hooks", "custom_wrapper"]))
def test_a_block_called_outside_a_decoder_call_is_refused(model, name):
    """Called directly, a block has no call whose positions it could use: a clear error, not the
    positions of whatever call ran last."""
    ids, mask = batch([5, 3], 5, seed=4)
    hidden = torch.randn(2, 5, 64)
    kwargs = {}
    if model.config.model_type != "gpt2":  # Llama blocks need the rotary table of their call
        kwargs["position_embeddings"] = model.model.rotary_emb(hidden, hf_positions(mask))
    with backend(name).steer(model, position_dependent()):
        hf_logits(model, ids, mask)
        with pytest.raises(RuntimeError, match="outside a decoder call"):
            model.get_submodule(block_name(model, 1))(hidden, **kwargs)


def block_name(model, layer: int) -> str:
    return f"transformer.h.{layer}" if model.config.model_type == "gpt2" else f"model.layers.{layer}"


# --- torch.compile -------------------------------------------------------------------------------


@pytest.fixture
def fresh_dynamo(monkeypatch):
    """Dynamo's caches emptied before and after, so each scenario really compiles (and a cache
    full from earlier tests cannot fall back to eager unnoticed); its config restored after."""
    torch._dynamo.reset()
    yield torch._dynamo
    torch._dynamo.reset()


# Which backends the compile tests run: every one in the first leg; in the transformers 4 leg (the
# same torch) pytorch_hooks alone, where dynamo traces that version's GPT-2. What the other backends
# change under torch.compile (a module swapped in, weights edited, hooks on named modules) is torch's
# and dynamo's business, the same in both legs.
COMPILED = ["pytorch_hooks"] if TRANSFORMERS_4 else HF_BACKENDS
SCENARIOS = [
    *[pytest.param(name, "before the block", False, id=f"{name}-before") for name in COMPILED],
    *[pytest.param(name, "inside the block", False, id=f"{name}-inside") for name in COMPILED],
    *([] if TRANSFORMERS_4 else [pytest.param(WEIGHTS, "before the block", False, id=f"{WEIGHTS}-before")]),
    # The hooks' fix, shown on one hook backend (a wrapper or a bias needs no hook guards).
    pytest.param("pytorch_hooks", "before the block", True, id="pytorch_hooks-before-hook guards on"),
]


@pytest.mark.parametrize(("name", "when", "guards"), SCENARIOS)
def test_compiled_model_steered_inside_unsteered_after_or_refused(fresh_dynamo, monkeypatch, name, when, guards):
    """torch.compile(model), compiled (called once) before the block or made and first called inside
    it: steered inside, unsteered after, within 1e-5 of eager -- or, where the compiled code would
    not run the hooks, a RuntimeError naming the fix. Never silently unsteered. Dynamo's "eager"
    backend: what decides is dynamo's tracing and guards, not inductor's kernels (and it compiles
    in seconds; the gap to eager is 0 here)."""
    from torch._dynamo.utils import counters

    if why := unavailable(name):
        pytest.skip(why)
    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", not guards)
    model = random_model("tiny-gpt2-random")
    ids, mask = batch([6, 4], 6, seed=5)
    steer, specs = backend(name).steer, specs_for(name)
    unsteered = hf_logits(model, ids, mask)
    with steer(model, specs):
        steered = hf_logits(model, ids, mask)
    graphs = counters["stats"]["unique_graphs"]
    if when == "before the block":
        compiled = torch.compile(model, backend="eager")
        assert torch.allclose(hf_logits(compiled, ids, mask), unsteered, atol=1e-5)
        if name in ("pytorch_hooks", "baukit_tracedict") and not guards:
            with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards = False"):
                with steer(model, specs):
                    pass
            return
    with steer(model, specs):
        if when == "inside the block":
            compiled = torch.compile(model, backend="eager")
        assert torch.allclose(hf_logits(compiled, ids, mask), steered, atol=1e-5)
    assert torch.allclose(hf_logits(compiled, ids, mask), unsteered, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs  # it was compiled, not run eagerly
    assert not torch.allclose(steered, unsteered, atol=1e-3)  # the check can fail


COMPILED_BEFORE_IMPORT = """
import torch
from transformers import GPT2Config, GPT2LMHeadModel

model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=50))
compiled = torch.compile(model, backend="eager")  # before steering_backends is imported
from steering_backends import SteeringSpec, pytorch_hooks

try:
    with pytorch_hooks.steer(model, [SteeringSpec(0, "resid_pre", torch.ones(16))]):
        pass
except RuntimeError as error:
    print("refused:", error)
"""


@pytest.mark.skipif(TRANSFORMERS_4, reason="a torch-only check (the first leg runs it)")
def test_a_model_compiled_before_the_package_was_imported_is_refused_too():
    """The hook backends note every torch.compile wrapper made after spec.py is imported; one made
    before is found by looking through the garbage collector's objects at the first steer block."""
    import subprocess

    done = subprocess.run([sys.executable, "-c", COMPILED_BEFORE_IMPORT], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "skip_nnmodule_hook_guards = False" in done.stdout, done.stdout


def _compile_forward(model):
    model.forward = torch.compile(model.forward, backend="eager")
    return {}


def _compile_for_generate(model):
    from transformers.generation.configuration_utils import CompileConfig

    config = CompileConfig(backend="eager")
    config._compile_all_devices = True  # what generate does by default on a GPU, here on the CPU
    return {"compile_config": config}


# Ways of compiling that leave the model unwrapped: transformers' static-cache recipe, and generate's own.
FORWARD_RECIPE = "forward = torch.compile(forward)"
UNWRAPPED_COMPILES = {
    FORWARD_RECIPE: _compile_forward,
    "generate's compiled call": _compile_for_generate,
}


UNWRAPPED_SCENARIOS = [
    *[
        pytest.param(name, how, False, id=f"{name}-{how}-hook guards off")
        for name in ("pytorch_hooks", "baukit_tracedict")
        for how in UNWRAPPED_COMPILES
        if name in COMPILED
    ],
    # The fix: both ways on pytorch_hooks, the forward recipe on baukit (what makes it hold is dynamo's guards).
    *[pytest.param("pytorch_hooks", how, True, id=f"pytorch_hooks-{how}-hook guards on") for how in UNWRAPPED_COMPILES],
    *(
        [pytest.param("baukit_tracedict", FORWARD_RECIPE, True, id=f"baukit_tracedict-{FORWARD_RECIPE}-hook guards on")]
        if "baukit_tracedict" in COMPILED
        else []
    ),
]


@pytest.mark.parametrize(("name", "how", "guards"), UNWRAPPED_SCENARIOS)
def test_a_model_compiled_without_a_wrapper_is_refused_or_steered(fresh_dynamo, monkeypatch, name, how, guards):
    """A static-cache decode compiled before the block, without a torch.compile wrapper. Measured with hook
    guards off and no refusal: the forward recipe decoded the unsteered tokens inside the block, generate's
    compiled call a mix of steered prefill and unsteered steps. Now entering the block is refused with the
    fix; with hook guards on, the block decodes eager's steered tokens and, after it, the unsteered ones."""
    from torch._dynamo.utils import counters

    if why := unavailable(name):
        pytest.skip(why)
    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", not guards)
    model = random_model("tiny-llama-random")
    ids = batch([6], 6, seed=7)[0]
    steer, specs = backend(name).steer, [SteeringSpec(1, "resid_pre", 8 * vec(3), 1.0)]
    decode = dict(max_new_tokens=6, do_sample=False, cache_implementation="static")
    unsteered = model.generate(ids, **decode)
    with steer(model, specs):
        steered = model.generate(ids, **decode)
    assert not torch.equal(steered, unsteered)  # the check can fail
    decode |= UNWRAPPED_COMPILES[how](model)
    graphs = counters["stats"]["unique_graphs"]
    assert torch.equal(model.generate(ids, **decode), unsteered)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    if not guards:
        with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards = False"):
            with steer(model, specs):
                pass
        return
    with steer(model, specs):
        assert torch.equal(model.generate(ids, **decode), steered)
    assert torch.equal(model.generate(ids, **decode), unsteered)


def _compile_each_block(model):
    for block in model.model.layers:
        block.compile(backend="eager")


def _wrap_each_block(model):
    layers = model.model.layers
    for i, block in enumerate(layers):
        layers[i] = torch.compile(block, backend="eager")


# Regional compilation, PyTorch's recipe for a shorter compile: the blocks, not the model.
REGIONAL = {"block.compile()": _compile_each_block, "layers[i] = torch.compile(block)": _wrap_each_block}


@pytest.mark.parametrize("guards", [False, True], ids=["hook guards off", "hook guards on"])
@pytest.mark.parametrize("how", REGIONAL)
@pytest.mark.parametrize("name", [name for name in ("pytorch_hooks", "baukit_tracedict") if name in COMPILED])
def test_blocks_compiled_one_by_one_are_refused_or_steered(fresh_dynamo, monkeypatch, name, how, guards):
    """Each decoder block compiled before the steer block. Measured with hook guards off and no refusal:
    the hook on the MLP inside a compiled block never ran (logits exactly the unsteered). Now entering
    the block is refused with the fix; with hook guards on, the model is steered inside (within 1e-5
    of eager) and unsteered after."""
    from torch._dynamo.utils import counters

    if why := unavailable(name):
        pytest.skip(why)
    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", not guards)
    model = random_model("tiny-llama-random")
    ids, mask = batch([6, 4], 6, seed=5)
    steer, specs = backend(name).steer, [SteeringSpec(1, "mlp_out", 8 * vec(3)), SteeringSpec(2, "resid_post", vec(4))]
    unsteered = hf_logits(model, ids, mask)
    with steer(model, specs):
        steered = hf_logits(model, ids, mask)
    assert not torch.allclose(steered, unsteered, atol=1e-3)  # the check can fail
    REGIONAL[how](model)
    graphs = counters["stats"]["unique_graphs"]
    assert torch.allclose(hf_logits(model, ids, mask), unsteered, atol=1e-5)
    assert counters["stats"]["unique_graphs"] > graphs  # it compiled
    if not guards:
        with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards = False"):
            with steer(model, specs):
                pass
        return
    with steer(model, specs):
        assert torch.allclose(hf_logits(model, ids, mask), steered, atol=1e-5)
    assert torch.allclose(hf_logits(model, ids, mask), unsteered, atol=1e-5)


def test_a_compiled_decode_of_padded_prompts_has_one_graph_per_shape(fresh_dynamo, monkeypatch):
    """forward = torch.compile(forward), a left-padded batch decoded with the dynamic cache, where the
    2-D mask covers the cache and its last columns are read at every step: eager's steered tokens,
    no graph break, and a second generate compiles nothing new. (Reading the mask's storage_offset()
    to make that view measured 8 graph breaks here.) On pytorch_hooks: the view is spec.py's, the
    same under every hook backend."""
    from torch._dynamo.utils import counters

    steer = backend("pytorch_hooks").steer
    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", False)
    model = random_model("tiny-llama-random")
    ids, mask = batch([6, 4], 6, seed=5)
    specs = [SteeringSpec(1, "resid_pre", 8 * vec(3)), SteeringSpec(2, "mlp_out", 8 * vec(4), start=2)]
    decode = dict(attention_mask=mask, max_new_tokens=6, do_sample=False)
    unsteered = model.generate(ids, **decode)
    with steer(model, specs):
        eager = model.generate(ids, **decode)
    assert not torch.equal(eager, unsteered)  # the check can fail
    # dynamo counts per process, over every test it ran: compare with before.
    breaks, before = counters["graph_break"].copy(), counters["stats"]["unique_graphs"]
    model.forward = torch.compile(model.forward, backend="eager")
    with steer(model, specs):
        assert torch.equal(model.generate(ids, **decode), eager)
        graphs = counters["stats"]["unique_graphs"]
        assert torch.equal(model.generate(ids, **decode), eager)
    assert graphs > before and counters["stats"]["unique_graphs"] == graphs  # it compiled, then only reused
    assert counters["graph_break"] == breaks


# --- blocks left out of order --------------------------------------------------------------------


def leave_outer_first(model, steer, a, b, ids, mask) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (unsteered, under B alone, under what is left after entering A, entering B, leaving A);
    B is left too before this returns."""
    unsteered = hf_logits(model, ids, mask)
    with steer(model, b):
        b_alone = hf_logits(model, ids, mask)
    outer, inner = steer(model, a), steer(model, b)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)  # A first
    only_b = hf_logits(model, ids, mask)
    inner.__exit__(None, None, None)
    return unsteered, b_alone, only_b


@pytest.mark.parametrize("name", params(HF_BACKENDS))
def test_blocks_left_out_of_order_keep_the_remaining_steering_exact(model, name):
    """Enter A, enter B, leave A first: what is left steers exactly as B alone would (bitwise for
    the hooks; bias editing within 1e-6 of B alone, float order), and once B is left too the model
    is bitwise as before -- same modules, state_dict, hooks."""
    ids, mask = batch([6, 4], 6, seed=6)
    steer = backend(name).steer
    a = specs_for(name)
    b = [SteeringSpec(2, "attn_out", 4 * vec(7)), SteeringSpec(1, "resid_pre", 4 * vec(8))]
    before = snapshot(model)
    unsteered, b_alone, only_b = leave_outer_first(model, steer, a, b, ids, mask)
    assert_unchanged(before, model)
    assert torch.equal(hf_logits(model, ids, mask), unsteered)
    if name == "bias_editing":
        assert torch.allclose(only_b, b_alone, atol=1e-6)
    else:
        assert torch.equal(only_b, b_alone)
    assert not torch.equal(b_alone, unsteered)


MIXED = [pytest.param(a, b, id=f"{a}, then {b}") for a in HF_BACKENDS for b in HF_BACKENDS if a != b]


@pytest.mark.parametrize(("a_name", "b_name"), MIXED)
def test_blocks_of_two_backends_left_out_of_order(model, a_name, b_name):
    """Enter A's block, then B's (another backend), leave A first: what is left steers exactly as B alone
    (bias editing within 1e-6) -- except where B's hooks sit on the wrappers custom_wrapper put in the
    model, which leave with them: there leaving A raises, naming the order. Measured before it raised:
    B's hooks silently gone (B's MLP steering undone, or every call refused as outside a decoder call).
    Once B is left too, the model is bitwise as before either way."""
    if why := unavailable(a_name) or unavailable(b_name):
        pytest.skip(why)
    ids, mask = batch([6, 4], 6, seed=6)
    b = [SteeringSpec(2, "attn_out", 4 * vec(7)), SteeringSpec(1, "mlp_out", 4 * vec(8))]
    before = snapshot(model)
    with backend(b_name).steer(model, b):
        b_alone = hf_logits(model, ids, mask)
    outer, inner = backend(a_name).steer(model, specs_for(a_name)), backend(b_name).steer(model, b)
    outer.__enter__()
    inner.__enter__()
    if a_name == "custom_wrapper" and b_name in ("pytorch_hooks", "baukit_tracedict"):
        with pytest.raises(RuntimeError, match="reverse order of entering"):
            outer.__exit__(None, None, None)
    else:
        outer.__exit__(None, None, None)
        only_b = hf_logits(model, ids, mask)
        assert (
            torch.allclose(only_b, b_alone, atol=1e-6, rtol=0)
            if "bias_editing" in (a_name, b_name)
            else torch.equal(only_b, b_alone)
        )
    inner.__exit__(None, None, None)
    assert_unchanged(before, model)
    assert not torch.equal(b_alone, hf_logits(model, ids, mask))  # B steers: the check can fail


def test_a_hook_left_on_a_wrapper_is_reported_when_its_block_is_left(model):
    """A hook the caller registers inside a custom_wrapper block on the module at a steered name (the
    wrapper) would leave the model with the wrapper: leaving the block says so, and the model is as before."""
    from steering_backends.layout import layout_of, site_module_name

    before = snapshot(model)
    with pytest.raises(RuntimeError, match="remove hooks added inside a block"):
        with backend("custom_wrapper").steer(model, [SteeringSpec(1, "resid_post", vec(1))]):
            model.get_submodule(site_module_name(layout_of(model), 1, "resid_post")).register_forward_hook(
                lambda module, args, output: None
            )
    assert_unchanged(before, model)


def test_weight_orthogonalisation_blocks_left_out_of_order(model):
    """Enter A, enter B, leave A first, with ablations that share the embedding (tied to lm_head on GPT-2)
    and one output projection: what is left removes B's directions alone, bitwise, lm_head still reads the
    original matrix, and once B is left the model is bitwise as before, tie included. (Restoring the values
    saved at entry, as it did, left A's directions in with B's, and B's exit restored A's edit.)"""
    from steering_backends.weight_orthogonalisation import steer

    ids, mask = batch([6, 4], 6, seed=6)
    a = [SteeringSpec(0, "resid_pre", vec(11), op="ablate"), SteeringSpec(2, "attn_out", vec(12), op="ablate")]
    b = [SteeringSpec(0, "resid_pre", vec(13), op="ablate"), SteeringSpec(2, "attn_out", vec(14), op="ablate")]
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    before = snapshot(model)
    unsteered, b_alone, only_b = leave_outer_first(model, steer, a, b, ids, mask)
    assert torch.equal(only_b, b_alone)
    assert_unchanged(before, model)
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied
    assert torch.equal(hf_logits(model, ids, mask), unsteered)
    assert not torch.equal(b_alone, unsteered)


# --- inputs_embeds -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params(HF_BACKENDS))
def test_inputs_embeds_are_steered_as_input_ids_are(model, name):
    """The same call made with inputs_embeds (the token embeddings of the ids), made before the block or
    inside it, is steered at every site, resid_pre of block 0 included, exactly as with input_ids.
    (baukit steers that site at the embedding module's output on Llama: run by the caller outside a
    decoder call, it raised as if a block had been called directly. Bias editing on Llama cannot take
    resid_pre of block 0 at all, with ids or embeddings: rotary models have no position table.)"""
    ids, mask = batch([6, 4], 6, seed=7)
    if name != "bias_editing":
        specs = [SteeringSpec(0, "resid_pre", 4 * vec(9), start=1), *position_dependent()]
    elif model.config.model_type == "gpt2":
        specs = [SteeringSpec(0, "resid_pre", 4 * vec(9)), *position_free()]
    else:
        specs = position_free()
    made_before = model.get_input_embeddings()(ids)
    with backend(name).steer(model, specs):
        with_ids = hf_logits(model, ids, mask)
        for embeds in (made_before, model.get_input_embeddings()(ids)):
            with_embeds = model(inputs_embeds=embeds, attention_mask=mask, position_ids=hf_positions(mask)).logits
            assert torch.equal(with_embeds, with_ids)
    assert not torch.equal(with_ids, hf_logits(model, ids, mask))


# --- output_hidden_states ------------------------------------------------------------------------


def hidden_states(model, ids, mask) -> tuple[torch.Tensor, ...]:
    return model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)[
        "hidden_states"
    ]


@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_output_hidden_states_show_what_the_docs_say(model, name):
    """Where transformers records hidden states with forward hooks of its own (transformers 5; Llama
    in transformers 4.57) and they were installed before the block (output_hidden_states asked for
    earlier), they run before the steering hooks: hidden_states[2] is block 1's output without its
    resid_post addition, bitwise the unsteered one, while the logits are steered as under bias
    editing (1e-4 of the scale, its parity tolerance). Where the decoder's loop collects them from
    what each block returned (GPT-2 in transformers 4), every entry agrees with bias editing."""
    ids, mask = batch([6, 4], 6, seed=8)
    specs = [SteeringSpec(1, "resid_post", 4 * vec(10)), SteeringSpec(2, "attn_out", 4 * vec(11))]
    unsteered = hidden_states(model, ids, mask)  # installs transformers' capture hooks, if it has them
    with backend("bias_editing").steer(model, specs):
        reference = hidden_states(model, ids, mask)
    with backend(name).steer(model, specs):
        got = hidden_states(model, ids, mask)
    scale = max(h.abs().max() for h in reference)
    if TRANSFORMERS_4 and model.config.model_type == "gpt2":
        assert all((g - r)[mask.bool()].abs().max() <= 1e-4 * scale for g, r in zip(got, reference, strict=True))
    else:
        assert torch.equal(got[2], unsteered[2])
        assert (got[-1] - reference[-1])[mask.bool()].abs().max() <= 1e-4 * scale
    assert not torch.allclose(reference[2], unsteered[2], atol=1e-3)  # the check can fail


@pytest.mark.parametrize("name", params(HF_HOOKS))
@pytest.mark.parametrize("arch", TINY)
def test_hidden_states_first_asked_inside_a_hook_block_are_steered_there(arch, name):
    """transformers 5 installs its capture hooks at the first call that asks for hidden states. Asked first
    inside a pytorch_hooks or baukit block, they come after the steering hooks: there hidden_states[2] is
    block 1's output with its resid_post addition (as bias editing records it, within 1e-4 of the scale);
    in a later block they come first, and it is the unsteered output again. Under custom_wrapper they are
    installed on the wrapped block, which the wrapper's edit follows: unsteered both times. (transformers
    4.57's Llama records it unsteered either way under pytorch_hooks: measured, bitwise.)"""
    model = random_model(arch)
    if TRANSFORMERS_4:
        pytest.skip("transformers 5's capture hooks; in 4.57 GPT-2 collects hidden states in its loop")
    ids, mask = batch([6, 4], 6, seed=8)
    specs = [SteeringSpec(1, "resid_post", 4 * vec(10))]
    with backend(name).steer(model, specs):
        first = hidden_states(model, ids, mask)
    unsteered = hidden_states(model, ids, mask)
    with backend(name).steer(model, specs):
        later = hidden_states(model, ids, mask)
    with backend("bias_editing").steer(model, specs):
        reference = hidden_states(model, ids, mask)
    scale = max(h.abs().max() for h in reference)
    if name == "custom_wrapper":
        assert torch.equal(first[2], unsteered[2])
    else:
        assert (first[2] - reference[2])[mask.bool()].abs().max() <= 1e-4 * scale
    assert torch.equal(later[2], unsteered[2])
    assert not torch.allclose(reference[2], unsteered[2], atol=1e-3)  # the check can fail


def test_weight_orthogonalisation_hidden_states_show_the_ablated_stream(model):
    """The weights themselves write the ablated stream, so every block's hidden_states entry is what hook
    ablation at the same sites gives (within 1e-4 of the scale, the backend's parity tolerance), and entry 0
    is the embeddings with u removed. (Under hooks, entry 0 is recorded before block 0's pre-hook on GPT-2
    in transformers 4: the embeddings as they were.)"""
    ids, mask = batch([6, 4], 6, seed=8)
    unsteered = hidden_states(model, ids, mask)
    with backend("pytorch_hooks").steer(model, ablations()):
        reference = hidden_states(model, ids, mask)
    with backend(WEIGHTS).steer(model, ablations()):
        got = hidden_states(model, ids, mask)
    scale = max(h.abs().max() for h in reference)
    for i, (g, r) in enumerate(zip(got[1:], reference[1:], strict=True), start=1):
        assert (g - r)[mask.bool()].abs().max() <= 1e-4 * scale, f"hidden_states[{i}]"
    u = ablations()[0].vector / ablations()[0].vector.norm()
    embeddings = unsteered[0] - (unsteered[0] @ u)[..., None] * u  # [B, T, d_model]
    assert (got[0] - embeddings)[mask.bool()].abs().max() <= 1e-4 * scale
    assert not torch.allclose(reference[1], unsteered[1], atol=1e-3)  # the check can fail


# --- static cache --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", params([*HF_BACKENDS, WEIGHTS]))
def test_a_static_cache_decodes_the_tokens_of_the_dynamic_one(model, name):
    """generate(cache_implementation="static") hands the decoder a 4-D mask [B, 1, T, keys]; a left-
    padded batch with start > 0 and an [n, d_model] vector decodes the same 8 greedy tokens as with
    the default dynamic cache, and they are steered. (Weight orthogonalisation's two ablations leave the
    tiny GPT-2's greedy tokens as they were, so for it the step scores show the steering.)"""
    ids, mask = batch([6, 3], 6, seed=9)
    kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    kwargs |= dict(output_logits=True, return_dict_in_generate=True)
    with backend(name).steer(model, specs_for(name)):
        dynamic = model.generate(ids, **kwargs)
        static = model.generate(ids, cache_implementation="static", **kwargs)
    assert static.sequences.tolist() == dynamic.sequences.tolist()
    unsteered = model.generate(ids, cache_implementation="static", **kwargs)
    if name == WEIGHTS:
        assert not torch.allclose(torch.stack(unsteered.logits), torch.stack(static.logits), atol=1e-3)
    else:
        assert unsteered.sequences.tolist() != static.sequences.tolist()


def windowed(arch: str):
    """A tiny model whose decoder gets more than a plain causal mask from a static cache: Gemma 2 and 3, one
    4-D mask per attention type (a dict); Mistral with a sliding window of 4 keys, shorter than the
    prompts (its mask and attention read the window from the config at each call)."""
    model = random_model(arch)
    if arch == "tiny-mistral-random":
        model.config.sliding_window = 4
    return model


@pytest.mark.parametrize("arch", ["tiny-gemma2-random", "tiny-gemma3-random", "tiny-mistral-random"])
@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_a_static_cache_decodes_the_dynamic_ones_tokens_past_a_sliding_window(name, arch):
    """Under a sliding window a token attends only its last few keys, so counting them does not give its
    position; generate's position_ids do. Left-padded prompts, start=6 and an [n, d_model] vector from
    position 5, all past Mistral's window of 4: the static cache decodes the dynamic cache's 6 tokens
    with the same step scores (within 1e-5; measured: at most 1.5e-7, largest score 0.74), and steered (by 1.0-1.2)."""
    model = windowed(arch)
    ids, mask = batch([9, 7], 9, seed=13)
    kwargs = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    kwargs |= dict(output_logits=True, return_dict_in_generate=True)
    specs = [
        SteeringSpec(2, "resid_post", 8 * vec(1), start=6),
        SteeringSpec(1, "attn_out", 8 * torch.stack([vec(2), vec(3)]), start=5),
    ]
    with backend(name).steer(model, specs):
        dynamic = model.generate(ids, **kwargs)
        static = model.generate(ids, cache_implementation="static", **kwargs)
    assert static.sequences.tolist() == dynamic.sequences.tolist()
    assert torch.allclose(torch.stack(static.logits), torch.stack(dynamic.logits), atol=1e-5, rtol=0)
    unsteered = model.generate(ids, cache_implementation="static", **kwargs)
    assert not torch.allclose(torch.stack(unsteered.logits), torch.stack(static.logits), atol=1e-2)


# --- nothing an accelerator waits for -----------------------------------------------------------


class DeviceWaits(TorchDispatchMode):
    """Counts the ops run inside it that, with tensors on an accelerator, make the host wait for the
    device: reading a value back (``.item()``, ``bool(t)``, ``int(t)``: aten._local_scalar_dense) and
    building a tensor from Python data (``torch.tensor(...)``: aten.lift_fresh, then a blocking copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = self.built = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.reads += func is torch.ops.aten._local_scalar_dense.default
        self.built += func is torch.ops.aten.lift_fresh.default
        return func(*args, **(kwargs or {}))


def waits(run) -> tuple[int, int]:
    """(reads, built) of DeviceWaits while ``run()`` runs, without grad."""
    with torch.no_grad(), DeviceWaits() as counted:
        run()
    return counted.reads, counted.built


def waits_per_call(model, ids, mask) -> list[tuple[int, int]]:
    """(reads, built) in a left-padded prefill and in the decoding step after it."""
    prefill = {}

    def run_prefill():
        prefill["out"] = model(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), use_cache=True)

    counts = [waits(run_prefill)]
    step_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    step = dict(attention_mask=step_mask, position_ids=hf_positions(step_mask)[:, -1:], use_cache=True)
    next_ids = torch.full_like(ids[:, :1], 7)  # fixed, so steered and unsteered run the same step
    counts.append(waits(lambda: model(input_ids=next_ids, past_key_values=prefill["out"].past_key_values, **step)))
    return counts


def every_kind_but_per_position() -> list[SteeringSpec]:
    """From position 0 at two sites (the mask cast once), start > 0, rows, ablate, cap."""
    return [
        SteeringSpec(1, "resid_pre", 4 * vec(1)),
        SteeringSpec(1, "attn_out", 4 * vec(2), start=2),
        SteeringSpec(2, "mlp_out", 4 * vec(3), rows=(True, False, True)),
        SteeringSpec(2, "resid_post", 4 * vec(4)),
        SteeringSpec(3, "resid_pre", vec(5), op="ablate"),
        SteeringSpec(3, "resid_post", vec(6), 0.5, op="cap"),
    ]


@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_steering_makes_the_host_wait_for_nothing(model, name):
    """A left-padded prefill and a decoding step, steered by every kind of spec but an [n, d_model] vector:
    the steered calls read back and build from Python data exactly what the unsteered model does (a
    rows spec's flags are built at the first call of each batch size, then kept)."""
    ids, mask = batch([6, 3, 5], 6, seed=11)
    unsteered = waits_per_call(model, ids, mask)
    with backend(name).steer(model, every_kind_but_per_position()):
        first = waits_per_call(model, ids, mask)
        steered = waits_per_call(model, ids, mask)
    assert [reads for reads, _ in first] == [reads for reads, _ in unsteered]
    assert first[0][1] > unsteered[0][1]  # the rows flags, built once: the counter sees what it must
    assert steered == unsteered


@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_an_n_by_d_model_vector_reads_back_one_number_per_prompt(model, name):
    """The one exception: with an [n, d_model] vector, each prefill reads back the shortest prompt's
    length, to refuse a prompt too short for it with a clear error; decoding steps read nothing."""
    ids, mask = batch([6, 3, 5], 6, seed=11)
    unsteered = waits_per_call(model, ids, mask)
    with backend(name).steer(model, [SteeringSpec(2, "attn_out", 4 * torch.stack([vec(2), vec(3)]), start=1)]):
        steered = waits_per_call(model, ids, mask)
    assert [reads for reads, _ in steered] == [unsteered[0][0] + 1, unsteered[1][0]]
    assert [built for _, built in steered] == [built for _, built in unsteered]


@pytest.mark.parametrize("name", params(HF_HOOKS))
def test_a_static_cache_without_a_mask_makes_the_host_wait_for_nothing(model, name):
    """Called directly with a StaticCache and no attention_mask, the decoder learns its past length from
    the cache, which counts it in a tensor: steering reads it only for an [n, d_model] vector (to know
    whether the call is a prefill), so a spec from position 2 reads back nothing the unsteered model does not."""
    from transformers import StaticCache

    ids = torch.tensor([[11, 12, 13, 14, 15, 16]])

    def step_waits():
        cache = StaticCache(config=model.config, max_cache_len=16)
        with torch.no_grad():
            model(input_ids=ids, past_key_values=cache, use_cache=True)
        return waits(lambda: model(input_ids=torch.tensor([[7]]), past_key_values=cache, use_cache=True))

    unsteered = step_waits()
    with backend(name).steer(model, [SteeringSpec(1, "resid_post", 4 * vec(1), start=2)]):
        assert step_waits() == unsteered


def test_bias_editing_refuses_train_mode_with_dropout():
    """In train() mode GPT-2's dropout follows c_proj, so an edited bias would be dropped and
    rescaled where a hook adds after the dropout: refused, with the reason, and the model untouched."""
    model = random_model("tiny-gpt2-random").train()
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"train\(\) mode with dropout"):
        with backend("bias_editing").steer(model, position_free()):
            pass
    assert_unchanged(before, model)


# --- TransformerLens and nnsight -----------------------------------------------------------------
# Both steer an object built around the HF model (a TransformerBridge, an nnsight model): each gets
# its own copy of the tiny model, built once.


@pytest.fixture(scope="session")
def bridge(model):
    if why := unavailable("transformer_lens_hooks"):
        pytest.skip(why)
    from steering_backends.models import gpt2_tokenizer
    from steering_backends.transformer_lens_hooks import bridge_from_hf

    bridge = bridge_from_hf(model, gpt2_tokenizer())
    lens_logits(bridge, *batch([3], 3, seed=0))  # the bridge adds hooks of its own at its first call
    return bridge


@pytest.fixture(scope="session")
def lm(model):
    if why := unavailable("nnsight_trace"):
        pytest.skip(why)
    from steering_backends.models import gpt2_tokenizer
    from steering_backends.nnsight_trace import nnsight_from_hf

    return nnsight_from_hf(model, gpt2_tokenizer())


def lens_logits(bridge, ids, mask) -> torch.Tensor:
    return bridge(ids, attention_mask=mask)


def nnsight_logits(lm, ids, mask, **kwargs) -> torch.Tensor:
    return lm.trace(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), trace=False, **kwargs).logits


def concurrent_outputs(run, inputs, n_calls: int = 12, lock=None):
    """Two threads, started together, each calling ``run(*inputs[i])`` n_calls times (under ``lock``,
    if given): ([outputs of thread 0, of thread 1], errors)."""
    got, errors, start = [[], []], [], threading.Barrier(2)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(n_calls):
                with lock or contextlib.nullcontext():
                    got[i].append(run(*inputs[i]))
        except Exception as err:  # noqa: BLE001 - reported by the caller
            errors.append((i, err))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    return got, errors


def test_transformer_lens_serves_concurrent_calls_in_one_block(bridge):
    """The bridge's hook points run inside the wrapped decoder's call, so positions come from that
    call's ContextVar: two threads, 2 and 3 rows, different padding, every output bitwise its own."""
    from steering_backends.transformer_lens_hooks import steer

    inputs = [batch([6, 4], 6, seed=0), batch([3, 7, 5], 7, seed=1)]
    with steer(bridge, position_dependent()):
        want = [lens_logits(bridge, ids, mask) for ids, mask in inputs]
        got, errors = concurrent_outputs(lambda ids, mask: lens_logits(bridge, ids, mask), inputs)
    assert not errors, errors
    assert all(len(got[i]) == 12 and all(torch.equal(out, want[i]) for out in got[i]) for i in range(2))
    assert not torch.equal(lens_logits(bridge, *inputs[0]), want[0])


def test_nnsight_runs_from_two_threads_are_steered_right_one_at_a_time(lm):
    """nnsight runs are not thread-safe (unsteered too: nnsight raises "parent cannot be on a different
    thread" when two overlap), so the docs say: one run at a time. Under a lock, two threads inside
    one block each get their own positions, bitwise."""
    from steering_backends.nnsight_trace import steer

    inputs = [batch([6, 4], 6, seed=0), batch([3, 7, 5], 7, seed=1)]
    with steer(lm, position_dependent()):
        want = [nnsight_logits(lm, ids, mask) for ids, mask in inputs]
        got, errors = concurrent_outputs(lambda ids, mask: nnsight_logits(lm, ids, mask), inputs, 6, threading.Lock())
    assert not errors, errors
    assert all(len(got[i]) == 6 and all(torch.equal(out, want[i]) for out in got[i]) for i in range(2))
    assert not torch.equal(nnsight_logits(lm, *inputs[0]), want[0])


def test_transformer_lens_gradient_is_the_same_with_and_without_checkpointing(bridge):
    """Gradient checkpointing enabled on the wrapped HF model recomputes the bridge's blocks under
    the call that ran them: the vector's gradient is the same (1e-5 relative, as for the hooks).
    The bridge draws random numbers in train() mode on GPT-2 even with dropout at 0, so every run
    starts from one seed (checkpointing replays the RNG state it saw)."""
    from steering_backends.transformer_lens_hooks import steer

    def gradient(checkpointing: bool, accumulate: bool) -> torch.Tensor:
        return vector_gradient(steer, bridge, bridge.original_model, lens_logits, checkpointing, accumulate)

    reference = gradient(False, False)
    assert reference.norm() > 0
    for checkpointing, accumulate in ((False, True), (True, False), (True, True)):
        gap = (gradient(checkpointing, accumulate) - reference).abs().max() / reference.abs().max()
        assert gap <= 1e-5, f"checkpointing={checkpointing}, accumulate={accumulate}: relative gap {gap:.2e}"


@pytest.mark.parametrize("which", ["transformer_lens_hooks", "nnsight_trace"])
def test_lens_and_nnsight_make_the_host_wait_for_nothing(request, model, which):
    """As for the HF backends: a steered left-padded prefill (after the first) reads back and builds
    from Python data exactly what the unsteered one does."""
    wrapped = request.getfixturevalue("bridge" if which == "transformer_lens_hooks" else "lm")
    logits = lens_logits if which == "transformer_lens_hooks" else nnsight_logits
    ids, mask = batch([6, 3, 5], 6, seed=11)
    unsteered = waits(lambda: logits(wrapped, ids, mask))
    with backend(which).steer(wrapped, every_kind_but_per_position()):
        waits(lambda: logits(wrapped, ids, mask))
        steered = waits(lambda: logits(wrapped, ids, mask))
    assert steered == unsteered


def test_nnsight_refuses_gradient_checkpointing(lm):
    """A checkpointed block is recomputed during backward, outside nnsight's run, so unsteered: the
    block refuses it on entry, naming the fix, and leaves the model as it was."""
    from steering_backends.nnsight_trace import steer

    hf = lm._module
    hf.train()
    hf.gradient_checkpointing_enable()
    try:
        before = snapshot(lm)
        with pytest.raises(ValueError, match=r"gradient checkpointing is on.*gradient_checkpointing_disable"):
            with steer(lm, position_dependent()):
                pass
        assert_unchanged(before, lm)
    finally:
        hf.gradient_checkpointing_disable()
        hf.eval()


def test_a_compiled_bridge_is_refused_with_the_fix(fresh_dynamo, monkeypatch, model):
    """TransformerLens hook points are module hooks: a bridge compiled before the block would run
    without them, so the block refuses it, as pytorch_hooks does."""
    if why := unavailable("transformer_lens_hooks"):
        pytest.skip(why)
    from steering_backends.models import gpt2_tokenizer
    from steering_backends.transformer_lens_hooks import bridge_from_hf, steer

    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", True)
    bridge = bridge_from_hf(model, gpt2_tokenizer())
    torch.compile(bridge, backend="eager")
    with pytest.raises(RuntimeError, match="skip_nnmodule_hook_guards = False"):
        with steer(bridge, position_dependent()):
            pass


@pytest.mark.parametrize("model", ["tiny-llama-random"], indirect=True)  # the refusal above runs on both
def test_a_bridge_compiled_with_hook_guards_is_steered_inside_unsteered_after(fresh_dynamo, monkeypatch, model):
    """The fix the refusal names: with dynamo's hook guards on, a bridge compiled and called before the block
    recompiles with the block's hooks: steered inside (within 1e-5 of the eager bridge), unsteered after."""
    if why := unavailable("transformer_lens_hooks"):
        pytest.skip(why)
    from steering_backends.models import gpt2_tokenizer
    from steering_backends.transformer_lens_hooks import bridge_from_hf, steer

    monkeypatch.setattr(fresh_dynamo.config, "skip_nnmodule_hook_guards", False)
    bridge = bridge_from_hf(model, gpt2_tokenizer())
    ids, specs = IDS.repeat(2, 1), position_dependent()
    mask = torch.ones_like(ids)
    unsteered = bridge(ids, attention_mask=mask)
    with steer(bridge, specs):
        steered = bridge(ids, attention_mask=mask)
    assert (steered - unsteered).abs().max() > 0.1  # the specs change the logits, so the checks below can fail
    compiled = torch.compile(bridge, backend="eager")
    assert torch.allclose(compiled(ids, attention_mask=mask), unsteered, atol=1e-5)
    graphs = fresh_dynamo.utils.counters["stats"]["unique_graphs"]
    with steer(bridge, specs):
        assert torch.allclose(compiled(ids, attention_mask=mask), steered, atol=1e-5)
    assert torch.allclose(compiled(ids, attention_mask=mask), unsteered, atol=1e-5)
    assert fresh_dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # recompiled for the hooks, not eager


@pytest.mark.skipif(TRANSFORMERS_4, reason="compiled on the first leg's torch and transformers")
def test_an_nnsight_model_compiled_before_the_block_is_steered_inside_unsteered_after(fresh_dynamo, monkeypatch):
    """nnsight intercepts module calls in a way dynamo traces (and guards): after model.compile(),
    runs through nnsight are steered inside the block (1e-5 of eager) and unsteered after."""
    if why := unavailable("nnsight_trace"):
        pytest.skip(why)
    from steering_backends.models import gpt2_tokenizer
    from steering_backends.nnsight_trace import nnsight_from_hf, steer

    # nnsight's wrappers make dynamo recompile the same frames many times; past 2 versions of a frame
    # it runs that frame eagerly (correct either way; the default limit of 8 takes a minute here).
    monkeypatch.setattr(fresh_dynamo.config, "recompile_limit", 2)
    model = random_model("tiny-llama-random")
    lm = nnsight_from_hf(model, gpt2_tokenizer(), copy_model=False)
    ids, mask = batch([6, 4], 6, seed=5)
    specs = position_dependent()
    unsteered = nnsight_logits(lm, ids, mask)
    with steer(lm, specs):
        steered = nnsight_logits(lm, ids, mask)
    graphs = fresh_dynamo.utils.counters["stats"]["unique_graphs"]
    model.compile(backend="eager")
    assert torch.allclose(nnsight_logits(lm, ids, mask), unsteered, atol=1e-5)
    with steer(lm, specs):
        assert torch.allclose(nnsight_logits(lm, ids, mask), steered, atol=1e-5)
    assert torch.allclose(nnsight_logits(lm, ids, mask), unsteered, atol=1e-5)
    assert fresh_dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # it was compiled
    assert not torch.allclose(steered, unsteered, atol=1e-3)


@pytest.mark.parametrize("which", ["transformer_lens_hooks", "nnsight_trace"])
def test_lens_and_nnsight_blocks_left_out_of_order(request, model, which):
    """Enter A, enter B, leave A: what is left is B alone, bitwise; after B, as before."""
    wrapped = request.getfixturevalue("bridge" if which == "transformer_lens_hooks" else "lm")
    run = lens_logits if which == "transformer_lens_hooks" else nnsight_logits
    steer = backend(which).steer
    ids, mask = batch([6, 4], 6, seed=6)
    b = [SteeringSpec(2, "attn_out", 4 * vec(7)), SteeringSpec(1, "resid_pre", 4 * vec(8))]
    before = snapshot(wrapped)
    unsteered = run(wrapped, ids, mask)
    with steer(wrapped, b):
        b_alone = run(wrapped, ids, mask)
    outer, inner = steer(wrapped, position_dependent()), steer(wrapped, b)
    outer.__enter__()
    inner.__enter__()
    outer.__exit__(None, None, None)
    only_b = run(wrapped, ids, mask)
    inner.__exit__(None, None, None)
    assert_unchanged(before, wrapped)
    assert torch.equal(run(wrapped, ids, mask), unsteered)
    assert torch.equal(only_b, b_alone) and not torch.equal(b_alone, unsteered)


def test_transformer_lens_wrapped_model_takes_inputs_embeds(model, bridge):
    """The bridge's forward takes token ids only; the HF model it wraps, called with inputs_embeds,
    is steered at every site (resid_pre of block 0 included) bitwise as the bridge is with ids."""
    from steering_backends.transformer_lens_hooks import steer

    ids, mask = batch([6, 4], 6, seed=7)
    hf = bridge.original_model
    with steer(bridge, [SteeringSpec(0, "resid_pre", 4 * vec(9), start=1), *position_dependent()]):
        with_ids = lens_logits(bridge, ids, mask)
        embeds = hf.get_input_embeddings()(ids)
        with_embeds = hf(inputs_embeds=embeds, attention_mask=mask, position_ids=hf_positions(mask)).logits
    assert torch.equal(with_embeds, with_ids)
    assert not torch.equal(with_ids, lens_logits(bridge, ids, mask))


def test_nnsight_inputs_embeds_static_cache_and_hidden_states(model, lm):
    """Through nnsight: inputs_embeds steer as input_ids do (bitwise); a static cache decodes the
    dynamic cache's 8 greedy tokens, steered; output_hidden_states shows the steered stream (nnsight
    replaces the block's output before transformers records it), as bias editing's does (1e-4 of
    the scale, its parity tolerance, at real tokens)."""
    from steering_backends.nnsight_trace import steer

    ids, mask = batch([6, 3], 6, seed=9)
    specs = [SteeringSpec(0, "resid_pre", 4 * vec(9), start=1), *position_dependent()]
    embeds = model.get_input_embeddings()(ids)
    with steer(lm, specs):
        with_ids = nnsight_logits(lm, ids, mask)
        with_embeds = lm.trace(
            inputs_embeds=embeds, attention_mask=mask, position_ids=hf_positions(mask), trace=False
        ).logits
    assert torch.equal(with_embeds, with_ids) and not torch.equal(with_ids, nnsight_logits(lm, ids, mask))

    if not TRANSFORMERS_4:  # nnsight's padded generate there: see helpers.py
        kwargs = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
        with steer(lm, position_dependent()):
            dynamic = lm.generate(ids, **kwargs)
            static = lm.generate(ids, cache_implementation="static", **kwargs)
        assert static.tolist() == dynamic.tolist()
        assert lm.generate(ids, cache_implementation="static", **kwargs).tolist() != static.tolist()

    specs = [SteeringSpec(1, "resid_post", 4 * vec(10)), SteeringSpec(2, "attn_out", 4 * vec(11))]

    def nnsight_hidden_states() -> tuple[torch.Tensor, ...]:
        inputs = dict(input_ids=ids, attention_mask=mask, position_ids=hf_positions(mask), output_hidden_states=True)
        return lm.trace(**inputs, trace=False).hidden_states

    unsteered = nnsight_hidden_states()
    with backend("bias_editing").steer(model, specs):
        reference = hidden_states(model, ids, mask)
    with steer(lm, specs):
        got = nnsight_hidden_states()
    scale, real = max(h.abs().max() for h in reference), mask.bool()
    assert all((g - r)[real].abs().max() <= 1e-4 * scale for g, r in zip(got, reference, strict=True))
    assert not torch.allclose(got[2][real], unsteered[2][real], atol=1e-3)


def test_the_page_names_every_test_here_and_only_these():
    """docs/where_it_holds.md cites a test for each cell: each name it cites is defined in this file,
    and each test defined here is cited there, so the table cannot point at a renamed or missing test."""
    page = (Path(__file__).resolve().parent.parent / "docs" / "where_it_holds.md").read_text()
    cited = set(re.findall(r"`(test_\w+)`", page))
    defined = set(re.findall(r"^def (test_\w+)", Path(__file__).read_text(), re.MULTILINE))
    assert cited - defined == set(), "cited on the page, not defined here"
    assert defined - cited == set(), "defined here, not cited on the page"

"""Steering a model accelerate dispatched with a device_map: blocks on "cpu" and on "disk".

On this CPU-only machine accelerate executes every module on the CPU. A module mapped to
"cpu" stays resident, with accelerate's AlignDevicesHook on it; one mapped to "disk" keeps
its weights on the meta device between calls and reads them from the checkpoint's
safetensors file at each call (``models.load(..., device_map=..., offload_folder=...)``).
Every backend steers the dispatched model and the same model undispatched with the same
specs, sites on both kinds of block, block 0 and the last block included, and must give:

- the same steered logits on a left-padded batch, and the same greedy tokens and step
  logits with the KV cache: bitwise, since accelerate runs the same ops on the same
  weights (measured: 0 for every backend, case and model);
- after the block, accelerate's own hooks and weights maps in place, ours gone, the
  offloaded weights still on meta, and the unsteered logits of the undispatched model;
- the files accelerate reads from unchanged, by checksum (bias editing edits what
  accelerate loads, never the file).
"""

from __future__ import annotations

import hashlib
import re
from collections import ChainMap
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
from helpers import BACKEND_PARAMS
from model_state import assert_unchanged, snapshot

from steering_backends import SteeringSpec, backend
from steering_backends.layout import dims, get_module, layout_of
from steering_backends.models import SMOLLM2, cache_dir, load
from steering_backends.parity import (
    Runner,
    left_pad,
    make_runners,
    max_abs_diff,
    parity_cases,
    residual_rms,
    steered_logits,
    supports,
)

PROMPTS = ["I hate you because you are so", "Love is the answer, and", "The weather today"]
N_NEW = 3  # greedy tokens: the prefill's, then two steps from the KV cache


def split_map(model: torch.nn.Module, disk_blocks: set[int], rest: str = "cpu") -> dict[str, str]:
    """A device_map: the blocks in ``disk_blocks`` on "disk", the other blocks on "cpu", and the
    embeddings, final norm and unembedding on ``rest``. (accelerate needs every module named
    once: {"": "cpu", "model.layers.3": "disk"} fails, as do tied modules on two devices.)"""
    layout = layout_of(model)
    decoder = get_module(model, layout.decoder)
    others = [f"{layout.decoder}.{name}" for name, _ in decoder.named_children()]
    device_map = {name: rest for name in [*others, "lm_head"] if name != layout.blocks}
    device_map |= {f"{layout.blocks}.{i}": "disk" if i in disk_blocks else "cpu" for i in range(dims(model)[0])}
    # "cpu" entries first: nnsight's pipeline takes the model's device from the first (tested below).
    return dict(sorted(device_map.items(), key=lambda item: item[1] == "disk"))


def smollm2_cases(d_model: int, scale: float) -> dict[str, list[SteeringSpec]]:
    """SmolLM2's 30 blocks with 0, 10-19 and 29 on disk: sites on both kinds, across a boundary."""
    gen = torch.Generator().manual_seed(0)

    def vec(*shape: int) -> torch.Tensor:
        return scale * torch.randn(*shape, d_model, generator=gen)

    return {
        "resid_pre L0 (disk)": [SteeringSpec(0, "resid_pre", vec(), 4.0)],
        "mlp_out 12 (disk)": [SteeringSpec(12, "mlp_out", vec(), 4.0)],
        "post 19 (disk) + pre 20 (cpu)": [
            SteeringSpec(19, "resid_post", vec(), 2.0),
            SteeringSpec(20, "resid_pre", vec(), 2.0),
        ],
        "2-D start=1, 28 (cpu)": [SteeringSpec(28, "resid_pre", vec(2), 4.0, start=1)],
        "resid_post last (disk)": [SteeringSpec(-1, "resid_post", vec(), 4.0)],
    }


# (model, map label) -> (blocks on disk, device of the embeddings, norm and unembedding)
SETUPS = {
    ("tiny-gpt2-random", "odd blocks and embeddings on disk"): ({1, 3}, "disk"),
    ("tiny-gpt2-random", "even blocks on disk"): ({0, 2}, "cpu"),
    ("tiny-llama-random", "odd blocks and embeddings on disk"): ({1, 3}, "disk"),
    ("tiny-llama-random", "even blocks on disk"): ({0, 2}, "cpu"),
    (SMOLLM2, "blocks 0, 10-19, 29 on disk"): ({0, *range(10, 20), 29}, "cpu"),
}


def checksums(*folders: Path) -> dict[str, str]:
    """SHA-256 of every file under the folders accelerate reads offloaded weights from."""
    files = sorted(path for folder in folders for path in folder.rglob("*") if path.is_file())
    return {str(path): hashlib.sha256(path.read_bytes()).hexdigest() for path in files}


@dataclass
class OffloadRun:
    disk_blocks: set[int]
    n_meta: int  # parameters on the meta device in the dispatched model
    n_accelerate_hooks: int
    effect: dict = field(default_factory=dict)  # case -> max |steered - unsteered|, undispatched reference
    gaps: dict = field(default_factory=dict)  # backend -> {case: max |Δlogit| dispatched vs not, or None}
    greedy: dict = field(default_factory=dict)  # backend -> (ids equal, max |Δ| of the step logits)
    after: dict = field(default_factory=dict)  # backend -> what differs after the blocks ("" if nothing)
    after_gap: dict = field(default_factory=dict)  # backend -> max |Δ| unsteered, after vs undispatched
    files_before: dict = field(default_factory=dict)
    files_after: dict = field(default_factory=dict)
    skipped: dict = field(default_factory=dict)  # backend -> why it could not run
    refused: dict = field(default_factory=dict)  # backend -> its ValueError on this dispatched model
    embeddings_on_disk: bool = False


def compare(dispatched: Runner, plain: Runner, cases, gen_specs, ids, mask, run: OffloadRun) -> None:
    """One backend on the dispatched and the undispatched model; fills run's rows for it."""
    before, unsteered = snapshot(dispatched.model), plain.logits(ids, mask)
    run.gaps[plain.name] = {}
    for label, specs in cases.items():
        if not supports(plain, specs):
            run.gaps[plain.name][label] = None
            continue
        reference = steered_logits(plain, specs, ids, mask)
        run.effect.setdefault(label, max_abs_diff(reference, unsteered, mask))
        run.gaps[plain.name][label] = max_abs_diff(steered_logits(dispatched, specs, ids, mask), reference, mask)
    specs = gen_specs[supports(plain, gen_specs[True])]
    with plain.steer(plain.model, specs):
        ref_ids, ref_steps = plain.generate(ids, mask, N_NEW)
    with dispatched.steer(dispatched.model, specs):
        got_ids, got_steps = dispatched.generate(ids, mask, N_NEW)
    run.greedy[plain.name] = (torch.equal(got_ids, ref_ids), (got_steps - ref_steps).abs().max().item())
    try:
        assert_unchanged(before, dispatched.model)
        run.after[plain.name] = ""
    except AssertionError as err:
        run.after[plain.name] = str(err)
    run.after_gap[plain.name] = max_abs_diff(dispatched.logits(ids, mask), unsteered, mask)


@pytest.fixture(scope="module", params=list(SETUPS), ids=lambda key: f"{key[0]}: {key[1]}")
def run(request, tmp_path_factory) -> OffloadRun:
    name, _ = request.param
    disk_blocks, rest = SETUPS[request.param]
    plain_model, tokenizer = load(name)
    offload = tmp_path_factory.mktemp("offload")
    model, _ = load(name, device_map=split_map(plain_model, disk_blocks, rest), offload_folder=offload)
    # SmolLM2's offloaded blocks are read from its cached safetensors; a random model's from the copy load saved.
    read_from = [offload, cache_dir() / SMOLLM2] if name == SMOLLM2 else [offload]
    run = OffloadRun(
        disk_blocks,
        n_meta=sum(p.device.type == "meta" for p in model.parameters()),
        n_accelerate_hooks=sum(hasattr(m, "_hf_hook") for m in model.modules()),
        files_before=checksums(*read_from),
        embeddings_on_disk=rest == "disk",
    )
    ids, mask = left_pad(tokenizer, PROMPTS)
    n_layers, d_model = dims(plain_model)
    scale = residual_rms(plain_model, ids, mask) / 4
    if name == SMOLLM2:
        cases = smollm2_cases(d_model, scale)
        gen_specs = {
            True: cases["2-D start=1, 28 (cpu)"] + cases["mlp_out 12 (disk)"],
            False: cases["mlp_out 12 (disk)"],
        }
    else:
        cases = parity_cases(n_layers, d_model, scale=scale)
        gen_specs = {True: cases["1-D start=2"] + cases["2-D start=1 L0"], False: cases["two sites"]}
    # No copies: a model that needs offloading is not copied; the bridge takes it over, so it runs last.
    dispatched_runners, skipped = make_runners(model, tokenizer, copy_for_bridge=False)
    plain_runners, _ = make_runners(plain_model, tokenizer, copy_for_bridge=False)
    run.skipped = skipped
    print(f"\n{request.param}: skipped {skipped}")
    for dispatched, plain in zip(dispatched_runners, plain_runners, strict=True):
        try:  # builds the bridge or the nnsight model, which may refuse; a bridge adds hooks of its own at first use
            dispatched.logits(ids, mask)
        except ValueError as err:
            run.refused[plain.name] = str(err)
            continue
        plain.logits(ids, mask)
        compare(dispatched, plain, cases, gen_specs, ids, mask, run)
    run.files_after = checksums(*read_from)
    return run


def test_the_map_offloads_some_blocks_and_steered_sites_are_on_both_kinds(run):
    assert run.n_meta > 0 and run.n_accelerate_hooks > 0, "nothing was offloaded: the test would prove nothing"
    assert all(effect > 0.1 for effect in run.effect.values()), f"steering must change the logits: {run.effect}"


def test_only_the_bridge_and_nnsight_refuse_and_only_with_the_embeddings_offloaded(run):
    """Both put inputs on the device of the embeddings' weight, which is meta when offloaded."""
    expected = {"transformer_lens_hooks", "nnsight_trace"} if run.embeddings_on_disk else set()
    assert run.refused.keys() == expected, run.refused
    if run.embeddings_on_disk:
        assert run.refused["transformer_lens_hooks"].startswith("the input embeddings are offloaded (on the meta")
        assert re.match(r"\S+\.weight is offloaded \(on the meta device\); nnsight moves", run.refused["nnsight_trace"])


def test_steered_logits_on_a_padded_batch_are_bitwise_the_undispatched_models(run):
    for name, gaps in run.gaps.items():
        for label, gap in gaps.items():
            assert gap in (None, 0.0), f"{name}, {label}: {gap:.2e} from the undispatched model"
        assert any(gap is not None for gap in gaps.values())


def test_greedy_tokens_with_the_cache_are_the_undispatched_models(run):
    for name, (same_ids, step_gap) in run.greedy.items():
        assert same_ids, f"{name}: greedy ids differ from the undispatched model's"
        assert step_gap == 0.0, f"{name}: step logits are {step_gap:.2e} from the undispatched model's"


def test_after_the_block_accelerate_is_in_place_ours_is_gone_and_outputs_are_the_undispatched_models(run):
    assert run.after.keys() == run.gaps.keys()
    for name, what in run.after.items():
        assert not what, f"{name}: {what}"
        assert run.after_gap[name] == 0.0, f"{name}: unsteered logits are {run.after_gap[name]:.2e} off afterwards"


def test_the_files_accelerate_reads_are_unchanged(run):
    assert run.files_before and run.files_after == run.files_before


# --- one backend at a time on a small dispatched model: failure, nesting, refusals, load() --------------------------

IDS = torch.tensor([[40, 5465, 345, 780, 345, 389, 523]])  # "I hate you because you are so"
MASK = torch.ones_like(IDS)


@pytest.fixture(params=["tiny-gpt2-random", "tiny-llama-random"])
def pair(request, tmp_path):
    """(dispatched model, the same model undispatched, offload folder): blocks 1 and 3 on disk."""
    plain, _ = load(request.param)
    model, _ = load(request.param, device_map=split_map(plain, {1, 3}), offload_folder=tmp_path)
    return model, plain, tmp_path


def runner_for(name: str, model: torch.nn.Module, tokenizer) -> Runner:
    (runner,), _ = make_runners(model, tokenizer, copy_for_bridge=False, names=[name])
    runner.logits(IDS, MASK)  # a bridge adds hooks of its own at first use
    return runner


@pytest.mark.parametrize("pair", ["tiny-llama-random"], indirect=True)
@pytest.mark.parametrize("name", BACKEND_PARAMS)
def test_restored_when_the_body_or_a_hook_inside_an_offloaded_block_raises(pair, tokenizer, name):
    model, plain, folder = pair
    files = checksums(folder)
    dispatched, reference = runner_for(name, model, tokenizer), runner_for(name, plain, tokenizer)
    before, unsteered = snapshot(dispatched.model), reference.logits(IDS, MASK)
    specs = [SteeringSpec(1, "mlp_out", vec(1), 3.0), SteeringSpec(3, "attn_out", vec(2), 3.0)]  # both on disk

    def fail(module, args, output):
        raise RuntimeError("a hook failed mid-forward")

    with pytest.raises(KeyboardInterrupt), dispatched.steer(dispatched.model, specs):
        dispatched.logits(IDS, MASK)
        raise KeyboardInterrupt
    assert_unchanged(before, dispatched.model)
    # On block 3 (on disk), after the steering at block 1 and at this very module has run.
    attention = model.get_submodule(f"{layout_of(model).blocks}.3.{layout_of(model).attn}")
    with pytest.raises(RuntimeError, match="mid-forward"), dispatched.steer(dispatched.model, specs):
        handle = attention.register_forward_hook(fail)
        try:
            dispatched.logits(IDS, MASK)
        finally:
            handle.remove()  # the test's own hook; ours must be gone on their own
    assert_unchanged(before, dispatched.model)
    assert torch.equal(dispatched.logits(IDS, MASK), unsteered)
    assert checksums(folder) == files


def vec(seed: int) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator().manual_seed(seed))


def test_bias_editing_edits_what_accelerate_loads_and_puts_its_map_back(pair):
    """An offloaded module's weights are on meta; its accelerate hook reads them from a
    weights map at each call. Bias editing layers its edit over that map for the block."""
    model, plain, folder = pair
    files, before = checksums(folder), snapshot(model)
    layout = layout_of(model)
    proj = model.get_submodule(f"{layout.blocks}.1.{layout.mlp_out_proj}")  # block 1: on disk
    hook = proj._hf_hook
    weights_map, had_bias = hook.weights_map, proj.bias is not None
    specs = [SteeringSpec(1, "mlp_out", vec(1), 3.0)]
    bias_editing = backend("bias_editing")
    with bias_editing.steer(plain, specs):
        expected = plain(IDS, attention_mask=MASK).logits
    with bias_editing.steer(model, specs):
        assert proj.bias.device.type == "meta"  # still offloaded: the edit is in what accelerate loads
        assert isinstance(hook.weights_map, ChainMap) and hook.weights_map.parents is not None
        original = weights_map["bias"] if had_bias else 0.0
        assert torch.equal(hook.weights_map["bias"], original + 3.0 * vec(1))
        assert torch.equal(model(IDS, attention_mask=MASK).logits, expected)
        with bias_editing.steer(model, [SteeringSpec(1, "mlp_out", vec(2), -1.0)]):  # nested: sums, then unwinds
            assert torch.equal(hook.weights_map["bias"], original + 3.0 * vec(1) - vec(2))
        assert torch.equal(hook.weights_map["bias"], original + 3.0 * vec(1))
    assert hook.weights_map is weights_map and (proj.bias is not None) == had_bias
    assert_unchanged(before, model)
    assert torch.equal(model(IDS, attention_mask=MASK).logits, plain(IDS, attention_mask=MASK).logits)
    assert checksums(folder) == files


@pytest.mark.parametrize("name", ["tiny-gpt2-random", "tiny-llama-random"])
@pytest.mark.parametrize("backend_name", ["pytorch_hooks", "bias_editing"])
def test_cpu_offload_as_on_a_gpu_machine_weights_in_ram_steers_bitwise(name, backend_name):
    """With a GPU, "cpu" in a device_map means offloaded: weights on meta, read from a state dict in
    RAM at each call. accelerate.cpu_offload builds that here, with the CPU as execution device."""
    from accelerate import cpu_offload

    plain, _ = load(name)
    model, _ = load(name)
    cpu_offload(model, execution_device="cpu")
    assert all(p.device.type == "meta" for p in model.parameters())
    before = snapshot(model)
    specs = [SteeringSpec(0, "mlp_out", vec(1), 3.0), SteeringSpec(3, "attn_out", vec(2), 3.0)]
    with backend(backend_name).steer(plain, specs):
        expected = plain(IDS, attention_mask=MASK).logits
    with backend(backend_name).steer(model, specs):
        assert torch.equal(model(IDS, attention_mask=MASK).logits, expected)
    assert_unchanged(before, model)
    assert torch.equal(model(IDS, attention_mask=MASK).logits, plain(IDS, attention_mask=MASK).logits)


def test_bias_editing_refuses_a_meta_parameter_that_no_accelerate_hook_loads(pair):
    """accelerate's remove_hook_from_module leaves offloaded weights on meta with nothing to load them."""
    from accelerate.hooks import remove_hook_from_module

    model, _, _ = pair
    remove_hook_from_module(model, recurse=True)
    before = snapshot(model)
    name = f"{layout_of(model).blocks}.3.{layout_of(model).attn_out_proj}.bias"
    specs = [SteeringSpec(0, "mlp_out", vec(1)), SteeringSpec(3, "attn_out", vec(2))]  # block 0 is resident
    with pytest.raises(ValueError, match=rf"'{re.escape(name)}' is on the meta device and no accelerate hook loads it"):
        with backend("bias_editing").steer(model, specs):
            pytest.fail("the body must not run")
    assert_unchanged(before, model)


def test_nnsight_refuses_a_device_map_that_starts_with_disk_and_works_once_reordered(pair, tokenizer):
    model, plain, _ = pair
    model.hf_device_map = dict(sorted(model.hf_device_map.items(), key=lambda item: item[1] != "disk"))
    nnsight_trace = backend("nnsight_trace")
    with pytest.raises(ValueError, match=r"model.hf_device_map starts with '\S+\.1': 'disk'; transformers' pipeline"):
        nnsight_trace.nnsight_from_hf(model, tokenizer, copy_model=False)
    model.hf_device_map = dict(sorted(model.hf_device_map.items(), key=lambda item: item[1] == "disk"))
    lm = nnsight_trace.nnsight_from_hf(model, tokenizer, copy_model=False)
    specs = [SteeringSpec(3, "resid_post", vec(1), 3.0)]
    with backend("pytorch_hooks").steer(plain, specs):
        expected = plain(IDS, attention_mask=MASK).logits
    with nnsight_trace.steer(lm, specs):
        assert torch.equal(lm.trace(IDS, attention_mask=MASK, trace=False).logits, expected)


def test_transformer_lens_refuses_a_map_that_mixes_a_gpu_with_offload(pair, tokenizer):
    """TransformerLens 4.3's own check, on the map's values (no GPU here to load one on)."""
    model, _, _ = pair
    model.hf_device_map = {**model.hf_device_map, f"{layout_of(model).blocks}.0": 0}
    with pytest.raises(ValueError, match="device_map mixes CPU/disk offload targets with a GPU target"):
        backend("transformer_lens_hooks").bridge_from_hf(model, tokenizer)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"offload_folder": "x"}, "offload_folder='x' needs a device_map"),
        ({"device": "cpu", "device_map": {"": "cpu"}}, "device='cpu' and device_map are exclusive"),
        ({"device_map": {"": "cpu"}}, "offload_folder=None: random model 'tiny-gpt2-random' has no checkpoint file"),
    ],
)
def test_load_refuses_dispatch_arguments_that_do_not_go_together(kwargs, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        load("tiny-gpt2-random", **kwargs)

"""The notebooks' exercises, both ways: every check (notebooks/exercises/checks.py) passes on its solution
(notebooks/solutions/) and fails on the stub the notebook shows (its cells tagged ``exercise-stub``), so
neither a wrong solution nor a check that cannot fail gets through. The notebooks' check cells call the same
checks, and no solution reaches into a private attribute."""

from __future__ import annotations

import ast
import contextlib
import importlib
import inspect
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch

from steering_backends.vectors import activations, pair_differences

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
sys.path.insert(0, str(NOTEBOOKS))  # exercises/ and solutions/ sit beside the notebooks, as a reader imports them
from exercises import checks  # noqa: E402

CASES = [(name, check, names) for name, entries in checks.EXERCISES.items() for check, names in entries]
IDS = [f"{name}:{check.__name__}" for name, check, _ in CASES]


def stubs(name: str) -> dict:
    """The namespace the notebook's stub cells define, run on their own (each imports what it needs)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    namespace: dict = {}
    for cell in notebook.cells:
        if "exercise-stub" in cell.metadata.get("tags", []):
            exec(compile(cell.source, f"{name}.ipynb", "exec"), namespace)
    return namespace


@pytest.mark.parametrize(("name", "check", "names"), CASES, ids=IDS)
def test_the_check_passes_on_the_solution(name, check, names):
    solution = importlib.import_module(f"solutions.{name}")
    check(*(getattr(solution, function) for function in names))


@pytest.mark.parametrize(("name", "check", "names"), CASES, ids=IDS)
def test_the_check_fails_on_the_stub(name, check, names):
    namespace = stubs(name)
    with pytest.raises(NotImplementedError):  # every stub raises it: the check reaches the reader's function
        check(*(namespace[function] for function in names))


def wrong_answers() -> list[tuple[str, object, object]]:
    """(what is wrong, check, the wrong function): mistakes a reader could make, each of which its check catches."""
    solution = importlib.import_module("solutions.02_pytorch_hooks")
    find_blocks = solution.find_blocks
    AddToOutput = importlib.import_module("solutions.01_custom_wrapper").AddToOutput

    class AddsToTheInput(AddToOutput):  # the 01 exercise steering block L - 1's input, one block too early
        def forward(self, hidden_states, *args, **kwargs):
            return self.block(hidden_states + self.addition, *args, **kwargs)

    class TensorOnly(AddToOutput):  # transformers 5's blocks only: a tuple + a tensor raises TypeError
        def forward(self, *args, **kwargs):
            return self.block(*args, **kwargs) + self.addition

    class NoGetattr(torch.nn.Module):  # wrapper.mlp raises AttributeError: it does not answer for the block
        def __init__(self, block, addition):
            super().__init__()
            self.block, self.addition = block, addition

        def forward(self, *args, **kwargs):
            return AddToOutput.forward(self, *args, **kwargs)

    @contextlib.contextmanager
    def adds_to_the_output(model, layer, addition):  # block L's output is block L + 1's input, not block L's
        handle = find_blocks(model)[layer].register_forward_hook(lambda module, args, output: output + addition)
        try:
            yield
        finally:
            handle.remove()

    @contextlib.contextmanager
    def no_finally(model, layer, addition):  # an exception in the body leaves the hook on
        def hook(module, args, kwargs):
            return (args[0] + addition, *args[1:]), kwargs

        handle = find_blocks(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
        yield
        handle.remove()

    @contextlib.contextmanager
    def bias_left_on_error(model, layer, addition):  # the 05 exercise without finally
        blocks = model.model.layers if hasattr(model, "model") else model.transformer.h
        attention = blocks[layer].self_attn if hasattr(blocks[layer], "self_attn") else blocks[layer].attn
        proj = attention.o_proj if hasattr(attention, "o_proj") else attention.c_proj
        saved = None if proj.bias is None else proj.bias.detach().clone()
        with torch.no_grad():
            if saved is None:
                proj.bias = torch.nn.Parameter(addition.clone(), requires_grad=False)
            else:
                proj.bias += addition
        yield
        with torch.no_grad():
            if saved is None:
                proj.register_parameter("bias", None)
            else:
                proj.bias.copy_(saved)

    def ignores_the_bound(summaries, max_perplexity_ratio=2.0):
        return max(summaries, key=lambda key: summaries[key].expect * summaries[key].delta)

    def ignores_the_direction(summaries, max_perplexity_ratio=2.0):
        fluent = {key: s for key, s in summaries.items() if s.perplexity_ratio <= max_perplexity_ratio}
        if not fluent:
            raise ValueError("none")
        return max(fluent, key=lambda key: fluent[key].delta)

    def norms_of(bridge, text, name, keep_bos=False, **kwargs):
        _, cache = bridge.run_with_cache(text, names_filter=name, **kwargs)
        return cache[name][0].norm(dim=-1)[0 if keep_bos else 1 :]

    def steer_steps(first):  # the 09 exercise steering from step `first` on (its solution: step 1)
        def steer_new_tokens(lm, block, prompt, addition, n_new):
            greedy = dict(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
            with lm.generate(prompt, attention_mask=torch.ones_like(prompt), **greedy) as tracer:
                for _ in tracer.iter[first:n_new]:
                    block.input = block.input + addition
                ids = tracer.result.save()
            return ids

        return steer_new_tokens

    swapped_in = importlib.import_module("solutions.10_offload").swapped_in
    add_to_input = importlib.import_module("solutions.10_offload").AddToInput

    @contextlib.contextmanager
    def swap_without_finally(blocks, layer, addition):  # an exception in the body leaves the wrapper in place
        original = blocks[layer]
        blocks[layer] = add_to_input(original, addition)
        yield
        blocks[layer] = original

    @contextlib.contextmanager
    def removes_accelerates_hooks(blocks, layer, addition):  # "cleans up" every hook: the weights stay on meta
        from accelerate.hooks import remove_hook_from_module

        with swapped_in(blocks, layer, addition):
            yield
        remove_hook_from_module(blocks[layer], recurse=True)

    def right_padded_last(model, tokenizer, pairs, layer):  # position -1 of a right-padded batch: padding, mostly
        texts = [text for pair in pairs for text in pair]
        rows = [[tokenizer.bos_token_id, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in texts]
        width = max(map(len, rows))
        ids = torch.tensor([row + [tokenizer.eos_token_id] * (width - len(row)) for row in rows])
        mask = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in rows])
        kept = []
        handle = model.model.layers[layer].register_forward_pre_hook(
            lambda module, args, kwargs: kept.append((args[0] if args else kwargs["hidden_states"])[:, -1]),
            with_kwargs=True,
        )
        try:
            model(ids, attention_mask=mask)
        finally:
            handle.remove()
        return kept[0][0::2] - kept[0][1::2]

    def x_vector_rows(bos, side):  # the 06 exercise with or without BOS, padded on the given side
        def read(model, tokenizer, positive, negative, layer, pad_token_id):
            first = [tokenizer.bos_token_id] if bos else []
            rows = [[*first, *tokenizer(t, add_special_tokens=False)["input_ids"]] for t in (positive, negative)]
            width = max(map(len, rows))
            pad = [[pad_token_id] * (width - len(r)) for r in rows]
            padded = [p + r if side == "left" else r + p for p, r in zip(pad, rows, strict=True)]
            acts = activations(model, torch.tensor(padded), layer).float()  # [2, width, d_model]
            return acts[0] - acts[1]

        return read

    def resid_pre_traced(stop, offset):  # the 03 exercise with or without stop, reading block layer - offset's output
        def resid_pre_fast(model, blocks, ids, layer):
            from baukit import Trace

            with Trace(model, f"{blocks}.{layer - offset}", stop=stop) as trace:
                model(ids)
            return trace.output if torch.is_tensor(trace.output) else trace.output[0]

        return resid_pre_fast

    def changed_rows(model, lens, ids, spec, backend):  # the 08 exercise's rows that change, [n_layers] bool
        from steering_backends.lens import tuned_lens

        before, after = tuned_lens(model, lens, ids), tuned_lens(model, lens, ids, [spec], backend=backend)
        return (after.loss != before.loss).any(-1)

    return [
        (
            "argmax of no change is row 0",
            checks.check_first_changed_row,
            lambda *args: int(changed_rows(*args).int().argmax()),
        ),
        ("the spec's own layer", checks.check_first_changed_row, lambda model, lens, ids, spec, backend: spec.layer),
        ("runs the whole model", checks.check_resid_pre_fast, resid_pre_traced(False, 1)),
        ("reads the block's own output", checks.check_resid_pre_fast, resid_pre_traced(True, 0)),
        ("no BOS", checks.check_x_vector_rows, x_vector_rows(False, "right")),
        ("padded on the left", checks.check_x_vector_rows, x_vector_rows(True, "left")),
        (
            "averages over the tokens",
            checks.check_last_token_differences,
            lambda model, tokenizer, pairs, layer: pair_differences(
                model, tokenizer, pairs, layer, reduce="mean", progress=False
            ),
        ),
        ("a right-padded batch", checks.check_last_token_differences, right_padded_last),
        ("ablates instead of capping", checks.check_cap, lambda h, u, c: h - (h @ u).unsqueeze(-1) * u),
        ("caps from below", checks.check_cap, lambda h, u, c: h + torch.relu(c - h @ u).unsqueeze(-1) * u),
        ("caps at 0, not at c", checks.check_cap, lambda h, u, c: h - torch.relu(h @ u).unsqueeze(-1) * u),
        ("leaves the wrapper on error", checks.check_swapped_in, swap_without_finally),
        ("removes accelerate's hooks", checks.check_swapped_in, removes_accelerates_hooks),
        ("steers the prompt too", checks.check_steer_new_tokens, steer_steps(0)),
        ("from the second new token", checks.check_steer_new_tokens, steer_steps(2)),
        (
            "ignores prepend_bos",
            checks.check_token_norms,
            lambda b, t, L, bos: norms_of(b, t, f"blocks.{L}.hook_resid_pre"),
        ),
        (
            "keeps BOS's row",
            checks.check_token_norms,
            lambda b, t, L, bos: norms_of(b, t, f"blocks.{L}.hook_resid_pre", keep_bos=True, prepend_bos=bos),
        ),
        (
            "reads hook_resid_post",
            checks.check_token_norms,
            lambda b, t, L, bos: norms_of(b, t, f"blocks.{L}.hook_resid_post", keep_bos=not bos, prepend_bos=bos),
        ),
        ("adds to the block's input", checks.check_add_to_output, AddsToTheInput),
        ("a tensor output only", checks.check_add_to_output, TensorOnly),
        ("no __getattr__", checks.check_add_to_output, NoGetattr),
        ("a copy of the block list", checks.check_find_blocks, lambda model: torch.nn.ModuleList(find_blocks(model))),
        ("adds to the output", checks.check_add_to_block_input, adds_to_the_output),
        ("no finally", checks.check_add_to_block_input, no_finally),
        ("no cache assumed", checks.check_tokens_per_call, lambda model, ids, n_new: [ids.shape[1]] * n_new),
        ("ignores the perplexity bound", checks.check_choose, ignores_the_bound),
        ("ignores summary.expect", checks.check_choose, ignores_the_direction),
        ("a default bound of 1.5", checks.check_choose, lambda summaries, bound=1.5: solution.choose(summaries, bound)),
        ("leaves the bias on error", checks.check_add_to_attn_out, bias_left_on_error),
    ]


WRONG = wrong_answers()


@pytest.mark.parametrize(("what", "check", "wrong"), WRONG, ids=[what for what, _, _ in WRONG])
def test_the_check_fails_on_a_wrong_answer(what, check, wrong):
    with pytest.raises(AssertionError):
        check(wrong)


@pytest.mark.parametrize("name", sorted(checks.EXERCISES))
def test_the_notebook_runs_each_check_on_the_readers_function(name):
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    code = "\n".join(cell.source for cell in notebook.cells if cell.cell_type == "code")
    for check, names in checks.EXERCISES[name]:
        call = f"checks.run(checks.{check.__name__}, {', '.join(names)})"
        assert call in code, f"{name} has no cell with {call}"


def private_attributes(source: str) -> list[str]:
    """Names of private attributes the source reads or writes: `x._name`, and getattr/hasattr/setattr(x, "_name")."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute):
            found.append(node.attr)
        elif isinstance(node, ast.Call) and getattr(node.func, "id", None) in ("getattr", "hasattr", "setattr"):
            found += [
                arg.value for arg in node.args[1:2] if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
            ]
    return [name for name in found if name.startswith("_") and not (name.startswith("__") and name.endswith("__"))]


@pytest.mark.parametrize("name", sorted(checks.EXERCISES))
def test_solutions_use_no_private_attributes(name):
    assert not private_attributes((NOTEBOOKS / "solutions" / f"{name}.py").read_text())


def test_the_offload_check_uses_no_private_attributes():
    """10's exercise once read accelerate's private _hf_hook; its check stays on public names, as its solution."""
    assert not private_attributes(textwrap.dedent(inspect.getsource(checks.check_swapped_in)))
    assert private_attributes('getattr(block, "_hf_hook", None)') == ["_hf_hook"]  # the test itself can fail

"""The notebooks' exercises, both ways: every check (notebooks/exercises/checks.py) passes on its solution
(notebooks/solutions/) and fails on the stub the notebook shows (its cells tagged ``exercise-stub``), so
neither a wrong solution nor a check that cannot fail gets through. The notebooks' check cells call the same
checks, and no solution reaches into a private attribute."""

from __future__ import annotations

import ast
import contextlib
import importlib
import sys
from pathlib import Path

import nbformat
import pytest
import torch

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

    return [
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


@pytest.mark.parametrize("name", sorted(checks.EXERCISES))
def test_solutions_use_no_private_attributes(name):
    tree = ast.parse((NOTEBOOKS / "solutions" / f"{name}.py").read_text())
    private = [node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr.startswith("_")]
    assert not [attr for attr in private if not (attr.startswith("__") and attr.endswith("__"))], private

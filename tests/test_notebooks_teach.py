"""What the notebooks teach, read from their saved cells (nbmake runs them; these read what a reader sees).

- 00 opens with steering a reader can copy: one cell of at most 20 lines that imports only torch and
  transformers, reads a vector with a forward hook and adds it with a forward pre-hook, and its saved
  samples are warmer steered than unsteered by the margin the first run of the CLI must show.
- 01-05 and 09 build the vector they steer with from the contrast pairs, inline, in their own
  library's idiom: none takes a ready-made one from the package. Their tokens() helper also works for a
  tokenizer without BOS (Qwen2's), which 02's exercise 8.1 invites a reader to load.
"""

from __future__ import annotations

import ast
import copy
import html
import re
from pathlib import Path

import nbformat
import pytest
import torch

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
BACKEND_NOTEBOOKS = [
    "01_custom_wrapper",
    "02_pytorch_hooks",
    "03_baukit_tracedict",
    "04_transformer_lens",
    "05_bias_editing",
    "09_nnsight",
]
# A ready-made vector: the package's measured recipe (vectors.sentiment_spec) or its settings table.
READY_MADE = re.compile(r"\bsentiment_spec\b|\bSENTIMENT\b")
MIN_SHIFT = 0.4  # mean VADER shift the CLI's first run must show too (tests/test_cli.py)


def code_cells(name: str) -> list[str]:
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    return [cell.source for cell in notebook.cells if cell.cell_type == "code"]


def first_steering_cell(name: str) -> tuple[str, nbformat.NotebookNode]:
    """The first code cell that runs something beyond the setup: (its source, the cell after it)."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for i, cell in enumerate(cells):
        if "register_forward_pre_hook" in cell.source:
            return cell.source, cells[i + 1]
    raise AssertionError(f"{name}: no cell adds a vector with a forward pre-hook")


def test_overview_opens_with_steering_in_torch_and_transformers_alone():
    source, scores = first_steering_cell("00_overview")
    cells = code_cells("00_overview")
    position = next(i for i, cell in enumerate(cells) if cell == source)
    assert all("import" in cell or cell.lstrip().startswith("#") for cell in cells[:position]), "setup only before it"
    assert len(source.splitlines()) <= 20
    roots = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            roots.add(node.module.split(".")[0])
    assert roots == {"torch", "transformers"}, roots
    assert "register_forward_hook" in source  # the vector is read where the reader sees it
    printed = "".join(output.get("text", "") for output in scores.get("outputs", []))
    before = [float(x) for x in re.findall(r"unsteered \(([+-]\d\.\d\d)\)", printed)]
    after = [float(x) for x in re.findall(r"steered   \(([+-]\d\.\d\d)\)", printed)]
    assert len(before) == len(after) >= 3, printed
    assert sum(after) / len(after) - sum(before) / len(before) >= MIN_SHIFT, (before, after)


@pytest.mark.parametrize("name", BACKEND_NOTEBOOKS)
def test_backend_notebooks_steer_with_the_vector_they_build(name):
    cells = code_cells(name)
    ready_made = [cell for cell in cells if READY_MADE.search(cell)]
    assert not ready_made, f"{name} takes a ready-made vector: {ready_made[0][:200]}"
    assert any("contrast_pairs.jsonl" in cell and "def mean_difference_spec" in cell for cell in cells)
    assert any("mean_difference_spec(21, 0.25)" in cell for cell in cells)  # what steers is what it built


@pytest.mark.parametrize("name", BACKEND_NOTEBOOKS)
def test_tokens_puts_eos_first_when_the_tokenizer_has_no_bos(name):
    """tokens() as the notebook defines it, run on GPT-2's tokenizer with its BOS removed: EOS takes BOS's place
    (as in TransformerLens), so resid_pre's [0, 1:] still leaves out only that first token."""
    from steering_backends.models import gpt2_tokenizer

    source = next(cell for cell in code_cells(name) if "def tokens(" in cell)
    tree = ast.parse(source)
    function = [node for node in tree.body if isinstance(node, ast.FunctionDef) and node.name == "tokens"]
    tokenizer = copy.deepcopy(gpt2_tokenizer())
    tokenizer.bos_token = None
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is not None
    namespace = {"torch": torch, "tokenizer": tokenizer, "device": "cpu"}
    exec(compile(ast.Module(body=function, type_ignores=[]), f"{name}.ipynb", "exec"), namespace)
    text = "I hate you because"
    expected = [[tokenizer.eos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]]
    assert namespace["tokens"](text).tolist() == expected


@pytest.mark.parametrize("name", ["00_overview", *BACKEND_NOTEBOOKS])
def test_what_the_samples_show_quotes_the_saved_samples(name):
    """Every quotation and score in a "What the samples show" cell is in the notebook's saved outputs,
    so the prose cannot drift from the samples when the notebook is re-run."""
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    comments = [c.source for c in notebook.cells if c.cell_type == "markdown" and "What the samples show" in c.source]
    assert comments, f"{name} has no comment on its samples"
    outputs = html.unescape(
        "".join(
            output.get("text", "") + output.get("data", {}).get("text/html", "")
            for cell in notebook.cells
            if cell.cell_type == "code"
            for output in cell.get("outputs", [])
        )
    )
    quotes = re.findall(r'"([^"]{12,})"', comments[0])
    scores = re.findall(r"\((?:VADER[^)]*|([+−-]\d\.\d\d))\)", comments[0])
    assert quotes, f"{name}: the comment quotes no sample"
    for quote in quotes:
        assert quote.strip(" .…") in outputs, f"{name}: {quote!r} is not in the saved outputs"
    for score in filter(None, scores):
        assert score.replace("−", "-") in outputs, f"{name}: score {score} is not in the saved outputs"

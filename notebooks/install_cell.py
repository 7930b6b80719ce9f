"""The commented install cell each notebook's Setup opens with, for a reader who opens the notebook
in a hosted notebook service (Colab, Kaggle, ...) rather than in a clone set up by the README.

    python notebooks/install_cell.py 07_representation_engineering.ipynb   # add it, or bring it up to date

It is commented out, so running it in a clone does nothing, and it has no outputs: adding it needs no
re-run. backend_skeleton.py writes it into notebooks 01-05 and 09; tests/test_notebooks_html.py checks
that every notebook has it, as written here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import nbformat

HERE = Path(__file__).resolve().parent
CELL_ID = "install"
SETUP_HEADING = re.compile(r"^## (1\. )?Setup\s*$")

BASE = """\
# In a hosted notebook service (Colab, Kaggle, ...)? Uncomment this cell and run it first: it clones
# the repository (put its URL in), installs the tested versions (torch 2.14.1 among them: restart the
# runtime if the service asks) and moves into notebooks/, where the setup cell expects to run.
# In a clone set up with the README's install command, leave it as it is.
# !git clone --depth 1 <repository URL> steering_backends
# %cd steering_backends/notebooks
# %pip install -q -r ../requirements.txt
# %pip install -q --no-deps -r ../requirements-no-deps.txt
# %env STEERING_MODEL=gpt2-xl  # optional: the original model, from the hub; choose a GPU runtime"""

EXTRA = {
    "03_baukit_tracedict.ipynb": "\n# baukit is not on PyPI: install it from GitHub at the tested commit."
    '\n# %pip install -q "baukit @ git+https://github.com/davidbau/baukit@9d51abd51ebf29769aecc38c4cbef459b731a36e"',
}


def source(name: str) -> str:
    """The install cell's source for the notebook file ``name``."""
    return BASE + EXTRA.get(name, "")


def cell(name: str) -> nbformat.NotebookNode:
    new = nbformat.v4.new_code_cell(source(name))
    new.id = CELL_ID
    return new


def add(notebook: nbformat.NotebookNode, name: str) -> None:
    """Put the install cell right after the Setup heading of ``notebook``, or refresh the one there."""
    for i, existing in enumerate(notebook.cells):
        if existing.get("id") == CELL_ID:
            notebook.cells[i] = cell(name)
            return
    headings = [i for i, c in enumerate(notebook.cells) if c.cell_type == "markdown" and SETUP_HEADING.match(c.source)]
    if len(headings) != 1:
        raise ValueError(f"{name}: expected one '## Setup' heading for the install cell, found {len(headings)}")
    notebook.cells.insert(headings[0] + 1, cell(name))


if __name__ == "__main__":
    for name in sys.argv[1:]:
        path = HERE / name
        notebook = nbformat.read(path, as_version=4)
        add(notebook, name)
        nbformat.write(notebook, path)
        print(f"{name}: install cell up to date")

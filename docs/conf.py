"""Sphinx configuration of the documentation site.

Build from the repository root (the source folder is the repository, the configuration is here):

    python -m sphinx -W --keep-going -n -b html -c docs . docs/_build/html

The source folder is the repository root so that one relative link works both on GitHub and in
the built site: the pages in docs/ link to ../notebooks/*.ipynb and ../benchmarks/results/*,
and Sphinx renders those files as pages of the site. Only the files listed in
``include_patterns`` are read; notebooks are rendered from their committed outputs, never run.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from docutils import nodes
from sphinx.util.docutils import SphinxDirective

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # autodoc imports steering_backends from this checkout

project = "steering_backends"
author = "steering_backends contributors"
copyright = "steering_backends contributors, MIT licence"

root_doc = "docs/index"
include_patterns = [
    "docs/*.md",
    "docs/backends/*.md",
    "notebooks/[0-9][0-9]_*.ipynb",
    "benchmarks/results/*.md",
    "benchmarks/results/*/*.md",
]
exclude_patterns = ["docs/_build"]

extensions = ["myst_nb", "sphinx.ext.autodoc"]

# Notebooks: shown with the outputs saved in the repository (the tests run them; the build never does).
nb_execution_mode = "off"
# Notebook markdown is MyST too; $...$ math is off, since the notebooks use $ only for shell prompts.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](#a-heading) links, as on GitHub

# The backends import baukit (not on PyPI), nnsight and vllm (its own environment) at module level.
# autodoc only reads their docstrings and signatures, so stand-ins keep the build independent of
# those optional installs.
autodoc_mock_imports = ["baukit", "nnsight", "vllm"]
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Inline `name` in a docstring is code, as the docstrings mean it (reST's default is italics).
default_role = "code"

# Nitpicky mode checks every cross-reference. Classes of other libraries cannot be resolved
# without intersphinx, which needs the network; these are the ones the backends' signatures name.
nitpick_ignore_regex = [
    ("py:class", r"(torch|transformers|nnsight|transformer_lens|vllm)\..*"),
    ("py:class", r"(Any|Iterable|Iterator|Envoy|collections\.abc\.(Iterable|Iterator|Sequence))(\[.*\])?"),
]

html_theme = "furo"
html_title = "steering_backends"
html_static_path: list[str] = []
# Without an icon of its own, a browser asks the server for /favicon.ico and logs the 404 as an error.
html_favicon = "_static/favicon.svg"
# Nothing is fetched from other sites: the pages work offline, and the browser test sees no failed request.
html_theme_options = {"source_repository": "", "top_of_page_buttons": []}
# The repository root is the source folder; the site opens at docs/index.html, and / forwards there.
html_extra_path = ["_extra"]  # relative to this folder


# --- The backend pages: each module docstring, as written in the file, rendered readably. -------
#
# The docstrings are plain text for a terminal and an editor: a paragraph, then an indented
# example or a table of sites; "Gotchas:" followed by indented "* " bullets. In reST an
# indented block after a paragraph is a quotation, so the example would lose its line breaks.
# This turns each indented block into a literal block (code), or, when it is a bullet list,
# into a list, and a field table ("layer:  block index; ...") into a literal block, without
# changing a word of the file.


FIELD = re.compile(r"^[a-z_]\w*:\s+\S")  # "name:  what it is", the start of a field's description


def _plain_text_to_rst(lines: list[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        indented = line.startswith("    ")
        if FIELD.match(line):
            # "layer:  block index; ..." with hanging continuation lines: a table of fields, kept as typed.
            block = []
            while i < len(lines) and (FIELD.match(lines[i]) or lines[i].startswith("    ")):
                block.append("    " + lines[i])
                i += 1
            if out and out[-1].strip():
                out.append("")
            out += [".. code-block:: text", "", *block, ""]
            continue
        if not indented:
            out.append(line)
            i += 1
            continue
        block = []
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            block.append(lines[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        # The indented block ends at the last indented line; a blank line closes it.
        if block[0].lstrip().startswith("* "):
            if out and out[-1].strip():
                out.append("")
            out.extend(b[4:] for b in block)
        else:
            # After "Hooks used:" and the like, a table in plain text; otherwise an example in Python.
            last = next((text for text in reversed(out) if text.strip()), "")
            language = "text" if last.rstrip().endswith(":") else "python"
            if out and out[-1].strip():
                out.append("")
            out += [f".. code-block:: {language}", "", *block]
        out.append("")
    return out


def _process_docstring(app, what, name, obj, options, lines):
    if name.startswith("steering_backends."):
        lines[:] = _plain_text_to_rst(list(lines))


# --- The measurement files: pages of the site, reached from the prose that explains them. -------


def _results_are_orphans(app, docname, source):
    # benchmarks/results/*.md are written by the benchmarks and linked from the pages that explain
    # them; they are not chapters of their own, so they stay out of the navigation.
    if docname.startswith("benchmarks/results/"):
        source[0] = "---\norphan: true\n---\n" + source[0]


# --- `{program-help}`: the command line's own --help, so the options page cannot go stale. -----


class ProgramHelp(SphinxDirective):
    """Runs ``python -m <argument> --help`` and shows its output as a literal block."""

    required_arguments = 1
    final_argument_whitespace = True

    def run(self):
        command = [sys.executable, "-m", *self.arguments[0].split(), "--help"]
        env = {**os.environ, "COLUMNS": "96"}  # argparse wraps its help to this width
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise self.error(f"{' '.join(command)} exited with {done.returncode}: {done.stderr[-2000:]}")
        text = done.stdout.rstrip()
        block = nodes.literal_block(text, text, language="text")
        return [block]


def setup(app):
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("source-read", _results_are_orphans)
    app.add_directive("program-help", ProgramHelp)
